defmodule Sandbox.ResourceMonitor do
  @moduledoc """
  Measures every sandbox and holds it to its `resource_limits`.

  One process (this module, started by the application) serves all
  sandboxes. Each sandbox's instance registers its group leader with
  `attach/3` when it starts its processes and leaves with `detach/1` before
  it stops them.

  ## Sampling

  Every `interval` ms (`config :sandbox, monitor_interval: ms`, default
  100) the monitor takes a sample of every sandbox (`Sandbox.ResourceMonitor.Sample`):

    * **membership** is the group leader, as everywhere in the library: one
      sweep of the process table, one `process_info(pid, :group_leader)`
      per process, grouped by the sandboxes' group leaders. The sweep runs
      whenever the VM's process count changed since the previous one, and
      at least every `monitor_full_sweep_every` samples (default 10);
      between sweeps, only the known members are sampled (processes that
      died drop out). A process can only join a sandbox by being spawned
      (which changes the count) or by a `group_leader/2` call, so the
      only joins a sample can miss are those masked by an exit in the same
      interval, or by a group leader change; the next full sweep finds
      them. Cost: ~0.1–0.5 µs per process of the VM per sweep;
    * **what changed**: one `process_info(pid, :reductions)` per member
      (~0.1 µs). A process that did not run since the previous sample
      (receiving a message makes it run) did not change its memory either,
      so a sandbox whose members all kept their reductions keeps its
      figures without being measured; only the others are (below). A
      sandbox unchanged for 10 samples is checked every other sample (so
      its first change shows within two intervals; new processes and the
      watch below are seen at once). Every
      `monitor_refresh_every` samples (default 100) every sandbox is
      measured again (a suspended process can receive messages without
      running);
    * `current_memory`: the members' memory + the off-heap binaries they
      reference (each counted once per sandbox) + the ETS tables they own;
    * `current_processes`: the number of members;
    * `cpu_usage`: percent of one scheduler over the time since the
      previous sample (normally one interval; 100.0 = one scheduler busy
      the whole time). Measured as the sandbox's share of the reductions
      the whole VM executed in that time, times the busy time of the normal
      schedulers over it (`:erlang.statistics(:scheduler_wall_time)`,
      enabled while the monitor runs). Reductions approximate work: it is
      exact when the sandbox's code costs what the rest of the VM's costs
      per reduction, and skewed by BIFs and NIFs that do more or less work
      per reduction than Erlang code; the reductions of a member that died
      within the interval are lost (short-lived processes are under-
      counted); dirty schedulers are not counted. Expect ±10 points for a
      busy sandbox on a busy VM, exact 0.0 for one that did not run;
    * `uptime`: ms since the sandbox's processes were (re)started.

  `usage/1` returns the latest sample (`info.resource_usage`); the first
  one of a sandbox's run is taken on demand, so a sandbox has real figures
  from the moment `Sandbox.create_sandbox/3` returns.

  ## Limits

    * `max_processes` and `max_memory` **stop** the sandbox: the monitor
      kills all its processes (in rounds, sweeping until none is left, so
      that processes spawned meanwhile go too), and its instance sets status
      `:error`, `error: {:limit_exceeded, limit}` and emits
      `[:sandbox, :limit, :exceeded]` with `%{usage: n, limit: n}`. They are
      checked at every sample, so a breach is stopped within one interval
      plus a sweep and the kill. The monitor runs at high priority, so
      that processes filling the run queues do not delay it. Between
      samples:

        * the process tree of a `Sandbox.call/5` or `Sandbox.run/3` is
          followed by its caller while the call runs
          (`Sandbox.ResourceMonitor.Call`): when the tree alone grows past
          the room the sandbox had at its latest sample, the monitor
          samples at once, so a process bomb inside a call is stopped
          within a sweep of going over;
        * optionally (`monitor_watch_interval: ms`, off by default) the
          monitor polls the VM's process count, and every
          `monitor_memory_every` polls its total memory, and samples at
          once when the count grew by more than
          `monitor_process_threshold` (500) or the memory by more than
          `monitor_memory_threshold` (32 MiB) since the last sample. It is
          off because every wakeup costs the VM CPU time (idle schedulers
          spin before they sleep again): ~4 % of a core at 5 ms, ~1.4 % at
          20 ms, ~0.4 % at 100 ms (the sampling interval itself).

      A bomb started outside a call (in a sandbox server, say), or still
      spawning after the call that started it returned, is found by the
      next sample: a loop spawning 100,000 processes a second gets up to
      ~10,000 before it is stopped at the default interval. Exact
      admission at spawn time is the spawn guards' (`admit_spawn/1`).

      What they do not cover: processes and memory outside the sandbox's
      group leader (a process that changes its group leader leaves the
      sandbox; host servers working on its behalf; ETS tables it gave
      away); memory allocated between two checks (a single allocation is
      never refused: a 1 GB binary exists before anyone can see it); and
      memory held by the VM for the sandbox but not by its processes (its
      loaded code, atoms). The spawn guards of the security profiles will
      add exact admission (see `admit_spawn/1`) and `max_heap_size` on
      every process a sandbox spawns (see `spawn_options/1`).
    * `max_cpu_percentage` **throttles**: when a sample measures the
      sandbox over its share, a `Sandbox.ResourceMonitor.Throttle` suspends
      and resumes its processes on a duty cycle of one interval: the
      sandbox runs for a fraction `f` of each interval, `f` being set to
      `limit / measured` when it starts, then at every sample to
      `f × √(limit / measured)` (damped: one sample's figure is noisy; at
      least 0.02, at most double the previous one), and the throttle stops
      when `f` reaches 1. The
      sandbox keeps answering (its processes run every interval), only
      slower.
    * `max_execution_time` caps the timeout of every `Sandbox.call/5` and
      `Sandbox.run/3` (enforced there).
    * `max_file_size` is validated and kept; the file guards of the
      security profiles enforce it on each write the profile allows.

  ## Alerts

  `[:sandbox, :limit, :warning]` (measurements `%{usage: n, limit: n}`,
  metadata `%{sandbox_id: id, limit: name}`) is emitted once each time a
  sample finds a sandbox at 80 % or more of `max_memory`, `max_processes`
  or `max_cpu_percentage` after one that found it below.
  """

  use GenServer

  alias Sandbox.ResourceMonitor.{Sample, Throttle}
  alias Sandbox.Telemetry

  require Logger

  @table __MODULE__
  @zero %{current_memory: 0, current_processes: 0, cpu_usage: 0.0, uptime: 0}
  @limits [:max_processes, :max_memory]
  @warned [:max_processes, :max_memory, :max_cpu_percentage]

  @typedoc "A sample: `current_memory` (bytes), `current_processes`, `cpu_usage` (%), `uptime` (ms)."
  @type usage :: %{
          current_memory: non_neg_integer,
          current_processes: non_neg_integer,
          cpu_usage: float,
          uptime: non_neg_integer
        }

  ## Client

  @doc """
  Creates the monitor's table, owned by the caller (the application's
  process, see `Sandbox.Application`), so that registrations outlive a
  restart of the monitor.
  """
  @spec create_tables() :: :ok
  def create_tables do
    :ets.new(@table, [:set, :public, :named_table, read_concurrency: true])
    :ok
  end

  @doc """
  Starts the monitor.

  ## Options

  Each defaults to the `:sandbox` application environment key of the same
  name, then to the value given:

    * `:monitor_interval` — ms between samples (100)
    * `:monitor_watch_interval` — ms between polls of the VM's process
      count and memory between samples (`nil`: off)
    * `:monitor_full_sweep_every` — samples between two unconditional
      sweeps (10)
    * `:monitor_refresh_every` — samples between two measurements of every
      sandbox, changed or not (100)
    * `:monitor_process_threshold` — process count growth that triggers a
      sample (500)
    * `:monitor_memory_threshold` — memory growth (bytes) that triggers a
      sample (32 MiB)
    * `:monitor_memory_every` — watches between two memory checks (10)
  """
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc """
  Registers the sandbox `id` for monitoring: `gl` is its group leader,
  `limits` its resource limits; the caller is its instance. A previous
  registration of `id` is replaced (a restart).
  """
  @spec attach(String.t(), pid, map) :: :ok
  def attach(id, gl, limits) when is_pid(gl) and is_map(limits),
    do: GenServer.call(__MODULE__, {:attach, id, gl, limits, self()}, :infinity)

  @doc """
  Stops monitoring sandbox `id` (before its processes are stopped): its
  throttle, if any, is stopped first, so none of its processes stays
  suspended, and its figures go.
  """
  @spec detach(String.t()) :: :ok
  def detach(id) do
    GenServer.call(__MODULE__, {:detach, id}, :infinity)
  catch
    # The monitor is gone (the application stops): nothing to detach from.
    :exit, _ -> :ok
  end

  @doc """
  The latest sample of sandbox `id` (zeros when it is not running). The
  first call after the sandbox's processes start takes a sample at once.
  """
  @spec usage(String.t()) :: usage
  def usage(id) do
    case :ets.lookup(@table, id) do
      [{^id, _reg, nil}] -> sample(id)
      [{^id, reg, usage}] -> with_uptime(usage, reg)
      [] -> @zero
    end
  end

  @doc """
  Takes a sample now (a sweep of every process) and returns sandbox `id`'s
  usage, as `usage/1`. An instance calls it once its processes have
  started, so that a sample taken while they were starting is not the one
  reported; zeros when the monitor does not answer within 10 s.
  """
  @spec sample(String.t()) :: usage
  def sample(id) do
    sampled =
      try do
        GenServer.call(__MODULE__, {:sample, id}, 10_000)
      catch
        :exit, _ -> nil
      end

    case :ets.lookup(@table, id) do
      [{^id, reg, _}] -> with_uptime(sampled || Map.delete(@zero, :uptime), reg)
      [] -> @zero
    end
  end

  defp with_uptime(usage, reg),
    do: Map.put(usage, :uptime, max(System.monotonic_time(:millisecond) - reg.started_at, 0))

  @doc """
  The limit sandbox `id` broke in its current run, as `{limit, usage}`, or
  `nil`. Set before its processes are killed, so that whoever sees them die
  can tell why.
  """
  @spec breach(String.t()) :: {atom, number} | nil
  def breach(id) do
    case :ets.lookup(@table, id) do
      [{^id, %{breach: breach}, _}] -> breach
      [] -> nil
    end
  end

  @doc """
  `{:limit_exceeded, limit}` when sandbox `id` broke a limit in its current
  run, else `reason` (for errors of a start that the monitor cut short).
  """
  @spec limit_reason(String.t(), term) :: term
  def limit_reason(id, reason) do
    case breach(id) do
      {limit, _usage} -> {:limit_exceeded, limit}
      nil -> reason
    end
  end

  @doc """
  Emits `[:sandbox, :limit, :exceeded]` for sandbox `id` (its instance
  calls this once its status is `:error`).
  """
  @spec emit_exceeded(String.t(), atom, number, map) :: :ok
  def emit_exceeded(id, limit, usage, limits) do
    Telemetry.emit(:limit, :exceeded, %{usage: usage, limit: Map.get(limits, limit)}, %{
      sandbox_id: id,
      limit: limit
    })
  end

  @doc """
  Admission of one more process in sandbox `id`, in O(1), for the spawn
  guards of the security profiles (which call it before every spawn they
  make on the sandbox's behalf and refuse the spawn on an error).

  Counts the members found by the latest sample plus the spawns admitted
  since the latest sweep, in O(1). That count is conservative within one
  interval (exits since the sweep are not subtracted): when it reaches
  `max_processes`, the sandbox's members are counted exactly before a
  refusal (a sandbox that starts many short-lived processes one after
  another is not refused for the ones already gone). `:ok`, or
  `{:error, {:limit_exceeded, :max_processes}}` (nothing is admitted), or
  `{:error, :not_found}` when the sandbox is not running.
  """
  @spec admit_spawn(String.t()) ::
          :ok | {:error, {:limit_exceeded, :max_processes} | :not_found}
  def admit_spawn(id) do
    case :ets.lookup(@table, id) do
      [{^id, %{breach: nil, admitted: counter, limits: limits} = reg, usage}] ->
        current = if usage, do: usage.current_processes, else: 0
        admitted = :atomics.add_get(counter, 1, 1)

        max = Map.get(limits, :max_processes, :infinity)

        if current + admitted <= max do
          :ok
        else
          exact = length(Sandbox.GroupLeader.members(reg.gl))

          if exact + 1 <= max do
            # the estimate restarts from the exact count (this spawn included)
            :atomics.put(counter, 1, exact + 1 - current)
            :ok
          else
            :atomics.sub(counter, 1, 1)
            # the stop reports the count this spawn would have reached
            if pid = Process.whereis(__MODULE__), do: send(pid, {:refused, id, exact + 1})
            {:error, {:limit_exceeded, :max_processes}}
          end
        end

      [{^id, _reg, _usage}] ->
        {:error, {:limit_exceeded, :max_processes}}

      [] ->
        {:error, :not_found}
    end
  end

  @doc """
  Sandbox `id` was refused a process by `admit_spawn/1` (a spawn guard):
  it is stopped as a sample over `max_processes` stops it, with the count
  it tried to reach as the usage. Asynchronous.
  """
  @spec refused(String.t()) :: :ok
  def refused(id) do
    if pid = Process.whereis(__MODULE__), do: send(pid, {:refused, id})
    :ok
  end

  @doc """
  Spawn options for a process of sandbox `id`: `max_heap_size` at its
  `max_memory` (in words), killing the process when its heap alone goes
  over. For the spawn guards of the security profiles; `[]` when the
  sandbox is not running.
  """
  @spec spawn_options(String.t()) :: keyword
  def spawn_options(id) do
    case :ets.lookup(@table, id) do
      [{^id, %{limits: %{max_memory: bytes}}, _}] ->
        words = div(bytes, :erlang.system_info(:wordsize))
        [max_heap_size: %{size: words, kill: true, error_logger: false}]

      _ ->
        []
    end
  end

  @doc """
  Asks for a sample now because sandbox `id` may be over `max_processes`
  (see `Sandbox.ResourceMonitor.Call`, which calls this when a call's
  process tree alone grows past the sandbox's room). Asynchronous; at
  most one such sample per 10 ms.
  """
  @spec suspect(String.t()) :: :ok
  def suspect(id) do
    if pid = Process.whereis(__MODULE__), do: send(pid, {:suspect, id})
    :ok
  end

  @doc """
  The number of processes sandbox `id` may still start according to its
  latest sample (`max_processes` minus `current_processes`), or `nil` when
  it is not monitored or has no `max_processes`.
  """
  @spec room(String.t()) :: non_neg_integer | nil
  def room(id) do
    case :ets.lookup(@table, id) do
      [{^id, %{limits: %{max_processes: max}}, usage}] when is_integer(max) ->
        max(max - if(usage, do: usage.current_processes, else: 0), 0)

      _ ->
        nil
    end
  end

  @doc """
  Takes a sample of every sandbox now, with a full sweep; returns
  `%{duration_us: us, processes: swept}`.
  """
  @spec sweep() :: %{duration_us: non_neg_integer, processes: non_neg_integer}
  def sweep, do: GenServer.call(__MODULE__, :sweep, :infinity)

  @doc """
  Returns after the next regular sample (one that ends a full interval),
  for tests and tools that need a sample newer than what they did.
  """
  @spec await_tick() :: :ok
  def await_tick, do: GenServer.call(__MODULE__, :await_tick, :infinity)

  @doc """
  The monitor's own figures: `samples`, `sweeps`, `triggered` (samples
  taken between two regular ones, for a call's process tree or the
  optional watch), `busy_us` (time spent in the monitor's work,
  from its start), `last_sample_us`, `last_sweep_us`,
  `last_sweep_processes`, `sandboxes`.
  """
  @spec stats() :: map
  def stats, do: GenServer.call(__MODULE__, :stats, :infinity)

  ## Server

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    Process.flag(:priority, :high)
    :erlang.system_flag(:scheduler_wall_time, true)
    env = Application.get_all_env(:sandbox)
    get = fn key, default -> Keyword.get(opts, key, Keyword.get(env, key, default)) end

    state = %{
      interval: get.(:monitor_interval, 100),
      watch_ms: get.(:monitor_watch_interval, nil),
      full_every: get.(:monitor_full_sweep_every, 10),
      refresh_every: get.(:monitor_refresh_every, 100),
      proc_threshold: get.(:monitor_process_threshold, 500),
      mem_threshold: get.(:monitor_memory_threshold, 32 * 1024 * 1024),
      mem_every: get.(:monitor_memory_every, 10),
      sandboxes: %{},
      monitors: %{},
      gls: %{},
      timers: nil,
      watches: 0,
      since_full: 0,
      since_refresh: 0,
      base_count: :erlang.system_info(:process_count),
      base_memory: :erlang.memory(:total),
      cpu_base: cpu_base(false),
      owners: %{},
      pending: [],
      busy: 0,
      checks: nil,
      changed?: false,
      tick_waiters: [],
      last_triggered: System.monotonic_time(:millisecond),
      stats: %{
        samples: 0,
        sweeps: 0,
        triggered: 0,
        last_sample_us: 0,
        last_sweep_us: 0,
        last_sweep_processes: 0
      }
    }

    # Registrations from before a restart of the monitor (the table is the
    # application's): watch their instances again.
    state =
      Enum.reduce(:ets.tab2list(@table), state, fn {id, reg, _usage}, state ->
        if Process.alive?(reg.instance) do
          :ets.insert(@table, {id, %{reg | throttle: nil}, nil})
          add_sandbox(state, id, reg)
        else
          :ets.delete(@table, id)
          state
        end
      end)

    {:ok, schedule(state)}
  end

  @impl true
  def handle_call({:attach, id, gl, limits, instance}, _from, state) do
    state = remove_sandbox(state, id)

    reg = %{
      run: make_ref(),
      gl: gl,
      instance: instance,
      limits: limits,
      started_at: System.monotonic_time(:millisecond),
      breach: nil,
      throttle: nil,
      admitted: :atomics.new(1, signed: true)
    }

    :ets.insert(@table, {id, reg, nil})
    {:reply, :ok, state |> add_sandbox(id, reg) |> schedule()}
  end

  def handle_call({:detach, id}, _from, state) do
    state = remove_sandbox(state, id)
    :ets.delete(@table, id)
    {:reply, :ok, state}
  end

  def handle_call({:sample, id}, from, state) do
    # Requests that arrive while a sample runs are answered by the next one.
    if state.pending == [], do: send(self(), :sample_pending)
    {:noreply, %{state | pending: [{from, id} | state.pending]}}
  end

  def handle_call(:sweep, _from, state) do
    {state, info} = timed(fn -> sample(state, :forced) end)
    {:reply, info, state}
  end

  def handle_call(:await_tick, from, state),
    do: {:noreply, %{state | tick_waiters: [from | state.tick_waiters]}}

  def handle_call(:stats, _from, state) do
    busy_us = System.convert_time_unit(state.busy, :native, :microsecond)

    {:reply, Map.merge(state.stats, %{sandboxes: map_size(state.sandboxes), busy_us: busy_us}),
     state}
  end

  @impl true
  def handle_info({:tick, ref}, %{timers: {ref, _}} = state) do
    {state, _} = timed(fn -> sample(state, :regular) end)
    for from <- state.tick_waiters, do: GenServer.reply(from, :ok)
    {:noreply, schedule(%{state | tick_waiters: []}, :tick)}
  end

  def handle_info({:watch, ref}, %{timers: {_, ref}} = state) do
    {state, _} = timed(fn -> {state |> watch() |> schedule(:watch), nil} end)
    {:noreply, state}
  end

  def handle_info({:suspect, id}, state) do
    # A call saw its process tree grow past what the sandbox may have.
    now = System.monotonic_time(:millisecond)

    if Map.has_key?(state.sandboxes, id) and now - state.last_triggered >= 10 do
      {state, _} = timed(fn -> sample(state, :triggered) end)
      stats = %{state.stats | triggered: state.stats.triggered + 1}
      {:noreply, %{state | last_triggered: now, stats: stats}}
    else
      {:noreply, state}
    end
  end

  def handle_info(:sample_pending, state) do
    {state, _} = timed(fn -> sample(state, :full) end)

    for {from, id} <- state.pending do
      GenServer.reply(from, get_in(state.sandboxes, [id, :usage]))
    end

    {:noreply, %{state | pending: []}}
  end

  def handle_info({:DOWN, ref, :process, _, _}, state) do
    case Map.pop(state.monitors, ref) do
      {nil, _} ->
        {:noreply, state}

      {id, monitors} ->
        state = remove_sandbox(%{state | monitors: monitors}, id)
        :ets.delete(@table, id)
        {:noreply, state}
    end
  end

  def handle_info({:EXIT, pid, reason}, state) do
    # A throttle that died (its processes are resumed by the VM).
    case Enum.find(state.sandboxes, fn {_, sb} -> sb.throttle == pid end) do
      {id, sb} ->
        if reason != :normal,
          do: Logger.warning("sandbox #{id}: throttle exited: #{inspect(reason)}")

        {:noreply, put_sandbox(state, id, %{sb | throttle: nil, fraction: 1.0})}

      nil ->
        {:noreply, state}
    end
  end

  def handle_info({:refused, id}, state) do
    case state.sandboxes do
      %{^id => sb} ->
        current = if sb.usage, do: sb.usage.current_processes, else: 0
        handle_info({:refused, id, current + :atomics.get(sb.admitted, 1) + 1}, state)

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:refused, id, tried}, state) do
    case state.sandboxes do
      %{^id => %{breach: nil} = sb} ->
        {:noreply, stop_sandbox(state, id, sb, :max_processes, tried)}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  ## Registration

  defp add_sandbox(state, id, reg) do
    ref = Process.monitor(reg.instance)

    sb = %{
      run: reg.run,
      gl: reg.gl,
      instance: reg.instance,
      monitor: ref,
      limits: reg.limits,
      admitted: reg.admitted,
      figures: Sample.empty(),
      members: [],
      usage: nil,
      sampled?: false,
      slot: :erlang.phash2(id, 2),
      changed_at: 0,
      ets?: false,
      reds_acc: 0,
      warned: %{},
      fraction: 1.0,
      throttle: nil,
      breach: nil
    }

    %{
      state
      | sandboxes: Map.put(state.sandboxes, id, sb),
        monitors: Map.put(state.monitors, ref, id),
        gls: Map.put(state.gls, reg.gl, id),
        checks: nil
    }
  end

  defp remove_sandbox(state, id) do
    case Map.pop(state.sandboxes, id) do
      {nil, _} ->
        state

      {sb, sandboxes} ->
        Process.demonitor(sb.monitor, [:flush])
        if sb.throttle, do: Throttle.stop(sb.throttle)

        %{
          state
          | sandboxes: sandboxes,
            monitors: Map.delete(state.monitors, sb.monitor),
            gls: Map.delete(state.gls, sb.gl),
            checks: nil
        }
    end
  end

  # A sandbox's figures changed: what samples without a sweep check too.
  defp put_sandbox(state, id, sb),
    do: %{state | sandboxes: Map.put(state.sandboxes, id, sb), changed?: true, checks: nil}

  ## Timers

  defp schedule(state) do
    case state do
      %{timers: nil} when map_size(state.sandboxes) > 0 ->
        tick = make_ref()
        watch = make_ref()
        Process.send_after(self(), {:tick, tick}, state.interval)
        if state.watch_ms, do: Process.send_after(self(), {:watch, watch}, state.watch_ms)
        %{state | timers: {tick, watch}}

      _ ->
        state
    end
  end

  # With no sandbox left, the timers stop (a new attach starts them).
  defp schedule(state, _which) when map_size(state.sandboxes) == 0,
    do: %{state | timers: nil}

  defp schedule(%{timers: {_tick, watch}} = state, :tick) do
    ref = make_ref()
    Process.send_after(self(), {:tick, ref}, state.interval)
    %{state | timers: {ref, watch}}
  end

  defp schedule(%{timers: {tick, _watch}} = state, :watch) do
    ref = make_ref()
    Process.send_after(self(), {:watch, ref}, state.watch_ms)
    %{state | timers: {tick, ref}}
  end

  # Time spent in the monitor's work, kept in native units.
  defp timed(fun) do
    t0 = System.monotonic_time()
    {state, result} = fun.()
    busy = state.busy + System.monotonic_time() - t0
    {%{state | busy: busy}, result}
  end

  ## Watch

  # Between samples: a jump of the VM's process count or memory since the
  # last sample means a sample now (at most one per 10 ms).
  defp watch(state) do
    watches = state.watches + 1
    state = %{state | watches: watches}
    count = :erlang.system_info(:process_count)

    trigger? =
      count - state.base_count > state.proc_threshold or
        (rem(watches, state.mem_every) == 0 and
           :erlang.memory(:total) - state.base_memory > state.mem_threshold)

    now = System.monotonic_time(:millisecond)

    if trigger? and now - state.last_triggered >= 10 do
      {state, _} = sample(state, :triggered)
      stats = %{state.stats | triggered: state.stats.triggered + 1}
      %{state | last_triggered: now, stats: stats}
    else
      state
    end
  end

  ## Sampling

  # One sample of every sandbox. `kind`: :regular (timer), :triggered
  # (watch), :full (first samples asked for), :forced (sweep/0: every
  # sandbox measured). Returns {state, %{duration_us, processes}}.
  defp sample(state, kind) do
    t0 = System.monotonic_time()
    count = :erlang.system_info(:process_count)
    since_full = state.since_full + 1
    since_refresh = state.since_refresh + 1
    refresh? = kind == :forced or since_refresh >= state.refresh_every

    full? =
      kind != :regular or refresh? or since_full >= state.full_every or
        count != state.base_count

    # Sandboxes idle for 10 samples are checked every other regular one.
    skip = if kind == :regular, do: {state.stats.samples, rem(state.stats.samples, 2)}

    # Between sweeps, only the known members are looked at; if any of them
    # ran (it may have spawned) or died, that sample sweeps too.
    checks = if full?, do: nil, else: state.checks || checks(state)
    full? = full? or moved?(checks, skip)

    # Spawns admitted from here on count in the counter or in the sweep.
    if full?, do: for({_, sb} <- state.sandboxes, do: :atomics.put(sb.admitted, 1, 0))

    {groups, swept} = if full?, do: Sample.sweep(state.gls), else: {nil, 0}

    due = if full?, do: due(state.sandboxes, groups, refresh?, skip), else: elem(checks, 3)

    # CPU is computed over at least half an interval: a sample taken
    # sooner (forced, triggered) adds its reductions to the next one's. The
    # schedulers' busy time is read only when a sandbox is measured (the
    # reading wakes every scheduler); the first sample after samples that
    # measured nothing only starts a window (its reductions are dropped).
    now = cpu_base(full? or Enum.any?(due, &cpu_due?(state.sandboxes, &1)))
    base = state.cpu_base
    window = System.convert_time_unit(now.at - base.at, :native, :millisecond)
    restart? = now.sched == nil or base.sched == nil
    cpu? = not restart? and window * 2 >= state.interval

    {by_owner, owners} =
      if due == [], do: {%{}, state.owners}, else: Sample.ets_owners(state.owners, refresh?)

    ctx = %{
      cpu?: cpu?,
      restart?: restart?,
      busy: if(cpu?, do: Sample.busy(base.sched, now.sched), else: 0.0),
      vm_reds: max(now.reds - base.reds, 1),
      by_owner: by_owner,
      refresh?: refresh?
    }

    state =
      Enum.reduce(due, state, fn {id, members}, state ->
        sample_sandbox(state, id, Map.fetch!(state.sandboxes, id), members, ctx)
      end)

    us = System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond)

    stats = %{
      state.stats
      | samples: state.stats.samples + 1,
        sweeps: state.stats.sweeps + if(full?, do: 1, else: 0),
        last_sweep_us: if(full?, do: us, else: state.stats.last_sweep_us),
        last_sample_us: us,
        last_sweep_processes: if(full?, do: swept, else: state.stats.last_sweep_processes)
    }

    state = %{
      state
      | since_full: if(full?, do: 0, else: since_full),
        since_refresh: if(refresh?, do: 0, else: since_refresh),
        base_count: :erlang.system_info(:process_count),
        base_memory:
          if(state.watch_ms == nil or (kind == :regular and not refresh?),
            do: state.base_memory,
            else: :erlang.memory(:total)
          ),
        cpu_base: if(cpu? or restart?, do: now, else: base),
        owners: owners,
        checks: if(full? or state.changed?, do: nil, else: checks),
        changed?: false,
        stats: stats
    }

    {state, %{duration_us: us, processes: swept}}
  end

  # The sandboxes a sample must measure, with their members: those whose
  # members changed (by the sweep, or one died), or one of whose members
  # ran (its reductions changed: a process that did not run did not change
  # its memory either), that own ETS tables (others may write to them),
  # that used CPU, are throttled or were never sampled; all on a refresh.
  # `skip`: `{sample_number, slot}` on a regular sample, where sandboxes
  # unchanged for 10 samples are checked only when their slot matches.
  defp due(sandboxes, groups, all?, skip) do
    :maps.fold(
      fn id, sb, acc ->
        # The instance has the group leader while it starts the roots.
        members =
          if groups, do: List.delete(Map.get(groups, id, []), sb.instance), else: sb.members

        cond do
          sb.breach != nil -> acc
          all? or busy?(sb) or members != sb.members -> [{id, members} | acc]
          resting?(sb, skip) -> acc
          Sample.unchanged?(sb.figures.pids, sb.figures.reds) -> acc
          true -> [{id, members} | acc]
        end
      end,
      [],
      sandboxes
    )
  end

  # What a sample without a sweep looks at, kept until a sandbox changes
  # (or the next sweep): `{always, slot0, slot1, flagged, new?}`, the members and
  # their reductions of the sandboxes to check at every sample, of those
  # resting (unchanged for 10 samples: checked every other sample, by
  # slot), and the sandboxes to measure anyway (see busy?/1).
  defp checks(state) do
    n = state.stats.samples

    Enum.reduce(state.sandboxes, {[], [], [], [], false}, fn {id, sb}, acc ->
      {always, s0, s1, flagged, new?} = acc
      check = {sb.figures.pids, sb.figures.reds}

      cond do
        sb.breach != nil -> acc
        not sb.sampled? -> {always, s0, s1, [{id, sb.members} | flagged], true}
        busy?(sb) -> {always, s0, s1, [{id, sb.members} | flagged], new?}
        n - sb.changed_at < 10 -> {[check | always], s0, s1, flagged, new?}
        sb.slot == 0 -> {always, [check | s0], s1, flagged, new?}
        true -> {always, s0, [check | s1], flagged, new?}
      end
    end)
  end

  # Whether a member of a checked sandbox ran or died since its last
  # sample, or a sandbox was never sampled (flagged).
  defp moved?(nil, _skip), do: false

  defp moved?({always, s0, s1, _flagged, new?}, skip) do
    resting =
      case skip do
        {_n, 0} -> s0
        {_n, 1} -> s1
        nil -> s0 ++ s1
      end

    new? or any_moved?(always) or any_moved?(resting)
  end

  defp any_moved?([{pids, reds} | rest]),
    do: not Sample.unchanged?(pids, reds) or any_moved?(rest)

  defp any_moved?([]), do: false

  defp resting?(%{slot: slot, changed_at: at}, {n, current}), do: slot != current and n - at >= 10
  defp resting?(_sb, nil), do: false

  # A sandbox measured without a sweep needs the CPU figures when it used
  # CPU at its last sample or is throttled (an idle one that owns ETS
  # tables does not).
  defp cpu_due?(sandboxes, {id, _members}) do
    sb = Map.fetch!(sandboxes, id)
    sb.throttle != nil or (sb.usage != nil and sb.usage.cpu_usage != 0.0)
  end

  defp busy?(sb) do
    not sb.sampled? or sb.ets? or sb.throttle != nil or sb.reds_acc != 0 or
      sb.usage.cpu_usage != 0.0
  end

  defp cpu_base(sched?) do
    {reds, _} = :erlang.statistics(:reductions)
    sched = if sched?, do: :erlang.statistics(:scheduler_wall_time)
    %{at: System.monotonic_time(), reds: reds, sched: sched}
  end

  defp sample_sandbox(state, _id, %{breach: breach}, _members, _ctx) when breach != nil,
    do: state

  defp sample_sandbox(state, id, sb, members, ctx) do
    # A process bomb is stopped before its members are measured.
    case too_many(members, sb.limits) do
      nil -> measure_sandbox(state, id, sb, members, ctx)
      n -> stop_sandbox(state, id, %{sb | members: members}, :max_processes, n)
    end
  end

  defp too_many(members, %{max_processes: max}) when is_integer(max) do
    if length(members) > max do
      live = Enum.count(members, &Process.alive?/1)
      if live > max, do: live
    end
  end

  defp too_many(_members, _limits), do: nil

  defp measure_sandbox(state, id, sb, members, ctx) do
    {figures, reds, changed?} = Sample.measure(members, sb.figures, ctx.refresh?)
    ets = Sample.ets_memory(figures.pids, ctx.by_owner)

    # The first sample of a run has no previous reductions: 0.0.
    acc = if sb.sampled?, do: sb.reds_acc + reds, else: 0

    {cpu, acc} =
      cond do
        not sb.sampled? -> {0.0, 0}
        ctx.restart? -> {sb.usage.cpu_usage, 0}
        ctx.cpu? -> {round(min(acc / ctx.vm_reds, 1.0) * ctx.busy * 10_000) / 100, 0}
        true -> {sb.usage.cpu_usage, acc}
      end

    usage = %{
      current_memory: figures.proc_memory + figures.bin_memory + ets,
      current_processes: length(figures.pids),
      cpu_usage: cpu
    }

    if not changed? and usage == sb.usage and sb.throttle == nil and acc == sb.reds_acc and
         sb.sampled? do
      # Nothing moved (an idle sandbox): nothing to write or check.
      state
    else
      if changed? or usage != sb.usage, do: :ets.update_element(@table, id, {3, usage})
      check_sandbox(state, id, sb, {figures, ets > 0}, usage, acc, ctx)
    end
  end

  defp check_sandbox(state, id, sb, {figures, ets?}, usage, acc, ctx) do
    cpu = usage.cpu_usage

    sb = %{
      sb
      | figures: figures,
        members: figures.pids,
        usage: usage,
        sampled?: true,
        changed_at: state.stats.samples,
        ets?: ets?,
        reds_acc: acc
    }

    case over_limit(usage, sb.limits) do
      nil ->
        sb = warn(sb, id, usage)
        sb = if ctx.cpu?, do: throttle(sb, id, cpu), else: sb
        put_sandbox(state, id, sb)

      {limit, value} ->
        stop_sandbox(state, id, sb, limit, value)
    end
  end

  defp over_limit(usage, limits) do
    Enum.find_value(@limits, fn limit ->
      value = usage_of(usage, limit)
      max = Map.get(limits, limit)
      if is_number(max) and value > max, do: {limit, value}
    end)
  end

  defp usage_of(usage, :max_processes), do: usage.current_processes
  defp usage_of(usage, :max_memory), do: usage.current_memory
  defp usage_of(usage, :max_cpu_percentage), do: usage.cpu_usage

  # `[:sandbox, :limit, :warning]` once per upward crossing of 80 %.
  defp warn(sb, id, usage) do
    warned =
      Enum.reduce(@warned, sb.warned, fn limit, warned ->
        max = Map.get(sb.limits, limit)
        value = usage_of(usage, limit)
        above? = is_number(max) and value >= 0.8 * max

        cond do
          above? and not Map.get(warned, limit, false) ->
            Telemetry.emit(:limit, :warning, %{usage: value, limit: max}, %{
              sandbox_id: id,
              limit: limit
            })

            Map.put(warned, limit, true)

          not above? ->
            Map.delete(warned, limit)

          true ->
            warned
        end
      end)

    %{sb | warned: warned}
  end

  # The duty cycle: first f = limit / measured, then f = f × √(limit /
  # measured) (a single sample is noisy: the correction is damped), between
  # 0.02 and 2f; off at 1.
  defp throttle(sb, _id, cpu) do
    limit = Map.get(sb.limits, :max_cpu_percentage)
    f = sb.fraction

    fraction =
      cond do
        not is_number(limit) -> 1.0
        f >= 1.0 and cpu <= limit -> 1.0
        cpu <= 0.0 -> min(2 * f, 1.0)
        f >= 1.0 -> max(limit / cpu, 0.02)
        true -> (f * :math.sqrt(limit / cpu)) |> max(0.02) |> min(2 * f) |> min(1.0)
      end

    cond do
      fraction >= 0.999 ->
        if sb.throttle, do: Throttle.stop(sb.throttle)
        %{sb | fraction: 1.0, throttle: nil}

      sb.throttle ->
        Throttle.update(sb.throttle, fraction, sb.members)
        %{sb | fraction: fraction}

      true ->
        %{sb | fraction: fraction, throttle: Throttle.start_link(fraction, sb.members, period())}
    end
  end

  defp period, do: Application.get_env(:sandbox, :monitor_interval, 100)

  ## Breach

  # The limit is recorded first (whoever sees the processes die can tell
  # why), then every member is killed, in rounds until a sweep finds none
  # (a bomb spawns while it is being killed), then the instance is told.
  defp stop_sandbox(state, id, sb, limit, value) do
    if sb.throttle, do: Throttle.stop(sb.throttle)

    case :ets.lookup(@table, id) do
      [{^id, %{run: run} = reg, usage}] when run == sb.run ->
        :ets.insert(@table, {id, %{reg | breach: {limit, value}}, usage})

      _ ->
        :ok
    end

    kill_rounds(sb.members, sb, 50)
    Sandbox.Instance.limit_exceeded(sb.instance, limit, value)
    put_sandbox(state, id, %{sb | breach: {limit, value}, throttle: nil, fraction: 1.0})
  end

  defp kill_rounds([], _sb, _left), do: :ok

  defp kill_rounds(pids, sb, left) do
    Sandbox.ResourceMonitor.Call.kill_all(pids)

    if left > 0 do
      # The instance has the group leader while it starts the roots: it is
      # not a member (see due/4), and it is told of the breach, not killed.
      {groups, _} = Sample.sweep(%{sb.gl => :members})
      kill_rounds(List.delete(Map.get(groups, :members, []), sb.instance), sb, left - 1)
    end
  end
end
