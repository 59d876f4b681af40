# reload_order/1 against :digraph + :digraph_utils on a random graph of
# 10,000 modules and 50,000 edges. Both sides start from the same map and
# both timings include building their graph from it.
defmodule Sandbox.Bench.Graph do
  @moduledoc false

  @nodes 10_000
  @edges 50_000

  def random_graph(nodes, edges, seed) do
    :rand.seed(:exsss, {seed, seed, seed})
    names = for i <- 1..nodes, do: :"Elixir.Bench.Graph.Mod#{i}"
    tuple = List.to_tuple(names)

    edge_list =
      for _ <- 1..edges,
          do: {elem(tuple, :rand.uniform(nodes) - 1), elem(tuple, :rand.uniform(nodes) - 1)}

    base = Map.new(names, &{&1, []})
    Enum.reduce(edge_list, base, fn {a, b}, acc -> Map.update!(acc, a, &[b | &1]) end)
  end

  # The baseline: a digraph built from the map, its strong components, and a
  # topological sort of the condensation, reversed so dependencies come first.
  def digraph_order(graph) do
    g = :digraph.new()

    try do
      for {v, _} <- graph, do: :digraph.add_vertex(g, v)

      for {v, deps} <- graph, d <- deps do
        # A dependency that is not a key is a node too (none in this graph).
        if not is_map_key(graph, d), do: :digraph.add_vertex(g, d)
        :digraph.add_edge(g, v, d)
      end

      _sccs = :digraph_utils.strong_components(g)
      c = :digraph_utils.condensation(g)

      try do
        c |> :digraph_utils.topsort() |> Enum.reverse()
      after
        :digraph.delete(c)
      end
    after
      :digraph.delete(g)
    end
  end

  def run do
    graph = random_graph(@nodes, @edges, 42)
    # Both sides find the same components.
    {:ok, groups} = Sandbox.Beam.reload_order(graph)
    base_groups = digraph_order(graph)
    true = MapSet.new(groups, &MapSet.new/1) == MapSet.new(base_groups, &MapSet.new/1)

    ours = Sandbox.Bench.median_us(fn -> Sandbox.Beam.reload_order(graph) end, 31)
    base = Sandbox.Bench.median_us(fn -> digraph_order(graph) end, 11, 1)
    Sandbox.Bench.compare("reload_order_10k", ours, base)
  end
end

Sandbox.Bench.Graph.run()
