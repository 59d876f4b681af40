defmodule Sandbox.Case do
  @moduledoc """
  An ExUnit case template that gives each test a sandbox of its own, as
  Ecto's SQL sandbox gives each test a database connection of its own.

      defmodule MyApp.CounterTest do
        use Sandbox.Case, async: true

        @moduletag sandbox: [path: "examples/counter", target: :counter]

        test "counts from one", %{sandbox: id} do
          assert {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
        end

        test "another test, another counter", %{sandbox: id} do
          assert {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
        end

        @tag sandbox: false
        test "no sandbox here", context do
          refute Map.has_key?(context, :sandbox)
        end
      end

  The `:sandbox` tag (`@moduletag` for every test of the module, `@tag` for
  one test, which overrides it) is a keyword list:

    * `:path` (required) — the project (`:sandbox_path`), relative to the
      current directory or absolute
    * `:target` — the application or supervisor module to start
      (`create_sandbox/3`'s `module_or_app`); default: the project's
      application
    * `:leak_check` — check, once the sandbox is destroyed, that nothing of
      it is left (`true`)
    * any other `Sandbox.create_sandbox/3` option (`:supervisor_args`,
      `:security_profile`, `:resource_limits`, ...)

  Each test gets `%{sandbox: id}` in its context (with `sandbox: false`,
  the tag's `false` stays): a sandbox created for it
  alone (its id made from the test's name, see
  `Sandbox.Test.Helpers.test_sandbox_id/1`), so `async: true` tests never
  share processes, code or application environment. The project is
  compiled once for the whole suite (the first test that needs it compiles
  it, in a compile worker, while the others wait; the others create their
  sandboxes from the compile cache).

  When the test ends (after the test process has exited, as
  `ExUnit.Callbacks.on_exit/1` callbacks run) the sandbox is destroyed, and
  then checked for leaks: a process that belonged to the sandbox (its group
  leader) or was spawned by one of its processes and is still alive (it
  left the sandbox by changing its group leader, and runs host code only,
  such as an `Agent`: destroy's purge of the sandbox's modules ends every
  process still running their code), an ETS table one of its processes
  owned that survived it (given to an heir outside), or a module in its
  namespace (`Sandbox@<id>.*`) still loaded. A leak fails the test
  that leaked, naming what was left, and is then cleaned up so that it
  does not disturb other tests.

  The test module also imports `Sandbox.Test.Helpers`,
  `Sandbox.Test.OTPHelpers`, `Sandbox.Test.GenServerHelpers` and
  `Sandbox.Test.Assertions`.
  """

  use ExUnit.CaseTemplate

  alias Sandbox.{GroupLeader, Manager}
  alias Sandbox.Test.{Helpers, Processes}

  using do
    quote do
      import Sandbox.Test.Helpers
      import Sandbox.Test.OTPHelpers
      import Sandbox.Test.GenServerHelpers
      import Sandbox.Test.Assertions
    end
  end

  setup tags do
    case tags[:sandbox] do
      nil ->
        :ok

      false ->
        :ok

      opts when is_list(opts) ->
        {:ok, sandbox: checkout(tags.test, opts)}

      other ->
        raise ArgumentError,
              "expected the :sandbox tag to be a keyword list, got: #{inspect(other)}"
    end
  end

  @doc """
  Creates the sandbox of test `test_name` from the `:sandbox` tag's
  options `opts` (see the module documentation), registers its teardown
  and returns its id. `Sandbox.Case`'s `setup` calls it; call it yourself
  from a `setup` of a plain `ExUnit.Case`.
  """
  @spec checkout(atom | String.t(), keyword) :: String.t()
  def checkout(test_name, opts) when is_list(opts) do
    {path, opts} = Keyword.pop(opts, :path)
    {target, opts} = Keyword.pop(opts, :target)
    {leak_check, opts} = Keyword.pop(opts, :leak_check, true)

    unless is_binary(path),
      do: raise(ArgumentError, "the :sandbox tag needs path: \"path/to/project\"")

    path = Path.expand(path)
    app = warm(path, opts)

    target =
      target ||
        app ||
        raise ArgumentError,
              "#{path} is not a mix project: give the :sandbox tag a target: (a supervisor module)"

    id = Helpers.test_sandbox_id(test_name)

    case Sandbox.create_sandbox(id, target, [sandbox_path: path] ++ opts) do
      {:ok, _info} ->
        ExUnit.Callbacks.on_exit({Sandbox.Case, id}, fn -> checkin(id, leak_check) end)
        id

      {:error, reason} ->
        raise ExUnit.AssertionError,
          message: "could not create the test's sandbox from #{path}: #{inspect(reason)}"
    end
  end

  # One compile per project per suite: the first test compiles (filling the
  # compile cache every create reads), concurrent tests wait for it, later
  # ones find it done. Returns the project's application (the default
  # target), or nil for a plain directory of sources.
  @doc false
  @spec warm(Path.t(), keyword) :: atom | nil
  def warm(path, opts) do
    key = {__MODULE__, :warm, path, Keyword.get(opts, :compile_timeout), confine(opts)}

    case :persistent_term.get(key, :none) do
      :none ->
        :global.trans({key, self()}, fn -> warm_locked(key, path, opts) end, [node()], :infinity)

      {:compiled, app} ->
        app
    end
  end

  # Compiled as the create will compile (confined as its profile says), so
  # that the create finds the compile cache filled.
  defp confine(opts) do
    case Sandbox.SecurityController.resolve(Keyword.get(opts, :security_profile, :medium)) do
      {:ok, profile} -> Sandbox.Config.compile_confinement(profile)
      {:error, _} -> :preferred
    end
  end

  defp warm_locked(key, path, opts) do
    case :persistent_term.get(key, :none) do
      :none ->
        compile_opts =
          [write_artifacts: false, validate_beams: false, confine: confine(opts)] ++
            Keyword.take(opts, [:compile_timeout, :compile_limits])

        case Sandbox.IsolatedCompiler.compile_sandbox(path, compile_opts) do
          {:ok, info} ->
            app = info.app && info.app.name
            :persistent_term.put(key, {:compiled, app})
            app

          {:error, reason} ->
            raise ExUnit.AssertionError,
              message: "could not compile #{path} for the test's sandbox: #{inspect(reason)}"
        end

      {:compiled, app} ->
        app
    end
  end

  @doc """
  Destroys sandbox `id` and, with `leak_check`, raises `ExUnit.AssertionError`
  naming anything of it left behind (see the module documentation), after
  cleaning it up. The teardown `checkout/2` registers.
  """
  @spec checkin(String.t(), boolean) :: :ok
  def checkin(id, leak_check \\ true) do
    snapshot = snapshot(id)
    _ = Sandbox.destroy_sandbox(id)
    if leak_check, do: check_leaks(id, snapshot), else: :ok
  end

  # What the sandbox has just before it is destroyed: its group leaders,
  # its processes and the ETS tables they own.
  defp snapshot(id) do
    case Manager.lookup(id) do
      {:ok, _pid, %{group_leader: gl}} when is_pid(gl) ->
        gls = [gl | for([child] <- :ets.match(GroupLeader, {:"$1", :_, gl}), do: child)]
        members = MapSet.new(GroupLeader.members(gl))

        tables =
          for table <- :ets.all(),
              MapSet.member?(members, :ets.info(table, :owner)),
              do: table

        %{gls: MapSet.new(gls), members: members, tables: tables}

      _ ->
        %{gls: MapSet.new(), members: MapSet.new(), tables: []}
    end
  end

  defp check_leaks(id, snapshot) do
    processes = leaked_processes(snapshot)
    tables = Enum.filter(snapshot.tables, &(:ets.info(&1, :owner) != :undefined))
    modules = leaked_modules(id)

    if processes == [] and tables == [] and modules == [] do
      :ok
    else
      report =
        Enum.map(processes, &"process #{Processes.describe(&1)}") ++
          Enum.map(
            tables,
            &"ETS table #{inspect(&1)} (now owned by #{inspect(:ets.info(&1, :owner))})"
          ) ++
          Enum.map(modules, &"module #{inspect(&1)}")

      clean_up(processes, tables, modules)

      raise ExUnit.AssertionError,
        message:
          "sandbox #{inspect(id)} leaked #{length(report)} resource(s) that outlived its " <>
            "destroy:\n  " <> Enum.join(report, "\n  ")
    end
  end

  defp leaked_processes(%{gls: gls, members: members}) do
    if MapSet.size(members) == 0 and MapSet.size(gls) == 0 do
      []
    else
      for pid <- Process.list(),
          info = Process.info(pid, [:group_leader, :parent]),
          info != nil,
          MapSet.member?(gls, info[:group_leader]) or MapSet.member?(members, info[:parent]) or
            MapSet.member?(members, pid),
          do: pid
    end
  end

  defp leaked_modules(id) do
    prefixes = ["Elixir.Sandbox@#{id}.", "sandbox@#{id}@"]
    for m <- :erlang.loaded(), String.starts_with?(Atom.to_string(m), prefixes), do: m
  end

  defp clean_up(processes, tables, modules) do
    Processes.kill_all(processes)

    for table <- tables do
      try do
        :ets.delete(table)
      rescue
        ArgumentError -> :ok
      end
    end

    for m <- modules do
      :code.purge(m)
      :code.delete(m)
      :code.purge(m)
    end

    :ok
  end
end
