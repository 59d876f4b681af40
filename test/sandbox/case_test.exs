defmodule Sandbox.CaseTest do
  use Sandbox.Case, async: true

  alias Sandbox.Test.{CollectFormatter, Peer}

  @counter Path.expand("../../examples/counter", __DIR__)
  @helpers Path.expand("../fixtures/helpers_project", __DIR__)

  @moduletag sandbox: [path: @counter]

  test "each test has a sandbox of its own, named after it", %{sandbox: id} do
    assert id =~ ~r/\Aeach_test_has_a_sandbox_of_its_own/
    assert_sandbox_running(id)
    assert {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
  end

  test "another test starts from a fresh sandbox too", %{sandbox: id} do
    assert {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
    assert {:ok, %{app_name: :counter, sandbox_path: @counter}} = Sandbox.get_sandbox_info(id)
  end

  @tag sandbox: false
  test "@tag sandbox: false: no sandbox", context do
    assert context.sandbox == false
  end

  @tag sandbox: [path: @helpers, target: HelperApp.Pool, supervisor_args: 3]
  test "@tag overrides the module's options; create options pass through", %{sandbox: id} do
    {:ok, info} = Sandbox.get_sandbox_info(id)
    assert info.supervisor_module == HelperApp.Pool
    assert_child_count(info.supervisor_pid, 3)
  end

  @tag sandbox: false
  test "bad tags are errors that say what to do", %{test: test} do
    assert_raise ArgumentError, ~r/needs path:/, fn -> Sandbox.Case.checkout(test, []) end

    assert_raise ExUnit.AssertionError,
                 ~r/could not create the test's sandbox .*unknown_module_or_app/,
                 fn ->
                   Sandbox.Case.checkout(test, path: @counter, target: :nope)
                 end
  end

  @tag sandbox: false
  @tag :tmp_dir
  test "a project is compiled once for all the tests that start at the same time", ctx do
    # A copy with a module of its own: not in the compile cache.
    dir = Path.join(ctx.tmp_dir, "helper_app")
    File.mkdir_p!(dir)
    File.cp_r!(@helpers, dir)
    unique = "defmodule HelperApp.Unique do\n  def n, do: #{System.unique_integer()}\nend\n"
    File.write!(Path.join(dir, "lib/unique.ex"), unique)
    :ok = Sandbox.subscribe(:all)

    apps =
      1..4
      |> Enum.map(fn _ -> Task.async(fn -> Sandbox.Case.warm(dir, []) end) end)
      |> Task.await_many(60_000)

    assert apps == [:helper_app, :helper_app, :helper_app, :helper_app]
    assert Sandbox.Case.warm(dir, []) == :helper_app

    compiles = collect_compiles(dir)
    assert length(compiles) == 1
    assert [%{result: :ok, cached: false}] = compiles
  end

  describe "the teardown (checkin/2)" do
    @describetag sandbox: false

    test "destroys the sandbox and passes when nothing is left", %{test: test} do
      id = Sandbox.Case.checkout(test, path: @counter)
      {:ok, _} = Sandbox.run(id, fn -> spawn(fn -> receive(do: (:never -> :ok)) end) end)
      assert Sandbox.Case.checkin(id) == :ok
      assert Sandbox.get_sandbox_info(id) == {:error, :not_found}
    end

    # The leaks below are made under :low: under :medium and :high the
    # capability guards refuse leaving the group leader and an heir outside.
    test "fails the test, naming a process that left the sandbox, and kills it", %{test: test} do
      id = Sandbox.Case.checkout(test, path: @helpers, security_profile: :low)
      worker = Sandbox.module_name(id, HelperApp.Worker)

      {:ok, escaper} =
        Sandbox.run(id, fn -> GenServer.call(worker, {:spawn_escaper, Process.whereis(:user)}) end)

      # It left: destroy does not see it.
      assert Process.info(escaper, :group_leader) == {:group_leader, Process.whereis(:user)}

      error = assert_raise ExUnit.AssertionError, fn -> Sandbox.Case.checkin(id) end
      assert error.message =~ ~s|sandbox "#{id}" leaked 1 resource(s) that outlived its destroy|
      assert error.message =~ "process #{inspect(escaper)} started as"
      refute Process.alive?(escaper)
    end

    test "fails the test, naming an ETS table given to an heir outside", %{test: test} do
      id = Sandbox.Case.checkout(test, path: @helpers, security_profile: :low)
      heir = spawn(fn -> receive(do: (:never -> :ok)) end)
      on_exit(fn -> Process.exit(heir, :kill) end)
      worker = Sandbox.module_name(id, HelperApp.Worker)
      {:ok, table} = Sandbox.run(id, fn -> GenServer.call(worker, {:table_with_heir, heir}) end)

      error = assert_raise ExUnit.AssertionError, fn -> Sandbox.Case.checkin(id) end
      assert error.message =~ "ETS table #{inspect(table)} (now owned by #{inspect(heir)})"
      # Cleaned up.
      assert :ets.info(table) == :undefined
    end

    test "fails the test, naming a module left in the sandbox's namespace", %{test: test} do
      id = Sandbox.Case.checkout(test, path: @counter)
      extra = Module.concat(["Sandbox@#{id}", "Extra"])
      Module.create(extra, quote(do: def(x, do: 1)), Macro.Env.location(__ENV__))

      error = assert_raise ExUnit.AssertionError, fn -> Sandbox.Case.checkin(id) end
      assert error.message =~ "module #{inspect(extra)}"
      refute :erlang.module_loaded(extra)
    end

    test "with leak_check: false, only destroys", %{test: test} do
      id = Sandbox.Case.checkout(test, path: @counter, leak_check: false)
      extra = Module.concat(["Sandbox@#{id}", "Extra"])
      Module.create(extra, quote(do: def(x, do: 1)), Macro.Env.location(__ENV__))

      assert Sandbox.Case.checkin(id, false) == :ok
      assert Sandbox.get_sandbox_info(id) == {:error, :not_found}
      :code.purge(extra)
      :code.delete(extra)
    end
  end

  @tag :slow
  @tag sandbox: false
  @tag timeout: 600_000
  test "200 async tests with a sandbox each, in ExUnit, in parallel; leaks fail their tests" do
    peer = Peer.start!(apps: [:sandbox, :ex_unit])
    :ok = Peer.call(peer, CollectFormatter, :start_results, [])

    Peer.call(peer, ExUnit, :start, [
      [autorun: false, formatters: [CollectFormatter], max_cases: 4, timeout: 120_000]
    ])

    Peer.call(peer, Code, :compile_string, [nested_suite(20, 10)])
    summary = Peer.call(peer, ExUnit, :run, [], 600_000)
    results = Peer.call(peer, CollectFormatter, :results, [])

    {failed, passed} = Enum.split_with(results, &(elem(&1, 2) == :failed))
    assert length(passed) == 201, inspect(failed, pretty: true)
    assert summary.failures == 3

    messages = Map.new(failed, fn {_module, name, :failed, [message]} -> {name, message} end)
    assert messages[:"test leaks a process"] =~ ~r/leaked 1 resource.*\n\s+process #PID/
    assert messages[:"test leaks a table"] =~ "ETS table"

    assert messages[:"test leaks a module"] =~
             ~r/module :"Elixir.Sandbox@leaks_a_module-\w+\.Extra"/

    # Nothing is left in the peer: no sandbox, no sandbox module.
    assert Peer.call(peer, Sandbox, :list_sandboxes, []) == []
    loaded = Peer.call(peer, :erlang, :loaded, [])
    assert Enum.filter(loaded, &String.starts_with?(Atom.to_string(&1), "Elixir.Sandbox@")) == []
  end

  # `modules` modules of `tests` tests each, every test checking it has a
  # fresh counter (two tests sharing a sandbox would see 2 and 4), and a
  # module whose tests leak.
  defp nested_suite(modules, tests) do
    cases =
      for m <- 1..modules do
        body =
          for t <- 1..tests do
            """
              test "counter #{t}", %{sandbox: id} do
                assert {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
                assert {:ok, 2} = Sandbox.call(id, Counter, :increment, [])
              end
            """
          end

        """
        defmodule Nested.Counter#{m}Test do
          use Sandbox.Case, async: true
          @moduletag sandbox: [path: #{inspect(@counter)}]
        #{body}
        end
        """
      end

    leaks = """
    defmodule Nested.LeakTest do
      use Sandbox.Case, async: true
      # the leaks are made under :low (the guards refuse them otherwise)
      @moduletag sandbox: [path: #{inspect(@helpers)}, security_profile: :low]

      test "leaks a process", %{sandbox: id} do
        worker = Sandbox.module_name(id, HelperApp.Worker)
        {:ok, _} = Sandbox.run(id, fn -> GenServer.call(worker, {:spawn_escaper, Process.whereis(:user)}) end)
      end

      test "leaks a table", %{sandbox: id} do
        heir = spawn(fn -> receive(do: (:never -> :ok)) end)
        worker = Sandbox.module_name(id, HelperApp.Worker)
        {:ok, _} = Sandbox.run(id, fn -> GenServer.call(worker, {:table_with_heir, heir}) end)
      end

      test "leaks a module", %{sandbox: id} do
        Module.create(Module.concat(["Sandbox@" <> id, "Extra"]), quote(do: def(x, do: 1)), __ENV__)
      end

      test "leaks nothing", %{sandbox: id} do
        assert {:ok, 0} = Sandbox.call(id, HelperApp, :get, [])
      end
    end
    """

    Enum.join(cases, "\n") <> "\n" <> leaks
  end

  defp collect_compiles(dir, acc \\ []) do
    receive do
      {:sandbox_event, [:sandbox, :compile, :stop], _, %{path: ^dir} = meta} ->
        collect_compiles(dir, [meta | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
