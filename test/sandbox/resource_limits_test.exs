defmodule Sandbox.ResourceLimitsTest do
  # Bombs: the host's figures are watched while they run, so nothing else
  # may run beside them (async: false). Each bomb is bounded: were the
  # monitor to fail, it stops by itself well before it could hurt the VM
  # (at most 60,000 processes or ~1.2 GB), and the test fails.
  use ExUnit.Case, async: false

  import Sandbox.Test.ResourceHelpers

  alias Sandbox.ResourceMonitor

  @mib 1024 * 1024
  @process_bound 20_000
  @memory_bound 512 * @mib
  # "Back to the baseline": within this of where the host started.
  @slack %{processes: 50, memory: 32 * @mib}

  setup context do
    prefix = "rl#{:erlang.phash2(context.test)}"

    on_exit(fn ->
      for n <- ["", "a", "b"], do: Sandbox.destroy_sandbox(prefix <> n)
    end)

    %{id: prefix}
  end

  # Runs `bomb` (a call into the hog sandbox `id`) under `limits` with a
  # neighbour sandbox answering pings meanwhile; returns the host's figures
  # and the exceeded event, once the sandbox is stopped and the host is
  # back to its baseline.
  defp detonate(id, limits, {fun, args}) do
    neighbour = id <> "b"
    create_hog!(id, limits)
    create_hog!(neighbour)
    :ok = Sandbox.subscribe(id)
    pinger = start_pinger(neighbour)
    watch = start_watch()

    {:ok, bomb} = Sandbox.call(id, Hog, fun, args)
    ref = Process.monitor(bomb)
    event = await_exceeded(id)
    host = stop_watch(watch)
    {pings, failures} = stop_pinger(pinger)

    # Killed, already gone when the monitor was set up, or stopped by its
    # own refused spawn (admission fails it with `system_limit`, as a full
    # process table would) before the monitor's kill reached it.
    assert_receive {:DOWN, ^ref, :process, ^bomb, reason}
    assert reason in [:killed, :noproc] or match?({:system_limit, _}, reason)
    assert {:ok, info} = Sandbox.get_sandbox_info(id)
    assert info.status == :error
    assert info.resource_usage.current_processes == 0

    # The neighbour answered all along, and still does.
    assert pings > 0 and failures == []
    assert {:ok, {:pong, _}} = Sandbox.call(neighbour, Hog.Server, :ping, [])

    %{host: host, event: event, info: info, after: await_back(host.base, @slack)}
  end

  describe "max_processes" do
    test "a process bomb is stopped; the host's process count barely moves", %{id: id} do
      r = detonate(id, %{max_processes: 100}, {:processes, [60_000]})

      assert r.info.error == {:limit_exceeded, :max_processes}
      assert {%{usage: usage, limit: 100}, %{limit: :max_processes}} = r.event
      assert usage > 100
      assert r.host.peak.processes - r.host.base.processes < @process_bound
      assert r.after.processes - r.host.base.processes < @slack.processes
    end
  end

  describe "max_memory" do
    test "a heap bomb is stopped; the host's memory stays within bounds", %{id: id} do
      # 30 M 3-tuples: ~1.2 GB of heap if nothing stopped it.
      r = detonate(id, %{max_memory: 64 * @mib}, {:heap, [30_000_000]})
      assert_memory_stop(r)
    end

    test "a binary hoard is stopped", %{id: id} do
      r = detonate(id, %{max_memory: 64 * @mib}, {:binaries, [1_200]})
      assert_memory_stop(r)
    end

    test "an ETS fill is stopped", %{id: id} do
      # ~1.2 GB of rows if nothing stopped it.
      r = detonate(id, %{max_memory: 64 * @mib}, {:ets, [1_200_000]})
      assert_memory_stop(r)
    end
  end

  defp assert_memory_stop(r) do
    assert r.info.error == {:limit_exceeded, :max_memory}
    assert {%{usage: usage, limit: limit}, %{limit: :max_memory}} = r.event
    assert limit == 64 * @mib and usage > limit
    assert r.host.peak.memory - r.host.base.memory < @memory_bound
    assert r.after.memory - r.host.base.memory < @slack.memory
  end

  describe "the bombs without the limits" do
    # The attacks are real: with limits too high to matter, each takes the
    # host past the bound the tests above hold it to.
    @describetag :slow
    @describetag timeout: 300_000

    test "the process bomb raises the host's process count past the bound", %{id: id} do
      assert_bomb_unchecked(
        id,
        %{max_processes: 1_000_000},
        {:processes, [60_000]},
        :processes,
        @process_bound
      )
    end

    test "the heap bomb raises the host's memory past the bound", %{id: id} do
      assert_bomb_unchecked(
        id,
        %{max_memory: 8192 * @mib},
        {:heap, [30_000_000]},
        :memory,
        @memory_bound
      )
    end

    test "the binary hoard raises the host's memory past the bound", %{id: id} do
      assert_bomb_unchecked(
        id,
        %{max_memory: 8192 * @mib},
        {:binaries, [1_200]},
        :memory,
        @memory_bound
      )
    end

    test "the ETS fill raises the host's memory past the bound", %{id: id} do
      assert_bomb_unchecked(
        id,
        %{max_memory: 8192 * @mib},
        {:ets, [1_200_000]},
        :memory,
        @memory_bound
      )
    end
  end

  # Runs the bomb until the host's figure is more than `bound` above its
  # baseline, then destroys the sandbox and checks the host is back to it.
  defp assert_bomb_unchecked(id, limits, {fun, args}, figure, bound) do
    create_hog!(id, limits)
    watch = start_watch(notify: {figure, bound})
    {:ok, _bomb} = Sandbox.call(id, Hog, fun, args)
    assert_receive {:bound_passed, ^figure}, 120_000
    host = stop_watch(watch)
    assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(id)
    :ok = Sandbox.destroy_sandbox(id)
    back = await_back(host.base, @slack)
    assert back.processes - host.base.processes < @slack.processes
    assert back.memory - host.base.memory < @slack.memory
  end

  describe "max_cpu_percentage" do
    test "a busy loop under 25.0 gets 5–45 % of what it gets unthrottled; the sandbox answers",
         %{id: id} do
      throttled = id <> "a"
      free = id <> "b"
      create_hog!(throttled, %{max_cpu_percentage: 25.0})
      create_hog!(free, %{max_cpu_percentage: 1000.0})

      # Both loops run side by side and count their iterations over the
      # same 2 s of wall time, after 2 s in which the throttle settles.
      loops =
        for sandbox <- [throttled, free] do
          Task.async(fn -> Sandbox.call(sandbox, Hog, :busy, [2_000, 2_000], timeout: 15_000) end)
        end

      ResourceMonitor.await_tick()
      ResourceMonitor.await_tick()
      ResourceMonitor.await_tick()
      assert {:ok, {:pong, 1}} = Sandbox.call(throttled, Hog.Server, :ping, [])
      [{:ok, slow}, {:ok, fast}] = Task.await_many(loops, 20_000)

      ratio = slow / fast

      assert ratio > 0.05 and ratio < 0.45, "throttled/unthrottled = #{ratio}"
      assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(throttled)
    end
  end

  describe "admission for the spawn guards" do
    test "admit_spawn/1 counts the sampled members and the spawns admitted since", %{id: id} do
      create_hog!(id, %{max_processes: 4, max_memory: 8 * 1024 * 1024})
      ResourceMonitor.sweep()
      {:ok, %{resource_usage: %{current_processes: base}}} = Sandbox.get_sandbox_info(id)
      assert base < 4

      # Within the sample's count plus the spawns admitted since: O(1).
      for _ <- 1..(4 - base), do: assert(ResourceMonitor.admit_spawn(id) == :ok)
      # Past it, the members are counted: the spawns admitted did not come,
      # so there is room.
      assert ResourceMonitor.admit_spawn(id) == :ok

      assert ResourceMonitor.spawn_options(id) == [
               max_heap_size: %{
                 size: div(8 * 1024 * 1024, :erlang.system_info(:wordsize)),
                 kill: true,
                 error_logger: false
               }
             ]

      # Really at the limit (a call's own process is a member while it runs):
      # the spawn that would pass it is refused, and the sandbox stops for it.
      :ok = Sandbox.subscribe(id)
      {:ok, _} = Sandbox.call(id, Hog, :spawn_parked, [3 - base])
      assert {:error, _} = Sandbox.call(id, Hog, :spawn_parked, [1])

      assert_receive {:sandbox_event, [:sandbox, :limit, :exceeded], %{usage: 5, limit: 4},
                      %{limit: :max_processes}},
                     10_000

      assert ResourceMonitor.admit_spawn("#{id}none") == {:error, :not_found}
      assert ResourceMonitor.spawn_options("#{id}none") == []
    end
  end
end
