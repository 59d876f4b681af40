defmodule Sandbox.Test.OTPHelpersTest do
  # The OTP helpers on plain host processes and on a sandbox's processes
  # (the sandbox tests get theirs from Sandbox.Case).
  use Sandbox.Case, async: true

  @counter Path.expand("../../examples/counter", __DIR__)
  @helpers Path.expand("../fixtures/helpers_project", __DIR__)

  defmodule Server do
    @moduledoc false
    use GenServer

    def start_link(opts) do
      {gen_opts, opts} = Keyword.split(opts, [:name])
      GenServer.start_link(__MODULE__, opts, gen_opts)
    end

    @impl true
    def init(opts) do
      if opts[:trap], do: Process.flag(:trap_exit, true)
      {:ok, Keyword.get(opts, :count, 0)}
    end

    @impl true
    def handle_call(:get, _from, n), do: {:reply, n, n}
    def handle_call(:inc, _from, n), do: {:reply, n + 1, n + 1}
    def handle_call(:sync, _from, n), do: {:reply, :ok, n}
    def handle_call(:never, _from, n), do: {:noreply, n}

    def handle_call({:block, notify}, _from, n) do
      send(notify, :blocked)

      receive do
        :release -> {:reply, :ok, n}
      end
    end

    @impl true
    def handle_cast({:add, k}, n), do: {:noreply, n + k}

    @impl true
    def handle_info({:notify_terminate, pid}, n) do
      Process.put(:notify, pid)
      {:noreply, n}
    end

    def handle_info(_msg, n), do: {:noreply, n}

    @impl true
    def terminate(reason, _n) do
      if pid = Process.get(:notify), do: send(pid, {:terminated, self(), reason})
      :ok
    end
  end

  defmodule Sup do
    @moduledoc false
    use Supervisor

    def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, Keyword.take(arg, [:name]))

    @impl true
    def init(arg) do
      names = Keyword.fetch!(arg, :names)
      restart = Keyword.get(arg, :restart, :permanent)

      children =
        for {name, i} <- Enum.with_index(names) do
          Supervisor.child_spec({Server, [name: name]}, id: {:child, i}, restart: restart)
        end

      Supervisor.init(children, strategy: :one_for_one, max_restarts: 100)
    end
  end

  defmodule Top do
    @moduledoc false
    use Supervisor

    def start_link(arg), do: Supervisor.start_link(__MODULE__, arg)

    @impl true
    def init(arg), do: Supervisor.init([{Sup, arg}], strategy: :one_for_one, max_restarts: 100)
  end

  # Names of this test's own.
  defp names(test, n), do: for(i <- 1..n, do: :"#{test} #{i}")

  defp start_sup(test, opts \\ []) do
    [a, b] = names(test, 2)
    {:ok, sup} = Sup.start_link([names: [a, b]] ++ opts)
    %{sup: sup, a: a, b: b}
  end

  describe "setup_isolated_genserver/3 and setup_isolated_supervisor/3" do
    test "start under unique names, linked, and stop at test exit", %{test: test} do
      {:ok, box} = Agent.start(fn -> [] end)

      on_exit(fn ->
        pids = Agent.get(box, & &1)
        Agent.stop(box)
        for pid <- pids, Process.alive?(pid), do: raise("#{inspect(pid)} survived its test")
      end)

      assert {:ok, s1} = setup_isolated_genserver(Server, test, init_args: [count: 5])
      assert {:ok, s2} = setup_isolated_genserver(Server, test)
      assert {:ok, s3} = setup_isolated_genserver(Server, test, name: false)
      assert {:ok, sup} = setup_isolated_supervisor(Sup, test, init_args: [names: names(test, 1)])

      {:registered_name, n1} = Process.info(s1, :registered_name)
      {:registered_name, n2} = Process.info(s2, :registered_name)
      assert is_atom(n1) and is_atom(n2) and n1 != n2
      assert Process.info(s3, :registered_name) == {:registered_name, []}
      assert GenServer.call(n1, :get) == 5
      assert s1 in elem(Process.info(self(), :links), 1)
      assert_all_children_alive(sup)
      Agent.update(box, fn _ -> [s1, s2, s3, sup] end)
    end

    @tag sandbox: [path: @helpers]
    test "start a process inside a sandbox", %{sandbox: id, test: test} do
      {:ok, before} = Sandbox.get_sandbox_info(id)

      assert {:ok, pid} =
               setup_isolated_genserver(HelperApp.Worker, test, sandbox: id, init_args: 41)

      # The relocated module runs, in the sandbox, unlinked from the test.
      assert GenServer.call(pid, :get) == 41
      assert {:ok, 42} = Sandbox.run(id, fn -> GenServer.call(pid, :bump) end)
      {:ok, later} = Sandbox.get_sandbox_info(id)
      assert later.resource_usage.current_processes == before.resource_usage.current_processes + 1
      refute pid in elem(Process.info(self(), :links), 1)

      assert {:ok, sup} =
               setup_isolated_supervisor(HelperApp.Pool, test, sandbox: id, init_args: 2)

      assert_child_count(sup, 2)
      refute sup in elem(Process.info(self(), :links), 1)
      {:ok, after_sup} = Sandbox.get_sandbox_info(id)
      # The supervisor and its two children are the sandbox's.
      assert after_sup.resource_usage.current_processes ==
               later.resource_usage.current_processes + 3

      assert {:error, {:undef, _}} = setup_isolated_genserver(Nope, test, sandbox: id)
    end
  end

  describe "waits" do
    test "wait_for_genserver_sync/2", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test)
      for _ <- 1..100, do: GenServer.cast(s, {:add, 1})
      assert wait_for_genserver_sync(s) == :ok
      assert :sys.get_state(s) == 100
      assert wait_for_genserver_sync(:"no such #{test}") == {:error, :noproc}
    end

    test "wait_for_process_restart/3: after a kill, before it, and when nothing restarts", %{
      test: test
    } do
      %{a: a, b: b} = start_sup(test)
      old = Process.whereis(a)
      Process.exit(old, :kill)
      assert {:ok, new} = wait_for_process_restart(a, old)
      assert new != old and Process.alive?(new) and Process.whereis(a) == new

      # Still alive when the wait starts: the wait sees its death, then the restart.
      old_b = Process.whereis(b)
      killer = spawn(fn -> receive(do: (:go -> Process.exit(old_b, :kill))) end)
      send(killer, :go)
      assert {:ok, new_b} = wait_for_process_restart(b, old_b)
      assert new_b != old_b

      # Alive and staying so.
      assert wait_for_process_restart(a, new, 50) == {:error, :timeout}

      # A temporary child is not restarted: known as soon as its supervisor
      # has handled the exit.
      %{a: t} = start_sup(:"#{test} temporary", restart: :temporary)
      temp = Process.whereis(t)
      Process.exit(temp, :kill)
      assert wait_for_process_restart(t, temp, 5000) == {:error, :not_restarted}
    end

    @tag sandbox: [path: @counter]
    test "wait_for_process_restart/3 on a sandbox's process", %{sandbox: id} do
      old = Process.whereis(Sandbox.module_name(id, Counter.Server))
      Process.exit(old, :kill)
      assert {:ok, new} = wait_for_process_restart({id, Counter.Server}, old)
      assert new != old
      assert {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
    end

    test "wait_for_supervisor_restart/2: children, and a supervisor restarted itself", %{
      test: test
    } do
      %{sup: sup, a: a} = start_sup(test)
      Process.exit(Process.whereis(a), :kill)
      assert {:ok, ^sup} = wait_for_supervisor_restart(sup)
      assert_all_children_alive(sup)

      [x, y] = names(:"#{test} nested", 2)
      sup_name = :"#{test} sup"
      {:ok, _top} = Top.start_link(names: [x, y], name: sup_name)
      old_sup = Process.whereis(sup_name)
      Process.exit(old_sup, :kill)
      assert {:ok, new_sup} = wait_for_supervisor_restart(sup_name, 5000)
      assert new_sup != old_sup
      assert_child_count(new_sup, 2)
      assert_process_alive(x)

      dead = spawn(fn -> :ok end)
      ref = Process.monitor(dead)
      assert_receive {:DOWN, ^ref, _, _, _}
      assert wait_for_supervisor_restart(dead) == {:error, :noproc}
    end

    test "wait_for_process_death/2 and monitor_process_lifecycle/1", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test, name: false)
      assert wait_for_process_death(s, 20) == {:error, :timeout}
      {ref, ^s} = monitor_process_lifecycle(s)
      Process.unlink(s)
      Process.exit(s, :boom)
      assert wait_for_process_death(s) in [{:ok, :boom}, {:ok, :noproc}]
      assert_receive {:DOWN, ^ref, :process, ^s, :boom}
      assert wait_for_process_death(s) == {:ok, :noproc}
      assert_raise ArgumentError, fn -> monitor_process_lifecycle(:"no such #{test}") end
    end

    test "cleanup_processes/1 stops OTP processes whoever their parent, and others", %{
      test: test
    } do
      _ = test
      # A trapping GenServer started by another process: an exit signal from
      # us would only be a message to it; it is terminated properly.
      me = self()

      parent =
        spawn(fn ->
          {:ok, s} = Server.start_link(trap: true)
          send(me, {:server, s})
          receive(do: (:never -> :ok))
        end)

      assert_receive {:server, s}
      send(s, {:notify_terminate, self()})
      plain = spawn(fn -> receive(do: (:never -> :ok)) end)
      stubborn = spawn(fn -> Process.flag(:trap_exit, true) && receive(do: (:never -> :ok)) end)

      assert cleanup_processes([s, plain, stubborn, :"no such #{test}"]) == :ok
      assert_received {:terminated, ^s, :shutdown}
      for pid <- [s, plain, stubborn], do: refute(Process.alive?(pid))
      Process.exit(parent, :kill)
    end
  end

  describe "GenServerHelpers" do
    test "get_server_state_safely/1 and call_with_timeout/3", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test, init_args: [count: 3])
      assert get_server_state_safely(s) == {:ok, 3}
      assert call_with_timeout(s, :inc) == {:ok, 4}
      assert call_with_timeout(s, :never, 20) == {:error, :timeout}
      assert get_server_state_safely(:"no such #{test}") == {:error, :noproc}
      assert call_with_timeout(:"no such #{test}", :get) == {:error, :noproc}
    end

    test "cast_and_sync/3 by :sys or by a sync call", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test)
      assert cast_and_sync(s, {:add, 2}) == :ok
      assert :sys.get_state(s) == 2
      assert cast_and_sync(s, {:add, 3}, :sync) == :ok
      assert cast_and_sync(s, {:add, 1}, :get) == {:ok, 6}
      assert cast_and_sync(:"no such #{test}", {:add, 1}) == {:error, :noproc}
    end

    test "concurrent_calls/3", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test)
      assert {:ok, [{:inc, incs}, {:get, gets}]} = concurrent_calls(s, [:inc, :get], 5)
      assert length(incs) == 5 and length(gets) == 5
      # Every increment happened once: their replies are 1..5 in some order.
      assert incs |> Enum.map(fn {:ok, n} -> n end) |> Enum.sort() == [1, 2, 3, 4, 5]
      assert :sys.get_state(s) == 5
    end

    test "stress_test_server/3", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test)
      assert {:ok, stats} = stress_test_server(s, [{:cast, {:add, 1}}, {:call, :get}], 100)
      assert stats.calls > 0 and stats.casts > 0 and stats.errors == 0
      # Synchronised at the end: every cast has been handled.
      assert :sys.get_state(s) == stats.casts

      assert {:ok, %{errors: errors, error_samples: [:timeout]}} =
               stress_test_server(s, [{:call, :never}], 50, call_timeout: 20)

      assert errors > 0
      assert_raise ArgumentError, fn -> stress_test_server(s, [:bad], 10) end
    end

    test "test_server_crash_recovery/2 by name, by pid, unsupervised, gone", %{test: test} do
      %{a: a, b: b} = start_sup(test)
      old = Process.whereis(a)
      assert {:ok, info} = test_server_crash_recovery(a, :boom)
      assert %{recovered: true, original_pid: ^old, crash_reason: :boom} = info
      assert info.new_pid == Process.whereis(a)

      old_b = Process.whereis(b)
      assert {:ok, %{recovered: true, new_pid: new_b}} = test_server_crash_recovery(old_b, :boom)
      assert new_b == Process.whereis(b)

      {:ok, lone} = GenServer.start(Server, count: 0)

      assert {:ok, %{recovered: false, recovery_error: :not_restarted}} =
               test_server_crash_recovery(lone, :kill)

      assert test_server_crash_recovery(:"no such #{test}", :boom) == {:error, :noproc}
    end

    @tag sandbox: [path: @counter]
    test "on a sandbox's server", %{sandbox: id} do
      server = {id, Counter.Server}
      assert {:ok, 1} = call_with_timeout(server, :increment)
      assert get_server_state_safely(server) == {:ok, 1}
      assert {:ok, [{:increment, results}]} = concurrent_calls(server, [:increment], 4)
      assert length(results) == 4
      assert_genserver_state(server, 5)
      assert {:ok, %{recovered: true}} = test_server_crash_recovery(server, :boom)
      assert_genserver_state(server, 0)
      assert_sandbox_running(id)
    end
  end

  describe "Assertions" do
    test "assert_process_alive/1 and assert_process_dead/1", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test, name: false)
      assert assert_process_alive(s) == :ok

      assert_raise ExUnit.AssertionError, ~r/to be dead, but it is alive: #PID/, fn ->
        assert_process_dead(s)
      end

      Process.unlink(s)
      Process.exit(s, :kill)
      {:ok, _} = wait_for_process_death(s)
      assert assert_process_dead(s) == :ok

      assert_raise ExUnit.AssertionError, ~r/to be alive, but it is dead/, fn ->
        assert_process_alive(s)
      end

      assert_raise ExUnit.AssertionError, ~r/no live process is registered as/, fn ->
        assert_process_alive(:"no such #{test}")
      end
    end

    test "assert_process_restarted/2", %{test: test} do
      %{a: a} = start_sup(test)
      old = Process.whereis(a)
      Process.exit(old, :kill)
      assert assert_process_restarted(a, old) == :ok

      %{a: t} = start_sup(:"#{test} temporary", restart: :temporary)
      temp = Process.whereis(t)
      Process.exit(temp, :kill)

      assert_raise ExUnit.AssertionError, ~r/its supervisor did not restart it/, fn ->
        assert_process_restarted(t, temp)
      end
    end

    test "assert_genserver_state/2 with a value or a predicate", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test, init_args: [count: 7])
      assert assert_genserver_state(s, 7) == :ok
      assert assert_genserver_state(s, &(&1 > 5)) == :ok

      error = assert_raise ExUnit.AssertionError, fn -> assert_genserver_state(s, 8) end
      assert error.message =~ "differs from the expected state"
      assert {error.left, error.right} == {7, 8}

      assert_raise ExUnit.AssertionError,
                   ~r/does not satisfy the given function\n\s*state: 7/,
                   fn ->
                     assert_genserver_state(s, &(&1 > 10))
                   end

      assert_raise ExUnit.AssertionError, ~r/could not read the state .* :noproc/, fn ->
        assert_genserver_state(:"no such #{test}", 0)
      end
    end

    test "assert_genserver_responsive/2", %{test: test} do
      {:ok, s} = setup_isolated_genserver(Server, test)
      assert assert_genserver_responsive(s) == :ok

      # Busy in a call until released.
      me = self()
      spawn(fn -> GenServer.call(s, {:block, me}, :infinity) end)
      assert_receive :blocked

      assert_raise ExUnit.AssertionError, ~r/did not answer within 50 ms/, fn ->
        assert_genserver_responsive(s, 50)
      end

      send(s, :release)
      assert assert_genserver_responsive(s) == :ok
    end

    test "assert_child_count/2 and assert_all_children_alive/1", %{test: test} do
      %{sup: sup} = start_sup(test)
      assert assert_child_count(sup, 2) == :ok
      assert assert_all_children_alive(sup) == :ok

      assert_raise ExUnit.AssertionError, ~r/to have 3 active children, but it has 2/, fn ->
        assert_child_count(sup, 3)
      end

      # A transient child that stopped normally stays, not running.
      %{sup: tsup, a: t} = start_sup(:"#{test} transient", restart: :transient)
      :ok = GenServer.stop(t)

      assert_raise ExUnit.AssertionError,
                   ~r/these are not: \[\{\{:child, 0\}, :undefined\}\]/,
                   fn ->
                     assert_all_children_alive(tsup)
                   end

      assert_raise ExUnit.AssertionError, ~r/expected a supervisor/, fn ->
        assert_child_count(:"no such #{test}", 0)
      end
    end

    @tag sandbox: [path: @counter]
    test "on a sandbox's supervisor", %{sandbox: id} do
      assert_child_count({id, Counter.Application}, 1)
      assert_all_children_alive({id, Counter.Application})
      assert_process_alive({id, Counter.Server})
      assert_genserver_responsive({id, Counter.Server})
    end

    test "assert_no_process_leaks/1" do
      gl = Process.group_leader()

      assert assert_no_process_leaks(fn ->
               Task.async(fn -> :done end) |> Task.await()
               spawn(fn -> :ok end)
             end) == :ok

      me = self()

      error =
        assert_raise ExUnit.AssertionError, fn ->
          assert_no_process_leaks(fn ->
            spawn(fn ->
              send(me, {:leaked, self()})
              receive(do: (:never -> :ok))
            end)
          end)
        end

      assert_received {:leaked, leaked}
      assert error.message =~ "1 process(es) spawned by the operation are still alive"
      assert error.message =~ inspect(leaked)
      # Reported, then killed; the caller's group leader is its own again.
      refute Process.alive?(leaked)
      assert Process.group_leader() == gl
    end

    test "assert_memory_usage_stable/2", %{test: test} do
      {:ok, agent} = Agent.start_link(fn -> [] end)

      assert assert_memory_usage_stable(fn -> Agent.get(agent, & &1) end, scope: agent) == :ok

      grow = fn -> Agent.update(agent, &[String.duplicate("x", 1000) <> "#{test}" | &1]) end

      assert_raise ExUnit.AssertionError, ~r/grew by \d+ bytes/, fn ->
        assert_memory_usage_stable(grow, tolerance: 0.1, scope: agent, runs: 50)
      end
    end
  end
end
