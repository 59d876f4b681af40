defmodule Sandbox.ResourceMonitor.SampleTest do
  # The measuring functions on real processes, without sandboxes.
  use ExUnit.Case, async: true

  alias Sandbox.ResourceMonitor.Sample

  defp park(keep \\ nil) do
    receive do
      :stop -> keep
    end
  end

  defp spawn_parked(gl, keep \\ nil) do
    test = self()

    pid =
      spawn(fn ->
        Process.group_leader(self(), gl)
        send(test, {:ready, self()})
        park(keep)
      end)

    receive do
      {:ready, ^pid} -> pid
    end
  end

  setup do
    gl = spawn(fn -> park() end)
    on_exit(fn -> Process.exit(gl, :kill) end)
    %{gl: gl}
  end

  test "a sweep groups processes by group leader, children of a group leader included", %{gl: gl} do
    a = spawn_parked(gl)
    b = spawn_parked(gl)
    # A group leader registered with `gl` as its upstream: its members count.
    {:ok, child} = Sandbox.GroupLeader.start_link("sample-test", upstream: gl)
    c = spawn_parked(child)
    _other = spawn_parked(Process.group_leader())

    {groups, swept} = Sample.sweep(%{gl => :s})
    assert Enum.sort(groups[:s]) == Enum.sort([a, b, c])
    assert swept >= 4
    assert Sample.sweep(%{}) == {%{}, 0}
    Sandbox.GroupLeader.stop(child)
  end

  test "memory counts a binary once however many members hold it", %{gl: gl} do
    bin = :binary.copy(<<1>>, 10_000_000)
    holders = for _ <- 1..3, do: spawn_parked(gl, bin)
    {figures, _reds, true} = Sample.measure(holders, Sample.empty(), false)
    assert figures.bin_memory == 10_000_000
    assert figures.proc_memory > 0
    assert figures.pids == holders
  end

  test "an unchanged process is not measured again, and measuring it does not change it",
       %{gl: gl} do
    pids = for _ <- 1..3, do: spawn_parked(gl)
    {figures, _, true} = Sample.measure(pids, Sample.empty(), false)
    # Serving the measurement cost each process a reduction; the figures
    # start after it, so nothing looks changed.
    assert Sample.unchanged?(figures.pids, figures.reds)
    assert Sample.measure(pids, figures, false) == {figures, 0, false}

    # A message makes its receiver run.
    send(hd(pids), :hello)
    :erlang.yield()
    wait_until(fn -> not Sample.unchanged?(figures.pids, figures.reds) end)
    {_, reds, true} = Sample.measure(pids, figures, false)
    assert reds > 0

    # A process that died drops out.
    ref = Process.monitor(List.last(pids))
    send(List.last(pids), :stop)
    assert_receive {:DOWN, ^ref, _, _, _}
    refute Sample.unchanged?(figures.pids, figures.reds)
    {after_exit, _, true} = Sample.measure(pids, figures, false)
    assert length(after_exit.pids) == 2
  end

  test "ETS tables count for their owner", %{gl: gl} do
    test = self()

    owner =
      spawn(fn ->
        Process.group_leader(self(), gl)
        t = :ets.new(:sample_test, [:public])
        for i <- 1..1000, do: :ets.insert(t, {i, Enum.to_list(1..20)})
        send(test, {:table, self(), t})
        park()
      end)

    assert_receive {:table, ^owner, table}
    {by_owner, owners} = Sample.ets_owners(%{}, false)
    assert by_owner[owner] == [table]
    bytes = :ets.info(table, :memory) * :erlang.system_info(:wordsize)
    assert Sample.ets_memory([owner], by_owner) == bytes
    assert Sample.ets_memory([self()], by_owner) == 0

    # Known tables are not looked up again (a remembered owner stands, even
    # a wrong one); a refresh looks every owner up. Only this test's table
    # is looked at: other tests make and drop tables meanwhile.
    stale = Map.put(owners, table, self())
    {by_stale, kept} = Sample.ets_owners(stale, false)
    assert kept[table] == self() and table in by_stale[self()]
    refute table in Map.get(by_stale, owner, [])
    {by_fresh, fresh} = Sample.ets_owners(stale, true)
    assert fresh[table] == owner and by_fresh[owner] == [table]
  end

  test "busy time of the schedulers between two readings" do
    assert Sample.busy(:undefined, []) == 0.0
    # Normal schedulers count; the dirty ones (ids above) do not.
    dirty = :erlang.system_info(:schedulers) + 1
    before = [{1, 100, 1000}, {dirty, 0, 1000}]
    now = [{1, 600, 2000}, {dirty, 1000, 2000}]
    assert Sample.busy(before, now) == 0.5
  end

  # Waits (without sleeping) until the scheduler has run the receiver.
  defp wait_until(fun) do
    unless fun.() do
      :erlang.yield()
      wait_until(fun)
    end
  end
end
