defmodule Sandbox.IsolatedCompiler.Pool do
  @moduledoc """
  A pool of warm compile workers.

  Each worker is a BEAM OS process running `Sandbox.IsolatedCompiler.Worker`,
  started through the launcher (the supervising C-node) without limits, in
  a job directory of its own that the pool creates when it starts it (the
  worker's working directory, and the only place a confined worker can
  write). The worker preloads the compilers and then announces `ready`.

  A compile *checks out* a worker (`checkout/3`), writes its job file into
  the worker's job directory, and *runs* it (`run/6`): the job's limits are
  applied to the worker through the launcher, the job file's path is
  written to its standard input, and a wall-clock timer starts. A worker
  serves exactly one job; when it exits it is replaced in the background.
  Checkouts that find no worker wait in a queue (first come, first served).

  ## Keys: what a worker is confined to

  A worker is started for a key (`t:key/0`): unconfined, or confined with
  Landlock to read one project (see `Sandbox.IsolatedCompiler.Confinement`
  for why a worker cannot be confined later). A checkout is served by a
  worker of its own key only: an idle one, else one still starting (its
  job waits until it is ready), else a new one — started *lazily* (without
  the warm-up compile, since a job is already waiting for it) when there is
  room, or in the place of the longest-idle worker of another key. A worker
  that served a job is replaced by one of the same key, so the next job for
  the same project finds it warm; unless a waiting checkout has no worker,
  then the replacement is started for that checkout.

  The pool only moves processes and events; reading a job's result is the
  caller's business (`run/6` returns how the worker ended).

  ## Options

    * `:name` — the registered name (default `#{inspect(__MODULE__)}`)
    * `:size` — number of workers kept (default `System.schedulers_online/0`)
    * `:launcher` — the module that starts OS processes (default
      `Sandbox.IsolatedCompiler.launcher/0`)
    * `:cnode` — the launcher's server (default `Sandbox.CNode`)
    * `:artifacts_dir` — where the workers' job directories of the initial
      workers are created (default `Sandbox.IsolatedCompiler.artifacts_root/0`)
  """
  use GenServer

  alias Sandbox.IsolatedCompiler.{Confinement, Worker}

  # Minimum RLIMIT_FSIZE: the OTP 25 JIT maps its code through a file that
  # grows with the code loaded (over 8 MiB for Elixir alone, over 16 MiB
  # for ~60 MB of code); below what the job's code needs, the worker dies
  # of SIGXFSZ.
  @min_file_size 64 * 1024 * 1024
  @max_output 65_536
  @max_backoff 5_000
  @replace_delay 100
  @max_keys 1024

  @typedoc "How a job ended."
  @type outcome ::
          {:done, output :: binary, os_pid :: pos_integer}
          | {:exited, reason :: term, output :: binary, os_pid :: pos_integer}
          | {:timeout, output :: binary, os_pid :: pos_integer}

  @typedoc """
  What a worker is started for: `mode` `:none` (unconfined) or `:landlock`
  (`read`: the paths it may read besides the installation and its job
  directory), and `artifacts`, the directory its job directory is created
  in.
  """
  @type key :: %{mode: :none | :landlock, read: [String.t()], artifacts: String.t()}

  @typedoc "A checked-out worker: its id, its job directory and its pool."
  @type lease :: %{id: pos_integer, dir: String.t(), pool: GenServer.server()}

  @doc "A child spec; see the module documentation for the options."
  @spec child_spec(keyword) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}
  end

  @doc "Starts a pool. See the module documentation for the options."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc """
  Waits for a worker of `key` and reserves it for the caller: `{:ok,
  lease}` (the caller writes its job into `lease.dir`, then calls `run/6`,
  or `release/1`), or `{:error, {:spawn_failed, reason}}` when a confined
  worker cannot be started at all (Landlock refused by the C-node). A
  caller that exits gives its worker up (the worker is killed).
  """
  @spec checkout(GenServer.server(), key) :: {:ok, lease} | {:error, term}
  def checkout(pool \\ __MODULE__, %{mode: mode, artifacts: artifacts} = key)
      when mode in [:none, :landlock] and is_binary(artifacts) do
    key = normalize_key(key)

    case GenServer.call(pool, {:checkout, key}, :infinity) do
      {:ok, id, dir} -> {:ok, %{id: id, dir: dir, pool: pool}}
      {:error, _} = error -> error
    end
  end

  @doc """
  Runs one job on a checked-out worker and waits until the worker has
  exited.

  `job_path` is the job file the worker reads. `limits` is a map with any of
  `:memory` (resident bytes), `:processes`, `:cpu_seconds` and `:file_size`
  (bytes; raised to at least 64 MiB for the JIT); `timeout` is the job's
  wall-clock limit in ms (or `:infinity`), counted from the hand-over. A
  worker still booting (started for this checkout) is handed the job, its
  limits and its timer once it is ready.

  When `done_marker` (a binary) appears in the worker's output, the job is
  over: the caller gets `{:done, output, os_pid}` at once (without the
  marker) and the worker is killed, so nobody waits for a VM to halt.
  Otherwise the caller gets how the worker ended.
  """
  @spec run(lease, Path.t(), map, timeout, binary | nil) :: outcome
  def run(%{id: id, pool: pool}, job_path, limits, timeout, done_marker \\ nil)
      when is_binary(job_path) and is_map(limits) do
    GenServer.call(pool, {:run, id, job_path, limits, timeout, done_marker}, :infinity)
  end

  @doc "Gives a checked-out worker up without running a job (it is killed)."
  @spec release(lease) :: :ok
  def release(%{id: id, pool: pool}), do: GenServer.call(pool, {:release, id}, :infinity)

  @doc """
  The pool's counters: `size`, `idle`, `starting`, `busy` (checked out or
  running a job), `queued` (checkouts waiting), `jobs` (jobs handed to a
  worker since the pool started), `workers_started`, `startup_failures`
  (workers that died before they were ready) and `evicted` (idle workers
  of one key stopped to make room for another).
  """
  @spec stats(GenServer.server()) :: map
  def stats(pool \\ __MODULE__), do: GenServer.call(pool, :stats)

  @doc """
  The Landlock status of the pool's launcher (`Sandbox.IsolatedCompiler.Confinement.status/1`),
  asked once and remembered (asked again while the C-node could not answer).
  """
  @spec landlock(GenServer.server()) :: {:ok, %{abi: pos_integer}} | {:unavailable, term}
  def landlock(pool \\ __MODULE__), do: GenServer.call(pool, :landlock, :infinity)

  # Host variables a worker keeps; everything else of the host's
  # environment (credentials, tokens, the host's own settings) is removed.
  @kept_env ~w(PATH HOME LANG LC_ALL LC_CTYPE TZ)
  @default_env %{"PATH" => "/usr/local/bin:/usr/bin:/bin", "LANG" => "C.UTF-8"}

  @doc """
  The minimal OS environment of a compile worker: `PATH`, `HOME`, `LANG`,
  `LC_ALL`, `LC_CTYPE` and `TZ` as the host has them (`PATH` and `LANG`
  defaulting to `/usr/local/bin:/usr/bin:/bin` and `C.UTF-8`), nothing else.
  (The worker VM is started with `BINDIR`, `ROOTDIR`, `EMU` and `PROGNAME`
  besides, as `erl` does; a job's environment replaces them all.)
  """
  @spec base_env() :: %{String.t() => String.t()}
  def base_env, do: Map.merge(@default_env, Map.take(System.get_env(), @kept_env))

  # The launcher's `env:` changes that turn the host's environment (which
  # the C-node inherited) into base_env/0, plus what erlexec needs.
  defp worker_env do
    base = Map.merge(base_env(), erl_env())
    unset = for {name, _} <- System.get_env(), not Map.has_key?(base, name), do: {name, nil}
    unset ++ Enum.to_list(base)
  end

  # What the `erl` script would set before running erlexec.
  defp erl_env do
    root = List.to_string(:code.root_dir())

    %{
      "ROOTDIR" => root,
      "BINDIR" => bindir(),
      "EMU" => "beam",
      "PROGNAME" => "erl"
    }
  end

  defp bindir do
    root = List.to_string(:code.root_dir())
    Path.join([root, "erts-#{:erlang.system_info(:version)}", "bin"])
  end

  @doc """
  The argument vector of a compile worker: the emulator's `erlexec` (what
  the `erl` script runs, without the shell: a confined worker may execute
  nothing but the installation) and its flags. With `lazy: true` the worker
  skips its warm-up compile (a job is already waiting for it).
  """
  @spec worker_argv(keyword) :: [String.t()]
  def worker_argv(opts \\ []) do
    paths =
      for app <- [:elixir, :eex, :mix, :logger, :ex_unit] do
        app |> :code.lib_dir(:ebin) |> List.to_string()
      end

    lazy = if Keyword.get(opts, :lazy, false), do: ["-sandbox_lazy"], else: []

    [Path.join(bindir(), "erlexec"), "-noshell", "+sbwt", "none", "+sbwtdcpu", "none"] ++
      ["+sbwtdio", "none"] ++
      lazy ++
      Enum.flat_map(paths ++ [worker_dir()], &["-pa", &1]) ++
      ["-s", Atom.to_string(Worker), "main"]
  end

  # The directory of the worker's .beam file. Looked up on the code path by
  # file name, not with :code.which/1, which answers :cover_compiled for a
  # module that `mix test --cover` has cover-compiled (the worker VM loads
  # the plain .beam, which is still in the ebin directory).
  @doc false
  @spec worker_dir() :: String.t()
  def worker_dir do
    case :code.where_is_file(~c"#{Worker}.beam") do
      path when is_list(path) -> path |> List.to_string() |> Path.dirname()
      :non_existing -> raise "#{inspect(Worker)}.beam is not on the code path"
    end
  end

  ## Server

  @impl true
  def init(opts) do
    artifacts = Keyword.get_lazy(opts, :artifacts_dir, &Sandbox.IsolatedCompiler.artifacts_root/0)

    state = %{
      size: Keyword.get(opts, :size, System.schedulers_online()),
      launcher: Keyword.get_lazy(opts, :launcher, &Sandbox.IsolatedCompiler.launcher/0),
      cnode: Keyword.get(opts, :cnode, Sandbox.CNode),
      default_key: %{mode: :none, read: [], artifacts: artifacts},
      landlock: nil,
      workers: %{},
      lost: %{},
      uses: %{},
      dying: %{},
      queue: :queue.new(),
      jobs: 0,
      workers_started: 0,
      startup_failures: 0,
      evicted: 0,
      backoff: 0
    }

    {:ok, fill(state)}
  end

  @impl true
  def handle_call({:checkout, key}, {pid, _} = from, state) do
    entry = %{from: from, key: key, monitor: Process.monitor(pid)}
    {:noreply, dispatch(%{state | queue: :queue.in(entry, state.queue)})}
  end

  def handle_call({:run, id, job_path, limits, timeout, marker}, {pid, _} = from, state) do
    job = {from, job_path, limits, timeout, marker}

    case state.workers do
      %{^id => %{status: :reserved, from: {^pid, _}, ready: true} = w} ->
        {:noreply, hand_over(id, w, job, state)}

      %{^id => %{status: :reserved, from: {^pid, _}} = w} ->
        # Still booting (started for this job): handed over once ready.
        {:noreply, put_in(state.workers[id], %{w | pending: job})}

      _ ->
        case Map.pop(state.lost, id) do
          {{^pid, _ref, outcome}, lost} -> {:reply, outcome, %{state | lost: lost}}
          _ -> {:reply, {:exited, :not_checked_out, "", nil}, state}
        end
    end
  end

  def handle_call({:release, id}, {pid, _}, state) do
    case state.workers do
      %{^id => %{status: :reserved, from: {^pid, _}} = w} ->
        Process.demonitor(w.monitor, [:flush])
        {:reply, :ok, drop(id, w, state, remove_dir: true)}

      _ ->
        case Map.pop(state.lost, id) do
          {{^pid, ref, _}, lost} ->
            Process.demonitor(ref, [:flush])
            {:reply, :ok, %{state | lost: lost}}

          _ ->
            {:reply, :ok, state}
        end
    end
  end

  def handle_call(:stats, _from, state) do
    by_status = Enum.frequencies_by(state.workers, fn {_, w} -> w.status end)

    stats = %{
      size: state.size,
      idle: Map.get(by_status, :idle, 0),
      starting: Map.get(by_status, :starting, 0),
      busy: Map.get(by_status, :busy, 0) + Map.get(by_status, :reserved, 0),
      queued: :queue.len(state.queue),
      jobs: state.jobs,
      workers_started: state.workers_started,
      startup_failures: state.startup_failures,
      evicted: state.evicted
    }

    {:reply, stats, state}
  end

  def handle_call(:landlock, _from, state) do
    state = ensure_landlock(state)
    {:reply, state.landlock, state}
  end

  @impl true
  def handle_info({:sandbox_cnode, id, {stream, data}}, state)
      when stream in [:stdout, :stderr] do
    case state.workers do
      %{^id => %{ready: false} = w} ->
        buf = w.buf <> data

        case :binary.split(buf, "ready\n") do
          [_boot, _rest] ->
            w = %{w | ready: true, buf: "", idle_since: now()}
            w = if w.status == :starting, do: %{w | status: :idle}, else: w
            state = %{put_in(state.workers[id], w) | backoff: 0}

            case w do
              %{status: :reserved, pending: {_, _, _, _, _} = job} ->
                {:noreply, hand_over(id, %{w | pending: nil}, job, state)}

              _ ->
                {:noreply, dispatch(state)}
            end

          [_] ->
            {:noreply, put_in(state.workers[id].buf, binary_tail(buf, 1024))}
        end

      %{^id => %{status: :busy}} ->
        {:noreply, output(id, data, state)}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:sandbox_cnode, id, {:exit, _reason}}, %{dying: dying} = state)
      when is_map_key(dying, id) do
    {:noreply, %{state | dying: Map.delete(dying, id)}}
  end

  def handle_info({:sandbox_cnode, id, {:exit, reason}}, state) do
    case Map.pop(state.workers, id) do
      {nil, _} ->
        {:noreply, state}

      {%{status: :busy} = w, workers} ->
        cancel(w.timer)
        Process.demonitor(w.monitor, [:flush])

        reply =
          if w.timed_out,
            do: {:timeout, w.buf, w.os_pid},
            else: {:exited, reason, w.buf, w.os_pid}

        GenServer.reply(w.from, reply)
        {:noreply, replace(w.key, %{state | workers: workers})}

      {%{status: :reserved} = w, workers} ->
        # Died before its job was handed over (it could not boot): the
        # caller learns how, from run/6 (now, or when it calls it).
        outcome = {:exited, reason, w.buf, w.os_pid}
        state = %{state | workers: workers, startup_failures: state.startup_failures + 1}

        state =
          case w.pending do
            {from, _, _, _, _} ->
              Process.demonitor(w.monitor, [:flush])
              GenServer.reply(from, outcome)
              state

            nil ->
              %{state | lost: Map.put(state.lost, id, {elem(w.from, 0), w.monitor, outcome})}
          end

        {:noreply, backoff(state)}

      {w, workers} ->
        File.rm_rf(w.dir)
        state = %{state | workers: workers, startup_failures: state.startup_failures + 1}
        {:noreply, backoff(state)}
    end
  end

  def handle_info({:job_timeout, id}, state) do
    case state.workers do
      %{^id => %{status: :busy}} ->
        kill(state, id)
        {:noreply, put_in(state.workers[id].timed_out, true)}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _pid, _reason}, state) do
    # A caller went away: drop its queued checkout, or kill the worker it
    # holds (reserved or running its job).
    queue = :queue.filter(fn entry -> entry.monitor != ref end, state.queue)
    lost = :maps.filter(fn _id, {_, r, _} -> r != ref end, state.lost)
    state = %{state | queue: queue, lost: lost}

    state =
      Enum.reduce(state.workers, state, fn
        {id, %{status: :reserved, monitor: ^ref} = w}, state ->
          drop(id, w, state, remove_dir: true)

        {id, %{status: :busy, monitor: ^ref}}, state ->
          kill(state, id)
          state

        _, state ->
          state
      end)

    {:noreply, state}
  end

  def handle_info(:fill, state), do: {:noreply, state |> dispatch() |> fill()}

  def handle_info({:replace, key}, state) do
    state = dispatch(state)

    if map_size(state.workers) < state.size and :queue.is_empty(state.queue) do
      {_, state} = start_worker(state, key, lazy_replacement?(state, key))
      {:noreply, state}
    else
      {:noreply, state}
    end
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    for {id, w} <- state.workers do
      kill(state, id)
      if w.status in [:starting, :idle], do: File.rm_rf(w.dir)
    end

    :ok
  end

  ## Internals

  defp normalize_key(%{mode: :none, artifacts: artifacts}),
    do: %{mode: :none, read: [], artifacts: artifacts}

  defp normalize_key(%{mode: :landlock, artifacts: artifacts} = key),
    do: %{
      mode: :landlock,
      read: key |> Map.get(:read, []) |> Enum.uniq() |> Enum.sort(),
      artifacts: artifacts
    }

  defp now, do: System.monotonic_time()

  defp ensure_landlock(%{landlock: status} = state)
       when status == nil or status == {:unavailable, :cnode_down} do
    %{state | landlock: Confinement.status(state.cnode)}
  end

  defp ensure_landlock(state), do: state

  defp kill(state, id), do: state.launcher.kill(id, :sigkill, state.cnode)

  # Removes a worker that will not run a job (killed; its exit event is
  # ignored) and starts what is missing.
  defp drop(id, w, state, remove_dir: remove?) do
    kill(state, id)
    if remove?, do: File.rm_rf(w.dir)

    state = %{
      state
      | workers: Map.delete(state.workers, id),
        dying: Map.put(state.dying, id, true)
    }

    dispatch(state)
  end

  # The initial workers, and replacements after a failed start: workers of
  # the default key (unconfined) up to the pool's size, when no checkout
  # waits (a waiting one gets its own worker from dispatch/1).
  defp fill(state) do
    missing = state.size - map_size(state.workers)

    if missing > 0 and :queue.is_empty(state.queue) do
      Enum.reduce(1..missing, state, fn _, state ->
        {_, state} = start_worker(state, state.default_key, false)
        state
      end)
    else
      state
    end
  end

  # A worker that served its job is replaced by one of the same key (the
  # same project is likely compiled again: a reload), unless a checkout is
  # waiting for a worker of another key. While another worker is idle and
  # nothing waits, the replacement starts a moment later: booting a VM takes
  # CPU the caller needs right now to read the job's result.
  #
  # A confined key's replacement is fully warmed (compilers loaded, a
  # warm-up compile) once the key has served two jobs; after its first, it
  # is started lazily: most projects are compiled once (many sandboxes of
  # one project share the compile cache), and a warm-up nobody uses costs
  # a second of CPU that compiles in progress need.
  defp replace(key, state) do
    state = dispatch(state)

    cond do
      map_size(state.workers) >= state.size ->
        state

      not :queue.is_empty(state.queue) ->
        state

      Enum.any?(state.workers, fn {_, w} -> w.status == :idle end) ->
        Process.send_after(self(), {:replace, key}, @replace_delay)
        state

      true ->
        {_, state} = start_worker(state, key, lazy_replacement?(state, key))
        state
    end
  end

  defp lazy_replacement?(_state, %{mode: :none}), do: false
  defp lazy_replacement?(state, key), do: Map.get(state.uses, key, 0) < 2

  # Jobs served per key (forgotten all at once past @max_keys keys).
  defp count_use(state, key) do
    uses = if map_size(state.uses) >= @max_keys, do: %{}, else: state.uses
    %{state | uses: Map.update(uses, key, 1, &(&1 + 1))}
  end

  defp backoff(state) do
    backoff = min(max(state.backoff * 2, 50), @max_backoff)
    Process.send_after(self(), :fill, backoff)
    %{state | backoff: backoff}
  end

  @doc """
  The hard limits a worker is spawned with (`Sandbox.CNode`'s `:ceiling`):
  a job's own limits are set under them at hand-over, and the job's code
  cannot raise its limits above them. File size: the application
  environment's `:compiler_file_size_ceiling` (default 1 GiB).
  """
  @spec ceiling() :: %{file_size: pos_integer}
  def ceiling,
    do: %{
      file_size: Application.get_env(:sandbox, :compiler_file_size_ceiling, 1024 * 1024 * 1024)
    }

  # Starts a worker of `key` in a new job directory: {{:ok, id} | {:error,
  # reason}, state}.
  defp start_worker(state, key, lazy?) do
    with {:ok, dir} <- new_job_dir(key.artifacts),
         {:ok, landlock} <- landlock_option(key, dir) do
      opts = [
        subscriber: self(),
        timeout: :infinity,
        grace: 0,
        env: worker_env(),
        cd: dir,
        ceiling: ceiling(),
        landlock: landlock,
        server: state.cnode
      ]

      case state.launcher.spawn(worker_argv(lazy: lazy?), opts) do
        {:ok, %{id: id, os_pid: os_pid}} ->
          worker = %{
            status: :starting,
            ready: false,
            key: key,
            dir: dir,
            os_pid: os_pid,
            buf: "",
            from: nil,
            monitor: nil,
            timer: nil,
            marker: nil,
            timed_out: false,
            pending: nil,
            idle_since: now()
          }

          state = %{
            state
            | workers: Map.put(state.workers, id, worker),
              workers_started: state.workers_started + 1
          }

          {{:ok, id}, state}

        {:error, reason} ->
          File.rm_rf(dir)
          {{:error, reason}, spawn_failed(reason, state)}
      end
    else
      {:error, reason} -> {{:error, reason}, backoff(state)}
    end
  end

  defp landlock_option(%{mode: :none}, _dir), do: {:ok, nil}

  defp landlock_option(%{mode: :landlock, read: read}, dir),
    do: {:ok, Confinement.spawn_option(dir, read)}

  # A refusal of Landlock itself is final for the checkout (answered by the
  # caller of start_worker); anything else is retried after a back-off.
  defp spawn_failed({:landlock_unavailable, reason}, state),
    do: %{state | landlock: {:unavailable, reason}}

  defp spawn_failed({:landlock, _errno}, state), do: state

  defp spawn_failed(_reason, state),
    do: backoff(%{state | startup_failures: state.startup_failures + 1})

  defp new_job_dir(root) do
    dir = Path.join(root, "job-#{System.unique_integer([:positive])}-#{:os.getpid()}")

    case :prim_file.make_dir(dir) do
      :ok ->
        {:ok, dir}

      {:error, :enoent} ->
        with :ok <- File.mkdir_p(root), do: new_job_dir(root)

      {:error, reason} ->
        {:error, {:job_dir, reason}}
    end
  end

  # Serves waiting checkouts, in order, each with a worker of its key: an
  # idle one, one starting, a new one where there is room, or one in the
  # place of the longest-idle worker of another key. A checkout that cannot
  # be served yet keeps its place.
  defp dispatch(state) do
    {kept, state} =
      state.queue
      |> :queue.to_list()
      |> Enum.reduce({[], state}, fn entry, {kept, state} ->
        case serve(entry, state) do
          {:served, state} -> {kept, state}
          {:wait, state} -> {[entry | kept], state}
        end
      end)

    %{state | queue: :queue.from_list(Enum.reverse(kept))}
  end

  defp serve(entry, state) do
    case find_worker(state, entry.key) do
      {:ok, id} ->
        {:served, reserve(id, entry, state)}

      :none ->
        cond do
          map_size(state.workers) < state.size ->
            start_for(entry, state)

          victim = evictable(state, entry.key) ->
            {_, w} = victim
            state = drop_quietly(victim, %{state | evicted: state.evicted + 1}, w)
            start_for(entry, state)

          true ->
            {:wait, state}
        end
    end
  end

  defp drop_quietly({id, _}, state, w) do
    kill(state, id)
    File.rm_rf(w.dir)

    %{
      state
      | workers: Map.delete(state.workers, id),
        dying: Map.put(state.dying, id, true)
    }
  end

  defp start_for(entry, state) do
    case start_worker(state, entry.key, true) do
      {{:ok, id}, state} ->
        {:served, reserve(id, entry, state)}

      {{:error, reason}, state} when elem(reason, 0) in [:landlock_unavailable, :landlock] ->
        Process.demonitor(entry.monitor, [:flush])
        GenServer.reply(entry.from, {:error, {:spawn_failed, reason}})
        {:served, state}

      {{:error, _reason}, state} ->
        {:wait, state}
    end
  end

  # An idle worker of the key, else one starting (not reserved).
  defp find_worker(state, key) do
    candidates = for {id, w} <- state.workers, w.key == key, do: {id, w}

    case Enum.find(candidates, fn {_, w} -> w.status == :idle end) ||
           Enum.find(candidates, fn {_, w} -> w.status == :starting end) do
      {id, _} -> {:ok, id}
      nil -> :none
    end
  end

  # The longest-idle worker of another key (idle or still starting).
  defp evictable(state, key) do
    state.workers
    |> Enum.filter(fn {_, w} -> w.key != key and w.status in [:idle, :starting] end)
    |> Enum.min_by(fn {_, w} -> {w.status == :idle, w.idle_since} end, fn -> nil end)
  end

  defp reserve(id, entry, state) do
    w = %{state.workers[id] | status: :reserved, from: entry.from, monitor: entry.monitor}
    GenServer.reply(entry.from, {:ok, id, w.dir})
    put_in(state.workers[id], w)
  end

  defp hand_over(id, w, {from, job_path, limits, timeout, marker}, state) do
    limits = Map.update(limits, :file_size, nil, &(&1 && max(&1, @min_file_size)))
    limits = limits |> Enum.reject(fn {_, v} -> is_nil(v) end) |> Map.new()
    launcher = state.launcher

    busy = fn ->
      timer = if is_integer(timeout), do: Process.send_after(self(), {:job_timeout, id}, timeout)
      # The caller of run/6 is the one that checked out: its monitor stays.
      %{w | status: :busy, from: from, timer: timer, marker: marker, buf: ""}
    end

    with :ok <- launcher.set_limits(id, limits, state.cnode),
         :ok <- launcher.write_stdin(id, [job_path, "\n"], state.cnode) do
      w = busy.()
      count_use(%{state | workers: Map.put(state.workers, id, w), jobs: state.jobs + 1}, w.key)
    else
      {:error, :not_found} ->
        # The worker is gone, its exit not handled yet (it is on its way):
        # killed over the limits just set, or dead of its own. The exit
        # answers the caller as for a job, with how the worker ended.
        put_in(state.workers[id], busy.())

      {:error, reason} ->
        # The worker is gone or unusable.
        Process.demonitor(w.monitor, [:flush])
        GenServer.reply(from, {:exited, {:hand_over_failed, reason}, "", w.os_pid})
        drop(id, w, state, remove_dir: false)
    end
  end

  # Output of a busy worker: complete when the marker appears.
  defp output(id, data, state) do
    case state.workers[id] do
      %{status: :busy} = w ->
        buf = w.buf <> data

        case w.marker && :binary.split(buf, w.marker) do
          [out, _rest] ->
            # The result is complete: reply now and do away with the worker.
            finish(id, w, {:done, binary_tail(out, @max_output), w.os_pid}, state)

          _ ->
            put_in(state.workers[id].buf, binary_tail(buf, @max_output))
        end

      %{} = w ->
        put_in(state.workers[id].buf, binary_tail(w.buf <> data, @max_output))

      nil ->
        state
    end
  end

  defp finish(id, w, reply, state) do
    cancel(w.timer)
    Process.demonitor(w.monitor, [:flush])
    GenServer.reply(w.from, reply)
    kill(state, id)

    state = %{
      state
      | workers: Map.delete(state.workers, id),
        dying: Map.put(state.dying, id, true)
    }

    replace(w.key, state)
  end

  defp cancel(nil), do: :ok
  defp cancel(ref), do: Process.cancel_timer(ref)

  defp binary_tail(bin, max) when byte_size(bin) <= max, do: bin
  defp binary_tail(bin, max), do: binary_part(bin, byte_size(bin) - max, max)
end
