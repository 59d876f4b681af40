defmodule Sandbox.ResourceMonitorTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures
  import Sandbox.Test.ResourceHelpers

  alias Sandbox.ResourceMonitor

  setup context do
    prefix = "rm#{:erlang.phash2(context.test)}"

    on_exit(fn ->
      for %{id: id} <- Sandbox.list_sandboxes(), String.starts_with?(id, prefix) do
        Sandbox.destroy_sandbox(id)
      end

      # Stopped sandboxes are not listed but still exist.
      for n <- ["", "a", "b", "s"], do: Sandbox.destroy_sandbox(prefix <> n)
    end)

    %{id: prefix}
  end

  defp usage(id) do
    {:ok, %{resource_usage: usage}} = Sandbox.get_sandbox_info(id)
    usage
  end

  describe "resource_limits option" do
    test "a subset is merged over the profile's values and enforced as given", %{id: id} do
      info = create_hog!(id, %{max_processes: 20, max_cpu_percentage: 30})

      assert info.resource_limits ==
               Sandbox.Config.limits(:medium)
               |> Map.merge(%{max_processes: 20, max_cpu_percentage: 30.0})
    end

    test "bad values are refused with the offending entry", %{id: id} do
      create = &Sandbox.create_sandbox(id, :hog, sandbox_path: hog_path(), resource_limits: &1)

      for {key, value} <- [
            max_memory: 0,
            max_processes: 1.5,
            max_execution_time: -1,
            max_file_size: :big,
            max_cpu_percentage: 0,
            max_cpu_percentage: "50",
            bogus: 1
          ] do
        assert create.(%{key => value}) ==
                 {:error, {:invalid_option, {:resource_limits, {key, value}}}}
      end

      assert create.(max_memory: 1) ==
               {:error, {:invalid_option, {:resource_limits, [max_memory: 1]}}}

      assert Sandbox.get_sandbox_info(id) == {:error, :not_found}
    end
  end

  describe "usage" do
    @tag :tmp_dir
    test "a sample taken while the processes start is not the one reported", %{id: id} = ctx do
      # The application's start waits, with the sandbox's group leader set
      # and none of its processes up, until this test has had a sample taken.
      {dir, _gate} = gated!(ctx, id, :after_gate)
      creating = Task.async(fn -> create_gated(id, dir) end)

      assert_receive {:starting, starter}, 60_000
      ResourceMonitor.sweep()
      assert usage(id).current_processes == 0
      send(starter, :go)
      assert {:ok, info} = Task.await(creating, 60_000)
      # The supervisor and the agent.
      assert info.resource_usage.current_processes == 2
      assert usage(id).current_processes == 2
    end

    test "create returns real figures; they change with the sandbox", %{id: id} do
      info = create_hog!(id)
      # Hog.Application's supervisor and Hog.Server.
      assert %{current_processes: 2, cpu_usage: cpu, current_memory: mem} = info.resource_usage
      assert mem > 0 and is_float(cpu)

      {:ok, _} = Sandbox.call(id, Hog, :spawn_parked, [3])
      ResourceMonitor.sweep()
      assert usage(id).current_processes == 5
      assert usage(id).current_memory > mem
    end

    test "current_memory counts a held 50 MB binary, in the sandbox that holds it", %{id: id} do
      a = id <> "a"
      b = id <> "b"
      create_hog!(a)
      create_hog!(b)
      {:ok, holder} = Sandbox.call(a, Hog, :hold, [50_000_000])
      ResourceMonitor.sweep()

      assert usage(a).current_memory >= 50_000_000
      assert usage(b).current_memory < 1_000_000

      assert is_pid(holder)

      # Counted once, however many of the sandbox's processes refer to it.
      {:ok, _} = Sandbox.call(b, Hog, :hold, [50_000_000, 3])
      ResourceMonitor.sweep()
      assert usage(b).current_memory >= 50_000_000
      assert usage(b).current_memory < 2 * 50_000_000
    end

    test "ETS tables the sandbox's processes own are counted", %{id: id} do
      create_hog!(id)
      before = usage(id).current_memory
      {:ok, _} = Sandbox.call(id, Hog, :filled_ets, [2_000])
      ResourceMonitor.sweep()
      # 2,000 rows of 60 integers: well over 1 MB in the table.
      assert usage(id).current_memory - before > 1_000_000
    end

    test "cpu_usage: above 20 for a busy loop, below 5 when idle", %{id: id} do
      create_hog!(id)
      ResourceMonitor.await_tick()
      ResourceMonitor.await_tick()
      assert usage(id).cpu_usage < 5

      {:ok, spinner} = Sandbox.call(id, Hog, :spinner, [])
      ResourceMonitor.await_tick()
      ResourceMonitor.await_tick()
      busy = usage(id).cpu_usage
      send(spinner, :stop)
      # The profile's limit is 50.0: the loop is throttled there, not below.
      assert busy > 20
    end
  end

  describe "max_execution_time" do
    test "cuts :infinity and larger timeouts of call/5 and run/3", %{id: id} do
      create_hog!(id, %{max_execution_time: 100})
      test_pid = self()

      assert Sandbox.run(id, fn -> park(test_pid) end, timeout: :infinity) == {:error, :timeout}
      assert_received {:parked, p1}
      refute Process.alive?(p1)

      assert Sandbox.call(id, Hog, :busy, [60_000], timeout: 120_000) == {:error, :timeout}
      assert Sandbox.call(id, Hog.Server, :ping, [], timeout: :infinity) == {:ok, {:pong, 1}}
    end
  end

  describe "no false positives" do
    test "an idle sandbox under tight limits keeps running", %{id: id} do
      # Two processes, a call's process, ~20 KB: limits just above.
      info = create_hog!(id, %{max_processes: 3, max_memory: 256 * 1024, max_cpu_percentage: 2.0})
      assert info.resource_usage.current_memory < 256 * 1024
      Sandbox.subscribe(id)

      for _ <- 1..5 do
        assert {:ok, {:pong, _}} = Sandbox.call(id, Hog.Server, :ping, [])
        ResourceMonitor.await_tick()
      end

      assert {:ok, %{status: :running, error: nil}} = Sandbox.get_sandbox_info(id)
      refute_received {:sandbox_event, [:sandbox, :limit, :exceeded], _, _}
    end
  end

  describe "events and stop" do
    test "warning at 80 %, then exceeded, to subscribers of the id and of :all", %{id: id} do
      create_hog!(id, %{max_processes: 10})
      :ok = Sandbox.subscribe(id)
      :ok = Sandbox.subscribe(:all)

      {:ok, _} = Sandbox.call(id, Hog, :spawn_parked, [6])
      ResourceMonitor.sweep()

      for _ <- 1..2 do
        assert_received {:sandbox_event, [:sandbox, :limit, :warning], %{usage: 8, limit: 10},
                         %{sandbox_id: ^id, limit: :max_processes}}
      end

      # Once per crossing: no second warning while it stays above.
      ResourceMonitor.sweep()
      refute_received {:sandbox_event, [:sandbox, :limit, :warning], _, %{limit: :max_processes}}

      # The spawn guard's admission refuses the 11th process (the call fails,
      # or is killed with the sandbox) and the sandbox stops; the usage is
      # the count it tried to reach (conservative: spawns admitted since the
      # last sweep that have exited still count).
      assert {:error, _} = Sandbox.call(id, Hog, :spawn_parked, [3])
      ResourceMonitor.sweep()

      for _ <- 1..2 do
        assert {%{usage: usage, limit: 10}, %{limit: :max_processes}} = await_exceeded(id)
        assert usage >= 11
      end

      assert {:ok, info} = Sandbox.get_sandbox_info(id)
      assert info.status == :error
      assert info.error == {:limit_exceeded, :max_processes}
      assert info.resource_usage.current_processes == 0
      assert Sandbox.call(id, Hog.Server, :ping, []) == {:error, :not_found}

      # A stopped sandbox restarts, under the same limits.
      assert {:ok, %{status: :running, error: nil}} = Sandbox.restart_sandbox(id)
      assert {:ok, {:pong, 1}} = Sandbox.call(id, Hog.Server, :ping, [])
    end

    test "many short-lived processes, one after another, stay within max_processes", %{id: id} do
      # Between two samples the admission counts every spawn it let through;
      # at the limit it counts the members exactly instead of refusing.
      create_hog!(id, %{max_processes: 10})
      :ok = Sandbox.subscribe(id)
      assert {:ok, 100} = Sandbox.call(id, Hog, :spawn_brief, [100])
      ResourceMonitor.sweep()
      assert {:ok, %{status: :running, error: nil}} = Sandbox.get_sandbox_info(id)
      refute_received {:sandbox_event, [:sandbox, :limit, :exceeded], _, _}
    end

    @tag :tmp_dir
    test "a breach found while the processes start stops them, not the instance starting them",
         %{id: id} = ctx do
      # The instance holds the sandbox's group leader while it starts the
      # roots: a sample then finds the two processes over max_processes.
      {dir, _gate} = gated!(ctx, id, :before_gate)
      creating = Task.async(fn -> create_gated(id, dir, resource_limits: %{max_processes: 1}) end)

      assert_receive {:starting, starter}, 60_000
      ref = Process.monitor(starter)
      ResourceMonitor.sweep()
      send(starter, :go)
      assert Task.await(creating, 60_000) == {:error, {:limit_exceeded, :max_processes}}
      assert Sandbox.get_sandbox_info(id) == {:error, :not_found}
      # The instance answered, then went as an instance does.
      assert_receive {:DOWN, ^ref, :process, ^starter, reason}, 60_000
      refute reason == :killed
    end

    test "a sandbox over its limits from the start is not created", %{id: id} do
      assert Sandbox.create_sandbox(id, :hog,
               sandbox_path: hog_path(),
               resource_limits: %{max_processes: 1}
             ) ==
               {:error, {:limit_exceeded, :max_processes}}

      assert Sandbox.get_sandbox_info(id) == {:error, :not_found}
      assert loaded_modules(id) == []
    end

    test "max_memory stops the sandbox holding too much, not its neighbour", %{id: id} do
      a = id <> "a"
      b = id <> "b"
      create_hog!(a, %{max_memory: 16 * 1024 * 1024})
      create_hog!(b, %{max_memory: 16 * 1024 * 1024})
      Sandbox.subscribe(a)
      {:ok, holder} = Sandbox.call(a, Hog, :hold, [20 * 1024 * 1024])
      ref = Process.monitor(holder)

      assert {%{usage: usage, limit: 16_777_216}, %{limit: :max_memory}} = await_exceeded(a)
      assert usage > 20 * 1024 * 1024
      # killed, or already gone when the monitor was set up
      assert_receive {:DOWN, ^ref, :process, _, reason} when reason in [:killed, :noproc]

      assert {:ok, %{status: :error, error: {:limit_exceeded, :max_memory}}} =
               Sandbox.get_sandbox_info(a)

      assert {:ok, {:pong, 1}} = Sandbox.call(b, Hog.Server, :ping, [])
    end
  end

  describe "call/5 and run/3 follow their processes" do
    test "on timeout, the call's process and all it spawned die; the caller's mailbox stays clean",
         %{id: id} do
      create_hog!(id)
      test_pid = self()

      result =
        Sandbox.run(
          id,
          fn ->
            spawn(fn ->
              spawn(fn -> park(test_pid) end)
              park(test_pid)
            end)

            park(test_pid)
          end,
          timeout: 200
        )

      assert result == {:error, :timeout}
      parked = for _ <- 1..3, do: assert_receive({:parked, pid}) && pid
      refute Enum.any?(parked, &Process.alive?/1)
      assert {:messages, []} = Process.info(self(), :messages)
      assert {:ok, {:pong, 1}} = Sandbox.call(id, Hog.Server, :ping, [])
    end

    test "processes a call leaves running stay in the sandbox, untraced, and die with it",
         %{id: id} do
      create_hog!(id)
      {:ok, [left | _]} = Sandbox.call(id, Hog, :spawn_parked, [2])
      {:ok, gl} = Sandbox.run(id, fn -> Process.group_leader() end)

      assert {:group_leader, ^gl} = Process.info(left, :group_leader)
      assert :erlang.trace_info(left, :tracer) == {:tracer, []}
      assert {:messages, []} = Process.info(self(), :messages)
      # Anyone can trace them.
      assert :erlang.trace(left, true, [:receive]) == 1
      :erlang.trace(left, false, [:receive])

      ref = Process.monitor(left)
      :ok = Sandbox.destroy_sandbox(id)
      assert_receive {:DOWN, ^ref, :process, ^left, :killed}
    end

    test "a call from a traced caller still works (untracked)", %{id: id} do
      create_hog!(id)
      tracer = spawn_link(fn -> park(nil) end)
      :erlang.trace(self(), true, [:procs, :set_on_spawn, {:tracer, tracer}])

      try do
        assert {:ok, {:pong, 1}} = Sandbox.call(id, Hog.Server, :ping, [])
        assert {:error, :timeout} = Sandbox.run(id, fn -> park(nil) end, timeout: 50)
      after
        :erlang.trace(self(), false, [:all])
      end
    end
  end

  defp park(test_pid) do
    if test_pid, do: send(test_pid, {:parked, self()})

    receive do
      :never -> :ok
    end
  end

  # A project whose application's start sends {:starting, pid} to the test
  # (registered as the returned name) and waits for :go; it starts a
  # supervisor and an agent `:before_gate` or `:after_gate`.
  defp gated!(ctx, id, at) do
    gate = :"#{id}_gate"
    Process.register(self(), gate)

    wait = """
        send(#{inspect(gate)}, {:starting, self()})
        receive do: (:go -> :ok)
    """

    start = """
        {:ok, sup} = Supervisor.start_link([], strategy: :one_for_one)
        {:ok, _} = Agent.start_link(fn -> 0 end)
    """

    body = if at == :before_gate, do: start <> wait, else: wait <> start

    dir =
      project(ctx.tmp_dir, %{
        "mix.exs" => """
        defmodule Gated.MixProject do
          use Mix.Project
          def project, do: [app: :gated, version: "0.1.0"]
          def application, do: [mod: {Gated.App, []}]
        end
        """,
        "lib/gated.ex" => """
        defmodule Gated.App do
          use Application
          def start(_, _) do
        #{body}
            {:ok, sup}
          end
        end
        """
      })

    {dir, gate}
  end

  defp create_gated(id, dir, opts \\ []),
    do: Sandbox.create_sandbox(id, :gated, [sandbox_path: dir, security_profile: :low] ++ opts)
end
