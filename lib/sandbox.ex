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
  `info.resource_usage` and killed on destroy. A process that changes its
  own group leader leaves the sandbox: it is no longer counted, and destroy
  kills it only if it is in the sandbox's supervision tree or linked to a
  process that is.

  ## Protocols

  A sandbox type's implementation of a host protocol is named so that
  dispatch finds it (see `Sandbox.Beam.rename_map/2`), which works when the
  protocol is not consolidated (Mix's test environment, or
  `consolidate_protocols: false`). A consolidated protocol dispatches only
  to the implementations it was consolidated with, so creating a sandbox
  that implements a consolidated host protocol is refused with
  `{:error, {:consolidated_protocol, protocol}}`.

  ## Events

  See `Sandbox.Telemetry` and `subscribe/1`.
  """

  alias Sandbox.{Beam, Config, GroupLeader, Instance, Manager}

  @typedoc "A sandbox id: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`."
  @type id :: String.t()

  @typedoc """
  A sandbox's info: `id`, `status`, `app_name`, `supervisor_module` (the
  original name), `app_pid`, `supervisor_pid`, `created_at`,
  `restart_count`, `resource_usage` (`current_memory` bytes,
  `current_processes`, `cpu_usage`, `uptime` ms), `security_profile`,
  `resource_limits` and `error` (`nil`, or the reason of the `:error`
  status).
  """
  @type info :: %{
          id: id,
          status:
            :initializing
            | :compiling
            | :starting
            | :running
            | :reloading
            | :stopping
            | :stopped
            | :error,
          app_name: atom | nil,
          supervisor_module: module | nil,
          app_pid: pid | nil,
          supervisor_pid: pid | nil,
          created_at: DateTime.t(),
          restart_count: non_neg_integer,
          resource_usage: %{
            current_memory: non_neg_integer,
            current_processes: non_neg_integer,
            cpu_usage: float,
            uptime: non_neg_integer
          },
          security_profile: map,
          resource_limits: map,
          error: term
        }

  @typedoc "The result of `call/5` and `run/3`."
  @type result ::
          {:ok, term}
          | {:error, {:exception, Exception.t(), Exception.stacktrace()}}
          | {:error, {:exit, term}}
          | {:error, :timeout}
          | {:error, :not_found}
          | {:error, {:invalid_id, term}}

  @info_keys [
    :id,
    :status,
    :app_name,
    :supervisor_module,
    :app_pid,
    :supervisor_pid,
    :created_at,
    :restart_count,
    :resource_usage,
    :security_profile,
    :resource_limits,
    :error
  ]

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
    * `:resource_limits` — the runtime budget; only the `:medium` profile's
      defaults are accepted for now
    * `:security_profile` — `:medium` (others: not yet supported)
    * `:auto_reload` — `false` (`true`: not yet supported)
    * `:state_migration` — `fun/1` or `fun/3`, kept for hot reload
    * `:max_restarts`, `:max_seconds` — restarts of the whole sandbox after
      its root supervisor dies (3 within 5 s); beyond that its status is
      `:error`
    * `:max_versions` — versions kept per module (10)
    * `:capture_output` — keep a copy of the sandbox's output in its group
      leader (`false`)

  ## Errors

  `{:invalid_id, id}`, `{:already_exists, id}`, the option errors of
  `Sandbox.Config.validate/1`, the compile errors of
  `Sandbox.IsolatedCompiler`, `{:unknown_module_or_app, term}`,
  `{:consolidated_protocol, protocol}`, `{:invalid_beam, module, reason}`,
  `{:relocation_failed, module, reason}`, `{:load_failed, failures}`,
  `{:host_application_failed, app, reason}`, `{:start_failed, who, reason}`.
  A failed create leaves nothing behind.
  """
  @spec create_sandbox(id, atom, keyword) :: {:ok, info} | {:error, term}
  def create_sandbox(id, module_or_app, opts) do
    with :ok <- check_id(id),
         :ok <- check_target(module_or_app),
         {:ok, config} <- Config.validate(opts),
         :ok <- Manager.reserve(id) do
      case DynamicSupervisor.start_child(
             Sandbox.InstanceSupervisor,
             {Instance, {id, module_or_app, config}}
           ) do
        {:ok, pid} ->
          Instance.setup(pid)

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
  def destroy_sandbox(id) do
    with :ok <- check_id(id), {:ok, pid, _info} <- Manager.lookup(id) do
      try do
        Instance.destroy(pid)
      catch
        :exit, _ -> {:error, :not_found}
      end
    end
  end

  @doc """
  Stops sandbox `id`'s processes and starts them again, with the same code
  (and the same module versions).
  """
  @spec restart_sandbox(id) :: {:ok, info} | {:error, term}
  def restart_sandbox(id) do
    with :ok <- check_id(id), {:ok, pid, _info} <- Manager.lookup(id) do
      try do
        with {:ok, _} <- Instance.restart(pid), do: get_sandbox_info(id)
      catch
        :exit, _ -> {:error, :not_found}
      end
    end
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
  def module_name(id, module) when is_atom(module) do
    case Beam.relocated_name(id, module) do
      {:ok, name} -> name
      {:error, reason} -> raise ArgumentError, "module_name/2: #{inspect(reason)}"
    end
  end

  @doc """
  Calls `module.function(args)` (`module` by its original name) in a new
  process of sandbox `id`.

  ## Options

    * `:timeout` — ms (5,000); on timeout the process and everything it
      spawned are killed and the result is `{:error, :timeout}`

  An exception is `{:error, {:exception, exception, stacktrace}}`, an exit
  `{:error, {:exit, reason}}`, and an uncaught throw
  `{:error, {:exit, {:nocatch, value}}}`.
  """
  @spec call(id, module, atom, [term], keyword) :: result
  def call(id, module, function, args, opts \\ [])
      when is_atom(module) and is_atom(function) and is_list(args) do
    with :ok <- check_id(id), {:ok, _pid, info} <- live(id) do
      target = module_name(id, module)
      run_in(info, fn -> apply(target, function, args) end, timeout(opts))
    end
  end

  @doc """
  Runs `fun` in a new process of sandbox `id` (options and results as
  `call/5`).

  `fun` is host code: it is not relocated, so `Application` inside it reads
  the host's environment; the sandbox modules it calls (by their relocated
  names, see `module_name/2`) see the sandbox's own.
  """
  @spec run(id, (() -> term), keyword) :: result
  def run(id, fun, opts \\ []) when is_function(fun, 0) do
    with :ok <- check_id(id), {:ok, _pid, info} <- live(id) do
      run_in(info, fun, timeout(opts))
    end
  end

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

  ## Helpers

  @id_pattern ~r/\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\z/

  defp check_id(id) do
    if is_binary(id) and Regex.match?(@id_pattern, id), do: :ok, else: {:error, {:invalid_id, id}}
  end

  defp check_target(target) when is_atom(target) and target not in [nil, true, false], do: :ok
  defp check_target(target), do: {:error, {:unknown_module_or_app, target}}

  defp live(id) do
    case Manager.lookup(id) do
      {:ok, pid, %{group_leader: gl} = info} when is_pid(gl) -> {:ok, pid, info}
      _ -> {:error, :not_found}
    end
  end

  defp timeout(opts) do
    case Keyword.get(opts, :timeout, 5_000) do
      t when (is_integer(t) and t > 0) or t == :infinity ->
        t

      other ->
        raise ArgumentError, "expected :timeout to be a positive integer, got: #{inspect(other)}"
    end
  end

  # The call gets a group leader of its own under the sandbox's, so that on
  # timeout exactly what it spawned can be found and killed; whatever it
  # spawned and left running is handed to the sandbox's group leader.
  defp run_in(info, fun, timeout) do
    {:ok, sub} = GroupLeader.start_link(info.id, upstream: info.group_leader)
    caller = self()
    ref = make_ref()

    pid =
      GroupLeader.spawn_in(sub, fn ->
        result =
          try do
            {:ok, fun.()}
          rescue
            e -> {:error, {:exception, e, __STACKTRACE__}}
          catch
            :exit, reason -> {:error, {:exit, reason}}
            :throw, value -> {:error, {:exit, {:nocatch, value}}}
          end

        send(caller, {ref, result})
      end)

    mon = Process.monitor(pid)

    result =
      receive do
        {^ref, result} ->
          Process.demonitor(mon, [:flush])

          for p <- GroupLeader.members(sub),
              p != pid,
              do: Process.group_leader(p, info.group_leader)

          result

        {:DOWN, ^mon, :process, ^pid, reason} ->
          {:error, {:exit, reason}}
      after
        timeout ->
          kill_all([pid | GroupLeader.members(sub)])
          Process.demonitor(mon, [:flush])

          receive do
            {^ref, _} -> :ok
          after
            0 -> :ok
          end

          {:error, :timeout}
      end

    Process.unlink(sub)
    GroupLeader.stop(sub)
    result
  end

  defp kill_all(pids) do
    refs = for p <- pids, do: Process.monitor(p)
    for p <- pids, do: Process.exit(p, :kill)

    for ref <- refs do
      receive do
        {:DOWN, ^ref, :process, _, _} -> :ok
      end
    end
  end

  defp public_info(info) do
    info
    |> Map.take(@info_keys)
    |> Map.put(:resource_usage, usage(info))
  end

  defp usage(%{group_leader: gl, started_at: started}) when is_pid(gl) do
    members = GroupLeader.members(gl)

    memory =
      members
      |> Enum.map(fn pid ->
        case Process.info(pid, :memory) do
          {:memory, bytes} -> bytes
          nil -> 0
        end
      end)
      |> Enum.sum()

    %{
      current_memory: memory,
      current_processes: length(members),
      cpu_usage: 0.0,
      uptime: System.monotonic_time(:millisecond) - started
    }
  end

  defp usage(_info), do: %{current_memory: 0, current_processes: 0, cpu_usage: 0.0, uptime: 0}
end
