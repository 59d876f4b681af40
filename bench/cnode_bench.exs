# Benchmarks of the supervising C-node (issue 4). Prints BENCH lines only
# through the helpers of bench_helper.exs.
alias Sandbox.Bench
alias Sandbox.CNode

{:ok, server} = CNode.start_link(name: nil)
os_pid = CNode.os_pid(server)

cpu_seconds = fn ->
  {:ok, %{^os_pid => s}} = CNode.sample([os_pid], server: server)
  s.cpu_user + s.cpu_system
end

# 1. Idle CPU of the program while it watches a tree of 10,000 files, over 10 s.
root = Path.join(System.tmp_dir!(), "cnode_bench_#{System.unique_integer([:positive])}")
File.rm_rf!(root)

for d <- 1..100 do
  dir = Path.join([root, "lib", "d#{d}"])
  File.mkdir_p!(dir)
  for f <- 1..100, do: File.write!(Path.join(dir, "m#{f}.ex"), "defmodule M#{d}_#{f}, do: nil\n")
end

{:ok, wid} = CNode.watch(root, server: server)
c0 = cpu_seconds.()
Process.sleep(10_000)
c1 = cpu_seconds.()
Bench.value("cnode_idle_cpu_watching_10k_files", (c1 - c0) / 10 * 100, "pct_cpu", 0.1)

# 2. From a file write to the Elixir message, with the default 50 ms debounce.
file = Path.join([root, "lib", "d1", "m1.ex"])

latency =
  Bench.median_us(
    fn ->
      File.write!(file, "defmodule M1_1, do: :changed\n")

      receive do
        {:sandbox_cnode, ^wid, {:changed, _}} -> :ok
      after
        5_000 -> raise "no change event"
      end
    end,
    21
  )

Bench.value("cnode_write_to_message_latency", latency, "us", (50 + 5) * 1000)
CNode.unwatch(wid, server)
File.rm_rf!(root)

# 3. spawn of /bin/true to its exit event, against System.cmd/2.
ours =
  Bench.median_us(
    fn ->
      {:ok, %{id: id}} = CNode.spawn(["/bin/true"], server: server)

      receive do
        {:sandbox_cnode, ^id, {:exit, {:status, 0}}} -> :ok
      end
    end,
    101,
    10
  )

base = Bench.median_us(fn -> {_, 0} = System.cmd("/bin/true", []) end, 101, 10)
Bench.compare("cnode_spawn_true_vs_system_cmd", ours, base)

GenServer.stop(server)

# 4. The C-node's CPU while it samples a job of 1,000 processes every 10 ms
# (a process limit of 5,000 keeps it sampling), over 5 s, under each
# containment mechanism: a cgroup per job reads the job's members; the
# fallback walks /proc once per round.
for mode <- [:auto, :subreaper] do
  {:ok, server} = CNode.start_link(name: nil, containment: mode)
  {:ok, %{containment: used}} = CNode.info(server)
  os_pid = CNode.os_pid(server)

  cpu = fn ->
    {:ok, %{^os_pid => s}} = CNode.sample([os_pid], server: server)
    s.cpu_user + s.cpu_system
  end

  script = "i=0; while [ $i -lt 1000 ]; do sleep 600 & i=$((i+1)); done; echo up; wait"

  {:ok, %{id: id}} =
    CNode.spawn(["sh", "-c", script],
      server: server,
      limits: %{processes: 5000},
      sample_interval: 10
    )

  receive do
    {:sandbox_cnode, ^id, {:stdout, "up\n"}} -> :ok
  after
    60_000 -> raise "the tree did not come up"
  end

  c0 = cpu.()
  Process.sleep(5_000)
  c1 = cpu.()
  Bench.value("cnode_sampling_1000_process_job_#{used}", (c1 - c0) / 5 * 100, "pct_cpu", 10)
  {:ok, _} = CNode.kill(id, :sigkill, server)

  receive do
    {:sandbox_cnode, ^id, {:exit, _}} -> :ok
  end

  GenServer.stop(server)
end

# 5. An inotify queue overflow on a watch of 20,000 files: from the moment
# the stopped C-node resumes to the event reporting every file (a rescan).
{:ok, server} = CNode.start_link(name: nil)
root = Path.join(System.tmp_dir!(), "cnode_bench_ovf_#{System.unique_integer([:positive])}")
File.rm_rf!(root)

for d <- 1..100 do
  dir = Path.join([root, "d#{d}"])
  File.mkdir_p!(dir)
  for f <- 1..200, do: File.write!(Path.join(dir, "m#{f}.ex"), "")
end

{:ok, wid} = CNode.watch(root, server: server, debounce: 20)
os_pid = Integer.to_string(CNode.os_pid(server))
{_, 0} = System.cmd("kill", ["-STOP", os_pid])
limit = "/proc/sys/fs/inotify/max_queued_events" |> File.read!() |> String.trim()
touch = Path.join([root, "d1", "m1.ex"])
for i <- 1..(String.to_integer(limit) + 100), do: File.write!(touch, Integer.to_string(i))
t0 = System.monotonic_time(:microsecond)
{_, 0} = System.cmd("kill", ["-CONT", os_pid])

rescan_us =
  receive do
    {:sandbox_cnode, ^wid, {:changed, paths}} when length(paths) == 20_000 ->
      System.monotonic_time(:microsecond) - t0
  after
    120_000 -> raise "no rescan event"
  end

Bench.value("cnode_overflow_rescan_20k_files", rescan_us / 1000, "ms", 1000)
GenServer.stop(server)
File.rm_rf!(root)
