# Distributed sandboxes (issue 14), on 3 :peer nodes of this machine
# (Sandbox.Test.Cluster.start_nodes/2; this VM coordinates and runs no copy):
#
#   * cluster_reload_vs_erpc_load: Sandbox.Cluster.hot_reload/4 of one
#     GenServer module (BenchCluster.Store, two versions alternating so that
#     every reload is a change) across the 3 nodes, two-phase (prepare
#     everywhere: validate, relocate, prepare_loading, suspend and capture;
#     then commit everywhere: load, migrate, resume), against three
#     sequential :erpc.call(node, :code, :load_binary, ...) of the same BEAM
#     under its host name (no validation, no relocation, no processes, no
#     second phase);
#   * cluster_reload_3_nodes: our median in ms;
#   * cluster_create_3_nodes: Sandbox.Cluster.create_sandbox/4 of the
#     sandbox (a supervisor and the Store) on the 3 nodes from a warm
#     compile cache (compile here — a cache hit —, ship, relocate, load and
#     start on every node, confirm), in ms; each run is destroyed untimed.
alias Sandbox.Bench
alias Sandbox.Cluster
alias Sandbox.Test.Cluster, as: TC

defmodule Sandbox.ClusterBench do
  @moduledoc false

  def store_source(version) do
    """
    defmodule BenchCluster.Store do
      use GenServer
      def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
      @impl true
      def init(n), do: {:ok, n}
      @impl true
      def handle_call(:version, _from, n), do: {:reply, #{version}, n}
      def handle_call(:bump, _from, n), do: {:reply, n + 1, n + 1}
    end
    """
  end

  def sup_source do
    """
    defmodule BenchCluster.Sup do
      use Supervisor
      def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, name: __MODULE__)
      @impl true
      def init(_), do: Supervisor.init([BenchCluster.Store], strategy: :one_for_one)
    end
    """
  end

  # The BEAM of `source`, compiled here and unloaded again.
  def beam(source) do
    [{module, beam}] = Code.compile_string(source)
    :code.purge(module)
    :code.delete(module)
    :code.purge(module)
    beam
  end
end

alias Sandbox.ClusterBench, as: CB

Code.compiler_options(ignore_module_conflict: true)
tmp = Path.join(System.tmp_dir!(), "sandbox-cluster-bench-#{System.unique_integer([:positive])}")
File.mkdir_p!(tmp)
File.write!(Path.join(tmp, "store.ex"), CB.store_source(1))
File.write!(Path.join(tmp, "sup.ex"), CB.sup_source())

{:ok, nodes} = TC.start_nodes(3)
id = "clusterbench"

try do
  # Create from a warm cache: the first create fills it.
  create = fn ->
    {:ok, _} = Cluster.create_sandbox(nodes, id, BenchCluster.Sup, sandbox_path: tmp)
  end

  destroy = fn ->
    true = Enum.all?(Cluster.destroy_sandbox(nodes, id), fn {_, r} -> r == :ok end)
  end

  create.()
  destroy.()

  create_times =
    for _ <- 1..11 do
      t0 = System.monotonic_time()
      create.()
      t = System.monotonic_time() - t0
      destroy.()
      t
    end

  create_ms =
    create_times
    |> Bench.median()
    |> System.convert_time_unit(:native, :microsecond)
    |> Kernel./(1000)

  # Reload: two versions alternating.
  create.()
  beams = {CB.beam(CB.store_source(2)), CB.beam(CB.store_source(3))}
  counter = :counters.new(1, [])

  reload = fn ->
    :counters.add(counter, 1, 1)
    beam = elem(beams, rem(:counters.get(counter, 1), 2))
    {:ok, result} = Cluster.hot_reload(nodes, id, beam)
    true = Enum.all?(result, fn {_, r} -> r == :hot_reloaded end)
  end

  server = Sandbox.module_name(id, BenchCluster.Store)
  for n <- nodes, do: 1 = :erpc.call(n, GenServer, :call, [server, :bump])
  ours_us = Bench.median_us(reload, 51, 5)
  # Every node's server kept its pid and its state through every reload.
  for n <- nodes, do: 2 = :erpc.call(n, GenServer, :call, [server, :bump])

  # The same BEAMs under their host name, loaded node after node.
  host_counter = :counters.new(1, [])

  bare = fn ->
    :counters.add(host_counter, 1, 1)
    beam = elem(beams, rem(:counters.get(host_counter, 1), 2))

    for n <- nodes do
      {:module, BenchCluster.Store} =
        :erpc.call(n, :code, :load_binary, [BenchCluster.Store, ~c"bench", beam])
    end
  end

  base_us = Bench.median_us(bare, 51, 5)

  Bench.compare("cluster_reload_vs_erpc_load", ours_us, base_us)
  Bench.value("cluster_reload_3_nodes", ours_us / 1000, "ms", 50)
  Bench.value("cluster_create_3_nodes", create_ms, "ms", 1000)
  destroy.()
after
  TC.stop_nodes(nodes)
  File.rm_rf!(tmp)
end
