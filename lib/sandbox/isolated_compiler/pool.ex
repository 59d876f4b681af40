defmodule Sandbox.IsolatedCompiler.Pool do
  @moduledoc """
  A pool of warm compile workers.

  Each worker is a BEAM OS process running `Sandbox.IsolatedCompiler.Worker`,
  started through the launcher (the supervising C-node) without limits, that
  preloads the compilers and then announces `ready`. A job is handed to an
  idle worker: the job's limits are applied to it through the launcher, the
  job file's path is written to its standard input, and a wall-clock timer
  starts. A worker serves exactly one job; when it exits it is replaced in the
  background. Jobs that find no idle worker wait in a queue (first come,
  first served).

  The pool only moves processes and events; reading a job's result is the
  caller's business (`run/3` returns how the worker ended).

  ## Options

    * `:name` — the registered name (default `#{inspect(__MODULE__)}`)
    * `:size` — number of workers kept (default `System.schedulers_online/0`)
    * `:launcher` — the module that starts OS processes (default
      `Sandbox.IsolatedCompiler.launcher/0`)
  """
  use GenServer

  alias Sandbox.IsolatedCompiler.Worker

  # Minimum RLIMIT_FSIZE: the OTP 25 JIT maps its code through files and
  # needs at least 8 MiB.
  @min_file_size 8 * 1024 * 1024
  @max_output 65_536
  @max_backoff 5_000
  @replace_delay 100

  @typedoc "How a job ended."
  @type outcome ::
          {:done, output :: binary, os_pid :: pos_integer}
          | {:exited, reason :: term, output :: binary, os_pid :: pos_integer}
          | {:timeout, output :: binary, os_pid :: pos_integer}

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
  Runs one job on a warm worker and waits until the worker has exited.

  `job_path` is the job file the worker reads. `limits` is a map with any of
  `:memory` (resident bytes), `:processes`, `:cpu_seconds` and `:file_size`
  (bytes; raised to at least 8 MiB for the JIT); `timeout` is the job's
  wall-clock limit in ms (or `:infinity`), counted from the hand-over.

  When `done_marker` (a binary) appears in the worker's output, the job is
  over: the caller gets `{:done, output, os_pid}` at once (without the
  marker) and the worker is killed, so nobody waits for a VM to halt.
  Otherwise the caller gets how the worker ended.
  """
  @spec run(GenServer.server(), Path.t(), map, timeout, binary | nil) :: outcome
  def run(pool \\ __MODULE__, job_path, limits, timeout, done_marker \\ nil)
      when is_binary(job_path) and is_map(limits) do
    GenServer.call(pool, {:run, job_path, limits, timeout, done_marker}, :infinity)
  end

  @doc """
  The pool's counters: `size`, `idle`, `starting`, `busy`, `queued`,
  `jobs` (jobs handed to a worker since the pool started), `workers_started`,
  and `startup_failures` (workers that died before they were ready).
  """
  @spec stats(GenServer.server()) :: map
  def stats(pool \\ __MODULE__), do: GenServer.call(pool, :stats)

  # Host variables a worker keeps; everything else of the host's
  # environment (credentials, tokens, the host's own settings) is removed.
  @kept_env ~w(PATH HOME LANG LC_ALL LC_CTYPE TZ)
  @default_env %{"PATH" => "/usr/local/bin:/usr/bin:/bin", "LANG" => "C.UTF-8"}

  @doc """
  The minimal OS environment of a compile worker: `PATH`, `HOME`, `LANG`,
  `LC_ALL`, `LC_CTYPE` and `TZ` as the host has them (`PATH` and `LANG`
  defaulting to `/usr/local/bin:/usr/bin:/bin` and `C.UTF-8`), nothing else.
  (`erl` itself adds `BINDIR`, `ROOTDIR`, `EMU` and `PROGNAME`.)
  """
  @spec base_env() :: %{String.t() => String.t()}
  def base_env, do: Map.merge(@default_env, Map.take(System.get_env(), @kept_env))

  # The launcher's `env:` changes that turn the host's environment (which
  # the C-node inherited) into base_env/0.
  defp worker_env do
    base = base_env()
    unset = for {name, _} <- System.get_env(), not Map.has_key?(base, name), do: {name, nil}
    unset ++ Enum.to_list(base)
  end

  @doc "The argument vector of a compile worker (`erl` and its flags)."
  @spec worker_argv() :: [String.t()]
  def worker_argv do
    erl = Path.join([List.to_string(:code.root_dir()), "bin", "erl"])

    paths =
      for app <- [:elixir, :eex, :mix, :logger, :ex_unit] do
        app |> :code.lib_dir(:ebin) |> List.to_string()
      end

    [erl, "-noshell", "+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"] ++
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
    state = %{
      size: Keyword.get(opts, :size, System.schedulers_online()),
      launcher: Keyword.get_lazy(opts, :launcher, &Sandbox.IsolatedCompiler.launcher/0),
      workers: %{},
      dying: %{},
      idle: :queue.new(),
      queue: :queue.new(),
      jobs: 0,
      workers_started: 0,
      startup_failures: 0,
      backoff: 0
    }

    {:ok, fill(state)}
  end

  @impl true
  def handle_call({:run, job_path, limits, timeout, marker}, from, state) do
    state = %{state | queue: :queue.in({from, job_path, limits, timeout, marker}, state.queue)}
    state = dispatch(state)
    # A job waits: start any replacement that was put off.
    state = if :queue.is_empty(state.queue), do: state, else: fill(state)
    {:noreply, state}
  end

  def handle_call(:stats, _from, state) do
    by_status = Enum.frequencies_by(state.workers, fn {_, w} -> w.status end)

    stats = %{
      size: state.size,
      idle: Map.get(by_status, :idle, 0),
      starting: Map.get(by_status, :starting, 0),
      busy: Map.get(by_status, :busy, 0),
      queued: :queue.len(state.queue),
      jobs: state.jobs,
      workers_started: state.workers_started,
      startup_failures: state.startup_failures
    }

    {:reply, stats, state}
  end

  @impl true
  def handle_info({:sandbox_cnode, id, {stream, data}}, state)
      when stream in [:stdout, :stderr] do
    case state.workers do
      %{^id => %{status: :starting} = w} ->
        buf = w.buf <> data

        if String.contains?(buf, "ready\n") do
          state = put_in(state.workers[id], %{w | status: :idle, buf: ""})
          state = %{state | idle: :queue.in(id, state.idle), backoff: 0}
          {:noreply, dispatch(state)}
        else
          {:noreply, put_in(state.workers[id].buf, binary_tail(buf, 1024))}
        end

      %{^id => %{status: :busy} = w} ->
        buf = w.buf <> data

        case w.marker && :binary.split(buf, w.marker) do
          [output, _rest] ->
            # The result is complete: reply now and do away with the worker.
            finish(id, w, {:done, binary_tail(output, @max_output), w.os_pid}, state)

          _ ->
            {:noreply, put_in(state.workers[id].buf, binary_tail(buf, @max_output))}
        end

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
        {:noreply, replace(%{state | workers: workers})}

      {_starting_or_idle, workers} ->
        state = %{
          state
          | workers: workers,
            idle: :queue.delete(id, state.idle),
            startup_failures: state.startup_failures + 1
        }

        {:noreply, backoff_fill(state)}
    end
  end

  def handle_info({:job_timeout, id}, state) do
    case state.workers do
      %{^id => %{status: :busy}} ->
        state.launcher.kill(id, :sigkill)
        {:noreply, put_in(state.workers[id].timed_out, true)}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _pid, _reason}, state) do
    # A caller went away: drop its queued job, or kill the worker running it.
    queue = :queue.filter(fn {{pid, _}, _, _, _, _} -> Process.alive?(pid) end, state.queue)

    for {id, %{status: :busy, monitor: ^ref}} <- state.workers do
      state.launcher.kill(id, :sigkill)
    end

    {:noreply, %{state | queue: queue}}
  end

  def handle_info(:fill, state), do: {:noreply, fill(state)}

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    for {id, _} <- state.workers, do: state.launcher.kill(id, :sigkill)
    :ok
  end

  ## Internals

  defp fill(state) do
    missing = state.size - map_size(state.workers)

    if missing > 0 do
      Enum.reduce(1..missing, state, fn _, state -> start_worker(state) end)
    else
      state
    end
  end

  # Replaces a worker that served its job. While another worker is idle and
  # no job waits, the replacement starts a moment later: booting a VM takes
  # CPU the caller needs right now to read the job's result.
  defp replace(state) do
    if :queue.is_empty(state.queue) and not :queue.is_empty(state.idle) do
      Process.send_after(self(), :fill, @replace_delay)
      state
    else
      fill(state)
    end
  end

  defp backoff_fill(state) do
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

  defp start_worker(state) do
    opts = [
      subscriber: self(),
      timeout: :infinity,
      grace: 0,
      env: worker_env(),
      ceiling: ceiling()
    ]

    case state.launcher.spawn(worker_argv(), opts) do
      {:ok, %{id: id, os_pid: os_pid}} ->
        worker = %{
          status: :starting,
          os_pid: os_pid,
          buf: "",
          from: nil,
          monitor: nil,
          timer: nil,
          marker: nil,
          timed_out: false
        }

        %{
          state
          | workers: Map.put(state.workers, id, worker),
            workers_started: state.workers_started + 1
        }

      {:error, _reason} ->
        backoff_fill(%{state | startup_failures: state.startup_failures + 1})
    end
  end

  defp dispatch(state) do
    with {{:value, id}, idle} <- :queue.out(state.idle),
         {{:value, job}, queue} <- :queue.out(state.queue) do
      state = hand_over(id, job, %{state | idle: idle, queue: queue})
      dispatch(state)
    else
      _ -> state
    end
  end

  defp hand_over(id, {{pid, _} = from, job_path, limits, timeout, marker} = job, state) do
    limits = Map.update(limits, :file_size, nil, &(&1 && max(&1, @min_file_size)))
    limits = limits |> Enum.reject(fn {_, v} -> is_nil(v) end) |> Map.new()
    launcher = state.launcher

    with :ok <- launcher.set_limits(id, limits),
         :ok <- launcher.write_stdin(id, [job_path, "\n"]) do
      timer = if is_integer(timeout), do: Process.send_after(self(), {:job_timeout, id}, timeout)

      worker = %{
        state.workers[id]
        | status: :busy,
          from: from,
          monitor: Process.monitor(pid),
          timer: timer,
          marker: marker,
          buf: ""
      }

      %{state | workers: Map.put(state.workers, id, worker), jobs: state.jobs + 1}
    else
      {:error, _reason} ->
        # The worker is gone or unusable: put the job back first in line.
        launcher.kill(id, :sigkill)
        workers = Map.delete(state.workers, id)
        queue = :queue.in_r(job, state.queue)
        fill(%{state | workers: workers, queue: queue})
    end
  end

  defp finish(id, w, reply, state) do
    cancel(w.timer)
    Process.demonitor(w.monitor, [:flush])
    GenServer.reply(w.from, reply)
    state.launcher.kill(id, :sigkill)

    state = %{
      state
      | workers: Map.delete(state.workers, id),
        dying: Map.put(state.dying, id, true)
    }

    {:noreply, fill(state)}
  end

  defp cancel(nil), do: :ok
  defp cancel(ref), do: Process.cancel_timer(ref)

  defp binary_tail(bin, max) when byte_size(bin) <= max, do: bin
  defp binary_tail(bin, max), do: binary_part(bin, byte_size(bin) - max, max)
end
