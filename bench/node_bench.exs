# Node isolation (isolation: :node): create from a warm pool and a cached
# compile, the call/5 round trip against an in-VM sandbox's, and the
# resident size of an idle sandbox VM.
alias Sandbox.Bench
alias Sandbox.Node.Pool

path = Path.expand("../examples/counter", __DIR__)

time_us = fn fun ->
  t0 = System.monotonic_time()
  fun.()
  System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
end

# Warm the compile cache, the code paths and the pool.
{:ok, _} = Sandbox.create_sandbox("nbench-warm", :counter, sandbox_path: path, isolation: :node)
:ok = Sandbox.destroy_sandbox("nbench-warm")

# Create with a warm VM waiting (the pool refills between creates, untimed).
# The pool's VMs are confined as :high's (Sandbox.Node.Confinement): a
# sandbox of another profile boots a VM of its own.
creates =
  for i <- 1..15 do
    :ok = Pool.warm()
    id = "nbench-#{i}"

    us =
      time_us.(fn ->
        {:ok, _} =
          Sandbox.create_sandbox(id, :counter,
            sandbox_path: path,
            isolation: :node,
            security_profile: :high
          )
      end)

    :ok = Sandbox.destroy_sandbox(id)
    us
  end

Bench.value("node_create_warm", Bench.median(creates) / 1000, "ms", 50)

# call/5: the same function of the same application, in-VM and in a VM of
# its own.
:ok = Pool.warm()
{:ok, _} = Sandbox.create_sandbox("nbench-vm", :counter, sandbox_path: path)
{:ok, _} = Sandbox.create_sandbox("nbench-node", :counter, sandbox_path: path, isolation: :node)
vm = Bench.median_us(fn -> {:ok, _} = Sandbox.call("nbench-vm", Counter, :value, []) end, 501, 50)

node =
  Bench.median_us(fn -> {:ok, _} = Sandbox.call("nbench-node", Counter, :value, []) end, 501, 50)

Bench.compare("node_call_vs_vm", node, vm)

# Memory: the resident size of an idle sandbox VM's process tree (the VM
# and its port helper), from /proc, averaged over a few sandboxes.
ids = for i <- 1..4, do: "nbench-idle-#{i}"

rss =
  for id <- ids do
    :ok = Pool.warm()

    {:ok, %{os_pid: os}} =
      Sandbox.create_sandbox(id, :counter, sandbox_path: path, isolation: :node)

    {:ok, %{^os => %{total: %{rss: rss}}}} = Sandbox.CNode.sample([os], descendants: true)
    rss
  end

Bench.value("node_memory_per_idle_sandbox", Enum.sum(rss) / length(rss), "bytes", 40_000_000)

for id <- ["nbench-vm", "nbench-node" | ids], do: :ok = Sandbox.destroy_sandbox(id)
