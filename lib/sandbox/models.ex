defmodule Sandbox.Models do
  @moduledoc """
  The seed's data models as structs: `Sandbox.Models.SandboxState` (a
  sandbox's info), `Sandbox.Models.ModuleVersion` (one version of a module)
  and `Sandbox.Models.CompilationResult` (a compile's result).

  They are what the API returns: `Sandbox.get_sandbox_info/1` and
  `Sandbox.list_sandboxes/0`, `Sandbox.list_module_versions/2`, and
  `Sandbox.IsolatedCompiler`'s compile functions. Besides field access
  (`info.status`) and pattern matching (`%{status: :running} = info`), they
  implement the `Access` behaviour, so `info[:status]` and `get_in/2` work as
  they did on the plain maps the API returned before.
  """

  @doc false
  defmacro __using__(_opts) do
    quote do
      @behaviour Access

      @impl Access
      def fetch(struct, key), do: Map.fetch(struct, key)

      @impl Access
      def get_and_update(struct, key, fun) when is_map_key(struct, key) do
        case fun.(Map.fetch!(struct, key)) do
          {get, new} -> {get, Map.put(struct, key, new)}
          :pop -> raise ArgumentError, "cannot pop #{inspect(key)} from #{inspect(__MODULE__)}"
        end
      end

      def get_and_update(_struct, key, _fun),
        do: raise(KeyError, key: key, term: __MODULE__)

      @impl Access
      def pop(_struct, key),
        do: raise(ArgumentError, "cannot pop #{inspect(key)} from #{inspect(__MODULE__)}")
    end
  end
end

defmodule Sandbox.Models.SandboxState do
  @moduledoc """
  A sandbox's info (the seed's `Sandbox.Models.SandboxState`), as returned by
  `Sandbox.create_sandbox/3`, `Sandbox.get_sandbox_info/1` and
  `Sandbox.list_sandboxes/0`.

    * `id`, `status` (`:initializing | :compiling | :starting | :running |
      :reloading | :stopping | :stopped | :error`), `error` (`nil`, or the
      reason of the `:error` status)
    * `app_name`, `supervisor_module` (original name), `app_pid`,
      `supervisor_pid`
    * `created_at`, `updated_at` (the last status change), `restart_count`
    * `resource_usage` — `%{current_memory: bytes, current_processes: n,
      cpu_usage: percent, uptime: ms}`
    * `resource_limits`, `security_profile`
    * `sandbox_path` — the project the sandbox was built from
    * `auto_reload_enabled` — whether the file watcher reloads it
    * `isolation` — `:vm` (in this VM) or `:node` (a VM of its own, see
      `Sandbox.Node`); `os_pid` — the OS pid of a `:node` sandbox's VM
      (`nil` for `:vm`, and while it has none)
  """
  use Sandbox.Models

  @type status ::
          :initializing
          | :compiling
          | :starting
          | :running
          | :reloading
          | :stopping
          | :stopped
          | :error

  @type t :: %__MODULE__{
          id: String.t(),
          status: status,
          app_name: atom | nil,
          supervisor_module: module | nil,
          app_pid: pid | nil,
          supervisor_pid: pid | nil,
          created_at: DateTime.t(),
          updated_at: DateTime.t() | nil,
          restart_count: non_neg_integer,
          resource_usage: %{
            current_memory: non_neg_integer,
            current_processes: non_neg_integer,
            cpu_usage: float,
            uptime: non_neg_integer
          },
          resource_limits: map,
          security_profile: map,
          sandbox_path: String.t() | nil,
          auto_reload_enabled: boolean,
          error: term,
          isolation: :vm | :node,
          os_pid: pos_integer | nil
        }

  defstruct id: nil,
            status: :initializing,
            app_name: nil,
            supervisor_module: nil,
            app_pid: nil,
            supervisor_pid: nil,
            created_at: nil,
            updated_at: nil,
            restart_count: 0,
            resource_usage: %{current_memory: 0, current_processes: 0, cpu_usage: 0.0, uptime: 0},
            resource_limits: %{},
            security_profile: %{},
            sandbox_path: nil,
            auto_reload_enabled: false,
            error: nil,
            isolation: :vm,
            os_pid: nil
end

defmodule Sandbox.Models.ModuleVersion do
  @moduledoc """
  One version of a module of a sandbox (the seed's
  `Sandbox.Models.ModuleVersion`), as `Sandbox.list_module_versions/2`
  returns it. Names are original names.

    * `sandbox_id`, `module`, `version` (from 1)
    * `beam_data` — the BEAM as given (as compiled, original names)
    * `checksum` — hex XXH3-128 of `beam_data`
    * `loaded_at`, `dependencies` (the sandbox's modules it calls)
    * `rolled_back_at` — `nil`, or when a rollback left this version
  """
  use Sandbox.Models

  @type t :: %__MODULE__{
          sandbox_id: String.t(),
          module: module,
          version: pos_integer,
          beam_data: binary,
          checksum: String.t(),
          loaded_at: DateTime.t(),
          dependencies: [module],
          rolled_back_at: DateTime.t() | nil
        }

  defstruct [
    :sandbox_id,
    :module,
    :version,
    :beam_data,
    :checksum,
    :loaded_at,
    dependencies: [],
    rolled_back_at: nil
  ]
end

defmodule Sandbox.Models.CompilationResult do
  @moduledoc """
  The result of a compile (the seed's `Sandbox.Models.CompilationResult`),
  as `Sandbox.IsolatedCompiler.compile_sandbox/2`, `compile_file/2` and
  `incremental_compile/3` return it. See `Sandbox.IsolatedCompiler` for the
  meaning of each field; `status` is `:success` (failures are
  `{:error, reason}`).
  """
  use Sandbox.Models

  @type t :: %__MODULE__{
          status: :success,
          output: String.t(),
          beam_files: [String.t()],
          app_file: String.t() | nil,
          compilation_time: non_neg_integer,
          warnings: [Sandbox.IsolatedCompiler.diagnostic()],
          errors: [Sandbox.IsolatedCompiler.diagnostic()],
          temp_dir: String.t() | nil,
          modules: [{module, binary}],
          app: map | nil,
          app_env: keyword,
          config: keyword,
          cached: boolean,
          incremental: boolean,
          removed_modules: [module],
          recompiled_files: [String.t()],
          recompiled_modules: [{module, binary}],
          test_modules: [{module, binary}],
          async_tests: [module],
          os_pid: pos_integer | nil,
          confinement: Sandbox.IsolatedCompiler.Confinement.t()
        }

  defstruct status: :success,
            output: "",
            beam_files: [],
            app_file: nil,
            compilation_time: 0,
            warnings: [],
            errors: [],
            temp_dir: nil,
            modules: [],
            app: nil,
            app_env: [],
            config: [],
            cached: false,
            incremental: false,
            removed_modules: [],
            recompiled_files: [],
            recompiled_modules: [],
            test_modules: [],
            async_tests: [],
            os_pid: nil,
            confinement: :none
end
