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
