defmodule Sandbox.Test.HelpersTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.Helpers

  @moduletag :tmp_dir

  @project Path.expand("../fixtures/helpers_project", __DIR__)
  @counter Path.expand("../../examples/counter", __DIR__)

  describe "setup_test_sandbox/3" do
    test "creates a sandbox with an id from the test name, destroyed when the test exits",
         %{test: test} do
      # on_exit callbacks run last-registered first: this one runs after
      # the helper's, and fails the test if the sandbox is still there.
      {:ok, box} = Agent.start(fn -> [] end)

      on_exit(fn ->
        ids = Agent.get(box, & &1)
        Agent.stop(box)
        for id <- ids, match?({:ok, _}, Sandbox.get_sandbox_info(id)), do: raise("#{id} survived")
      end)

      assert {:ok, info} = setup_test_sandbox(test, :counter, sandbox_path: @counter)
      assert info.id =~ ~r/\Asetup_test_sandbox_3_creates_a_sandbox_with_an_id_from/
      assert String.length(info.id) <= 64
      assert {:ok, 1} = Sandbox.call(info.id, Counter, :increment, [])

      # Another sandbox for the same test name gets another id.
      assert {:ok, other} = setup_test_sandbox(test, :counter, sandbox_path: @counter)
      assert other.id != info.id
      Agent.update(box, fn _ -> [info.id, other.id] end)
    end

    test "returns the create's error", %{test: test} do
      assert {:error, {:unknown_module_or_app, :nope}} =
               setup_test_sandbox(test, :nope, sandbox_path: @counter)
    end

    test "ids are valid and distinct whatever the name" do
      names = [
        :"test héllo wörld!",
        "  ",
        "___",
        String.duplicate("x", 300),
        :"test -dash",
        "a.b@c"
      ]

      ids = for name <- names, do: test_sandbox_id(name)

      for id <- ids, do: assert(id =~ ~r/\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\z/, id)
      assert ids == Enum.uniq(ids)
      assert test_sandbox_id("same") != test_sandbox_id("same")
    end
  end

  describe "assert_sandbox_running/1" do
    setup :counter_sandbox

    test "passes for a running sandbox", %{id: id} do
      assert assert_sandbox_running(id) == :ok
    end

    test "fails for an unknown or destroyed sandbox", %{id: id} do
      assert_raise ExUnit.AssertionError,
                   ~r/"nope-x" is not running: there is no such sandbox/,
                   fn ->
                     assert_sandbox_running("nope-x")
                   end

      :ok = Sandbox.destroy_sandbox(id)

      assert_raise ExUnit.AssertionError, ~r/no such sandbox/, fn ->
        assert_sandbox_running(id)
      end
    end

    test "fails, naming the status and error, for a sandbox that gave up", %{test: test} do
      {:ok, info} = setup_test_sandbox(test, :counter, sandbox_path: @counter, max_restarts: 0)
      id = info.id
      :ok = Sandbox.subscribe(id)
      Process.exit(info.supervisor_pid, :kill)

      assert_receive {:sandbox_event, [:sandbox, :manager, :failed], _, %{sandbox_id: ^id}},
                     10_000

      assert_raise ExUnit.AssertionError,
                   ~r/status is :error \(error: \{:max_restarts_exceeded/,
                   fn -> assert_sandbox_running(id) end
    end

    test "fails for an invalid id" do
      assert_raise ExUnit.AssertionError, ~r/invalid_id/, fn -> assert_sandbox_running("a b") end
    end
  end

  describe "assert_hot_reload_successful/2" do
    setup :project_sandbox

    test "passes after a reload; fails before one and after a rollback", %{id: id, dir: dir} do
      assert_raise ExUnit.AssertionError, ~r/HelperApp in sandbox .* never reloaded/, fn ->
        assert_hot_reload_successful(id, HelperApp)
      end

      file = Path.join(dir, "lib/helper_app.ex")
      edit(file, "def version, do: 1", "def version, do: 2")
      assert {:ok, :hot_reloaded} = Sandbox.hot_reload_source(id, {:file, file})
      assert assert_hot_reload_successful(id, HelperApp) == :ok

      assert {:ok, :rolled_back} = Sandbox.rollback_module(id, HelperApp, 1)

      assert_raise ExUnit.AssertionError,
                   ~r/version 2 is not current \(the current version is 1/,
                   fn -> assert_hot_reload_successful(id, HelperApp) end
    end

    test "fails for a module the sandbox does not have", %{id: id} do
      assert_raise ExUnit.AssertionError, ~r/Nope is not a module of the sandbox/, fn ->
        assert_hot_reload_successful(id, Nope)
      end
    end

    test "fails while a process still runs the previous code", %{id: id, dir: dir} do
      # A process of the sandbox waits inside version 1 of the worker's code.
      assert {:ok, parked} = Sandbox.run(id, fn -> GenServer.call(worker(id), :park) end)
      file = Path.join(dir, "lib/helper_app/worker.ex")
      edit(file, "def init(count), do:", "def init(count), do: :v2 && ")
      assert {:ok, :hot_reloaded} = Sandbox.hot_reload_source(id, {:file, file})

      assert_raise ExUnit.AssertionError,
                   ~r/processes still run the previous code: #{inspect(parked)}/,
                   fn -> assert_hot_reload_successful(id, HelperApp.Worker) end

      send(parked, :stop)
    end

    test "fails when the code loaded is not the current version's", %{id: id, dir: dir} do
      file = Path.join(dir, "lib/helper_app.ex")
      edit(file, "def version, do: 1", "def version, do: 2")
      assert {:ok, :hot_reloaded} = Sandbox.hot_reload_source(id, {:file, file})

      # Version 1 loaded again behind the sandbox's back.
      [v1 | _] = Sandbox.list_module_versions(id, HelperApp)
      {:ok, graph} = Sandbox.get_dependency_graph(id)

      parsed =
        for m <- Map.keys(graph) do
          [current | _] = Enum.reverse(Sandbox.list_module_versions(id, m))
          {:ok, p} = Sandbox.Beam.parse(current.beam_data)
          p
        end

      {:ok, renames} = Sandbox.Beam.rename_map(id, parsed)
      {:ok, relocated} = Sandbox.Beam.relocate(v1.beam_data, renames)
      name = Sandbox.module_name(id, HelperApp)
      :code.purge(name)
      {:module, ^name} = :code.load_binary(name, ~c"behind-its-back", relocated)

      assert_raise ExUnit.AssertionError, ~r/the loaded code is not version 2 \(vsn/, fn ->
        assert_hot_reload_successful(id, HelperApp)
      end
    end
  end

  describe "wait_for_compilation/2" do
    test "waits for a create under way in another process", ctx do
      # A project directory of this test's own: its compile is a cache miss,
      # and its compile span tells when the create is under way.
      dir = copy_project(ctx.tmp_dir)
      id = test_sandbox_id(ctx.test)
      on_exit(fn -> Sandbox.destroy_sandbox(id) end)
      :ok = Sandbox.subscribe(:all)

      creator = Task.async(fn -> Sandbox.create_sandbox(id, :helper_app, sandbox_path: dir) end)

      assert_receive {:sandbox_event, [:sandbox, :compile, :start], _, %{path: ^dir}}, 20_000
      assert wait_for_compilation(id, 30_000) == :ok
      assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(id)
      assert {:ok, _} = Task.await(creator, 30_000)
    end

    test "returns at once for a running sandbox; :not_found and :invalid_id otherwise", ctx do
      {:ok, info} = setup_test_sandbox(ctx.test, :counter, sandbox_path: @counter)
      assert wait_for_compilation(info.id) == :ok
      assert wait_for_compilation("no-such-sandbox") == {:error, :not_found}
      assert wait_for_compilation("not valid") == {:error, {:invalid_id, "not valid"}}
    end

    test "waits for an automatic reload the file watcher is compiling", ctx do
      dir = copy_project(ctx.tmp_dir)

      {:ok, info} =
        setup_test_sandbox(ctx.test, :helper_app, sandbox_path: dir, auto_reload: true)

      id = info.id
      :ok = Sandbox.subscribe(:all)

      edit(Path.join(dir, "lib/helper_app.ex"), "def version, do: 1", "def version, do: 2")

      # The watcher's compile has started (its span) ...
      assert_receive {:sandbox_event, [:sandbox, :compile, :start], _,
                      %{path: ^dir, entry: :incremental_compile}},
                     20_000

      # ... and once the wait returns, its reload has been applied.
      assert wait_for_compilation(id, 30_000) == :ok
      assert {:ok, 2} = Sandbox.call(id, HelperApp, :version, [])
      assert_received {:sandbox_event, [:sandbox, :reload, :reloaded], _, %{sandbox_id: ^id}}
    end
  end

  describe "stress_test_sandbox/3" do
    setup :fixture_sandbox

    test "counts the operations it ran", %{id: id} do
      assert {:ok, r} = stress_test_sandbox(id, [{HelperApp, :bump, []}], 200)
      assert r.errors == 0 and r.error_samples == []
      assert r.operations > 0
      # Each operation reached the sandbox exactly once.
      assert {:ok, r.operations} == Sandbox.call(id, HelperApp, :get, [])
      assert r.latency_us.p50 <= r.latency_us.p99
      assert r.latency_us.p99 <= r.latency_us.max
    end

    test "counts errors and samples them; functions are given the id", %{id: id} do
      ops = [
        {HelperApp, :fail, []},
        {HelperApp, :nope, []},
        fn ^id -> Sandbox.call(id, HelperApp, :get, []) end,
        fn ^id -> throw(:thrown) end
      ]

      assert {:ok, r} = stress_test_sandbox(id, ops, 200)
      assert r.errors > 0 and r.errors < r.operations

      assert Enum.any?(r.error_samples, &match?({:exception, %ArgumentError{}, _}, &1))
      assert Enum.any?(r.error_samples, &match?({:exception, %UndefinedFunctionError{}, _}, &1))
      assert {:throw, :thrown} in r.error_samples
      assert length(r.error_samples) == length(Enum.uniq(r.error_samples))
    end

    test "the workers run at the same time", %{id: id} do
      # Each worker's first operation waits at a barrier that opens only
      # when all `n` have arrived: it cannot open unless they run at once.
      n = 4
      barrier = spawn_link(fn -> barrier(n, []) end)

      op = fn _id ->
        if Process.get(:passed) do
          :ok
        else
          send(barrier, {:arrived, self()})

          receive do
            :go -> Process.put(:passed, true)
          after
            10_000 -> {:error, :barrier_never_opened}
          end
        end
      end

      assert {:ok, r} = stress_test_sandbox(id, [op], 100, concurrency: n)
      assert r.errors == 0
      assert r.operations >= n
    end

    test "an unknown sandbox or bad arguments", %{id: id} do
      assert stress_test_sandbox("no-such", [{HelperApp, :get, []}], 10) == {:error, :not_found}
      assert_raise ArgumentError, fn -> stress_test_sandbox(id, [], 10) end
      assert_raise ArgumentError, fn -> stress_test_sandbox(id, [:nope], 10) end
      assert_raise ArgumentError, fn -> stress_test_sandbox(id, [{HelperApp, :get, []}], 0) end
    end
  end

  ## Helpers

  defp counter_sandbox(%{test: test}) do
    {:ok, info} = setup_test_sandbox(test, :counter, sandbox_path: @counter)
    %{id: info.id}
  end

  # A sandbox of the fixture project itself (compiled once, then from the
  # compile cache).
  defp fixture_sandbox(%{test: test}) do
    {:ok, info} = setup_test_sandbox(test, :helper_app, sandbox_path: @project)
    %{id: info.id}
  end

  # A sandbox of a copy of the fixture project, for the tests that edit it.
  defp project_sandbox(%{test: test, tmp_dir: tmp}) do
    dir = copy_project(tmp)
    {:ok, info} = setup_test_sandbox(test, :helper_app, sandbox_path: dir)
    %{id: info.id, dir: dir}
  end

  defp copy_project(dir) do
    dest = Path.join(dir, "helper_app")
    File.mkdir_p!(dest)
    File.cp_r!(@project, dest)
    dest
  end

  defp edit(path, from, to) do
    text = File.read!(path)
    assert text =~ from
    File.write!(path, String.replace(text, from, to))
  end

  defp worker(id), do: Sandbox.module_name(id, HelperApp.Worker)

  defp barrier(n, arrived) when length(arrived) == n do
    for pid <- arrived, do: send(pid, :go)
    barrier(n, [])
  end

  defp barrier(n, arrived) do
    receive do
      {:arrived, pid} -> barrier(n, [pid | arrived])
    end
  end
end
