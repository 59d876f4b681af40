defmodule Sandbox.IsolatedCompiler.PortLauncher do
  @moduledoc """
  Interim stand-in for `Sandbox.CNode` (same functions, same events), used
  only until the supervising C-node lands: OS processes are started through
  an Erlang port (whose children lead their own session and process group), CPU and file-size
  limits are hard rlimits set with `prlimit(1)`, memory and OS-process
  count are sampled from `/proc` over the process group, and the whole group
  is killed with SIGKILL when a limit is crossed.

  Events sent to the subscriber:
  `{:sandbox_cnode, id, {:stdout, binary}}` (standard error is merged into
  it) and `{:sandbox_cnode, id, {:exit, reason}}`, with `reason` one of
  `{:status, n}`, `{:signal, n}`, `:timeout` or `{:limit, kind}`.
  """
  use GenServer

  @sample_interval 50

  @doc "Starts the launcher (registered under its module name)."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc """
  Spawns `argv` (the first element is the executable).

  ## Options

    * `:env` — `[{name, value}]` added to the inherited environment
    * `:cd` — working directory
    * `:limits` — as in `set_limits/2`
    * `:subscriber` — the pid receiving events (default `self()`)
  """
  @spec spawn([String.t()], keyword) ::
          {:ok, %{id: pos_integer, os_pid: pos_integer}} | {:error, term}
  def spawn(argv, opts \\ []) when is_list(argv) and is_list(opts) do
    GenServer.call(__MODULE__, {:spawn, argv, Keyword.put_new(opts, :subscriber, self())})
  end

  @doc "Writes to the process's standard input."
  @spec write_stdin(pos_integer, iodata) :: :ok | {:error, term}
  def write_stdin(id, data), do: GenServer.call(__MODULE__, {:write_stdin, id, data})

  @doc "Closes the process's standard input."
  @spec close_stdin(pos_integer) :: :ok | {:error, term}
  def close_stdin(id), do: GenServer.call(__MODULE__, {:close_stdin, id})

  @doc """
  Applies limits to a running process: `:cpu_seconds` and `:file_size`
  (bytes) as rlimits, `:memory` (resident bytes) and `:processes` by
  sampling.
  """
  @spec set_limits(pos_integer, map) :: :ok | {:error, term}
  def set_limits(id, limits) when is_map(limits),
    do: GenServer.call(__MODULE__, {:set_limits, id, limits})

  @doc "Sends `signal` (default SIGKILL) to the process's whole group."
  @spec kill(pos_integer, atom) :: :ok | {:error, term}
  def kill(id, signal \\ :sigkill), do: GenServer.call(__MODULE__, {:kill, id, signal, nil})

  @impl true
  def init(_opts) do
    Process.flag(:trap_exit, true)
    {:ok, %{procs: %{}, ports: %{}, timer: nil}}
  end

  @impl true
  def handle_call({:spawn, [exe | args], opts}, _from, state) do
    exe = System.find_executable(exe) || exe

    port_opts =
      [:binary, :exit_status, :use_stdio, :stderr_to_stdout, :hide, args: args] ++
        env_opt(opts[:env]) ++ if(opts[:cd], do: [cd: opts[:cd]], else: [])

    try do
      port = Port.open({:spawn_executable, exe}, port_opts)
      {:os_pid, os_pid} = Port.info(port, :os_pid)
      id = System.unique_integer([:positive, :monotonic])

      proc = %{
        port: port,
        os_pid: os_pid,
        subscriber: opts[:subscriber],
        limits: %{},
        killed_for: nil
      }

      state = %{
        state
        | procs: Map.put(state.procs, id, proc),
          ports: Map.put(state.ports, port, id)
      }

      state = apply_limits(id, opts[:limits] || %{}, state)
      {:reply, {:ok, %{id: id, os_pid: os_pid}}, state}
    rescue
      e in ErlangError -> {:reply, {:error, e.original}, state}
    end
  end

  def handle_call({:write_stdin, id, data}, _from, state) do
    with_proc(state, id, fn proc ->
      Port.command(proc.port, data)
      :ok
    end)
  end

  def handle_call({:close_stdin, id}, _from, state) do
    with_proc(state, id, fn _proc -> {:error, :not_supported} end)
  end

  def handle_call({:set_limits, id, limits}, _from, state) do
    case state.procs do
      %{^id => _} -> {:reply, :ok, apply_limits(id, limits, state)}
      _ -> {:reply, {:error, :not_found}, state}
    end
  end

  def handle_call({:kill, id, _signal, why}, _from, state) do
    case state.procs do
      %{^id => proc} ->
        kill_group(proc.os_pid)
        {:reply, :ok, put_in(state.procs[id].killed_for, why || proc.killed_for)}

      _ ->
        {:reply, {:error, :not_found}, state}
    end
  end

  @impl true
  def handle_info({port, {:data, data}}, state) do
    with %{^port => id} <- state.ports, %{^id => proc} <- state.procs do
      send(proc.subscriber, {:sandbox_cnode, id, {:stdout, data}})
    end

    {:noreply, state}
  end

  def handle_info({port, {:exit_status, status}}, state) do
    case state.ports do
      %{^port => id} ->
        proc = state.procs[id]
        # The group may outlive its leader: kill what is left.
        kill_group(proc.os_pid)

        reason =
          cond do
            proc.killed_for -> {:limit, proc.killed_for}
            status > 128 -> signal_reason(status - 128)
            true -> {:status, status}
          end

        send(proc.subscriber, {:sandbox_cnode, id, {:exit, reason}})

        {:noreply,
         %{state | procs: Map.delete(state.procs, id), ports: Map.delete(state.ports, port)}}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info(:sample, state) do
    state = %{state | timer: nil}

    sampled =
      Enum.filter(state.procs, fn {_id, p} -> p.limits[:memory] || p.limits[:processes] end)

    state =
      if sampled == [] do
        state
      else
        groups = group_usage()

        Enum.reduce(sampled, state, fn {id, proc}, state ->
          {rss, count} = Map.get(groups, proc.os_pid, {0, 0})

          over =
            cond do
              proc.limits[:memory] && rss > proc.limits[:memory] -> :memory
              proc.limits[:processes] && count > proc.limits[:processes] -> :processes
              true -> nil
            end

          if over && proc.killed_for == nil do
            kill_group(proc.os_pid)
            put_in(state.procs[id].killed_for, over)
          else
            state
          end
        end)
      end

    {:noreply, schedule(state)}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    for {_id, proc} <- state.procs, do: kill_group(proc.os_pid)
    :ok
  end

  defp signal_reason(24), do: {:limit, :cpu}
  defp signal_reason(25), do: {:limit, :file_size}
  defp signal_reason(n), do: {:signal, n}

  defp with_proc(state, id, fun) do
    case state.procs do
      %{^id => proc} -> {:reply, fun.(proc), state}
      _ -> {:reply, {:error, :not_found}, state}
    end
  end

  defp env_opt(nil), do: []

  defp env_opt(env),
    do: [env: Enum.map(env, fn {k, v} -> {to_charlist(k), v && to_charlist(v)} end)]

  defp apply_limits(id, limits, state) do
    proc = state.procs[id]
    rl = []
    rl = if limits[:cpu_seconds], do: ["--cpu=#{limits[:cpu_seconds]}" | rl], else: rl
    rl = if limits[:file_size], do: ["--fsize=#{limits[:file_size]}" | rl], else: rl
    if rl != [], do: System.cmd("prlimit", ["--pid", "#{proc.os_pid}" | rl])
    state = put_in(state.procs[id].limits, Map.merge(proc.limits, limits))
    schedule(state)
  end

  defp schedule(%{timer: nil} = state) do
    if Enum.any?(state.procs, fn {_, p} -> p.limits[:memory] || p.limits[:processes] end) do
      %{state | timer: Process.send_after(self(), :sample, @sample_interval)}
    else
      state
    end
  end

  defp schedule(state), do: state

  defp kill_group(os_pid), do: :os.cmd(~c"kill -KILL -#{os_pid} 2>/dev/null")

  # %{pgid => {rss_bytes, process_count}}
  defp group_usage do
    page = 4096

    case File.ls("/proc") do
      {:ok, entries} ->
        for entry <- entries,
            Integer.parse(entry) != :error,
            {:ok, stat} <- [File.read("/proc/#{entry}/stat")],
            [_, rest] <- [String.split(stat, ") ", parts: 2)],
            fields = String.split(rest, " "),
            reduce: %{} do
          acc ->
            pgid = String.to_integer(Enum.at(fields, 2))
            rss = String.to_integer(Enum.at(fields, 21)) * page
            Map.update(acc, pgid, {rss, 1}, fn {r, c} -> {r + rss, c + 1} end)
        end

      _ ->
        %{}
    end
  end
end
