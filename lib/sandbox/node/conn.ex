defmodule Sandbox.Node.Conn do
  @moduledoc """
  The host's end of one sandbox VM (`Sandbox.Node`): starts the VM through
  the supervising C-node, holds its wire (`Sandbox.Node.Wire`), its OS
  limits and its CPU throttle, and tells its owner what happens to it.

  A connection starts a VM and waits for its agent's `ready` (status
  `:booting`), then is `:idle` until `checkout/3` gives it an owner (a
  `Sandbox.Node.Instance`) and the sandbox's limits (status `:owned`).
  It stops when its VM has exited — killed by `stop/1`, by a limit, or on
  its own — after telling the owner (or the pool) `{:node_down, conn,
  reason}`:

    * `{:limit_exceeded, limit}` — the C-node killed the VM over a sampled
      limit (`:max_memory`, `:max_processes`), the kernel over an rlimit
      (`:max_cpu_percentage`, `:max_file_size`), or an allocation failed in
      the VM's super carrier (`:max_memory`)
    * `{:vm_exited, how}` — anything else: `{:status, n}`, `{:signal, n}`,
      `:cnode_down`, `{:protocol, detail}` (the VM broke the wire's
      framing or sent a term the host refuses, and was killed)

  Other messages to the owner: `{:node_event, conn, name, measurements,
  metadata, summary}` (an event of the sandbox, see
  `Sandbox.Node.Agent`), `{:node_summary, conn, summary}`, and the replies
  of `send_request/3`: `{:node_reply, conn, tag, result, summary}`.

  ## Sampling and throttling

  While owned, the VM's process tree is sampled every
  `config :sandbox, node_sample_interval:` ms (100) through the C-node:
  resident memory and CPU time, published for `Sandbox.get_sandbox_info/1`
  (`cpu_usage`: percent of one core over the last second). With
  `max_cpu_percentage` the VM earns that share of every interval in CPU
  time and is stopped (`SIGSTOP` to its whole tree) when it has spent more
  than it earned, for as long as it takes to earn it back (at most a
  second), then continued (`SIGCONT`). `RLIMIT_CPU` is re-armed every
  5 s at twice the share plus 2 s, a backstop that only fires if the duty
  cycle cannot hold the VM.
  """

  use GenServer, restart: :temporary

  alias Sandbox.{CNode, Node}
  alias Sandbox.Node.{Confinement, Wire}

  @max_frame 64 * 1024 * 1024
  @stderr_tail 4_096
  # the JIT maps its code through a file that counts (see the compile pool)
  @min_file_size 64 * 1024 * 1024
  @rearm_ms 5_000
  @max_stop_ms 1_000
  @reply_grace 2_000

  ## Client

  @doc """
  Starts a connection and its VM (under `Sandbox.Node.ConnSupervisor`).
  The caller (`:notify`, default the caller) gets `{:conn_ready, conn,
  os_pid}` once the VM's agent is up, or `{:node_down, conn, reason}`.

  ## Options

    * `:notify` — the pid told of the VM's state while it has no owner
    * `:memory_ceiling` — the VM's super carrier (see `Sandbox.Node.argv/1`)
    * `:confinement` — the VM's confinement class
      (`Sandbox.Node.Confinement.class/2`, default `:none`): its Landlock
      rules, built around the VM's own directory
  """
  @spec start(keyword) :: DynamicSupervisor.on_start_child()
  def start(opts \\ []) do
    opts = Keyword.put_new(opts, :notify, self())
    DynamicSupervisor.start_child(Sandbox.Node.ConnSupervisor, {__MODULE__, opts})
  end

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc """
  Gives the idle connection `conn` to `owner` for sandbox `id`, applying
  `limits` (the sandbox's resource limits) to the VM. Returns `{:ok,
  %{os_pid: n, baseline: bytes}}` (`baseline`: the idle VM's resident
  size; `landlock`: the C-node's report of the VM's confinement,
  `%{abi: n, missing: [atom]}`, or `nil` when the VM is not confined) or
  `{:error, reason}` (the connection is not idle, or the C-node refused
  the limits).
  """
  @spec checkout(pid, pid, String.t(), map) :: {:ok, map} | {:error, term}
  def checkout(conn, owner, id, limits),
    do: GenServer.call(conn, {:checkout, owner, id, limits}, 30_000)

  @doc """
  Sends `request` to the agent and waits for its reply, at most `timeout`
  ms (or `:infinity`) plus a grace for the wire: `{:ok, result}`, or
  `{:error, :timeout}` (the request is cancelled in the VM),
  `{:error, {:exit, {:vm_down, reason}}}` (the VM went away meanwhile) or
  `{:error, :not_found}` (the connection is gone), or the refusals of the
  wire (`{:error, {:bad_reply, reason}}`).
  """
  @spec request(pid, term, timeout) :: {:ok, term} | {:error, term}
  def request(conn, request, timeout) do
    GenServer.call(conn, {:request, request, timeout}, :infinity)
  catch
    :exit, _ -> {:error, :not_found}
  end

  @doc """
  Sends `request` to the agent without waiting: the owner gets
  `{:node_reply, conn, tag, result, summary}` (or `{:node_reply, conn,
  tag, {:error, {:vm_down, reason}}, nil}`).
  """
  @spec send_request(pid, term, term) :: :ok
  def send_request(conn, request, tag), do: GenServer.cast(conn, {:send_request, request, tag})

  @doc """
  Kills the VM's whole process tree and returns once every process of it
  is gone (`:ok`; also when the connection is already gone). The owner gets
  no `:node_down` for it.
  """
  @spec stop(pid) :: :ok
  def stop(conn) do
    ref = Process.monitor(conn)
    GenServer.cast(conn, {:stop, self()})

    receive do
      {:DOWN, ^ref, :process, _, _} -> :ok
    end
  end

  @doc """
  The VM's OS pid, status (`:booting | :idle | :owned`), own directory
  (`dir`) and confinement (`landlock`, as in `checkout/4`).
  """
  @spec info(pid) :: map
  def info(conn), do: GenServer.call(conn, :info)

  ## Server

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    dir = private_dir()

    spawn_opts = [
      subscriber: self(),
      env: Node.env(dir),
      cd: dir,
      grace: 0,
      timeout: :infinity,
      # Until it has a sandbox: room to boot, nothing more.
      limits: %{
        memory: Keyword.get_lazy(opts, :memory_ceiling, &Node.memory_ceiling/0) + 64 * 1024 * 1024
      },
      ceiling: %{
        file_size: Application.get_env(:sandbox, :node_file_size_ceiling, 1024 * 1024 * 1024)
      }
    ]

    spawn_opts =
      case Confinement.spec(Keyword.get(opts, :confinement, :none), dir) do
        nil -> spawn_opts
        spec -> [{:landlock, spec} | spawn_opts]
      end

    case CNode.spawn(Node.argv(opts), spawn_opts) do
      {:ok, %{id: id, os_pid: os_pid} = spawned} ->
        state = %{
          id: id,
          os_pid: os_pid,
          dir: dir,
          landlock: Map.get(spawned, :landlock),
          status: :booting,
          notify: opts[:notify],
          owner: nil,
          owner_ref: nil,
          sandbox: nil,
          buf: Wire.new(@max_frame),
          budget: Application.get_env(:sandbox, :node_max_new_atoms, 10_000),
          pending: %{},
          next_ref: 1,
          stderr: "",
          baseline: 0,
          limits: %{},
          sample: nil,
          stopper: nil,
          killed: nil,
          foreign: foreign_node(os_pid),
          started_at: System.monotonic_time(:millisecond)
        }

        {:ok, state}

      {:error, reason} ->
        File.rm_rf(dir)
        {:stop, {:spawn_failed, reason}}
    end
  end

  @impl true
  def handle_call({:checkout, owner, id, limits}, _from, %{status: :idle} = state) do
    os_limits = os_limits(limits, state.baseline)

    case CNode.set_limits(state.id, os_limits) do
      :ok ->
        state = %{
          state
          | status: :owned,
            owner: owner,
            owner_ref: Process.monitor(owner),
            sandbox: id,
            limits: limits
        }

        send(self(), :sample)
        if limits[:max_cpu_percentage], do: send(self(), :rearm)
        meta = %{os_pid: state.os_pid, baseline: state.baseline, landlock: state.landlock}
        {:reply, {:ok, meta}, state}

      {:error, reason} ->
        {:reply, {:error, {:limits_refused, reason}}, state}
    end
  end

  def handle_call({:checkout, _, _, _}, _from, state),
    do: {:reply, {:error, {:not_idle, state.status}}, state}

  def handle_call({:request, request, timeout}, from, state) do
    {ref, state} = next_ref(state)

    timer =
      if is_integer(timeout),
        do: Process.send_after(self(), {:request_timeout, ref}, timeout + @reply_grace)

    case write(state, {:req, ref, request}) do
      :ok ->
        {:noreply, %{state | pending: Map.put(state.pending, ref, {:call, from, timer})}}

      {:error, reason} ->
        cancel_timer(timer)
        {:reply, {:error, {:exit, {:vm_down, reason}}}, state}
    end
  end

  def handle_call(:info, _from, state),
    do:
      {:reply,
       %{os_pid: state.os_pid, status: state.status, dir: state.dir, landlock: state.landlock},
       state}

  @impl true
  def handle_cast({:send_request, request, tag}, state) do
    {ref, state} = next_ref(state)

    case write(state, {:req, ref, request}) do
      :ok ->
        {:noreply, %{state | pending: Map.put(state.pending, ref, {:owner, tag})}}

      {:error, reason} ->
        send(state.owner, {:node_reply, self(), tag, {:error, {:vm_down, reason}}, nil})
        {:noreply, state}
    end
  end

  def handle_cast({:audit_ack, n, result}, state) do
    _ = write(state, {:audit_ack, n, result})
    {:noreply, state}
  end

  def handle_cast({:stop, from}, state) do
    # The owner asked: no :node_down for it.
    kill(%{state | owner: nil, notify: nil, stopper: from}, :stopped)
  end

  @impl true
  def handle_info({:sandbox_cnode, id, {:stdout, data}}, %{id: id} = state) do
    case Wire.feed(state.buf, data) do
      {:ok, frames, buf} ->
        Enum.reduce_while(frames, {:noreply, %{state | buf: buf}}, fn frame, {:noreply, st} ->
          case handle_frame(frame, st) do
            {:ok, st} -> {:cont, {:noreply, st}}
            {:stop, st} -> {:halt, {:noreply, st}}
          end
        end)

      {:error, reason} ->
        kill(state, {:protocol, reason})
    end
  end

  def handle_info({:sandbox_cnode, id, {:stderr, data}}, %{id: id} = state) do
    tail = state.stderr <> data

    tail =
      if byte_size(tail) > @stderr_tail,
        do: binary_part(tail, byte_size(tail) - @stderr_tail, @stderr_tail),
        else: tail

    {:noreply, %{state | stderr: tail}}
  end

  def handle_info({:sandbox_cnode, id, {:exit, reason}}, %{id: id} = state) do
    down = state.killed || classify(reason, state.stderr)
    if state.sandbox, do: Node.delete_usage(state.sandbox)
    File.rm_rf(state.dir)

    # The owner first: a caller told that the VM is down and asking the
    # sandbox again finds its instance knowing it.
    case {state.owner, state.notify} do
      {owner, _} when is_pid(owner) -> send(owner, {:node_down, self(), down})
      {nil, notify} when is_pid(notify) -> send(notify, {:node_down, self(), down})
      _ -> :ok
    end

    fail_pending(state, down)
    {:stop, :normal, state}
  end

  def handle_info({:request_timeout, ref}, state) do
    case Map.pop(state.pending, ref) do
      {{:call, from, _timer}, pending} ->
        GenServer.reply(from, {:error, :timeout})
        _ = write(state, {:cancel, ref})
        {:noreply, %{state | pending: pending}}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _, _}, %{owner_ref: ref} = state),
    do: kill(%{state | owner: nil, notify: nil}, :owner_down)

  def handle_info(:sample, %{status: :owned} = state) do
    Process.send_after(self(), :sample, interval())
    {:noreply, sample(state)}
  end

  def handle_info(:resume, %{status: :owned, sample: %{stopped: true} = s} = state) do
    _ = CNode.kill(state.id, :sigcont)
    {:noreply, %{state | sample: %{s | stopped: false}}}
  end

  def handle_info(:rearm, %{status: :owned} = state) do
    pct = state.limits[:max_cpu_percentage]
    seconds = ceil(@rearm_ms / 1000 * pct / 100 * 2) + 2
    _ = CNode.set_limits(state.id, %{cpu_seconds: seconds})
    Process.send_after(self(), :rearm, @rearm_ms)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    # Whatever stops this process, its VM goes with it.
    if state.killed == nil, do: CNode.kill(state.id, :sigkill)
    File.rm_rf(state.dir)
    :ok
  catch
    _, _ -> :ok
  end

  ## Frames

  defp handle_frame(bin, state) do
    case Wire.decode(bin, state.budget, state.foreign) do
      {:ok, term, used} ->
        dispatch(term, %{state | budget: state.budget - used})

      {:error, reason} ->
        {:noreply, state} = kill(state, {:protocol, {:bad_frame, reason}})
        {:stop, state}
    end
  end

  defp dispatch({:ready, os_pid, _memory}, %{status: :booting} = state) when is_integer(os_pid) do
    baseline =
      case CNode.sample([state.os_pid], descendants: true) do
        {:ok, %{} = m} -> get_in(m, [state.os_pid, :total, :rss]) || 0
        _ -> 0
      end

    if state.notify, do: send(state.notify, {:conn_ready, self(), state.os_pid})
    {:ok, %{state | status: :idle, baseline: baseline}}
  end

  defp dispatch({:reply, ref, result, summary}, state) when is_integer(ref) do
    case Map.pop(state.pending, ref) do
      {{:call, from, timer}, pending} ->
        cancel_timer(timer)
        GenServer.reply(from, {:ok, result})
        {:ok, %{state | pending: pending}}

      {{:owner, tag}, pending} ->
        if state.owner,
          do: send(state.owner, {:node_reply, self(), tag, result, summary(summary)})

        {:ok, %{state | pending: pending}}

      {nil, _} ->
        {:ok, state}
    end
  end

  defp dispatch({:event, [:sandbox, c, e] = name, meas, meta, summary}, state)
       when is_atom(c) and is_atom(e) and is_map(meas) and is_map(meta) do
    if state.owner,
      do: send(state.owner, {:node_event, self(), name, meas, meta, summary(summary)})

    {:ok, state}
  end

  defp dispatch({:usage, summary}, state) do
    if state.owner, do: send(state.owner, {:node_summary, self(), summary(summary)})
    {:ok, state}
  end

  defp dispatch({:io, bin}, state) when is_binary(bin) do
    # The sandbox's output, as an in-VM sandbox's goes to the host's.
    _ = :io.put_chars(:standard_io, bin)
    {:ok, state}
  end

  defp dispatch({:audit, n, line}, state) when is_integer(n) and is_map(line) do
    # Under the sandbox's own id, and with its VM's confinement as the
    # C-node reported it, whatever the line says. (The VM's lines come with
    # string keys, which would win over the same keys as atoms when the
    # line is written: every key is made a string first.)
    host = %{
      "sandbox_id" => state.sandbox,
      "isolation" => "node",
      "confined" => state.landlock != nil
    }

    line = line |> Map.new(fn {k, v} -> {audit_key(k), v} end) |> Map.merge(host)
    conn = self()

    spawn(fn ->
      result =
        try do
          CNode.audit(line)
        catch
          :exit, reason -> {:error, {:cnode, reason}}
        end

      GenServer.cast(conn, {:audit_ack, n, result})
    end)

    {:ok, state}
  end

  defp dispatch(_other, state), do: {:ok, state}

  defp audit_key(k) when is_atom(k), do: Atom.to_string(k)
  defp audit_key(k), do: k

  # A summary from the VM, checked (it is hostile): a map, or nil.
  defp summary(%{} = s), do: s
  defp summary(_), do: nil

  defp write(state, term) do
    bin = :erlang.term_to_binary(term)

    case CNode.write_stdin(state.id, [<<byte_size(bin)::32>>, bin]) do
      :ok -> :ok
      {:error, reason} -> {:error, reason}
    end
  catch
    :exit, reason -> {:error, {:cnode, reason}}
  end

  defp next_ref(state), do: {state.next_ref, %{state | next_ref: state.next_ref + 1}}

  defp fail_pending(state, down) do
    for {_ref, entry} <- state.pending do
      case entry do
        {:call, from, timer} ->
          cancel_timer(timer)
          GenServer.reply(from, {:error, {:exit, {:vm_down, down}}})

        {:owner, tag} ->
          if state.owner,
            do: send(state.owner, {:node_reply, self(), tag, {:error, {:vm_down, down}}, nil})
      end
    end
  end

  defp kill(state, why) do
    _ = CNode.kill(state.id, :sigkill)
    # A stopped VM dies of SIGKILL all the same.
    {:noreply, %{state | killed: state.killed || killed_reason(why)}}
  end

  defp killed_reason(:stopped), do: :stopped
  defp killed_reason(:owner_down), do: :owner_down
  defp killed_reason({:protocol, _} = p), do: {:vm_exited, p}

  defp cancel_timer(nil), do: :ok
  defp cancel_timer(ref), do: Process.cancel_timer(ref)

  # How the VM ended, as the sandbox's error.
  defp classify({:limit, :memory}, _), do: {:limit_exceeded, :max_memory}
  defp classify({:limit, :processes}, _), do: {:limit_exceeded, :max_processes}
  defp classify({:limit, :cpu}, _), do: {:limit_exceeded, :max_cpu_percentage}
  defp classify({:limit, :file_size}, _), do: {:limit_exceeded, :max_file_size}
  # SIGXCPU, SIGXFSZ: the kernel's rlimits.
  defp classify({:signal, 24}, _), do: {:limit_exceeded, :max_cpu_percentage}
  defp classify({:signal, 25}, _), do: {:limit_exceeded, :max_file_size}

  defp classify(reason, stderr) do
    # An allocation beyond the super carrier (+MMscs) ends the VM with
    # "<allocator>: Cannot allocate N bytes of memory".
    if String.contains?(stderr, "Cannot allocate"),
      do: {:limit_exceeded, :max_memory},
      else: {:vm_exited, reason}
  end

  ## Limits, sampling and the throttle

  # The OS limits of a sandbox's VM: its resident size beyond the idle VM's
  # (the C-node kills the tree above it), its OS processes, its file size.
  defp os_limits(limits, baseline) do
    %{
      memory: baseline + Map.get(limits, :max_memory, Node.memory_ceiling()),
      processes: Application.get_env(:sandbox, :node_max_os_processes, 16),
      file_size: max(Map.get(limits, :max_file_size, @min_file_size), @min_file_size)
    }
  end

  defp interval, do: Application.get_env(:sandbox, :node_sample_interval, 100)

  defp sample(state) do
    now = System.monotonic_time(:millisecond)

    case CNode.sample([state.os_pid], descendants: true) do
      {:ok, %{} = m} when is_map_key(m, state.os_pid) ->
        total = m[state.os_pid].total
        cpu_ms = (total.cpu_user + total.cpu_system) * 1000
        s = state.sample || %{history: [], credit: 0.0, stopped: false, last: nil}
        history = Enum.take_while([{now, cpu_ms} | s.history], fn {t, _} -> now - t <= 1_000 end)
        {t0, c0} = List.last(history)
        cpu = if now > t0, do: Float.round((cpu_ms - c0) / (now - t0) * 100, 1), else: 0.0

        Node.put_usage(state.sandbox, %{
          memory: total.rss,
          cpu_usage: max(cpu, 0.0),
          os_processes: total.processes
        })

        s = %{s | history: history}
        %{state | sample: throttle(state, s, now, cpu_ms)}

      _ ->
        state
    end
  catch
    :exit, _ -> state
  end

  # The duty cycle: the VM earns `pct` % of the wall time in CPU time
  # (at most one interval's worth ahead) and is stopped while in debt.
  defp throttle(state, s, now, cpu_ms) do
    pct = state.limits[:max_cpu_percentage]

    case s.last do
      {t, c} when is_number(pct) and pct > 0 ->
        earned = (now - t) * pct / 100
        credit = min(s.credit + earned - (cpu_ms - c), interval() * pct / 100)
        s = %{s | credit: credit, last: {now, cpu_ms}}

        if credit < 0 and not s.stopped do
          stop_ms = min(round(-credit * 100 / pct), @max_stop_ms)
          _ = CNode.kill(state.id, :sigstop)
          Process.send_after(self(), :resume, max(stop_ms, 1))
          %{s | stopped: true}
        else
          s
        end

      _ ->
        %{s | last: {now, cpu_ms}}
    end
  end

  defp foreign_node(os_pid), do: :"sandbox_vm_#{os_pid}@sandbox.invalid"

  # The VM's own directory (its HOME and working directory): created
  # exclusively, 0700, under an unguessable name.
  defp private_dir do
    rand = File.open!("/dev/urandom", [:read, :binary], &IO.binread(&1, 8))
    dir = Path.join(System.tmp_dir!(), "sandbox-node-" <> Base.encode16(rand, case: :lower))

    case File.mkdir(dir) do
      :ok ->
        File.chmod!(dir, 0o700)
        dir

      {:error, :eexist} ->
        private_dir()
    end
  end
end
