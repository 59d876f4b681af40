# The resource monitor (issue 13):
#
#   * monitor_idle_1000_sandboxes: 1,000 sandboxes of the demo application,
#     idle: the VM's CPU time over 10 s with the monitor running minus over
#     10 s with it suspended, in percent of one scheduler (CPU time, so the
#     load of other programs on the machine does not count); a comment line
#     gives the monitor's own wall-clock timing and the VM's scheduler
#     utilisation too;
#   * monitor_sweep_100k_processes: one forced sample (a full sweep) with
#     100,000 idle host processes and 10 sandboxes, median of 11, in ms;
#   * call_100k_vs_1k_processes: `Sandbox.call/5` median with 100,000 idle
#     host processes (ours) against with 1,000 (base);
#   * process_bomb_stop_latency: a sandbox under `max_processes: 100`
#     spawning parked processes in a tight loop: from the call that starts
#     the bomb to the `[:sandbox, :limit, :exceeded]` event, median of 5.
alias Sandbox.Bench
alias Sandbox.ResourceMonitor

counter = Path.expand("../examples/counter", __DIR__)
hog = Path.expand("../test/fixtures/resources/hog", __DIR__)

park = fn ->
  receive do
    :never -> :ok
  end
end

spawn_idle = fn n -> for _ <- 1..n, do: spawn(park) end
kill = fn pids -> for p <- pids, do: Process.exit(p, :kill) end

utilisation = fn prev, now ->
  Enum.sum(
    for {{id, a0, t0}, {id, a1, t1}} <- Enum.zip(Enum.sort(prev), Enum.sort(now)),
        id <= :erlang.system_info(:schedulers),
        t1 > t0,
        do: (a1 - a0) / (t1 - t0)
  )
end

# Warm the compile cache.
{:ok, _} = Sandbox.create_sandbox("bench-warm", :counter, sandbox_path: counter)
:ok = Sandbox.destroy_sandbox("bench-warm")

## 1,000 idle sandboxes

ids = for i <- 1..1000, do: "idle-#{i}"

ids
|> Task.async_stream(&Sandbox.create_sandbox(&1, :counter, sandbox_path: counter),
  max_concurrency: System.schedulers_online() * 2,
  timeout: :infinity
)
|> Enum.each(fn {:ok, {:ok, _}} -> :ok end)

for _ <- 1..12, do: ResourceMonitor.await_tick()

# CPU time of the whole VM (statistics(:runtime): user + system time of
# all its threads, not wall time, so other programs on the machine do not
# inflate it) over a window with the monitor running, and over one with
# it suspended: the difference is what the monitor costs.
cpu_ms = fn fun ->
  {r0, _} = :erlang.statistics(:runtime)
  fun.()
  {r1, _} = :erlang.statistics(:runtime)
  r1 - r0
end

window_ms = 10_000
s0 = ResourceMonitor.stats()
w0 = :erlang.statistics(:scheduler_wall_time)
with_monitor = cpu_ms.(fn -> Process.sleep(window_ms) end)
s1 = ResourceMonitor.stats()
w1 = :erlang.statistics(:scheduler_wall_time)
:sys.suspend(ResourceMonitor)
without_monitor = cpu_ms.(fn -> Process.sleep(window_ms) end)
:sys.resume(ResourceMonitor)
pct = (with_monitor - without_monitor) / window_ms * 100
self_timed = (s1.busy_us - s0.busy_us) / (window_ms * 1000) * 100

IO.puts(
  "# 1,000 idle sandboxes, #{:erlang.system_info(:process_count)} processes, #{window_ms} ms: " <>
    "VM CPU #{with_monitor} ms with the monitor, #{without_monitor} ms without; " <>
    "#{s1.samples - s0.samples} samples, #{s1.sweeps - s0.sweeps} sweeps " <>
    "(last: #{s1.last_sweep_us} us); monitor's own wall time #{Float.round(self_timed, 2)} %, " <>
    "VM schedulers busy #{Float.round(utilisation.(w0, w1) * 100, 2)} % of one"
)

Bench.value("monitor_idle_1000_sandboxes", pct, "pct_cpu", 1.0)

ids
|> Task.async_stream(&Sandbox.destroy_sandbox/1,
  max_concurrency: System.schedulers_online() * 2,
  timeout: :infinity
)
|> Stream.run()

## One sweep of 100,000 processes

few = for i <- 1..10, do: "few-#{i}"
for id <- few, do: {:ok, _} = Sandbox.create_sandbox(id, :counter, sandbox_path: counter)
idle = spawn_idle.(100_000 - :erlang.system_info(:process_count))
sweeps = for _ <- 1..11, do: ResourceMonitor.sweep()
ms = Bench.median(Enum.map(sweeps, & &1.duration_us)) / 1000
swept = hd(sweeps).processes

IO.puts("# sweep of #{swept} processes: #{Float.round(ms * 1_000_000 / swept, 1)} ns per process")
Bench.value("monitor_sweep_100k_processes", ms, "ms", 100)

## call/5 with 100,000 idle processes against 1,000

call = fn -> {:ok, _} = Sandbox.call("few-1", Counter, :value, []) end
many_us = Bench.median_us(call, 2001, 200)
kill.(idle)
for _ <- 1..3, do: ResourceMonitor.await_tick()
idle = spawn_idle.(1_000 - min(:erlang.system_info(:process_count), 1_000) + 1)
IO.puts("# call baseline with #{:erlang.system_info(:process_count)} processes")
few_us = Bench.median_us(call, 2001, 200)
kill.(idle)
Bench.compare("call_100k_vs_1k_processes", many_us, few_us)
for id <- few, do: :ok = Sandbox.destroy_sandbox(id)

## Process bomb: first spawn to stop

latencies =
  for i <- 1..5 do
    id = "bomb-#{i}"

    {:ok, _} =
      Sandbox.create_sandbox(id, :hog, sandbox_path: hog, resource_limits: %{max_processes: 100})

    :ok = Sandbox.subscribe(id)
    t0 = System.monotonic_time()
    {:ok, _} = Sandbox.call(id, Hog, :processes, [200_000])

    receive do
      {:sandbox_event, [:sandbox, :limit, :exceeded], _, %{sandbox_id: ^id}} -> :ok
    after
      60_000 -> raise "bomb #{id} not stopped"
    end

    ms = System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond) / 1000
    :ok = Sandbox.destroy_sandbox(id)
    ms
  end

Bench.value("process_bomb_stop_latency", Bench.median(latencies), "ms", 200)
