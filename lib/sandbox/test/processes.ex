defmodule Sandbox.Test.Processes do
  @moduledoc false
  # What the test helpers share: naming servers (host names, and
  # `{sandbox_id, module}` for a sandbox's process registered under its
  # module's name), waiting for supervisors to restart children by
  # synchronising with them (calls, never sleeps), and tracking the processes
  # an operation spawns with a group leader of its own.

  @typedoc """
  A process as the helpers take it: a pid, a registered name, `{:global, _}`,
  `{:via, _, _}`, `{name, node}`, or `{sandbox_id, module}` — the process of
  sandbox `sandbox_id` registered under `module`'s name (original name).
  """
  @type server :: pid | atom | {:global, term} | {:via, module, term} | {atom, node}
  @type server_ref :: server | {String.t(), module}

  @doc "The name or pid to address `server` with (`{id, module}` becomes the relocated name)."
  @spec name(server_ref) :: server
  def name({id, module}) when is_binary(id) and is_atom(module),
    do: Sandbox.module_name(id, module)

  def name(server), do: server

  @doc "The pid of `server`, or `nil`."
  @spec whereis(server_ref) :: pid | nil
  def whereis(pid) when is_pid(pid), do: pid

  def whereis(server) do
    case GenServer.whereis(name(server)) do
      pid when is_pid(pid) -> pid
      _ -> nil
    end
  end

  @doc "Like `whereis/1`, but only a live local process."
  @spec alive(server_ref) :: pid | nil
  def alive(server) do
    case whereis(server) do
      pid when is_pid(pid) and node(pid) == node() -> if Process.alive?(pid), do: pid
      pid -> pid
    end
  end

  @doc "A deadline `timeout` ms from now (`:infinity` stays)."
  def deadline(:infinity), do: :infinity
  def deadline(ms) when is_integer(ms) and ms >= 0, do: System.monotonic_time(:millisecond) + ms

  @doc "Milliseconds left until `deadline` (0 when past)."
  def left(:infinity), do: :infinity
  def left(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  @doc "Waits for the `:DOWN` of monitor `ref` until `deadline`: `{:ok, reason}` or `:timeout`."
  def await_down(ref, deadline) do
    receive do
      {:DOWN, ^ref, :process, _, reason} -> {:ok, reason}
    after
      left(deadline) -> :timeout
    end
  end

  ## Supervisors

  @doc """
  The supervisor `pid` was started by (the first of its `$ancestors`), or
  `nil` when that is unknown (the process is dead, or not a `proc_lib`
  process).
  """
  @spec supervisor_of(pid) :: pid | nil
  def supervisor_of(pid) when is_pid(pid) do
    with {:dictionary, dict} <- Process.info(pid, :dictionary),
         [parent | _] <- Keyword.get(dict, :"$ancestors", []),
         sup when is_pid(sup) <- whereis(parent),
         true <- supervisor?(sup) do
      sup
    else
      _ -> nil
    end
  end

  @doc "Every local supervisor (`:supervisor` and `DynamicSupervisor` processes)."
  @spec supervisors() :: [pid]
  def supervisors, do: Enum.filter(Process.list(), &supervisor?/1)

  @doc "Whether `pid` is a supervisor."
  @spec supervisor?(pid) :: boolean
  def supervisor?(pid) do
    with {:initial_call, {:proc_lib, _, _}} <- Process.info(pid, :initial_call),
         {:dictionary, dict} <- Process.info(pid, :dictionary) do
      case Keyword.get(dict, :"$initial_call") do
        {:supervisor, _, _} -> true
        {DynamicSupervisor, _, _} -> true
        _ -> false
      end
    else
      _ -> false
    end
  end

  @doc """
  Synchronises with `sup`: returns its children once it has handled every
  message sent to it before (exit signals of children included, so a
  restart it owed is done). `:noproc` when it is gone, `:timeout` past
  `deadline`.
  """
  @spec sync_children(pid, integer | :infinity) :: [tuple] | :noproc | :timeout
  def sync_children(sup, deadline) do
    # Both :supervisor and DynamicSupervisor answer this call.
    GenServer.call(sup, :which_children, left(deadline))
  catch
    :exit, {:timeout, _} -> :timeout
    :exit, _ -> :noproc
  end

  @doc """
  Waits until a process other than `original` is registered as `name` and
  alive, synchronising with the supervisor that restarts it (`sup`, or
  every supervisor when it is unknown): `{:ok, pid}`, `{:error,
  :not_restarted}` when no supervisor restarted it, or `{:error, :timeout}`.
  """
  @spec await_registered(server_ref, pid | nil, pid | nil, integer | :infinity) ::
          {:ok, pid} | {:error, :not_restarted | :timeout}
  def await_registered(name, original, sup, deadline) do
    case new_pid(name, original) do
      pid when is_pid(pid) ->
        {:ok, pid}

      nil ->
        sups = if sup && Process.alive?(sup), do: [sup], else: supervisors()

        # A supervisor is not done while a child waits for a restart, or is
        # dead but still listed (its exit signal not handled yet).
        pending =
          Enum.any?(sups, fn s ->
            case sync_children(s, deadline) do
              children when is_list(children) -> Enum.any?(children, &unsettled?/1)
              _ -> false
            end
          end)

        cond do
          pid = new_pid(name, original) -> {:ok, pid}
          left(deadline) == 0 -> {:error, :timeout}
          # The supervisor died too (its parent restarts it): look at all.
          sup && not Process.alive?(sup) -> await_registered(name, original, nil, deadline)
          pending -> await_registered(name, original, sup, deadline)
          true -> {:error, :not_restarted}
        end
    end
  end

  @doc "Whether a `which_children` entry is waiting for its supervisor."
  def unsettled?({_, :restarting, _, _}), do: true
  def unsettled?({_, pid, _, _}) when is_pid(pid), do: not Process.alive?(pid)
  def unsettled?(_), do: false

  defp new_pid(name, original) do
    case alive(name) do
      pid when is_pid(pid) and pid != original -> pid
      _ -> nil
    end
  end

  ## Tracking what an operation spawns

  @doc """
  Runs `fun` in the calling process with a group leader of its own, which
  every process spawned meanwhile (and their descendants) inherits. Returns
  `{result, tracker}`; `tracked/1` lists the tracked processes still alive
  and `stop_tracker/1` ends the tracker. I/O is passed on to the caller's
  group leader.
  """
  @spec track((() -> result)) :: {result, pid} when result: term
  def track(fun) do
    upstream = Process.group_leader()
    tracker = spawn(fn -> forward(upstream) end)
    Process.group_leader(self(), tracker)

    try do
      {fun.(), tracker}
    after
      Process.group_leader(self(), upstream)
    end
  end

  @doc "The live processes whose group leader is `tracker`."
  @spec tracked(pid) :: [pid]
  def tracked(tracker) do
    for pid <- Process.list(),
        pid != self(),
        Process.info(pid, :group_leader) == {:group_leader, tracker},
        do: pid
  end

  @doc "Stops a tracker."
  @spec stop_tracker(pid) :: :ok
  def stop_tracker(tracker) do
    Process.exit(tracker, :kill)
    :ok
  end

  defp forward(upstream) do
    receive do
      {:io_request, from, reply_as, request} ->
        send(upstream, {:io_request, from, reply_as, request})
        forward(upstream)

      _other ->
        forward(upstream)
    end
  end

  @doc """
  Of `pids`, those still alive after waiting (on monitors) until `deadline`
  for them to exit.
  """
  @spec survivors([pid], integer) :: [pid]
  def survivors(pids, deadline) do
    refs = for pid <- pids, into: %{}, do: {Process.monitor(pid), pid}
    await_all(refs, deadline)
  end

  defp await_all(refs, _deadline) when map_size(refs) == 0, do: []

  defp await_all(refs, deadline) do
    receive do
      {:DOWN, ref, :process, _, _} when is_map_key(refs, ref) ->
        await_all(Map.delete(refs, ref), deadline)
    after
      left(deadline) ->
        for {ref, pid} <- refs do
          Process.demonitor(ref, [:flush])
          pid
        end
    end
  end

  @doc "Kills `pids` and waits for them to be gone."
  @spec kill_all([pid]) :: :ok
  def kill_all(pids) do
    refs = for pid <- pids, do: Process.monitor(pid)
    for pid <- pids, do: Process.exit(pid, :kill)

    for ref <- refs do
      receive do
        {:DOWN, ^ref, :process, _, _} -> :ok
      end
    end

    :ok
  end

  @doc "A short description of a process for failure messages."
  @spec describe(pid) :: String.t()
  def describe(pid) do
    case Process.info(pid, [:registered_name, :current_function, :initial_call, :dictionary]) do
      nil ->
        "#{inspect(pid)} (dead)"

      info ->
        name =
          case info[:registered_name] do
            [] -> ""
            name -> " #{inspect(name)}"
          end

        initial = Keyword.get(info[:dictionary], :"$initial_call", info[:initial_call])

        "#{inspect(pid)}#{name} started as #{format_mfa(initial)}, in #{format_mfa(info[:current_function])}"
    end
  end

  defp format_mfa({m, f, a}), do: Exception.format_mfa(m, f, a)
  defp format_mfa(other), do: inspect(other)
end
