defmodule Sandbox.BeamGraphTest do
  use ExUnit.Case, async: true
  doctest Sandbox.Beam.Graph

  alias Sandbox.Beam

  # A chain m0 -> m1 -> ... -> m(n-1): each module depends on the next.
  defp chain(n) do
    Map.new(0..(n - 1), fn i ->
      {:"chain_#{i}", if(i < n - 1, do: [:"chain_#{i + 1}"], else: [])}
    end)
  end

  describe "reload_order/1" do
    test "the empty graph has no groups" do
      assert Beam.reload_order(%{}) == {:ok, []}
    end

    test "dependencies come before dependents" do
      assert Beam.reload_order(%{web: [:core, :db], db: [:core], core: []}) ==
               {:ok, [[:core], [:db], [:web]]}
    end

    test "a cycle is one group, members in term order, placed after its dependencies" do
      graph = %{z: [:y], y: [:x], x: [:z, :base], base: [], top: [:x]}
      assert Beam.reload_order(graph) == {:ok, [[:base], [:x, :y, :z], [:top]]}
    end

    test "self-loops and duplicate edges change nothing" do
      assert Beam.reload_order(%{a: [:a, :b, :b], b: [:b]}) == {:ok, [[:b], [:a]]}
      assert Beam.reload_order(%{a: [:a]}) == {:ok, [[:a]]}
    end

    test "disconnected parts: independent groups in term order" do
      graph = %{d: [:c], c: [], b: [:a], a: [:b], e: []}
      assert Beam.reload_order(graph) == {:ok, [[:a, :b], [:c], [:d], [:e]]}
    end

    test "nodes that are only dependencies are nodes too" do
      assert Beam.reload_order(%{a: [:zz, :b]}) == {:ok, [[:b], [:zz], [:a]]}
    end

    test "module atoms and UTF-8 atoms sort in term order" do
      # Latin-1 names only (sorted by their bytes), then a name beyond Latin-1.
      for graph <- [
            %{Foo.Bar => [], Foo => [], :ü => [:é], :z => [], :é => [], :É => []},
            %{Foo.Bar => [], Foo => [], :ü => [], :ŧ => [:é], :é => []}
          ] do
        assert {:ok, groups} = Beam.reload_order(graph)
        assert groups == Enum.map(Enum.sort(Map.keys(graph)), &[&1])
      end
    end

    test "names alike in their first bytes after a common prefix sort in term order" do
      :rand.seed(:exsss, {9, 9, 9})

      for _ <- 1..50 do
        names =
          for _ <- 1..:rand.uniform(200) do
            suffix = for _ <- 1..:rand.uniform(12), into: "", do: <<Enum.random(~c"ab\0")>>
            :"Elixir.MyApp.Accounts.#{suffix}"
          end

        graph = Map.new(names, &{&1, []})
        assert Beam.reload_order(graph) == {:ok, Enum.map(Enum.sort(Map.keys(graph)), &[&1])}
      end
    end

    test "a 100,000-node chain (no recursion limit)" do
      n = 100_000
      assert {:ok, groups} = Beam.reload_order(chain(n))
      assert groups == Enum.map((n - 1)..0, &[:"chain_#{&1}"])
    end

    test "a 100,000-node cycle is one group" do
      n = 100_000
      graph = Map.put(chain(n), :"chain_#{n - 1}", [:chain_0])
      assert {:ok, [group]} = Beam.reload_order(graph)
      assert length(group) == n
      assert group == Enum.sort(Map.keys(graph))
    end

    # A million node names are a million atoms: the test runs in a peer node
    # of its own so that the suite's VM keeps room in its atom table.
    @tag :slow
    @tag timeout: 180_000
    test "a 1,000,000-node chain" do
      paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
      {:ok, peer, _node} = :peer.start_link(%{connection: :standard_io, args: paths})
      {:ok, _} = :peer.call(peer, :application, :ensure_all_started, [:elixir])

      result =
        :peer.call(
          peer,
          Code,
          :eval_string,
          [
            """
            defmodule GraphPeerChain do
              def run(n) do
                chain =
                  Map.new(0..(n - 1), fn
                    0 -> {:chain_0, []}
                    i -> {:"chain_\#{i}", [:"chain_\#{i - 1}"]}
                  end)

                {:ok, groups} = Sandbox.Beam.reload_order(chain)
                {length(groups), hd(groups), List.last(groups)}
              end
            end

            GraphPeerChain.run(1_000_000)
            """
          ],
          150_000
        )

      :peer.stop(peer)
      # chain_i depends on chain_{i-1}: dependencies first means chain_0 first.
      assert {{1_000_000, [:chain_0], [:chain_999999]}, _binding} = result
    end

    test "few keys with many edges take the dirty path and agree" do
      %{graph: threshold} = :sandbox_nif.dirty_thresholds()
      deps = for i <- 1..(threshold + 10), do: :"dep_#{i}"
      graph = %{hub: deps, leaf: [:hub]}
      assert {:ok, groups} = Beam.reload_order(graph)
      assert groups == Enum.map(Enum.sort(deps), &[&1]) ++ [[:hub], [:leaf]]
      assert {:error, {:bad_node, 42}} = Beam.reload_order(%{hub: deps ++ [42]})
    end

    test "many keys take the dirty path and agree with the digraph" do
      %{graph: threshold} = :sandbox_nif.dirty_thresholds()
      :rand.seed(:exsss, {7, 7, 7})
      graph = random_graph(threshold + 100, 2 * threshold)
      check_against_digraph(graph)
    end

    test "malformed graphs are errors" do
      assert Beam.reload_order(%{"a" => []}) == {:error, {:bad_node, "a"}}
      assert Beam.reload_order(%{a: [:b, 1]}) == {:error, {:bad_node, 1}}
      assert Beam.reload_order(%{a: :b}) == {:error, {:bad_edges, :a}}
      assert Beam.reload_order(%{a: [:b | :c]}) == {:error, {:bad_edges, :a}}
      assert Beam.reload_order(%{a: %{}}) == {:error, {:bad_edges, :a}}
    end

    test "anything but a map raises ArgumentError" do
      for bad <- [[a: [:b]], nil, {:a, [:b]}, "graph"] do
        assert_raise ArgumentError, fn -> Beam.reload_order(bad) end
      end
    end

    test "random graphs agree with :digraph_utils" do
      :rand.seed(:exsss, {1, 2, 3})

      for _ <- 1..300 do
        n = :rand.uniform(40)
        graph = random_graph(n, :rand.uniform(3 * n + 1) - 1)
        check_against_digraph(graph)
      end
    end

    test "the order is the canonical one: smallest ready group first" do
      :rand.seed(:exsss, {4, 5, 6})

      for _ <- 1..200 do
        n = :rand.uniform(30)
        graph = random_graph(n, :rand.uniform(2 * n + 1) - 1)
        {:ok, groups} = Beam.reload_order(graph)
        assert groups == reference_order(graph)
        shuffled = Map.new(graph, fn {k, deps} -> {k, Enum.shuffle(deps)} end)
        assert Beam.reload_order(shuffled) == {:ok, groups}
      end
    end
  end

  describe "dependency_graph/2" do
    setup do
      ebin = Path.join(:code.lib_dir(:eex), "ebin")

      parsed =
        for file <- Path.wildcard(Path.join(ebin, "*.beam")) do
          {:ok, beam} = Beam.parse(File.read!(file))
          beam
        end

      %{eex: parsed}
    end

    test "every module of :eex, with edges equal to its imports and funs in the set", %{eex: eex} do
      set = MapSet.new(eex, & &1.module)
      assert MapSet.size(set) >= 5
      assert {:ok, graph} = Beam.dependency_graph(eex)
      assert Map.keys(graph) |> MapSet.new() == set

      for %Beam{module: m, imports: imports, external_funs: funs} <- eex do
        expected =
          (imports ++ funs)
          |> Enum.map(&elem(&1, 0))
          |> Enum.filter(&(&1 in set and &1 != m))
          |> Enum.uniq()
          |> Enum.sort()

        assert graph[m] == expected, "#{inspect(m)}"
      end

      # EEx compiles through EEx.Compiler: a real edge, not an empty graph.
      assert EEx.Compiler in graph[EEx]

      assert {:ok, groups} = Beam.reload_order(graph)
      assert_respects_edges(graph, groups)
    end

    test "remote calls to itself are not edges" do
      me = %Beam{
        module: :me,
        imports: [{:me, :f, 0}, {:other, :g, 1}],
        external_funs: [{:me, :h, 2}]
      }

      other = %Beam{module: :other, external_funs: [{:me, :f, 0}]}
      assert Beam.dependency_graph([me, other]) == {:ok, %{me: [:other], other: [:me]}}
    end

    test "extra edges are added, restricted to the set, without self-edges" do
      a = %Beam{module: :a}
      b = %Beam{module: :b, imports: [{:a, :f, 0}]}
      extra = %{a: [:b, :a, :host], b: [:a], outside: [:a]}

      assert Beam.dependency_graph([a, b], extra_edges: extra) ==
               {:ok, %{a: [:b], b: [:a]}}

      assert Beam.dependency_graph([]) == {:ok, %{}}
    end

    test "a module given twice is an error" do
      a = %Beam{module: :a}
      assert Beam.dependency_graph([a, %Beam{module: :b}, a]) == {:error, {:duplicate_module, :a}}
    end

    test "wrong types raise ArgumentError" do
      a = %Beam{module: :a}

      for {mods, opts} <- [
            {:not_a_list, []},
            {[%{module: :a}], []},
            {[%Beam{module: "a"}], []},
            {[%Beam{module: :a, imports: [:a | :b]}], []},
            {[%Beam{module: :a, imports: [{"m", :f, 1}]}], []},
            {[%Beam{module: :a, external_funs: :none}], []},
            {[a], [extra_edges: [a: :b]]},
            {[a], [extra_edges: %{a: [1]}]},
            {[a], [extra_edges: %{a: :b}]},
            {[a], [unknown: 1]},
            {[a], :not_a_list}
          ] do
        assert_raise ArgumentError, fn -> Beam.dependency_graph(mods, opts) end
      end
    end
  end

  # A random graph over n nodes named n0..n(n-1) with e random edges.
  defp random_graph(n, e) do
    names = List.to_tuple(for i <- 0..(n - 1), do: :"n#{i}")
    base = Map.new(Tuple.to_list(names), &{&1, []})

    Enum.reduce(1..e//1, base, fn _, acc ->
      from = elem(names, :rand.uniform(n) - 1)
      to = elem(names, :rand.uniform(n) - 1)
      Map.update!(acc, from, &[to | &1])
    end)
  end

  defp check_against_digraph(graph) do
    {:ok, groups} = Beam.reload_order(graph)
    g = :digraph.new()

    try do
      for {v, deps} <- graph, d <- deps do
        :digraph.add_vertex(g, v)
        :digraph.add_vertex(g, d)
        :digraph.add_edge(g, v, d)
      end

      for {v, _} <- graph, do: :digraph.add_vertex(g, v)
      expected = g |> :digraph_utils.strong_components() |> Enum.map(&MapSet.new/1)
      assert MapSet.new(groups, &MapSet.new/1) == MapSet.new(expected)
    after
      :digraph.delete(g)
    end

    assert_respects_edges(graph, groups)
  end

  # Every node once; every edge between different groups points backwards.
  defp assert_respects_edges(graph, groups) do
    position = for {group, i} <- Enum.with_index(groups), node <- group, into: %{}, do: {node, i}

    assert map_size(position) == Enum.sum(Enum.map(groups, &length/1))

    for {node, deps} <- graph, dep <- deps do
      assert position[dep] <= position[node], "#{node} -> #{dep}"
    end
  end

  # The documented order, computed the slow way: SCCs from :digraph_utils,
  # then repeatedly the ready group whose smallest member is smallest.
  defp reference_order(graph) do
    g = :digraph.new()

    sccs =
      try do
        for {v, deps} <- graph, d <- [v | deps], do: :digraph.add_vertex(g, d)
        for {v, deps} <- graph, d <- deps, do: :digraph.add_edge(g, v, d)
        g |> :digraph_utils.strong_components() |> Enum.map(&Enum.sort/1)
      after
        :digraph.delete(g)
      end

    comp = for scc <- sccs, node <- scc, into: %{}, do: {node, scc}

    deps_of =
      Map.new(sccs, fn scc ->
        deps = for node <- scc, dep <- Map.get(graph, node, []), comp[dep] != scc, do: comp[dep]
        {scc, MapSet.new(deps)}
      end)

    Stream.unfold({deps_of, MapSet.new()}, fn {left, placed} ->
      ready = for {scc, deps} <- left, MapSet.subset?(deps, placed), do: scc

      case Enum.min_by(ready, &hd/1, fn -> nil end) do
        nil -> nil
        scc -> {scc, {Map.delete(left, scc), MapSet.put(placed, scc)}}
      end
    end)
    |> Enum.to_list()
  end
end
