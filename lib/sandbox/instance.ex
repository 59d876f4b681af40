defmodule Sandbox.Instance do
  @moduledoc """
  One live sandbox: the process that compiles, relocates, loads and starts
  it, watches its root supervisor, restarts it, and tears it down.

  Started by `Sandbox.create_sandbox/3` under `Sandbox.InstanceSupervisor`
  (temporary children), one per sandbox, so sandboxes never wait for each
  other. Its state is mirrored into the `Sandbox.Manager` table at every
  status change, so reading a sandbox's info never calls this process.

  The sandbox's root processes (its supervisor, or its applications' `mod`
  callbacks, path dependencies first) are started from this process with
  the sandbox's group leader, so everything they spawn belongs to the
  sandbox. They are linked to it: when one exits, the instance kills the
  rest and starts them again, up to `max_restarts` times within
  `max_seconds`; after that the sandbox's status is `:error`.

  It also holds the sandbox's module versions and serialises hot reloads
  and rollbacks (`Sandbox.ModuleVersionManager`, run in this process), with
  status `:reloading` while one runs.
  """

  use GenServer, restart: :temporary

  alias Sandbox.{Beam, Env, GroupLeader, IsolatedCompiler, Manager, ResourceMonitor, Telemetry}
  alias Sandbox.ModuleVersionManager, as: Versions

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

  @doc "Compiles, loads and starts the sandbox. On failure the instance cleans up and stops."
  @spec setup(pid) :: {:ok, map} | {:error, term}
  def setup(pid), do: GenServer.call(pid, :setup, :infinity)

  @doc "Stops and starts the sandbox's processes again, with the same code."
  @spec restart(pid) :: {:ok, map} | {:error, term}
  def restart(pid), do: GenServer.call(pid, :restart, :infinity)

  @doc "Destroys the sandbox: processes, modules, environment; then the instance stops."
  @spec destroy(pid) :: :ok
  def destroy(pid), do: GenServer.call(pid, :destroy, :infinity)

  @doc """
  Hot reloads `beams` (see `Sandbox.hot_reload_sandbox/3` and
  `Sandbox.ModuleVersionManager`).
  """
  @spec hot_reload(pid, binary | [binary], keyword) ::
          {:ok, :hot_reloaded | :unchanged} | {:error, term}
  def hot_reload(pid, beams, opts), do: GenServer.call(pid, {:reload, beams, opts}, :infinity)

  @doc "Rolls `module` back to a kept `version` (see `Sandbox.rollback_module/3`)."
  @spec rollback(pid, module, pos_integer) :: {:ok, :rolled_back} | {:error, term}
  def rollback(pid, module, version),
    do: GenServer.call(pid, {:rollback, module, version}, :infinity)

  @doc """
  Reads the version store: `{:current_version, module}`, `{:versions,
  module}`, `:dependency_graph`, `{:reload_order, modules}` or
  `:compile_opts` (the compile options of the sandbox's config).
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
      status: :initializing,
      error: nil,
      app: nil,
      app_name: nil,
      supervisor_module: nil,
      mode: nil,
      originals: [],
      renames: %{},
      redirects: %{},
      versions: nil,
      rollback: nil,
      loaded: [],
      group_leader: nil,
      roots: [],
      restarts: [],
      restart_count: 0,
      created_at: DateTime.utc_now(),
      started_at: nil
    }

    publish(state)
    {:ok, state}
  end

  @impl true
  def handle_call(:setup, _from, state) do
    t0 = System.monotonic_time()

    with {:ok, state} <- compile(state),
         {:ok, state} <- load(state),
         {:ok, state} <- start_roots(state) do
      state = %{state | status: :running}
      publish(state, listed: true)

      Telemetry.emit(
        :manager,
        :created,
        %{duration: System.monotonic_time() - t0},
        %{
          sandbox_id: state.id,
          app_name: state.app_name,
          supervisor_module: state.supervisor_module
        }
      )

      {:reply, {:ok, public_info(state)}, state}
    else
      {:error, reason, state} ->
        state = teardown(state)
        Manager.release(state.id, self())
        measurements = %{duration: System.monotonic_time() - t0}

        Telemetry.emit(:manager, :create_failed, measurements, %{
          sandbox_id: state.id,
          reason: reason
        })

        {:stop, :normal, {:error, reason}, state}
    end
  end

  def handle_call(:restart, _from, state) do
    state = state |> cancel_rollback() |> stop_roots()

    case start_roots(%{state | status: :starting}) do
      {:ok, state} ->
        state = %{state | status: :running, error: nil, restart_count: state.restart_count + 1}
        publish(state, listed: true)
        emit_restarted(state, :requested)
        {:reply, {:ok, public_info(state)}, state}

      {:error, reason, state} ->
        state = %{state | status: :error, error: reason}
        publish(state, listed: true)
        {:reply, {:error, reason}, state}
    end
  end

  def handle_call(:destroy, _from, state) do
    t0 = System.monotonic_time()
    publish(%{state | status: :stopping}, listed: false)
    state = state |> cancel_rollback() |> teardown()
    Manager.release(state.id, self())

    Telemetry.emit(:manager, :destroyed, %{duration: System.monotonic_time() - t0}, %{
      sandbox_id: state.id
    })

    {:stop, :normal, :ok, state}
  end

  def handle_call(:group_leader, _from, state), do: {:reply, state.group_leader, state}

  def handle_call({:reload, beams, opts}, _from, state) do
    state = cancel_rollback(state)
    status = state.status
    publish(%{state | status: :reloading}, listed: true)

    {reply, state} =
      case Versions.reload(context(state), beams, opts) do
        {:ok, :hot_reloaded, store, change} ->
          {{:ok, :hot_reloaded}, state |> put_versions(store) |> watch_rollback(change)}

        {:ok, :unchanged, _store} ->
          {{:ok, :unchanged}, state}

        {:error, reason, _store} ->
          {{:error, reason}, state}
      end

    publish(%{state | status: status}, listed: true)
    {:reply, reply, state}
  end

  def handle_call({:rollback, module, version}, _from, state) do
    state = cancel_rollback(state)
    status = state.status
    publish(%{state | status: :reloading}, listed: true)

    {reply, state} =
      case Versions.rollback(context(state), module, version) do
        {:ok, store} -> {{:ok, :rolled_back}, put_versions(state, store)}
        {:error, reason, _store} -> {{:error, reason}, state}
      end

    publish(%{state | status: status}, listed: true)
    {:reply, reply, state}
  end

  def handle_call({:versions, request}, _from, state) do
    reply =
      case request do
        {:current_version, module} -> Versions.current_version(state.versions, module)
        {:versions, module} -> Versions.versions(state.versions, module)
        :dependency_graph -> {:ok, Versions.dependency_graph(state.versions)}
        {:reload_order, modules} -> Versions.reload_order(state.versions, modules)
        :compile_opts -> {:ok, compile_opts(state.config)}
      end

    {:reply, reply, state}
  end

  @impl true
  def handle_info({:EXIT, pid, reason}, state) do
    if pid in state.roots do
      {:noreply, root_died(state, pid, reason)}
    else
      {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, pid, reason}, %{rollback: %{refs: refs}} = state)
      when is_map_key(refs, ref) do
    if crash?(reason) do
      change = state.rollback.change
      state = cancel_rollback(state)

      case Versions.auto_rollback(context(state), change, {:crash, pid, reason}) do
        {:ok, store} -> {:noreply, put_versions(state, store)}
        {:error, _reason, _store} -> {:noreply, state}
      end
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
    if state.loaded != [] or state.roots != [], do: teardown(state)
    :ok
  end

  ## Compile and load

  defp compile(state) do
    publish(%{state | status: :compiling})
    config = state.config

    case IsolatedCompiler.compile_sandbox(config.sandbox_path, compile_opts(config)) do
      {:ok, info} ->
        resolve_target(%{state | app: info.app, originals: info.modules}, info)

      {:error, reason} ->
        {:error, reason, state}
    end
  end

  defp resolve_target(state, info) do
    modules = Enum.map(state.originals, &elem(&1, 0))
    app = info.app

    cond do
      app && app.name == state.target ->
        Env.load(state.env_id, app.name, envs(app, info))
        state = %{state | mode: :application, app_name: app.name}
        {:ok, %{state | supervisor_module: app.mod && elem(app.mod, 0)}}

      state.target in modules ->
        Env.load(state.env_id, app && app.name, if(app, do: envs(app, info), else: info.config))

        {:ok,
         %{state | mode: :supervisor, app_name: app && app.name, supervisor_module: state.target}}

      true ->
        {:error, {:unknown_module_or_app, state.target}, state}
    end
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

  defp load(state) do
    publish(%{state | status: :starting})

    with {:ok, parsed} <- parse_all(state.originals),
         :ok <- check_protocols(parsed),
         {:ok, renames} <- Beam.rename_map(state.id, parsed),
         {:ok, shims, redirects} <- shims(state),
         {:ok, relocated} <- relocate_all(state.originals, renames, redirects),
         :ok <- ensure_host_apps(state),
         {:ok, loaded} <- load_all(shims ++ relocated) do
      versions =
        Versions.new(
          state.id,
          state.originals,
          parsed,
          renames,
          Map.new(relocated),
          state.config.max_versions
        )

      {:ok, %{state | renames: renames, redirects: redirects, loaded: loaded, versions: versions}}
    else
      {:error, reason} -> {:error, reason, state}
    end
  end

  defp parse_all(modules) do
    Enum.reduce_while(modules, {:ok, []}, fn {module, beam}, {:ok, acc} ->
      case Beam.parse(beam) do
        {:ok, parsed} -> {:cont, {:ok, [parsed | acc]}}
        {:error, reason} -> {:halt, {:error, {:invalid_beam, module, reason}}}
      end
    end)
    |> then(fn
      {:ok, list} -> {:ok, Enum.reverse(list)}
      error -> error
    end)
  end

  # A consolidated host protocol dispatches only to the implementations it
  # was consolidated with: an implementation the sandbox brings for it would
  # silently never be called, so the create is refused instead.
  defp check_protocols(parsed) do
    own = MapSet.new(parsed, & &1.module)

    Enum.find_value(parsed, :ok, fn %{attributes: attrs} ->
      with impl when is_list(impl) <- Keyword.get(List.wrap(attrs), :__impl__),
           protocol when is_atom(protocol) <- Keyword.get(impl, :protocol),
           false <- MapSet.member?(own, protocol),
           true <- Code.ensure_loaded?(protocol),
           true <- function_exported?(protocol, :__protocol__, 1),
           true <- protocol.__protocol__(:consolidated?) do
        {:error, {:consolidated_protocol, protocol}}
      else
        _ -> nil
      end
    end)
  end

  defp shims(state) do
    Enum.reduce_while(@shims, {:ok, [], %{}}, fn {host, template}, {:ok, acc, redirects} ->
      {^template, beam, _} = :code.get_object_code(template)
      {:ok, name} = Beam.relocated_name(state.id, template)
      renames = %{template => name, :__sandbox_shim_id__ => state.env_id}

      case Beam.relocate(beam, renames, %{}, debug_info: :strip) do
        {:ok, bin} -> {:cont, {:ok, [{name, bin} | acc], Map.put(redirects, host, name)}}
        {:error, reason} -> {:halt, {:error, {:shim_failed, template, reason}}}
      end
    end)
  end

  defp relocate_all(modules, renames, redirects) do
    Enum.reduce_while(modules, {:ok, []}, fn {module, beam}, {:ok, acc} ->
      case Beam.relocate(beam, renames, redirects, debug_info: :strip) do
        {:ok, bin} -> {:cont, {:ok, [{Map.fetch!(renames, module), bin} | acc]}}
        {:error, reason} -> {:halt, {:error, {:relocation_failed, module, reason}}}
      end
    end)
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

  defp load_all(binaries) do
    entries = for {name, bin} <- binaries, do: {name, ~c"sandbox:#{name}", bin}

    case :code.atomic_load(entries) do
      :ok -> {:ok, Enum.map(binaries, &elem(&1, 0))}
      {:error, failures} -> {:error, {:load_failed, failures}}
    end
  end

  # The sandbox needs only the compiled modules: nothing stays on disk.
  defp compile_opts(config) do
    [
      compile_timeout: config.compile_timeout,
      compile_limits: config.compile_limits,
      write_artifacts: false
    ]
  end

  ## Versions

  defp context(state) do
    %{
      id: state.id,
      renames: state.renames,
      redirects: state.redirects,
      group_leader: state.group_leader,
      config: state.config,
      versions: state.versions
    }
  end

  # The current versions are what a restart runs (it restarts the
  # processes; the loaded code is already the current versions').
  defp put_versions(state, store) do
    current = Map.new(Versions.current_beams(store))
    originals = for {m, _} <- state.originals, do: {m, Map.fetch!(current, m)}
    %{state | versions: store, originals: originals}
  end

  # With a rollback window, every process of the sandbox is monitored until
  # the window closes: the first crash rolls the change back.
  defp watch_rollback(state, %{window: window} = change) when window > 0 do
    members = if state.group_leader, do: GroupLeader.members(state.group_leader), else: []
    refs = Map.new(members, &{Process.monitor(&1), &1})
    tref = make_ref()
    Process.send_after(self(), {:rollback_window_closed, tref}, window)
    %{state | rollback: %{change: change, refs: refs, timer: tref}}
  end

  defp watch_rollback(state, _change), do: state

  defp cancel_rollback(%{rollback: nil} = state), do: state

  defp cancel_rollback(%{rollback: %{refs: refs}} = state) do
    for {ref, _} <- refs, do: Process.demonitor(ref, [:flush])
    %{state | rollback: nil}
  end

  defp crash?(reason), do: reason not in [:normal, :shutdown, :noproc] and not shutdown?(reason)

  defp shutdown?({:shutdown, _}), do: true
  defp shutdown?(_), do: false

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
        case safe_start(fun) do
          {:ok, pid} when is_pid(pid) ->
            {:cont, {:ok, %{state | roots: state.roots ++ [pid]}}}

          :ignore ->
            {:cont, {:ok, state}}

          {:error, reason} ->
            reason = ResourceMonitor.limit_reason(state.id, {:start_failed, label, reason})
            {:halt, {:error, reason, state}}
        end
      end)
    after
      Process.group_leader(self(), own_gl)
    end
    |> first_sample()
  end

  # The first sample of the run is taken as soon as the roots are up: a
  # sandbox over its limits from the start does not start.
  defp first_sample({:ok, state}) do
    _ = ResourceMonitor.usage(state.id)

    case ResourceMonitor.breach(state.id) do
      {limit, _usage} -> {:error, {:limit_exceeded, limit}, state}
      nil -> {:ok, state}
    end
  end

  defp first_sample(error), do: error

  defp root_starts(%{mode: :supervisor} = state) do
    sup = Map.fetch!(state.renames, state.target)
    [{state.target, fn -> sup.start_link(state.config.supervisor_args) end}]
  end

  defp root_starts(%{mode: :application, app: app} = state) do
    for spec <- app.path_deps ++ [app], spec.mod != nil do
      {mod, args} = spec.mod
      relocated = Map.fetch!(state.renames, mod)
      {spec.name, fn -> relocated.start(:normal, args) end}
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

  defp root_died(state, pid, reason) do
    case ResourceMonitor.breach(state.id) do
      {limit, usage} -> limit_stop(%{state | roots: List.delete(state.roots, pid)}, limit, usage)
      nil -> restart_or_fail(state, pid, reason)
    end
  end

  defp limit_stop(state, limit, usage) do
    state = state |> cancel_rollback() |> stop_roots()
    state = %{state | status: :error, error: {:limit_exceeded, limit}}
    publish(state, listed: true)
    ResourceMonitor.emit_exceeded(state.id, limit, usage, state.config.resource_limits)
    state
  end

  defp restart_or_fail(state, pid, reason) do
    now = System.monotonic_time(:millisecond)
    window = state.config.max_seconds * 1000
    recent = [now | Enum.filter(state.restarts, &(now - &1 < window))]
    state = stop_roots(%{state | roots: List.delete(state.roots, pid)})

    if length(recent) > state.config.max_restarts do
      state = %{state | status: :error, error: {:max_restarts_exceeded, reason}, restarts: recent}
      publish(state, listed: true)

      Telemetry.emit(:manager, :failed, %{restart_count: state.restart_count}, %{
        sandbox_id: state.id,
        reason: reason
      })

      state
    else
      case start_roots(%{state | restarts: recent}) do
        {:ok, state} ->
          state = %{state | status: :running, restart_count: state.restart_count + 1}
          publish(state, listed: true)
          emit_restarted(state, reason)
          state

        {:error, start_reason, state} ->
          state = %{state | status: :error, error: start_reason}
          publish(state, listed: true)
          state
      end
    end
  end

  defp emit_restarted(state, reason) do
    Telemetry.emit(:manager, :restarted, %{restart_count: state.restart_count}, %{
      sandbox_id: state.id,
      reason: reason
    })
  end

  # Stops the roots (shutdown, then kill), then every process left with the
  # sandbox's group leader, then the group leader itself.
  defp stop_roots(state) do
    ResourceMonitor.detach(state.id)
    for pid <- state.roots, do: shutdown(pid)
    if state.group_leader, do: kill_members(state.group_leader)
    if state.group_leader, do: stop_group_leader(state.group_leader)
    %{state | roots: [], group_leader: nil}
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

  defp kill_members(gl) do
    members = GroupLeader.members(gl)
    refs = for pid <- members, do: Process.monitor(pid)
    for pid <- members, do: Process.exit(pid, :kill)

    for ref <- refs do
      receive do
        {:DOWN, ^ref, :process, _, _} -> :ok
      end
    end

    # Processes spawned while the sweep ran.
    if GroupLeader.members(gl) != [], do: kill_members(gl)
  end

  defp stop_group_leader(gl) do
    GroupLeader.stop(gl)

    receive do
      {:EXIT, ^gl, _} -> :ok
    after
      0 -> :ok
    end
  end

  # Everything of the sandbox goes: processes, modules, environment. Returns
  # the state with nothing left to tear down.
  defp teardown(state) do
    state = stop_roots(state)

    for module <- state.loaded do
      :code.purge(module)
      :code.delete(module)
      :code.purge(module)
    end

    Env.delete(state.env_id)
    %{state | loaded: []}
  end

  ## Info

  defp publish(state, opts \\ []) do
    info =
      state
      |> public_info()
      |> Map.put(:group_leader, state.group_leader)
      |> Map.put(:started_at, state.started_at)
      |> Map.put(:listed, Keyword.get(opts, :listed, false))

    Manager.put_info(state.id, info)
  end

  defp public_info(state) do
    root = List.last(state.roots)

    %{
      id: state.id,
      status: state.status,
      app_name: state.app_name,
      supervisor_module: state.supervisor_module,
      app_pid: if(state.mode == :application, do: root),
      supervisor_pid: root,
      created_at: state.created_at,
      restart_count: state.restart_count,
      resource_usage: ResourceMonitor.usage(state.id),
      security_profile: state.config.security_profile,
      resource_limits: state.config.resource_limits,
      error: state.error
    }
  end
end
