defmodule Sandbox do
  @moduledoc """
  Run whole OTP applications side by side inside one BEAM.

  A sandbox is an application (or a supervisor and its modules) compiled in
  isolation — in a separate compile worker, never in this VM — and loaded
  as its own private copy of its modules: the compiled BEAMs are relocated
  so that `Demo.Counter` in sandbox `"a"` is the module
  `Elixir.Sandbox@a.Demo.Counter`, distinct from `Demo.Counter` in sandbox
  `"b"` and from any host module. Each sandbox runs under its own
  supervision tree and group leader, with its own application environment.

      {:ok, _info} =
        Sandbox.create_sandbox("a", :counter, sandbox_path: "examples/counter")

      {:ok, 1} = Sandbox.call("a", Counter, :increment, [])
      :ok = Sandbox.destroy_sandbox("a")

  ## Ids

  Sandbox ids are strings matching `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`.
  Every function that takes an id and returns a tagged result answers
  `{:error, {:invalid_id, term}}` for anything else, before doing any work;
  `module_name/2` raises `ArgumentError`.

  ## Processes

  Every process spawned inside a sandbox inherits its group leader
  (`Sandbox.GroupLeader`), which is how it is counted in
  `info.resource_usage` (the latest sample of `Sandbox.ResourceMonitor`,
  taken every 100 ms), held to the sandbox's `resource_limits` and killed
  on destroy. A process that changes its
  own group leader leaves the sandbox: it is no longer counted, and destroy
  kills it only if it is in the sandbox's supervision tree or linked to a
  process that is.

  ## Protocols

  A sandbox type's implementation of a host protocol is named so that
  dispatch finds it (see `Sandbox.Beam.rename_map/2`). A consolidated host
  protocol (Mix consolidates them in `dev` and `prod`) is consolidated again
  with the sandbox's types added while the sandbox lives, and without them
  after (`Sandbox.Protocols`); where that is impossible (a protocol whose
  BEAM has no debug info), the create is refused with
  `{:error, {:consolidated_protocol, protocol, reason}}`.

  ## Hot reload

  `hot_reload_sandbox/3` and `hot_reload_source/3` replace modules of a
  running sandbox, keeping its processes and their states
  (`code_change/3` or a migration function), with version history,
  `rollback_module/3` and an optional automatic rollback window. See
  `Sandbox.ModuleVersionManager`.

  ## Events

  See `Sandbox.Telemetry` and `subscribe/1`.
  """

  alias Sandbox.{Beam, Config, Instance, Manager, ResourceMonitor}
  alias Sandbox.Models.SandboxState

  @typedoc "A sandbox id: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`."
  @type id :: String.t()

  @typedoc """
  A sandbox's info: a `Sandbox.Models.SandboxState` (`id`, `status`,
  `app_name`, `supervisor_module` (the original name), `app_pid`,
  `supervisor_pid`, `created_at`, `updated_at`, `restart_count`,
  `resource_usage` (`current_memory` bytes, `current_processes`,
  `cpu_usage`, `uptime` ms), `security_profile`, `resource_limits`,
  `sandbox_path`, `auto_reload_enabled` and `error` (`nil`, or the reason of
  the `:error` status)).
  """
  @type info :: SandboxState.t()

  @typedoc "The result of `call/5` and `run/3`."
  @type result ::
          {:ok, term}
          | {:error, {:exception, Exception.t(), Exception.stacktrace()}}
          | {:error, {:exit, term}}
          | {:error, :timeout}
          | {:error, :not_found}
          | {:error, {:invalid_id, term}}

  @doc """
  Creates sandbox `id` from the project at `opts[:sandbox_path]` and starts
  it.

  `module_or_app` is either the project's OTP application name (started
  through its `mod` callback, after its path dependencies') or the original
  name of a supervisor module of the project (started with
  `start_link(opts[:supervisor_args] || [])`).

  ## Options

    * `:sandbox_path` (required) — a mix project, or a directory of
      `.ex`/`.erl` files
    * `:supervisor_args` — the supervisor's `start_link/1` argument (`[]`)
    * `:compile_timeout` — ms (30,000)
    * `:compile_limits` — `max_memory` (bytes, 1 GiB), `max_file_size`
      (bytes, 64 MiB), `max_processes` (64) of the compile worker
    * `:resource_limits` — the runtime budget, any subset of `max_memory`
      (bytes), `max_processes`, `max_execution_time` (ms), `max_file_size`
      (bytes), `max_cpu_percentage` (100.0 = one scheduler); the others are
      the profile's (`Sandbox.Config.limits/1`). Enforced by
      `Sandbox.ResourceMonitor`: memory and processes stop the sandbox
      (`error: {:limit_exceeded, limit}`), CPU throttles, execution time
      caps `call/5` and `run/3`
    * `:security_profile` — `:medium` (others: not yet supported)
    * `:auto_reload` — reload automatically when the project's sources
      change (`false`; see `Sandbox.FileWatcher`)
    * `:state_migration` — `fun/1` or `fun/3`, kept for hot reload
    * `:max_restarts`, `:max_seconds` — restarts of the whole sandbox after
      its root supervisor dies (3 within 5 s); beyond that its status is
      `:error`
    * `:max_versions` — versions kept per module (10)
    * `:capture_output` — keep a copy of the sandbox's output in its group
      leader (`false`)
    * `:isolation` — `:vm` (default: in this VM) or `:node`: in an Erlang
      VM of its own, started and held to hard limits by the supervising
      C-node, behind the same API (see `Sandbox.Node`)
    * `:keep_atoms` — atoms (`[]`) that keep their original name where the
      sandbox's code uses them as data, though they name one of its
      modules: for an Erlang application named like its module
      (application `telemetry`, module `telemetry`), `keep_atoms:
      [:telemetry]` makes `application:get_env(telemetry, k)` and events
      such as `[telemetry, handler, failure]` use `telemetry`, not its
      relocated name. Calls, exports and the module's identity (its name,
      `module_info/0,1`, `__info__/1`, stack traces) are still relocated,
      so the host has no such module and sandboxes stay apart. The
      bytecode cannot tell data from identity, so every data use changes:
      `?MODULE` as an ETS table name, registered name or `:pg` group is
      then shared with the host and with other sandboxes keeping the atom;
      `?MODULE` given as a callback module (`gen_server:start_link(...,
      ?MODULE, ...)`, `apply(?MODULE, f, args)`) reaches the host's module
      of that name, if any; an Elixir struct's `__struct__` keeps the
      original name. Applied on create, hot reload and rollback (see
      `Sandbox.Beam.relocate/4`'s `:keep_atoms`); a list of anything but
      atoms is `{:invalid_option, {:keep_atoms, value}}`.
    * `:prebuilt` — internal (used by `Sandbox.Cluster` to create copies on
      other nodes without compiling there): the compiled project instead of
      a compile of `sandbox_path`, `%{modules: [{module, beam}], app:
      app_spec | nil, app_env: keyword, config: [{app, keyword}]}` as
      `Sandbox.IsolatedCompiler.compile_sandbox/2` returns them (plus an
      optional `stamps: %{module => stamp}`, see `Sandbox.Instance`);
      `sandbox_path` is then only recorded. A malformed one is
      `{:invalid_option, {:prebuilt, value}}`.

  ## Errors

  `{:invalid_id, id}`, `{:already_exists, id}`, the option errors of
  `Sandbox.Config.validate/1`, the compile errors of
  `Sandbox.IsolatedCompiler`, `{:unknown_module_or_app, term}`,
  `{:consolidated_protocol, protocol, reason}`, `{:security_violation, violations}`,
  `{:invalid_beam, module, reason}`,
  `{:relocation_failed, module, reason}`, `{:load_failed, failures}`,
  `{:system_limit, :export_table}` (the VM's export table, never freed,
  is nearly full: see `Sandbox.ExportTable`),
  `{:host_application_failed, app, reason}`, `{:start_failed, who, reason}`.
  A failed create leaves nothing behind.
  """
  @spec create_sandbox(id, atom, keyword) :: {:ok, info} | {:error, term}
  def create_sandbox(id, module_or_app, opts) do
    with :ok <- check_id(id) do
      # The [:sandbox, :create, _] span (Sandbox.Telemetry).
      path = if Keyword.keyword?(opts), do: opts[:sandbox_path]
      meta = %{sandbox_id: id, module_or_app: module_or_app, sandbox_path: path}

      Sandbox.Telemetry.span(:create, meta, fn ->
        result = do_create_sandbox(id, module_or_app, opts)
        {result, Sandbox.Telemetry.outcome(result)}
      end)
    end
  end

  defp do_create_sandbox(id, module_or_app, opts) do
    {build, opts} = if Keyword.keyword?(opts), do: Keyword.pop(opts, :prebuilt), else: {nil, opts}

    with :ok <- check_target(module_or_app),
         {:ok, config} <- Config.validate(opts),
         :ok <- check_build(build),
         :ok <- Manager.reserve(id) do
      # isolation: :node — the host's side of a sandbox VM (Sandbox.Node).
      instance = if config.isolation == :node, do: Sandbox.Node.Instance, else: Instance

      case DynamicSupervisor.start_child(
             Sandbox.InstanceSupervisor,
             {instance, {id, module_or_app, config}}
           ) do
        {:ok, pid} ->
          Instance.setup(pid, build)

        {:error, reason} ->
          Manager.release(id, self())
          {:error, {:start_failed, :instance, reason}}
      end
    end
  end

  @doc """
  Destroys sandbox `id`: stops its processes (its supervision tree, then
  every process left with its group leader), purges and deletes its
  modules and shims, and forgets its environment.
  """
  @spec destroy_sandbox(id) :: :ok | {:error, :not_found | {:invalid_id, term}}
  def destroy_sandbox(id), do: with_instance(id, &Instance.destroy/1)

  @doc """
  Stops sandbox `id`'s processes and starts them again, with the same code
  (and the same module versions).
  """
  @spec restart_sandbox(id) :: {:ok, info} | {:error, term}
  def restart_sandbox(id) do
    with {:ok, _} <- with_instance(id, &Instance.restart/1), do: get_sandbox_info(id)
  end

  @doc "The info of sandbox `id`, with its current resource usage."
  @spec get_sandbox_info(id) :: {:ok, info} | {:error, :not_found | {:invalid_id, term}}
  def get_sandbox_info(id) do
    with :ok <- check_id(id), {:ok, _pid, info} <- Manager.lookup(id) do
      {:ok, public_info(info)}
    end
  end

  @doc "The info of every live sandbox (created and not being destroyed)."
  @spec list_sandboxes() :: [info]
  def list_sandboxes, do: Enum.map(Manager.list(), &public_info/1)

  @doc """
  The name module `module` has in sandbox `id` (pure: nothing is looked up).

      iex> Sandbox.module_name("a", Demo.Counter)
      :"Elixir.Sandbox@a.Demo.Counter"
  """
  @spec module_name(id, module) :: module
  def module_name(id, module) do
    check_module!(module)

    case Beam.relocated_name(id, module) do
      {:ok, name} -> name
      {:error, reason} -> raise ArgumentError, "module_name/2: #{inspect(reason)}"
    end
  end

  @doc """
  Calls `module.function(args)` (`module` by its original name) in a new
  process of sandbox `id`.

  ## Options

    * `:timeout` — ms (5,000) or `:infinity`, capped by the sandbox's
      `max_execution_time`; on timeout the process and everything it
      spawned are killed and the result is `{:error, :timeout}`
    * `:original_names` — map the sandbox's relocated module names in the
      result (structs, exceptions, stack traces, nested terms) back to the
      names its source uses (`false`; see `Sandbox.OriginalNames`)

  The call's process and what it spawns are followed without sweeping the
  process table (`Sandbox.ResourceMonitor.Call`): a call costs the same
  however many processes the VM runs. Processes it leaves running stay in
  the sandbox.

  An exception is `{:error, {:exception, exception, stacktrace}}`, an exit
  `{:error, {:exit, reason}}`, and an uncaught throw
  `{:error, {:exit, {:nocatch, value}}}`.
  """
  @spec call(id, module, atom, [term], keyword) :: result
  def call(id, module, function, args, opts \\ []) do
    with :ok <- check_id(id) do
      check_module!(module)
      check!(is_atom(function), "a function name (atom)", function)
      check!(is_list(args), "a list of arguments", args)

      timeout = timeout(opts)

      with {:ok, _pid, info} <- live(id) do
        timeout = cap_timeout(timeout, info)

        if info[:isolation] == :node do
          Sandbox.Node.call(info, module, function, args, timeout, opts)
        else
          target = module_name(id, module)

          info
          |> run_in(fn -> apply(target, function, args) end, timeout)
          |> original_names(id, opts)
        end
      end
    end
  end

  @doc """
  Runs `fun` (a function of arity 0, or `{module, function, args}`) in a
  new process of sandbox `id` (options and results as `call/5`).

  `fun` is host code: it is not relocated, so `Application` inside it reads
  the host's environment; the sandbox modules it calls (by their relocated
  names, see `module_name/2`) see the sandbox's own.

  On a sandbox with `isolation: :node`, `fun` runs in the sandbox's VM: an
  MFA, or a fun whose code that VM has (see `Sandbox.Node`); a closure of
  host code is `{:error, {:not_serialisable, fun}}`.
  """
  @spec run(id, (() -> term) | {module, atom, [term]}, keyword) :: result
  def run(id, fun, opts \\ []) do
    with :ok <- check_id(id) do
      check!(is_function(fun, 0) or mfa?(fun), "a function of arity 0 or an MFA", fun)
      timeout = timeout(opts)

      with {:ok, _pid, info} <- live(id) do
        timeout = cap_timeout(timeout, info)

        cond do
          info[:isolation] == :node ->
            Sandbox.Node.run(info, fun, timeout, opts)

          is_function(fun) ->
            info |> run_in(fun, timeout) |> original_names(id, opts)

          true ->
            {m, f, a} = fun
            info |> run_in(fn -> apply(m, f, a) end, timeout) |> original_names(id, opts)
        end
      end
    end
  end

  defp mfa?({m, f, a}), do: is_atom(m) and is_atom(f) and is_list(a)
  defp mfa?(_), do: false

  @doc """
  Subscribes the caller to the events of sandbox `id`, or of all sandboxes
  with `:all`: it receives `{:sandbox_event, name, measurements, metadata}`
  (see `Sandbox.Telemetry`).
  """
  @spec subscribe(id | :all) :: :ok | {:error, {:invalid_id, term}}
  def subscribe(:all), do: Sandbox.Telemetry.subscribe(:all)

  def subscribe(id) do
    with :ok <- check_id(id), do: Sandbox.Telemetry.subscribe(id)
  end

  ## Hot reload

  @typedoc """
  One version of a module of a sandbox (original names): `sandbox_id`,
  `module`, `version`, `beam_data` (the BEAM as given), `checksum` (hex
  XXH3-128 of `beam_data`), `loaded_at`, `dependencies` (the sandbox's
  modules it calls) and `rolled_back_at` (`nil`, or when a rollback left
  this version).
  """
  @type module_version :: Sandbox.ModuleVersionManager.module_version()

  @doc """
  Hot reloads one module, or several as one change, in sandbox `id`.

  `beams` is a BEAM binary, or a list of them, compiled under the modules'
  original names as a user's own compile produces them; they are validated
  and relocated into the sandbox. A list is loaded atomically, under one
  suspension. The sandbox's `:sys` processes whose callback module is a
  changed module, or calls one (see `Sandbox.StatePreservation`), are
  suspended; those whose callback module changed are migrated
  (`code_change(old_version, state, %{from: old, to: new})` through
  `:sys.change_code/5`, or the `:state_migration` function through
  `:sys.replace_state/3`), keeping their pids; then all are resumed. Each
  changed module gets the next version number.

  Two-version safe: the old code of each module is soft-purged first; a
  process still running it fails the reload, naming it, and nothing is
  killed. Any failure leaves the previous code running, the captured
  states in place and every process resumed.

  ## Options

    * `:state_migration` — `fun/1` (old state -> new state) or `fun/3`
      (old state, old version, new version); overrides the create option
      for this reload (`nil`: `code_change/3`)
    * `:suspend_timeout` — ms to wait for each process to suspend, and for
      each migration (5,000)
    * `:rollback_window` — ms after the reload during which a crash (an
      exit other than `:normal`, `:shutdown` or `{:shutdown, _}`) of any
      process the sandbox had when the reload finished rolls the change
      back (0: off); live processes are migrated down with
      `code_change({:down, old_version}, state, extra)` (or an arity-3
      create `:state_migration`), crashed ones are restarted by their
      supervisors and migrated down with the rest. A later reload,
      rollback, restart or destroy closes the window.

  Modules with an `@on_load` function cannot be loaded atomically
  (`{:load_failed, [{module, :on_load_not_allowed}]}`).

  ## Results

  `{:ok, :hot_reloaded}`; `{:ok, :unchanged}` when every BEAM is
  byte-identical to its module's current version as it was given (no
  version is created; in a list, such BEAMs are left out of the change); or
  `{:error, reason}`:

    * `{:invalid_id, id}`, `:not_found`, `:no_beams`
    * `{:unknown_option, key}`, `{:invalid_option, {key, value}}`
    * `{:invalid_beam, module | nil, reason}` — see `Sandbox.Beam`
    * `{:unknown_module, module}` — not a module of the sandbox
    * `{:duplicate_module, module}` — twice in the list
    * `{:relocation_failed, module, reason}`, `{:load_failed, failures}`
    * `{:system_limit, :export_table}` — loading would nearly fill the VM's
      export table (`Sandbox.ExportTable`)
    * `{:old_code_in_use, module, pids}` — processes still in the oldest code
    * `{:suspend_timeout, module, pid}`, `{:suspend_failed, module, pid, reason}`
      — the suspension was abandoned; `pid` is resumed as soon as it gets
      to the queued request
    * `{:migration_failed, module, pid, reason}` — `code_change/3` returned
      an error or raised, or the migration function raised
    * `{:migration_timeout, module, pid, :killed}` — the migration did not
      finish in time: the process was killed after the previous code was
      restored, and its supervisor restarts it under that code
    * `{:process_died, pid, reason}` — a process died while suspended

  Emits `[:sandbox, :reload, :reloaded]` or `[:sandbox, :reload, :failed]`
  (see `Sandbox.Telemetry`).
  """
  @spec hot_reload_sandbox(id, binary | [binary], keyword) ::
          {:ok, :hot_reloaded | :unchanged} | {:error, term}
  def hot_reload_sandbox(id, beams, opts \\ []),
    do: with_instance(id, &Instance.hot_reload(&1, beams, opts))

  @doc """
  Compiles source in the context of the sandbox's project (in a compile
  worker, `Sandbox.IsolatedCompiler`, with the sandbox's `compile_timeout`
  and `compile_limits`) and reloads what changed as one change (as
  `hot_reload_sandbox/3`: same options and results, plus the compiler's
  errors such as `{:compilation_failed, diagnostics}`).

    * `{:file, path}` of a source of the project: an incremental compile
      of the project. The file, and every file that depends on it at
      compile time (macro and struct users), are recompiled; modules whose
      bytes differ from the sandbox's are reloaded, new ones added
      (version 1), modules the file no longer defines removed (a process
      still running one fails the change with `{:module_in_use, module,
      pids}`). A file whose modules compile to the same bytes is
      `{:ok, :unchanged}`.
    * `{:file, path}` elsewhere, or `{:code, string}` (Elixir source):
      compiled against the project (its modules loaded and its config
      applied, so that it can use their structs and macros); the modules
      it defines are reloaded or added.

  Emits `[:sandbox, :reload, :reloaded]` or `[:sandbox, :reload, :failed]`
  with `trigger: :api`.
  """
  @spec hot_reload_source(id, {:file, Path.t()} | {:code, String.t()}, keyword) ::
          {:ok, :hot_reloaded | :unchanged} | {:error, term}
  def hot_reload_source(id, source, opts \\ []) do
    # The compile runs outside the instance (it can take long), then what
    # changed is applied as one change.
    with {:ok, {root, compile_opts}} <- with_instance(id, &Instance.versions(&1, :project)) do
      t0 = System.monotonic_time()

      case compile_source(source, root, compile_opts) do
        {:ok, info} ->
          files = with {:file, path} <- source, do: [path], else: (_ -> [])
          with_instance(id, &Instance.apply_compile(&1, info, [files: files] ++ opts))

        {:error, reason} = error ->
          # The running code stays (Sandbox.ErrorHandler's :rollback).
          context = Sandbox.ErrorHandler.context(id, :reload, :compiler)
          Sandbox.ErrorHandler.handle_error(reason, context)

          Sandbox.Telemetry.emit(:reload, :failed, %{duration: System.monotonic_time() - t0}, %{
            sandbox_id: id,
            reason: reason,
            trigger: :api,
            modules: []
          })

          error
      end
    end
  end

  # The :prebuilt create option (Sandbox.Cluster).
  defp check_build(nil), do: :ok

  defp check_build(%{modules: modules, app: app, app_env: env, config: config} = build)
       when is_list(modules) and (is_nil(app) or is_map(app)) and is_list(env) and
              is_list(config) do
    if Enum.all?(modules, &match?({m, beam} when is_atom(m) and is_binary(beam), &1)) and
         is_map(Map.get(build, :stamps, %{})),
       do: :ok,
       else: {:error, {:invalid_option, {:prebuilt, build}}}
  end

  defp check_build(other), do: {:error, {:invalid_option, {:prebuilt, other}}}

  @doc false
  # Compiles a reload's source in the context of the project at `root`
  # (also used by Sandbox.Cluster, which compiles once for every node).
  def compile_source({:file, path}, root, opts) when is_binary(path) do
    file = Path.expand(path)

    if String.starts_with?(file, root <> "/") do
      Sandbox.IsolatedCompiler.incremental_compile(root, [file], opts)
    else
      Sandbox.IsolatedCompiler.compile_file(file, [context: root] ++ opts)
    end
  end

  def compile_source({:code, code}, root, opts) when is_binary(code) do
    dir = Path.join(System.tmp_dir!(), "sandbox-source-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)

    try do
      file = Path.join(dir, "source.ex")
      File.write!(file, code)
      Sandbox.IsolatedCompiler.compile_file(file, [context: root] ++ opts)
    after
      File.rm_rf(dir)
    end
  end

  def compile_source(other, _root, _opts),
    do: raise(ArgumentError, "expected {:file, path} or {:code, string}, got: #{inspect(other)}")

  @doc """
  Turns automatic reload on for sandbox `id` (see `Sandbox.FileWatcher`):
  its project's source folders are watched, and every change is compiled
  and reloaded (`[:sandbox, :reload, :reloaded]` with `trigger:
  :file_watcher`). Edits made while automatic reload was off are caught up
  at once. `:ok` when it is on already.
  """
  @spec enable_auto_reload(id) :: :ok | {:error, :not_found | {:invalid_id, term} | term}
  def enable_auto_reload(id), do: with_instance(id, &Instance.auto_reload(&1, true))

  @doc "Turns automatic reload off for sandbox `id` (`:ok` when it is off already)."
  @spec disable_auto_reload(id) :: :ok | {:error, :not_found | {:invalid_id, term}}
  def disable_auto_reload(id), do: with_instance(id, &Instance.auto_reload(&1, false))

  @doc """
  Rolls `module` (original name) of sandbox `id` back to a kept `version`:
  its BEAM is loaded again as a change (two-version safe, as a reload),
  live processes are migrated with `code_change({:down, version}, state,
  extra)` (or the create option's arity-3 `:state_migration`), and the
  current version becomes `version`. Later reloads get new version numbers.

  Errors: `{:invalid_id, id}`, `:not_found`, `{:unknown_module, module}`,
  `{:unknown_version, module, version}` (never existed, or dropped from the
  history), `{:already_current, module, version}`, and the change errors of
  `hot_reload_sandbox/3`. Emits `[:sandbox, :reload, :rolled_back]`.
  """
  @spec rollback_module(id, module, pos_integer) :: {:ok, :rolled_back} | {:error, term}
  def rollback_module(id, module, version) do
    with :ok <- check_id(id) do
      check_module!(module)
      check!(is_integer(version) and version > 0, "a version (positive integer)", version)
      with_instance(id, &Instance.rollback(&1, module, version))
    end
  end

  @doc """
  The current version of `module` (original name) in sandbox `id`:
  `{:ok, version}`, or `{:error, :not_found}` for an unknown sandbox or
  module.
  """
  @spec get_current_version(id, module) ::
          {:ok, pos_integer} | {:error, :not_found | {:invalid_id, term}}
  def get_current_version(id, module) do
    with :ok <- check_id(id) do
      check_module!(module)
      with_instance(id, &Instance.versions(&1, {:current_version, module}))
    end
  end

  @doc """
  The kept versions of `module` (original name) in sandbox `id`, oldest
  first: at most the sandbox's `max_versions` (the current version is
  always kept). `[]` for an unknown sandbox or module. As it returns a bare
  list, an invalid id raises `ArgumentError` (like `module_name/2`).
  """
  @spec list_module_versions(id, module) :: [module_version]
  def list_module_versions(id, module) do
    with {:error, {:invalid_id, _}} <- check_id(id) do
      raise ArgumentError, "list_module_versions/2: invalid sandbox id #{inspect(id)}"
    end

    check_module!(module)

    case with_instance(id, &Instance.versions(&1, {:versions, module})) do
      {:error, :not_found} -> []
      list -> list
    end
  end

  @doc """
  The dependency graph of sandbox `id`'s current module versions:
  `%{module => [module]}` (original names), each module's calls into the
  sandbox's other modules.
  """
  @spec get_dependency_graph(id) ::
          {:ok, %{module => [module]}} | {:error, :not_found | {:invalid_id, term}}
  def get_dependency_graph(id) do
    with_instance(id, &Instance.versions(&1, :dependency_graph))
  end

  @doc """
  `modules` (original names) of sandbox `id` in reload order: dependencies
  first, the members of a dependency cycle adjacent. Errors:
  `{:invalid_id, id}`, `:not_found`, `{:unknown_module, module}`.
  """
  @spec calculate_reload_order(id, [module]) :: {:ok, [module]} | {:error, term}
  def calculate_reload_order(id, modules) do
    with :ok <- check_id(id) do
      check!(is_list(modules) and Enum.all?(modules, &module?/1), "a list of modules", modules)
      with_instance(id, &Instance.versions(&1, {:reload_order, modules}))
    end
  end

  # Checks the id, finds the sandbox's instance and calls `fun` with it. The
  # instance may go away between the lookup and the call (a concurrent
  # destroy): that is :not_found too.
  defp with_instance(id, fun) do
    with :ok <- check_id(id), {:ok, pid, _info} <- Manager.lookup(id) do
      try do
        fun.(pid)
      catch
        :exit, _ -> {:error, :not_found}
      end
    end
  end

  ## Helpers

  @id_pattern ~r/\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\z/

  defp check_id(id) do
    if is_binary(id) and Regex.match?(@id_pattern, id), do: :ok, else: {:error, {:invalid_id, id}}
  end

  # Wrong argument types raise (after the id check, which answers
  # {:error, {:invalid_id, id}} as every tagged function does).
  defp check!(true, _expected, _value), do: :ok

  defp check!(false, expected, value),
    do: raise(ArgumentError, "expected #{expected}, got: #{inspect(value)}")

  defp module?(module), do: is_atom(module) and module not in [nil, true, false]

  defp check_module!(module), do: check!(module?(module), "a module name (atom)", module)

  defp check_target(target) when is_atom(target) and target not in [nil, true, false], do: :ok
  defp check_target(target), do: {:error, {:unknown_module_or_app, target}}

  defp live(id) do
    case Manager.lookup(id) do
      {:ok, pid, %{group_leader: gl} = info} when is_pid(gl) -> {:ok, pid, info}
      # isolation: :node — while it has a VM (Sandbox.Node).
      {:ok, pid, %{node_conn: conn} = info} when is_pid(conn) -> {:ok, pid, info}
      _ -> {:error, :not_found}
    end
  end

  defp original_names(result, id, opts) do
    if Keyword.get(opts, :original_names, false),
      do: Sandbox.OriginalNames.map(id, result),
      else: result
  end

  # `max_execution_time` caps every timeout, `:infinity` included.
  # The requested timeout, checked before the sandbox is looked up.
  defp timeout(opts) do
    check!(Keyword.keyword?(opts), "a keyword list of options", opts)

    case Keyword.get(opts, :timeout, 5_000) do
      t when (is_integer(t) and t > 0) or t == :infinity ->
        t

      other ->
        raise ArgumentError, "expected :timeout to be a positive integer, got: #{inspect(other)}"
    end
  end

  # `max_execution_time` caps every timeout, `:infinity` included.
  defp cap_timeout(timeout, %{resource_limits: %{max_execution_time: max}}) when is_integer(max),
    do: min(timeout, max)

  defp cap_timeout(timeout, _info), do: timeout

  # The call's process belongs to the sandbox (its group leader) and is
  # followed, with what it spawns, without sweeping the process table (see
  # Sandbox.ResourceMonitor.Call): on timeout it and everything it spawned
  # are killed; what it leaves running stays in the sandbox.
  defp run_in(info, fun, timeout),
    do: ResourceMonitor.Call.run(info.group_leader, fun, timeout, sandbox: info.id)

  defp public_info(info) do
    usage =
      if info[:isolation] == :node,
        do: Sandbox.Node.usage(info),
        else: ResourceMonitor.usage(info.id)

    SandboxState
    |> struct(info)
    |> Map.put(:resource_usage, usage)
  end
end
