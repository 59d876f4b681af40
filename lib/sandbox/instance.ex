defmodule Sandbox.Instance do
  @moduledoc """
  One live sandbox: the process that owns its lifecycle — setup, restart,
  teardown — and serialises every change to its code.

  Started by `Sandbox.create_sandbox/3` under `Sandbox.InstanceSupervisor`
  (temporary children), one per sandbox, so sandboxes never wait for each
  other. Its info is mirrored into the `Sandbox.Manager` table at every
  status change, so reading a sandbox's info never calls this process.

  Every change of code is one path: a `Sandbox.ChangeSet` built from the
  sandbox's version store (`Sandbox.ModuleVersionManager`), applied by
  `Sandbox.StatePreservation.apply/2`, recorded in the store. Create is a
  change from nothing, destroy a change to nothing, and reloads,
  rollbacks and automatic rollbacks are changes in between (status
  `:reloading` while one runs).

  The sandbox's root processes (its supervisor, or its applications' `mod`
  callbacks, path dependencies first) are started from this process with
  the sandbox's group leader, so everything they spawn belongs to the
  sandbox. They are linked to it: when one exits, the instance kills the
  rest and starts them again, up to `max_restarts` times within
  `max_seconds`; after that the sandbox's status is `:error`.

  ## Two-phase changes (`Sandbox.Cluster`)

  A reload can also be prepared (`prepare/6`: built, validated, relocated,
  `StatePreservation.prepare/2`: code prepared for loading, processes
  suspended and their states captured) and later committed (`commit/3`) or
  aborted (`abort/2`). The instance holds at most one prepared change, in
  a slot: while it is there, other changes (reloads, rollbacks, restarts,
  other prepares, starting and stopping the sandbox's applications) wait
  in order and run after it; reads are answered. The
  slot empties itself — the change aborted, every process resumed — when
  its lease runs out, when the coordinator process that prepared it goes
  away (or its node becomes unreachable), when a suspended process dies, or
  when a root of the sandbox exits; destroy aborts it first. A committed
  change can be reverted by the same coordinator (`revert/3`) as long as no
  other change came after it.

  Every change records a *stamp* for the modules it adds or changes,
  `{counter, microseconds, node}`, compared as a tuple: a cluster change
  gets the coordinator's (one higher than the counter of every copy it
  prepared), a change made on this node alone one higher than this
  sandbox's highest counter. `Sandbox.Cluster.reconcile/2` brings every
  copy of a module to the copy with the highest stamp.
  """

  use GenServer, restart: :temporary

  alias Sandbox.{ChangeSet, Env, ErrorHandler, GroupLeader, IsolatedCompiler, Manager}
  alias Sandbox.{ResourceMonitor, Telemetry}
  alias Sandbox.{StatePreservation, FileWatcher, SecurityController}
  alias Sandbox.Models.SandboxState
  alias Sandbox.ModuleVersionManager, as: Store

  # The calls that wait while a change is prepared (see "Two-phase changes").
  @deferred [:reload, :rollback, :prepare, :auto_reload, :revert]

  # Module-level redirects: every call to the host module goes to the
  # sandbox's copy of the shim. The sandbox's copy of the guard
  # (Sandbox.Guard) is built by the change set, with the functions its code
  # calls through the per-function redirects.
  @shims [
    {Application, Sandbox.Shim.Application},
    {:application, Sandbox.Shim.ErlApplication}
  ]

  @doc false
  def child_spec(arg) do
    %{id: __MODULE__, start: {__MODULE__, :start_link, [arg]}, restart: :temporary}
  end

  @doc "Starts the instance of sandbox `id` (it does nothing until `setup/1`)."
  @spec start_link({String.t(), atom, Sandbox.Config.t()}) :: GenServer.on_start()
  def start_link({id, target, config}), do: GenServer.start_link(__MODULE__, {id, target, config})

  @doc """
  Compiles, loads and starts the sandbox. On failure the instance cleans up
  and stops.

  With `build` (see `Sandbox.create_sandbox/3`'s `:prebuilt` option:
  `%{modules: [{module, beam}], app: app_spec | nil, app_env: keyword,
  config: [{app, keyword}]}`, optionally `stamps: %{module => stamp}`),
  nothing is compiled: those modules are loaded and that environment given.
  """
  @spec setup(pid, map | nil) :: {:ok, SandboxState.t()} | {:error, term}
  def setup(pid, build \\ nil), do: GenServer.call(pid, {:setup, build}, :infinity)

  @doc "Stops and starts the sandbox's processes again, with the same code."
  @spec restart(pid) :: {:ok, SandboxState.t()} | {:error, term}
  def restart(pid), do: GenServer.call(pid, :restart, :infinity)

  @doc "Destroys the sandbox: processes, modules, environment; then the instance stops."
  @spec destroy(pid) :: :ok
  def destroy(pid), do: GenServer.call(pid, :destroy, :infinity)

  @doc """
  Hot reloads `beams` (see `Sandbox.hot_reload_sandbox/3`); `opts` are the
  reload options plus `:trigger` (`:api` or `:file_watcher`) and
  `:remove` (modules to remove in the same change).
  """
  @spec hot_reload(pid, binary | [binary], keyword) ::
          {:ok, :hot_reloaded | :unchanged} | {:error, term}
  def hot_reload(pid, beams, opts), do: GenServer.call(pid, {:reload, beams, opts}, :infinity)

  @doc """
  Applies a compile of the sandbox's project (`Sandbox.IsolatedCompiler`)
  as one change: its recompiled modules replace or add the modules whose
  bytes differ, its removed modules go, and so do the sandbox's modules
  whose source is one of `opts[:files]` (the changed files) that the
  compile did not produce. With `sync: true` (a full compile of the
  project) every module of the sandbox the compile did not produce goes.
  Other options: the reload options, and `:trigger`.
  """
  @spec apply_compile(pid, Sandbox.Models.CompilationResult.t(), keyword) ::
          {:ok, :hot_reloaded | :unchanged} | {:error, term}
  def apply_compile(pid, info, opts) do
    {sync, opts} = Keyword.pop(opts, :sync, false)
    beams = Enum.map(info.recompiled_modules, &elem(&1, 1))

    {files, opts} = Keyword.pop(opts, :files, [])
    produced = Enum.map(info.recompiled_modules, &elem(&1, 0))

    remove =
      if sync,
        do: {:keep_only, produced},
        else: {:remove, info.removed_modules, Enum.map(files, &Path.expand/1), produced}

    GenServer.call(pid, {:reload, beams, [{:removing, remove} | opts]}, :infinity)
  end

  @doc "Rolls `module` back to a kept `version` (see `Sandbox.rollback_module/3`)."
  @spec rollback(pid, module, pos_integer) :: {:ok, :rolled_back} | {:error, term}
  def rollback(pid, module, version),
    do: GenServer.call(pid, {:rollback, module, version}, :infinity)

  @doc """
  Starts (`:start`) or stops (`:stop`) the sandbox's own application `app`
  (its `mod` callback): `:ok` or `{:error, reason}`. Called by the
  sandbox's application shims (`Sandbox.Shim.Apps`).
  """
  @spec app(pid, :start | :stop, atom) :: :ok | {:error, term}
  def app(pid, op, app) when op in [:start, :stop],
    do: GenServer.call(pid, {:app, op, app}, :infinity)

  @doc "Turns automatic reload on or off (see `Sandbox.enable_auto_reload/1`)."
  @spec auto_reload(pid, boolean) :: :ok | {:error, term}
  def auto_reload(pid, on?), do: GenServer.call(pid, {:auto_reload, on?}, :infinity)

  @doc """
  Reads the version store: `{:current_version, module}`, `{:versions,
  module}`, `:dependency_graph`, `{:reload_order, modules}`, or `:project`
  (`{:ok, {sandbox_path, compile_opts}}`: where and how its code is
  compiled).
  """
  @spec versions(pid, term) :: term
  def versions(pid, request), do: GenServer.call(pid, {:versions, request}, :infinity)

  @doc """
  Tells the instance that `Sandbox.ResourceMonitor` found its sandbox over
  `limit` (with `usage`) and killed its processes: the instance stops what
  is left, sets status `:error` with `error: {:limit_exceeded, limit}` and
  emits `[:sandbox, :limit, :exceeded]`. Asynchronous.
  """
  @spec limit_exceeded(pid, atom, number) :: :ok
  def limit_exceeded(pid, limit, usage) do
    send(pid, {:limit_exceeded, limit, usage})
    :ok
  end

  ## Cluster: two-phase changes (see "Two-phase changes" above)

  @doc """
  Prepares a reload of `beams` under `ref` (the reload options `opts`, as
  `hot_reload/3`), held for `coordinator` (a pid, monitored) for at most
  `lease` ms. Returns `{:ok, :prepared, counter}` or `{:ok, :unchanged,
  counter}` (`counter`: the highest stamp counter of the sandbox), or
  `{:error, reason}` (the reload's errors; nothing changed).
  """
  @spec prepare(pid, reference, binary | [binary], keyword, pid, pos_integer) ::
          {:ok, :prepared | :unchanged, non_neg_integer} | {:error, term}
  def prepare(pid, ref, beams, opts, coordinator, lease),
    do: GenServer.call(pid, {:prepare, ref, beams, opts, coordinator, lease}, :infinity)

  @doc """
  Commits the change prepared under `ref`, recording `stamp` for its
  modules: `{:ok, :hot_reloaded}`, the errors of a reload (everything
  restored), `{:error, {:aborted, why}}` when the slot emptied itself, or
  `{:error, :not_prepared}`.
  """
  @spec commit(pid, reference, tuple) :: {:ok, :hot_reloaded} | {:error, term}
  def commit(pid, ref, stamp), do: GenServer.call(pid, {:commit, ref, stamp}, :infinity)

  @doc "Aborts the change prepared under `ref` (`:ok` also when there is none)."
  @spec abort(pid, reference) :: :ok
  def abort(pid, ref), do: GenServer.call(pid, {:abort, ref}, :infinity)

  @doc """
  Undoes the change of `ref`: aborted when still prepared
  (`{:ok, :aborted}`), reverted when it was the last change committed
  (`{:ok, :rolled_back}`, recording `stamp`; or the errors of a rollback),
  else `{:ok, :not_committed}`.
  """
  @spec revert(pid, reference, tuple) ::
          {:ok, :aborted | :rolled_back | :not_committed} | {:error, term}
  def revert(pid, ref, stamp), do: GenServer.call(pid, {:revert, ref, stamp}, :infinity)

  @doc """
  What another node needs to create a copy of this sandbox as it is now:
  `%{target: module_or_app, build: build, options: keyword}`, `build` as
  `setup/2` takes it (the current version of every module, the application
  spec, the current environment, the stamps) and `options` the create
  options.
  """
  @spec export(pid) :: {:ok, map}
  def export(pid), do: GenServer.call(pid, :export, :infinity)

  ## Server

  @impl true
  def init({id, target, config}) do
    Process.flag(:trap_exit, true)
    Manager.assign(id, self())

    state = %{
      id: id,
      env_id: String.to_atom(id),
      target: target,
      config: config,
      info: %SandboxState{
        id: id,
        created_at: DateTime.utc_now(),
        resource_limits: config.resource_limits,
        security_profile: config.security_profile,
        sandbox_path: config.sandbox_path
      },
      app: nil,
      mode: nil,
      store: Store.new(id, config.max_versions, config.security_profile, config.keep_atoms),
      group_leader: nil,
      roots: [],
      started: [],
      restarts: [],
      started_at: nil,
      rollback: nil,
      last_reload: nil,
      # Two-phase changes (Sandbox.Cluster): the prepared slot, the calls
      # waiting for it, the last committed one (revertible), the last
      # aborted one and why, and each module's stamp.
      prepared: nil,
      deferred: [],
      cluster_last: nil,
      aborted: nil,
      stamps: %{}
    }

    SecurityController.register(id, config.security_profile, config.resource_limits)
    publish(state)
    {:ok, state}
  end

  # While a change is prepared, other changes wait for it (in order); a
  # revert of the prepared change itself aborts it.
  @impl true
  def handle_call({:revert, ref, _stamp}, _from, %{prepared: %{ref: ref}} = state),
    do: {:reply, {:ok, :aborted}, abort_prepared(state, :aborted)}

  def handle_call(msg, from, %{prepared: %{}} = state) when elem(msg, 0) in @deferred do
    {:noreply, %{state | deferred: state.deferred ++ [{msg, from}]}}
  end

  def handle_call(:restart, from, %{prepared: %{}} = state),
    do: {:noreply, %{state | deferred: state.deferred ++ [{:restart, from}]}}

  def handle_call({:app, op, _} = msg, from, %{prepared: %{}} = state) when op in [:start, :stop],
    do: {:noreply, %{state | deferred: state.deferred ++ [{msg, from}]}}

  def handle_call(:destroy, from, %{prepared: %{}} = state),
    do: handle_call(:destroy, from, abort_prepared(state, :destroyed))

  def handle_call({:setup, build}, _from, state) do
    t0 = System.monotonic_time()

    with {:ok, state, modules} <- compile(state, build),
         {:ok, state} <- load(state, modules, build),
         {:ok, state} <- start_roots(state),
         {:ok, state} <- start_watch(state, state.config.auto_reload) do
      state = status(state, :running)
      publish(state, listed: true)

      Telemetry.emit(:manager, :created, %{duration: System.monotonic_time() - t0}, %{
        sandbox_id: state.id,
        app_name: state.info.app_name,
        supervisor_module: state.info.supervisor_module
      })

      audit(state, :created, %{
        sandbox_path: state.config.sandbox_path,
        profile: state.config.security_profile.isolation_level,
        modules: map_size(state.store.modules)
      })

      {:reply, {:ok, public_info(state)}, state}
    else
      {:error, reason, state} ->
        # A failed create leaves nothing behind (:terminate).
        {:ok, _strategy} = ErrorHandler.handle_error(reason, error_context(state, :create))
        audit(state, :refused, %{operation: :create, reason: reason})
        state = teardown(state)
        Manager.release(state.id, self())

        Telemetry.emit(:manager, :create_failed, %{duration: System.monotonic_time() - t0}, %{
          sandbox_id: state.id,
          reason: reason
        })

        {:stop, :normal, {:error, reason}, state}
    end
  end

  def handle_call(:restart, _from, state) do
    state = %{state | last_reload: nil} |> cancel_rollback() |> stop_roots()

    case start_roots(status(state, :starting)) do
      {:ok, state} ->
        state = restarted(state)
        emit_restarted(state, :requested)
        {:reply, {:ok, public_info(state)}, state}

      {:error, reason, state} ->
        state = failed(state, reason)
        {:reply, {:error, reason}, state}
    end
  end

  def handle_call(:destroy, _from, state) do
    t0 = System.monotonic_time()
    publish(status(state, :stopping), listed: false)
    state = state |> cancel_rollback() |> teardown()
    Manager.release(state.id, self())

    Telemetry.emit(:manager, :destroyed, %{duration: System.monotonic_time() - t0}, %{
      sandbox_id: state.id
    })

    audit(state, :destroyed, %{})

    {:stop, :normal, :ok, state}
  end

  def handle_call(:group_leader, _from, state), do: {:reply, state.group_leader, state}

  def handle_call({:app, :start, app}, _from, state) do
    {reply, state} = start_app(state, app)
    {:reply, reply, state}
  end

  def handle_call({:app, :stop, app}, _from, state) do
    {reply, state} = stop_app(state, app)
    {:reply, reply, state}
  end

  def handle_call({:app, :started}, _from, state), do: {:reply, state.started, state}

  # Reloads and rollbacks are [:sandbox, :reload, _] spans (Sandbox.Telemetry).
  def handle_call({:reload, _beams, opts} = request, from, state) do
    meta = %{sandbox_id: state.id, kind: :reload, trigger: Keyword.get(opts, :trigger, :api)}
    reload_span(meta, fn -> do_reload(request, from, state) end)
  end

  def handle_call({:rollback, _module, _version} = request, from, state) do
    meta = %{sandbox_id: state.id, kind: :rollback, trigger: :api}
    reload_span(meta, fn -> do_rollback(request, from, state) end)
  end

  def handle_call({:auto_reload, on?}, _from, state) do
    case start_watch(state, on?, true) do
      {:ok, state} ->
        publish(state, listed: true)
        {:reply, :ok, state}

      {:error, reason, state} ->
        {:reply, {:error, reason}, state}
    end
  end

  def handle_call({:versions, request}, _from, state) do
    store = state.store

    reply =
      case request do
        {:current_version, module} -> Store.current_version(store, module)
        {:versions, module} -> Store.versions(store, module)
        :dependency_graph -> {:ok, Store.dependency_graph(store)}
        {:reload_order, modules} -> Store.reload_order(store, modules)
        :project -> {:ok, {state.config.sandbox_path, compile_opts(state.config)}}
        # Sandbox.Cluster: each module's current checksum, stamp and load
        # time, and the current BEAMs of some modules.
        :cluster -> {:ok, cluster_versions(state)}
        {:current_beams, modules} -> {:ok, current_beams(store, modules)}
        # Sandbox.RuntimeCode: every module's current BEAM (original
        # names), the project and its compile options.
        :runtime_code -> {:ok, runtime_code(state)}
      end

    {:reply, reply, state}
  end

  ## Cluster: two-phase changes

  def handle_call({:prepare, ref, beams, opts, coordinator, lease}, _from, state) do
    t0 = System.monotonic_time()

    case reload_change(state, beams, opts) do
      {:change, change, opts} ->
        state = cancel_rollback(state)
        previous = state.info.status
        env = change_env(state, opts)
        publish(status(state, :reloading), listed: true)

        case StatePreservation.prepare(change, env) do
          {:ok, handle} ->
            prepared = %{
              ref: ref,
              change: change,
              handle: handle,
              opts: opts,
              env: env,
              previous: previous,
              t0: t0,
              monitor: Process.monitor(coordinator),
              timer: Process.send_after(self(), {:prepared_expired, ref}, lease)
            }

            state = %{status(state, :reloading) | prepared: prepared, aborted: nil}
            publish(state, listed: true)
            {:reply, {:ok, :prepared, counter(state)}, state}

          {:error, _} = error ->
            meta = %{trigger: :cluster, t0: t0}
            {reply, state} = changed(state, change, error, opts, env, meta, previous)
            {:reply, reply, state}
        end

      {:ok, :unchanged} ->
        {:reply, {:ok, :unchanged, counter(state)}, state}

      {:error, reason} ->
        emit_failed(state.id, reason, t0, :cluster, [])
        audit(state, :refused, %{operation: :reload, reason: reason})
        {:reply, {:error, reason}, state}
    end
  end

  # The commit is a [:sandbox, :reload, _] span, as a reload is.
  def handle_call({:commit, ref, _stamp} = request, from, %{prepared: %{ref: ref}} = state) do
    meta = %{sandbox_id: state.id, kind: :reload, trigger: :cluster}
    reload_span(meta, fn -> do_commit(request, from, state) end)
  end

  def handle_call({:commit, ref, _stamp}, _from, state) do
    case state.aborted do
      {^ref, why} -> {:reply, {:error, {:aborted, why}}, state}
      _ -> {:reply, {:error, :not_prepared}, state}
    end
  end

  def handle_call({:abort, ref}, _from, %{prepared: %{ref: ref}} = state),
    do: {:reply, :ok, abort_prepared(state, :aborted)}

  def handle_call({:abort, _ref}, _from, state), do: {:reply, :ok, state}

  def handle_call({:revert, ref, stamp}, _from, %{cluster_last: {ref, applied, timeout}} = state) do
    {:ok, change} = ChangeSet.revert(state.store, applied)
    meta = %{reason: :cluster_rollback, t0: System.monotonic_time(), stamp: stamp}

    {reply, state} =
      change(%{state | cluster_last: nil}, change, [suspend_timeout: timeout], meta)

    {:reply, with({:ok, _} <- reply, do: {:ok, :rolled_back}), state}
  end

  def handle_call({:revert, _ref, _stamp}, _from, state),
    do: {:reply, {:ok, :not_committed}, state}

  def handle_call(:export, _from, state), do: {:reply, {:ok, export_state(state)}, state}

  defp reload_span(meta, fun) do
    Telemetry.span(:reload, meta, fn ->
      {:reply, reply, _state} = result = fun.()
      {result, Telemetry.outcome(reply)}
    end)
  end

  defp do_reload({:reload, beams, opts}, _from, state) do
    {trigger, opts} = Keyword.pop(opts, :trigger, :api)
    {stamps, opts} = Keyword.pop(opts, :cluster_stamps)
    t0 = System.monotonic_time()

    case reload_change(state, beams, opts) do
      {:change, change, opts} ->
        meta = %{trigger: trigger, t0: t0, stamp: stamps}
        {reply, state} = change(state, change, opts, meta)
        {:reply, reply, state}

      {:ok, :unchanged} ->
        {:reply, {:ok, :unchanged}, state}

      {:error, reason} ->
        emit_failed(state.id, reason, t0, trigger, [])
        audit(state, :refused, %{operation: :reload, reason: reason})
        {:reply, {:error, reason}, state}
    end
  end

  defp do_rollback({:rollback, module, version}, _from, state) do
    t0 = System.monotonic_time()

    case ChangeSet.rollback(state.store, module, version) do
      {:ok, change} ->
        {reply, state} = change(state, change, [], %{reason: :requested, t0: t0})
        {:reply, reply, state}

      {:error, reason} ->
        {:reply, {:error, reason}, state}
    end
  end

  defp do_commit({:commit, ref, stamp}, _from, %{prepared: p} = state) do
    state = release_slot(state)
    result = StatePreservation.commit(p.handle)
    meta = %{trigger: :cluster, t0: p.t0, stamp: stamp}
    {reply, state} = changed(state, p.change, result, p.opts, p.env, meta, p.previous)

    state =
      case reply do
        {:ok, _} -> %{state | cluster_last: {ref, p.change, p.env.timeout}}
        _ -> state
      end

    {:reply, reply, state}
  end

  # A violation under :high (Sandbox.ErrorHandler's :isolate): every
  # process goes, the sandbox stays for inspection with status :error.
  @impl true
  def handle_cast(msg, %{prepared: %{}} = state),
    do: handle_cast(msg, abort_prepared(state, :stopped))

  def handle_cast({:security_stop, reason}, state) do
    state = state |> cancel_rollback() |> stop_roots()
    {:noreply, failed(%{state | last_reload: nil}, reason)}
  end

  # A prepared change is aborted when a root exits, its coordinator goes
  # away, one of its suspended processes dies, or its lease runs out.
  @impl true
  def handle_info({:EXIT, pid, reason} = msg, %{prepared: %{}} = state) do
    if List.keymember?(state.roots, pid, 1),
      do: handle_info(msg, abort_prepared(state, {:root_exited, reason})),
      else: {:noreply, state}
  end

  def handle_info({:DOWN, ref, :process, _, reason}, %{prepared: %{monitor: ref}} = state),
    do: {:noreply, abort_prepared(state, {:coordinator_down, reason})}

  def handle_info({:DOWN, ref, :process, pid, reason}, %{prepared: %{} = p} = state)
      when is_map_key(p.handle.monitors, ref),
      do: {:noreply, abort_prepared(state, {:process_died, pid, reason})}

  def handle_info({:prepared_expired, ref}, %{prepared: %{ref: ref}} = state),
    do: {:noreply, abort_prepared(state, :expired)}

  def handle_info(:replay_deferred, state), do: replay(state)

  def handle_info({:EXIT, pid, reason}, state) do
    if List.keymember?(state.roots, pid, 1) do
      {:noreply, root_died(state, pid, reason)}
    else
      {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, pid, reason}, %{rollback: %{refs: refs}} = state)
      when is_map_key(refs, ref) do
    if crash?(reason) do
      {:noreply, auto_rollback(state, {:crash, pid, reason})}
    else
      {:noreply, %{state | rollback: %{state.rollback | refs: Map.delete(refs, ref)}}}
    end
  end

  def handle_info({:rollback_window_closed, tref}, %{rollback: %{timer: tref}} = state),
    do: {:noreply, cancel_rollback(state)}

  # Resource limits: the breach recorded by the monitor for this run (a
  # message from an earlier run finds none, or no processes to stop).
  def handle_info({:limit_exceeded, _limit, _usage}, state) do
    case ResourceMonitor.breach(state.id) do
      {limit, usage} when state.group_leader != nil -> {:noreply, limit_stop(state, limit, usage)}
      _ -> {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    # A crash of the instance itself must not leave the sandbox behind.
    if Store.loaded(state.store) != [] or state.roots != [], do: teardown(state)
    :ok
  end

  ## Compile and load

  # A build from another node (Sandbox.Cluster): nothing to compile.
  defp compile(state, %{} = build), do: resolve_target(state, build)

  defp compile(state, nil) do
    publish(status(state, :compiling))
    config = state.config

    case IsolatedCompiler.compile_sandbox(config.sandbox_path, compile_opts(config)) do
      {:ok, info} -> resolve_target(state, info)
      {:error, reason} -> {:error, reason, state}
    end
  end

  defp resolve_target(state, info) do
    modules = Enum.map(info.modules, &elem(&1, 0))
    app = info.app
    state = %{state | app: app}

    cond do
      app && app.name == state.target ->
        Env.load(state.env_id, app.name, envs(app, info))
        sup = app.mod && elem(app.mod, 0)
        {:ok, set_target(state, :application, app.name, sup), info.modules}

      state.target in modules ->
        Env.load(state.env_id, app && app.name, if(app, do: envs(app, info), else: info.config))
        {:ok, set_target(state, :supervisor, app && app.name, state.target), info.modules}

      true ->
        {:error, {:unknown_module_or_app, state.target}, state}
    end
  end

  defp set_target(state, mode, app_name, sup) do
    %{state | mode: mode, info: %{state.info | app_name: app_name, supervisor_module: sup}}
  end

  # The sandbox owns its application's environment, its path dependencies'
  # and every application its config configures.
  defp envs(app, info) do
    own = [{app.name, info.app_env}]

    deps =
      for dep <- app.path_deps,
          do: {dep.name, Keyword.merge(dep.env, Keyword.get(info.config, dep.name, []))}

    configured =
      for {name, kw} <- info.config,
          name not in [app.name | Enum.map(deps, &elem(&1, 0))],
          do: {name, kw}

    own ++ deps ++ configured
  end

  # Create: a change from nothing, with the shims.
  defp load(state, modules, build) do
    publish(status(state, :starting))
    shim_renames = %{__sandbox_shim_id__: state.env_id}

    with {:ok, change} <- ChangeSet.create(state.store, modules, @shims, shim_renames),
         :ok <- ensure_host_apps(state),
         {:ok, state, _migrated} <-
           apply_and_record(state, change, %{group_leader: nil}, build && build[:stamps]) do
      Env.put_specs(state.env_id, app_specs(state))
      {:ok, state}
    else
      {:error, reason} -> {:error, reason, state}
      {:error, _reason, _state} = error -> error
    end
  end

  # Applies a change and records it; then brings the consolidated host
  # protocols the sandbox's types implement up to date (Sandbox.Protocols),
  # reverting the change if that fails.
  defp apply_and_record(state, change, env, stamp \\ nil),
    do: record_applied(state, change, StatePreservation.apply(change, env), env, stamp)

  # The same once the change is applied (`result`: at once, or the commit
  # of a prepared change), recording `stamp` (see `record/3`).
  defp record_applied(state, change, result, env, stamp) do
    case result do
      {:ok, %{migrated: n}} ->
        state = record(state, change, stamp)

        case Sandbox.Protocols.sync(change.from_protocols, change.protocols) do
          :ok ->
            {:ok, state, n}

          {:error, reason} ->
            {:ok, revert} = ChangeSet.revert(state.store, change)
            _ = StatePreservation.apply(revert, env)
            {:error, reason, %{state | store: Store.record(state.store, revert)}}
        end

      {:error, reason} ->
        {:error, reason, state}
    end
  end

  # The sandbox's own applications as `:application.get_all_key/1` gives
  # them (modules and `mod` under their relocated names, which is what
  # callers go on to call), plus `dir`, the application's directory.
  defp app_specs(%{app: nil}), do: []

  defp app_specs(%{app: app, store: store}) do
    dep_names = Enum.map(app.path_deps, & &1.name)

    for spec <- [app | app.path_deps] do
      deps = if spec == app, do: dep_names, else: []

      {spec.name,
       [
         description: ~c"#{spec.name}",
         vsn: ~c"#{spec.version}",
         id: [],
         modules: Enum.map(spec.modules, &Map.get(store.renames, &1, &1)),
         registered: spec.registered,
         applications:
           Enum.uniq(
             [:kernel, :stdlib, :elixir] ++ (spec.applications || spec.extra_applications ++ deps)
           ),
         included_applications: spec.included_applications,
         env: spec.env,
         mod: with({m, a} <- spec.mod, do: {Map.get(store.renames, m, m), a}) || [],
         dir: spec.dir
       ]}
    end
  end

  # OTP and host applications the sandbox needs are shared: started in the host.
  defp ensure_host_apps(%{app: nil}), do: :ok

  defp ensure_host_apps(%{app: app}) do
    own = MapSet.new([app.name | Enum.map(app.path_deps, & &1.name)])

    needed =
      for spec <- [app | app.path_deps],
          name <- List.wrap(spec.applications) ++ spec.extra_applications,
          not MapSet.member?(own, name),
          uniq: true,
          do: name

    Enum.find_value(needed, :ok, fn name ->
      case Application.ensure_all_started(name) do
        {:ok, _} -> nil
        {:error, reason} -> {:error, {:host_application_failed, name, reason}}
      end
    end)
  end

  # The sandbox needs only the compiled modules: nothing stays on disk. The
  # change set validates every BEAM it loads, so the compiler need not.
  defp compile_opts(config) do
    [
      compile_timeout: config.compile_timeout,
      compile_limits: config.compile_limits,
      write_artifacts: false,
      validate_beams: false,
      confine: Sandbox.Config.compile_confinement(config.security_profile)
    ]
  end

  ## Changes

  # The modules a compile's change removes (only the sandbox's own).
  defp removing(_store, nil), do: []

  # Besides what the compile reports removed, a module of the sandbox whose
  # source is one of the changed files and that the compile did not produce
  # is gone from its file (the compile's report is relative to the
  # project's last build, which another sandbox may have moved on).
  defp removing(store, {:remove, modules, files, produced}) do
    files = MapSet.new(files)
    produced = MapSet.new(produced)

    from_files =
      for {m, slot} <- store.modules,
          not MapSet.member?(produced, m),
          MapSet.member?(files, source(slot.parsed)),
          do: m

    Enum.uniq(Enum.filter(modules, &Map.has_key?(store.modules, &1)) ++ from_files)
  end

  defp removing(store, {:keep_only, modules}) do
    keep = MapSet.new(modules)
    for {m, _} <- store.modules, not MapSet.member?(keep, m), do: m
  end

  defp source(parsed) do
    case Keyword.get(List.wrap(parsed.compile_info), :source) do
      source when is_list(source) -> List.to_string(source)
      _ -> nil
    end
  end

  # Applies `change` with the reload options `opts` and records it. `meta`
  # holds `t0`, and `trigger` (a reload) or `reason` (a rollback).
  defp change(state, change, opts, meta) do
    state = cancel_rollback(state)
    previous = state.info.status
    publish(status(state, :reloading), listed: true)
    env = change_env(state, opts)
    changed(state, change, StatePreservation.apply(change, env), opts, env, meta, previous)
  end

  defp change_env(state, opts) do
    %{
      group_leader: state.group_leader,
      migration: migration(opts, state.config),
      timeout: Keyword.get(opts, :suspend_timeout, 5_000)
    }
  end

  # What follows applying `change` (`result`), whether at once or as the
  # commit of a prepared change: recorded (with `meta[:stamp]`), events,
  # audit, the rollback window; or the failure reported. The status goes
  # back to `previous`.
  defp changed(state, change, result, opts, env, meta, previous) do
    {reply, state} =
      case record_applied(state, change, result, env, meta[:stamp]) do
        {:ok, state, n} ->
          state = %{state | last_reload: nil, cluster_last: nil}
          emit_applied(state.id, change, n, meta)

          audit(state, change.kind, %{
            modules: ChangeSet.modules(change),
            versions: ChangeSet.versions(change)
          })

          state =
            if change.kind == :reload,
              do: %{state | last_reload: %{change: change, at: now_ms()}},
              else: state

          reply = if change.kind == :rollback, do: {:ok, :rolled_back}, else: {:ok, :hot_reloaded}
          {reply, watch_rollback(state, change, opts, env)}

        {:error, reason, state} ->
          # Everything was restored: the last good code runs (:rollback).
          op = if change.kind == :reload, do: :reload, else: :rollback
          ErrorHandler.handle_error(reason, error_context(state, op))
          audit(state, :refused, %{operation: op, reason: reason})
          modules = ChangeSet.modules(change)

          case meta do
            %{trigger: trigger} ->
              emit_failed(state.id, reason, meta.t0, trigger, modules)

            %{reason: _} ->
              emit_failed(state.id, {:rollback_failed, reason}, meta.t0, :api, modules)
          end

          {{:error, reason}, state}
      end

    state = status(state, previous)
    publish(state, listed: true)
    {reply, state}
  end

  # The change a reload makes: `{:change, change, opts}` (`opts` validated),
  # `{:ok, :unchanged}` or `{:error, reason}`. `opts` may hold `:removing`
  # (see `apply_compile/3`).
  defp reload_change(state, beams, opts) do
    {removing, opts} = Keyword.pop(opts, :removing)
    # Sandbox.RuntimeCode: modules created at run time relink nothing.
    {relink, opts} = Keyword.pop(opts, :relink, true)
    remove = removing(state.store, removing)

    with {:ok, opts} <- Sandbox.Config.reload_options(opts) do
      case {List.wrap(beams), remove, removing} do
        # A compile that changed nothing of this sandbox.
        {[], [], {_, _}} -> {:ok, :unchanged}
        {beams, remove, _} -> ChangeSet.reload(state.store, beams, remove: remove, relink: relink)
      end
      |> case do
        {:ok, %ChangeSet{} = change} -> {:change, change, opts}
        other -> other
      end
    end
  end

  # Records an applied change in the store, and the stamp of every module it
  # added or changed: `stamp` (one for all), `%{module => stamp}` (missing
  # ones get a local stamp), or `nil` (a local stamp).
  defp record(state, change, stamp) do
    local = {counter(state) + 1, System.os_time(:microsecond), node()}
    removed = Enum.map(change.removed, & &1.module)

    stamps =
      change
      |> ChangeSet.versions()
      |> Map.keys()
      |> Enum.reduce(Map.drop(state.stamps, removed), fn m, acc ->
        Map.put(acc, m, if(is_map(stamp), do: Map.get(stamp, m, local), else: stamp || local))
      end)

    %{state | store: Store.record(state.store, change), stamps: stamps}
  end

  # The highest stamp counter of the sandbox.
  defp counter(state) do
    state.stamps |> Map.values() |> Enum.map(&elem(&1, 0)) |> Enum.max(fn -> 0 end)
  end

  defp cluster_versions(state) do
    for {module, slot} <- state.store.modules, into: %{} do
      current = Store.current(state.store, module)

      {module,
       %{
         version: slot.current,
         checksum: current.checksum,
         loaded_at: current.loaded_at,
         stamp: Map.get(state.stamps, module, {0, 0, node()})
       }}
    end
  end

  defp runtime_code(state) do
    beams = current_beams(state.store, Map.keys(state.store.modules))

    %{
      beams: Enum.to_list(beams),
      root: state.config.sandbox_path,
      opts: compile_opts(state.config)
    }
  end

  defp current_beams(store, modules) do
    for m <- modules,
        current = Store.current(store, m),
        current != nil,
        into: %{},
        do: {m, current.beam_data}
  end

  # The sandbox as it is now, for a copy on another node: the current
  # versions, the application spec, the current environment, the stamps
  # and the create options.
  defp export_state(state) do
    apps =
      for [app] <- :ets.match(Env.table(), {{state.env_id, :"$1"}, true}),
          do: {app, Env.all(state.env_id, app)}

    own = state.app && state.app.name
    modules = for {m, _} <- state.store.modules, do: {m, Store.current(state.store, m).beam_data}
    config = state.config

    options = [
      sandbox_path: config.sandbox_path,
      supervisor_args: config.supervisor_args,
      compile_timeout: config.compile_timeout,
      compile_limits: config.compile_limits,
      resource_limits: config.resource_limits,
      security_profile: config.security_profile,
      state_migration: config.state_migration,
      max_restarts: config.max_restarts,
      max_seconds: config.max_seconds,
      max_versions: config.max_versions,
      capture_output: config.capture_output
    ]

    %{
      target: state.target,
      options: options,
      build: %{
        modules: modules,
        app: state.app,
        app_env: (own && Keyword.get(apps, own)) || [],
        config: Enum.reject(apps, fn {app, _} -> app == own end),
        stamps: state.stamps
      }
    }
  end

  # Empties the prepared slot (its lease and coordinator monitor go) and
  # lets the changes that waited for it run.
  defp release_slot(%{prepared: p} = state) do
    Process.cancel_timer(p.timer)
    Process.demonitor(p.monitor, [:flush])
    if state.deferred != [], do: send(self(), :replay_deferred)
    %{state | prepared: nil}
  end

  defp abort_prepared(%{prepared: p} = state, why) do
    state = release_slot(state)
    :ok = StatePreservation.abort(p.handle)
    emit_failed(state.id, {:aborted, why}, p.t0, :cluster, ChangeSet.modules(p.change))
    state = status(%{state | aborted: {p.ref, why}}, p.previous)
    publish(state, listed: true)
    state
  end

  # Runs the calls that waited for a prepared change, in order, until one
  # of them prepares a change again.
  defp replay(%{deferred: []} = state), do: {:noreply, state}
  defp replay(%{prepared: %{}} = state), do: {:noreply, state}

  defp replay(%{deferred: [{msg, from} | rest]} = state) do
    case handle_call(msg, from, %{state | deferred: rest}) do
      {:reply, reply, state} ->
        GenServer.reply(from, reply)
        replay(state)

      {:noreply, state} ->
        replay(state)

      {:stop, reason, reply, state} ->
        GenServer.reply(from, reply)
        {:stop, reason, state}
    end
  end

  defp migration(opts, config) do
    case Keyword.get(opts, :state_migration, :config) do
      :config -> config.state_migration
      other -> other
    end
  end

  defp emit_applied(id, change, migrated, meta) do
    measurements = %{duration: System.monotonic_time() - meta.t0, processes: migrated}
    base = %{sandbox_id: id, modules: ChangeSet.modules(change)}

    case meta do
      %{trigger: trigger} ->
        Telemetry.emit(
          :reload,
          :reloaded,
          measurements,
          Map.merge(base, %{
            versions: ChangeSet.versions(change),
            added: Enum.map(change.added, & &1.module),
            removed: Enum.map(change.removed, & &1.module),
            trigger: trigger
          })
        )

      %{reason: reason} ->
        versions = Map.new(change.changed, &{&1.module, &1.to})

        Telemetry.emit(
          :reload,
          :rolled_back,
          measurements,
          Map.merge(base, %{versions: versions, reason: reason})
        )
    end
  end

  defp emit_failed(id, reason, t0, trigger, modules) do
    Telemetry.emit(:reload, :failed, %{duration: System.monotonic_time() - t0}, %{
      sandbox_id: id,
      reason: reason,
      trigger: trigger,
      modules: modules
    })
  end

  # With a rollback window, every process of the sandbox is monitored until
  # the window closes: the first crash reverts the change.
  defp watch_rollback(state, change, opts, env) do
    window = Keyword.get(opts, :rollback_window, 0)

    if window > 0 and change.kind == :reload do
      members = if state.group_leader, do: GroupLeader.members(state.group_leader), else: []
      refs = Map.new(members, &{Process.monitor(&1), &1})
      tref = make_ref()
      Process.send_after(self(), {:rollback_window_closed, tref}, window)
      %{state | rollback: %{change: change, refs: refs, timer: tref, timeout: env.timeout}}
    else
      state
    end
  end

  defp auto_rollback(state, reason) do
    %{change: applied, timeout: timeout} = state.rollback
    state = cancel_rollback(state)
    {:ok, change} = ChangeSet.revert(state.store, applied)
    # The create option's migration (an arity-3 one migrates down).
    {_reply, state} =
      change(state, change, [suspend_timeout: timeout], %{
        reason: reason,
        t0: System.monotonic_time()
      })

    state
  end

  defp cancel_rollback(%{rollback: nil} = state), do: state

  defp cancel_rollback(%{rollback: %{refs: refs}} = state) do
    for {ref, _} <- refs, do: Process.demonitor(ref, [:flush])
    %{state | rollback: nil}
  end

  defp crash?(reason), do: reason not in [:normal, :shutdown, :noproc] and not shutdown?(reason)

  defp shutdown?({:shutdown, _}), do: true
  defp shutdown?(_), do: false

  ## Automatic reload

  defp start_watch(state, on?, catch_up \\ false) do
    if on? == state.info.auto_reload_enabled do
      {:ok, state}
    else
      result =
        if on?,
          do: FileWatcher.watch(state.id, self(), state.config.sandbox_path, catch_up: catch_up),
          else: FileWatcher.unwatch(state.id)

      case result do
        :ok -> {:ok, %{state | info: %{state.info | auto_reload_enabled: on?}}}
        {:error, reason} -> {:error, reason, state}
      end
    end
  end

  ## Roots

  defp start_roots(state) do
    {:ok, gl} =
      GroupLeader.start_link(state.id,
        upstream: Process.group_leader(),
        capture: state.config.capture_output
      )

    state = %{state | group_leader: gl, started_at: System.monotonic_time(:millisecond)}
    :ok = ResourceMonitor.attach(state.id, gl, state.config.resource_limits)
    own_gl = Process.group_leader()
    Process.group_leader(self(), gl)

    try do
      Enum.reduce_while(root_starts(state), {:ok, state}, fn {label, fun}, {:ok, state} ->
        case start_root(state, label, fun) do
          {:ok, state} ->
            {:cont, {:ok, state}}

          {:error, reason} ->
            {:halt, {:error, ResourceMonitor.limit_reason(state.id, reason), state}}
        end
      end)
    after
      Process.group_leader(self(), own_gl)
    end
    |> first_sample()
  end

  # One root (an application's `mod` callback, or the supervisor), started
  # from this process (whose group leader is the sandbox's at that point);
  # an application without a `mod` callback is started with no process.
  defp start_root(state, label, nil), do: {:ok, %{state | started: [label | state.started]}}

  defp start_root(state, label, fun) do
    case safe_start(fun) do
      {:ok, pid} when is_pid(pid) ->
        {:ok, %{state | roots: state.roots ++ [{label, pid}], started: [label | state.started]}}

      :ignore ->
        {:ok, %{state | started: [label | state.started]}}

      {:error, reason} ->
        {:error, {:start_failed, label, reason}}
    end
  end

  # An own application started or stopped from inside the sandbox
  # (Application.start/stop through its shim).
  defp start_app(state, app) do
    case List.keyfind(root_starts(state), app, 0) do
      nil ->
        {{:error, {:not_loaded, app}}, state}

      _ when state.group_leader == nil ->
        {{:error, {:not_started, :sandbox}}, state}

      {^app, fun} ->
        if app in state.started do
          {{:error, {:already_started, app}}, state}
        else
          own_gl = Process.group_leader()
          Process.group_leader(self(), state.group_leader)

          try do
            case start_root(state, app, fun) do
              {:ok, state} -> {:ok, state}
              {:error, reason} -> {{:error, reason}, state}
            end
          after
            Process.group_leader(self(), own_gl)
          end
        end
    end
  end

  defp stop_app(state, app) do
    if app in state.started do
      case List.keyfind(state.roots, app, 0) do
        {^app, pid} -> shutdown(pid)
        nil -> :ok
      end

      {:ok,
       %{state | roots: List.keydelete(state.roots, app, 0), started: state.started -- [app]}}
    else
      {{:error, {:not_started, app}}, state}
    end
  end

  # The first sample of the run is taken as soon as the roots are up: a
  # sandbox over its limits from the start does not start.
  # A regular sample may have run while the roots started (and seen only
  # some of their processes): the first reported sample is taken now.
  defp first_sample({:ok, state}) do
    _ = ResourceMonitor.sample(state.id)

    case ResourceMonitor.breach(state.id) do
      {limit, _usage} -> {:error, {:limit_exceeded, limit}, state}
      nil -> {:ok, state}
    end
  end

  defp first_sample(error), do: error

  defp root_starts(%{mode: :supervisor} = state) do
    sup = Map.fetch!(state.store.renames, state.target)
    [{state.target, fn -> sup.start_link(state.config.supervisor_args) end}]
  end

  defp root_starts(%{mode: :application, app: app} = state) do
    for spec <- app.path_deps ++ [app] do
      case spec.mod do
        {mod, args} ->
          relocated = Map.fetch!(state.store.renames, mod)
          {spec.name, fn -> relocated.start(:normal, args) end}

        _ ->
          {spec.name, nil}
      end
    end
  end

  defp safe_start(fun) do
    case fun.() do
      {:ok, pid} -> {:ok, pid}
      {:ok, pid, _state} -> {:ok, pid}
      :ignore -> :ignore
      {:error, reason} -> {:error, reason}
      other -> {:error, {:bad_return, other}}
    end
  catch
    kind, reason -> {:error, {kind, reason, __STACKTRACE__}}
  end

  # What a crash of a root means is the ErrorHandler's decision: within the
  # restart window after a reload, that reload is reverted (the last good
  # code) and the sandbox restarted; otherwise a restart, within the
  # restart intensity; beyond it, the sandbox stops with status :error.
  defp root_died(state, pid, reason) do
    case ResourceMonitor.breach(state.id) do
      {limit, usage} ->
        limit_stop(%{state | roots: List.keydelete(state.roots, pid, 1)}, limit, usage)

      nil ->
        restart_or_fail(state, pid, reason)
    end
  end

  defp limit_stop(state, limit, usage) do
    state = state |> cancel_rollback() |> stop_roots()
    state = failed(%{state | last_reload: nil}, {:limit_exceeded, limit})
    context = ErrorHandler.context(state.id, :run, :resource_monitor, %{usage: usage})
    ErrorHandler.handle_error({:limit_exceeded, limit}, context)
    ResourceMonitor.emit_exceeded(state.id, limit, usage, state.config.resource_limits)
    state
  end

  defp restart_or_fail(state, pid, reason) do
    now = now_ms()
    window = state.config.max_seconds * 1000
    recent = [now | Enum.filter(state.restarts, &(now - &1 < window))]
    state = stop_roots(%{state | roots: List.keydelete(state.roots, pid, 1), restarts: recent})

    meta = %{
      since_reload: state.last_reload && now - state.last_reload.at,
      window: window,
      restarts: length(recent),
      max_restarts: state.config.max_restarts
    }

    case ErrorHandler.handle_error({:root_crashed, reason}, error_context(state, :run, meta)) do
      {:ok, :rollback} -> state |> revert_last_reload(reason) |> restart_roots(reason)
      {:ok, :restart} -> restart_roots(state, reason)
      _terminate -> give_up(state, reason)
    end
  end

  defp revert_last_reload(%{last_reload: %{change: applied}} = state, reason) do
    t0 = System.monotonic_time()
    {:ok, change} = ChangeSet.revert(state.store, applied)
    state = %{state | last_reload: nil}

    # The roots are stopped: no process to suspend or migrate.
    case apply_and_record(state, change, %{group_leader: nil}) do
      {:ok, state, _} ->
        emit_applied(state.id, change, 0, %{reason: {:root_crashed, reason}, t0: t0})
        state

      {:error, error, state} ->
        emit_failed(state.id, {:rollback_failed, error}, t0, :api, ChangeSet.modules(change))
        state
    end
  end

  defp restart_roots(state, reason) do
    case start_roots(state) do
      {:ok, state} ->
        state = restarted(state)
        emit_restarted(state, reason)
        state

      {:error, start_reason, state} ->
        failed(state, start_reason)
    end
  end

  defp give_up(state, reason) do
    state = failed(state, {:max_restarts_exceeded, reason})

    Telemetry.emit(:manager, :failed, %{restart_count: state.info.restart_count}, %{
      sandbox_id: state.id,
      reason: reason
    })

    state
  end

  defp now_ms, do: System.monotonic_time(:millisecond)

  # Refusals are on disk before the operation returns; the rest is written
  # in the background.
  defp audit(state, :refused, fields),
    do: SecurityController.audit(state.id, :refused, fields, state.config.security_profile)

  defp audit(state, event, fields),
    do: SecurityController.audit_async(state.id, event, fields, state.config.security_profile)

  defp error_context(state, operation, meta \\ %{}),
    do: ErrorHandler.context(state.id, operation, :instance, meta)

  defp restarted(state) do
    info = %{state.info | restart_count: state.info.restart_count + 1, error: nil}
    state = status(%{state | info: info}, :running)
    publish(state, listed: true)
    state
  end

  defp failed(state, reason) do
    state = status(%{state | info: %{state.info | error: reason}}, :error)
    publish(state, listed: true)
    state
  end

  defp emit_restarted(state, reason) do
    Telemetry.emit(:manager, :restarted, %{restart_count: state.info.restart_count}, %{
      sandbox_id: state.id,
      reason: reason
    })
  end

  # Stops the roots (shutdown, then kill), then every process left with the
  # sandbox's group leader, then the group leader itself.
  defp stop_roots(state) do
    ResourceMonitor.detach(state.id)
    for {_label, pid} <- state.roots, do: shutdown(pid)

    if gl = state.group_leader do
      GroupLeader.kill_members(gl)
      stop_group_leader(gl)
    end

    %{state | roots: [], started: [], group_leader: nil}
  end

  defp shutdown(pid) do
    Process.exit(pid, :shutdown)

    receive do
      {:EXIT, ^pid, _} -> :ok
    after
      5_000 ->
        Process.exit(pid, :kill)

        receive do
          {:EXIT, ^pid, _} -> :ok
        end
    end
  end

  defp stop_group_leader(gl) do
    GroupLeader.stop(gl)

    receive do
      {:EXIT, ^gl, _} -> :ok
    after
      0 -> :ok
    end
  end

  # Everything of the sandbox goes: its watch, processes, modules (a change
  # to nothing), environment. Returns the state with nothing left to tear
  # down.
  defp teardown(state) do
    if state.info.auto_reload_enabled, do: FileWatcher.unwatch(state.id)
    state = stop_roots(state)
    destroy = ChangeSet.destroy(state.store)
    # The host protocols forget the sandbox's types before they go.
    _ = Sandbox.Protocols.sync(destroy.from_protocols, destroy.protocols)
    {:ok, _} = StatePreservation.apply(destroy, %{})
    Env.delete(state.env_id)
    SecurityController.unregister(state.id)
    erase_persistent_terms(state.id)

    %{
      state
      | store:
          Store.new(
            state.id,
            state.config.max_versions,
            state.config.security_profile,
            state.config.keep_atoms
          )
    }
  end

  # OTP's logger caches `{logger_config, Module}` in persistent_term the
  # first time a module logs (and libraries keep similar keys): every key
  # that names one of the sandbox's modules goes with it. Each erase makes
  # the VM scan the heaps of processes that may hold the old value, so only
  # the sandbox's own keys are erased.
  defp erase_persistent_terms(id) do
    prefixes = ["Elixir.Sandbox@#{id}.", "sandbox@#{id}@"]

    for {key, _} <- :persistent_term.get(),
        names_sandbox?(key, prefixes),
        do: :persistent_term.erase(key)

    :ok
  end

  defp names_sandbox?(key, prefixes) when is_atom(key),
    do: String.starts_with?(Atom.to_string(key), prefixes)

  defp names_sandbox?(key, prefixes) when is_tuple(key),
    do: key |> Tuple.to_list() |> Enum.any?(&(is_atom(&1) and names_sandbox?(&1, prefixes)))

  defp names_sandbox?(_key, _prefixes), do: false

  ## Info

  defp status(state, status),
    do: %{state | info: %{state.info | status: status, updated_at: DateTime.utc_now()}}

  defp publish(state, opts \\ []) do
    info =
      state
      |> public_info()
      |> Map.from_struct()
      |> Map.merge(%{
        group_leader: state.group_leader,
        started_at: state.started_at,
        listed: Keyword.get(opts, :listed, false)
      })

    Manager.put_info(state.id, info)
  end

  defp public_info(state) do
    root = with {_label, pid} <- List.last(state.roots), do: pid

    %{
      state.info
      | app_pid: if(state.mode == :application, do: root),
        supervisor_pid: root,
        resource_usage: ResourceMonitor.usage(state.id)
    }
  end
end
