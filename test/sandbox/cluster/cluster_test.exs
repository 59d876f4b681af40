defmodule Sandbox.ClusterTest do
  # Real :peer nodes; this VM becomes distributed. Three nodes are shared by
  # the module (each test has its own sandbox id and namespace); tests that
  # kill, stop or refuse a node start their own.
  use ExUnit.Case, async: false

  import Sandbox.Test.Fixtures, only: [project: 2]

  alias Sandbox.Cluster
  alias Sandbox.Test.Cluster, as: TC
  alias Sandbox.Test.{ClusterFixtures, ReloadFixtures}

  @moduletag :slow
  @moduletag :tmp_dir
  @moduletag timeout: 300_000

  setup_all do
    # Runs last (on_exit callbacks run in reverse): nothing this module
    # started is left.
    on_exit(fn ->
      leftover = TC.nodes()
      if leftover != [], do: raise("peer nodes left behind: #{inspect(leftover)}")
    end)

    {:ok, nodes} = TC.start_nodes(3)
    %{nodes: nodes}
  end

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    ns = "C#{hash}"
    id = "c#{hash}"
    on_exit(fn -> Cluster.destroy_sandbox(ctx.nodes, id) end)

    %{
      ns: ns,
      id: id,
      dir: project(Path.join(ctx.tmp_dir, "project"), ReloadFixtures.sources(ns)),
      sup: Module.concat(ns, Sup),
      store: Module.concat(ns, Store),
      calc: Module.concat(ns, Calc)
    }
  end

  defp create!(ctx, nodes, opts \\ []) do
    assert {:ok, infos} =
             Cluster.create_sandbox(nodes, ctx.id, ctx.sup, [sandbox_path: ctx.dir] ++ opts)

    assert infos |> Map.keys() |> Enum.sort() == Enum.sort(nodes)
    infos
  end

  defp store_name(ctx), do: Sandbox.module_name(ctx.id, ctx.store)

  # The Store server's version, through the sandbox (Sandbox.Cluster.call/6).
  defp version(ctx, node),
    do: Cluster.call(node, ctx.id, ctx.store, :version_of, [store_name(ctx)])

  # Host calls on a node: the Store server's state and pid, bumping it.
  defp on(node, m, f, a), do: :erpc.call(node, m, f, a, 30_000)
  defp state(ctx, node), do: on(node, GenServer, :call, [store_name(ctx), :state])
  defp store_pid(ctx, node), do: on(node, Process, :whereis, [store_name(ctx)])

  defp bump(ctx, node, n),
    do: for(_ <- 1..n, do: on(node, GenServer, :call, [store_name(ctx), :bump]))

  defp running?(node, pid),
    do: match?({:status, ^pid, _, [_, :running | _]}, on(node, :sys, :get_status, [pid]))

  defp versions(ctx, nodes, module \\ nil) do
    nodes
    |> Cluster.versions(ctx.id, module || ctx.store)
    |> Map.new(fn {n, list} -> {n, Enum.map(list, & &1.version)} end)
  end

  defp current(ctx, node, module) do
    {:ok, v} = on(node, Sandbox, :get_current_version, [ctx.id, module])
    list = on(node, Sandbox, :list_module_versions, [ctx.id, module])
    Enum.find(list, &(&1.version == v))
  end

  defp store_beam(ctx, version),
    do: ReloadFixtures.beam!(ReloadFixtures.store_source(ctx.ns, version))

  test "create on three nodes, call each: every node runs its own copy", ctx do
    [a, b, c] = nodes = ctx.nodes
    infos = create!(ctx, nodes)

    for {n, info} <- infos do
      assert %{status: :running, id: id} = info
      assert id == ctx.id
      assert node(info.supervisor_pid) == n
    end

    for n <- nodes, do: assert(version(ctx, n) == {:ok, 1})
    assert Cluster.call(a, ctx.id, ctx.calc, :version, []) == {:ok, 1}

    # Separate processes and states.
    assert bump(ctx, a, 2) == [1, 2]
    assert state(ctx, a) == 2 and state(ctx, b) == 0 and state(ctx, c) == 0
    assert nodes |> Enum.map(&store_pid(ctx, &1)) |> Enum.map(&node/1) == nodes

    for {_n, result} <- Cluster.info(nodes, ctx.id),
        do: assert({:ok, %{status: :running}} = result)

    assert ClusterFixtures.await_view(ctx.id, nodes) == :ok
    # Compiled once, here; this node runs no copy.
    assert Sandbox.get_sandbox_info(ctx.id) == {:error, :not_found}

    assert Cluster.destroy_sandbox(nodes, ctx.id) == Map.new(nodes, &{&1, :ok})
    assert Cluster.info(nodes, ctx.id) == Map.new(nodes, &{&1, {:error, :not_found}})
    for n <- nodes, do: assert(on(n, Sandbox.Test.Fixtures, :loaded_modules, [ctx.id]) == [])
    assert ClusterFixtures.await_view(ctx.id, []) == :ok
    assert Cluster.destroy_sandbox([a], ctx.id) == %{a => {:error, :not_found}}
  end

  test "the same id on two clusters of nodes does not collide", ctx do
    [a, b, c] = ctx.nodes
    other = project(Path.join(ctx.tmp_dir, "other"), ReloadFixtures.sources(ctx.ns))
    File.write!(Path.join(other, "calc.ex"), ReloadFixtures.calc_source(ctx.ns, 7))

    create!(ctx, [a])
    assert {:ok, _} = Cluster.create_sandbox([b, c], ctx.id, ctx.sup, sandbox_path: other)

    assert Cluster.call(a, ctx.id, ctx.calc, :version, []) == {:ok, 1}
    assert Cluster.call(b, ctx.id, ctx.calc, :version, []) == {:ok, 7}
    assert Cluster.call(c, ctx.id, ctx.calc, :version, []) == {:ok, 7}

    # Each cluster has its own view.
    assert on(a, ClusterFixtures, :await_view, [ctx.id, [a]]) == :ok
    assert on(b, ClusterFixtures, :await_view, [ctx.id, [b, c]]) == :ok
    assert on(c, ClusterFixtures, :await_view, [ctx.id, [b, c]]) == :ok

    # A reload of one cluster leaves the other alone.
    assert Cluster.hot_reload([b, c], ctx.id, store_beam(ctx, 2)) ==
             {:ok, %{b => :hot_reloaded, c => :hot_reloaded}}

    assert versions(ctx, [a, b, c]) == %{a => [1], b => [1, 2], c => [1, 2]}
    assert version(ctx, a) == {:ok, 1}
    assert Cluster.reconcile([b, c], ctx.id) == {:ok, %{b => :unchanged, c => :unchanged}}
  end

  test "all or nothing: a node that refuses leaves no sandbox on any node", ctx do
    [a, b, _c] = ctx.nodes
    {:ok, [bare]} = TC.start_nodes(1, code_path: false)

    assert {:error, {:create_failed, failed}} =
             Cluster.create_sandbox([a, b, bare], ctx.id, ctx.sup, sandbox_path: ctx.dir)

    assert failed == %{bare => {:sandbox_unavailable, :not_loaded}}
    assert Cluster.info([a, b], ctx.id) == %{a => {:error, :not_found}, b => {:error, :not_found}}

    for n <- [a, b] do
      assert on(n, Sandbox.Test.Fixtures, :loaded_modules, [ctx.id]) == []
      assert on(n, Cluster, :nodes, [ctx.id]) == []
    end

    # A node that already has the id refuses too; its own copy stays, the
    # copy made on the other node goes.
    create!(ctx, [a])
    bump(ctx, a, 3)

    assert {:error, {:create_failed, failed}} =
             Cluster.create_sandbox([a, b], ctx.id, ctx.sup, sandbox_path: ctx.dir)

    assert failed == %{a => {:already_exists, ctx.id}}
    assert Cluster.info([b], ctx.id) == %{b => {:error, :not_found}}
    assert state(ctx, a) == 3
  end

  test "a two-phase reload across three nodes keeps every node's state", ctx do
    nodes = ctx.nodes
    create!(ctx, nodes)
    for {n, k} <- Enum.zip(nodes, [1, 2, 3]), do: bump(ctx, n, k)
    pids = Map.new(nodes, &{&1, store_pid(ctx, &1)})
    v2 = store_beam(ctx, 2)

    assert Cluster.hot_reload(nodes, ctx.id, v2) == {:ok, Map.new(nodes, &{&1, :hot_reloaded})}

    for {n, k} <- Enum.zip(nodes, [1, 2, 3]) do
      assert state(ctx, n) == %{count: k}
      assert store_pid(ctx, n) == pids[n]
      assert running?(n, pids[n])
      assert version(ctx, n) == {:ok, 2}
    end

    assert versions(ctx, nodes) == Map.new(nodes, &{&1, [1, 2]})

    assert nodes |> Enum.map(&current(ctx, &1, ctx.store).checksum) |> Enum.uniq() |> length() ==
             1

    # The same BEAM again changes nothing; a source is compiled once, here.
    assert Cluster.hot_reload(nodes, ctx.id, v2) == {:ok, Map.new(nodes, &{&1, :unchanged})}

    source = {:code, ReloadFixtures.calc_source(ctx.ns, 3)}

    assert Cluster.hot_reload(nodes, ctx.id, source) ==
             {:ok, Map.new(nodes, &{&1, :hot_reloaded})}

    for n <- nodes, do: assert(Cluster.call(n, ctx.id, ctx.calc, :version, []) == {:ok, 3})
    assert versions(ctx, nodes, ctx.calc) == Map.new(nodes, &{&1, [1, 2]})
  end

  test "a failure while preparing on one node changes nothing on any node", ctx do
    [a, b, c] = nodes = ctx.nodes
    create!(ctx, nodes)
    for {n, k} <- Enum.zip(nodes, [1, 2, 3]), do: bump(ctx, n, k)
    pids = Map.new(nodes, &{&1, store_pid(ctx, &1)})

    # c's Store is busy in a call: it cannot be suspended.
    blocked = on(c, ClusterFixtures, :block, [store_name(ctx)])

    assert {:error, result} =
             Cluster.hot_reload(nodes, ctx.id, store_beam(ctx, 2), suspend_timeout: 300)

    store = ctx.store
    assert result[a] == :aborted and result[b] == :aborted
    assert {:suspend_timeout, ^store, ^blocked} = result[c]

    on(c, Kernel, :send, [blocked, :release])

    for {n, k} <- Enum.zip(nodes, [1, 2, 3]) do
      assert version(ctx, n) == {:ok, 1}
      assert state(ctx, n) == k
      assert running?(n, pids[n])
    end

    assert versions(ctx, nodes) == Map.new(nodes, &{&1, [1]})
    # A later reload goes through everywhere.
    assert {:ok, _} = Cluster.hot_reload(nodes, ctx.id, store_beam(ctx, 2))
  end

  test "a node killed during the commit is reported; the others roll back to one version", ctx do
    [a, b, _c] = ctx.nodes
    {:ok, [d]} = TC.start_nodes(1)
    d_os = TC.os_pid(d)
    nodes = [a, b, d]
    create!(ctx, nodes)
    bump(ctx, a, 4)
    bump(ctx, b, 5)

    # The migration halts d's VM in the middle of its commit.
    migration = ClusterFixtures.migrate_or_halt(d)

    assert Cluster.hot_reload(nodes, ctx.id, store_beam(ctx, 2), state_migration: migration) ==
             {:error, %{a => :rolled_back, b => :rolled_back, d => {:unreachable, d}}}

    for {n, k} <- [{a, 4}, {b, 5}] do
      assert version(ctx, n) == {:ok, 1}
      assert state(ctx, n) == k
      assert on(n, Sandbox, :get_current_version, [ctx.id, ctx.store]) == {:ok, 1}
      assert [%{version: 1}, %{version: 2, rolled_back_at: %DateTime{}}] = current_list(ctx, n)
    end

    assert current(ctx, a, ctx.store).checksum == current(ctx, b, ctx.store).checksum
    assert Cluster.info([d], ctx.id) == %{d => {:error, {:unreachable, d}}}
    TC.stop_nodes([d])
    refute File.exists?("/proc/#{d_os}")
    # What is left is consistent: nothing to reconcile.
    assert Cluster.reconcile([a, b], ctx.id) == {:ok, %{a => :unchanged, b => :unchanged}}
  end

  defp current_list(ctx, node), do: on(node, Sandbox, :list_module_versions, [ctx.id, ctx.store])

  test "a reload during a partition reaches who it can; reconcile after healing", ctx do
    [a, b, c] = nodes = ctx.nodes
    create!(ctx, nodes)
    bump(ctx, c, 5)
    c_pid = store_pid(ctx, c)

    :ok = TC.partition([[node(), a, b], [c]])

    try do
      assert Cluster.hot_reload(nodes, ctx.id, store_beam(ctx, 2), timeout: 5_000) ==
               {:error, %{a => :hot_reloaded, b => :hot_reloaded, c => {:unreachable, c}}}

      assert Cluster.info([c], ctx.id) == %{c => {:error, {:unreachable, c}}}
      # The cut holds between the peers too.
      assert on(a, :net_adm, :ping, [c]) == :pang
    after
      :ok = TC.heal([node() | nodes])
    end

    assert versions(ctx, nodes) == %{a => [1, 2], b => [1, 2], c => [1]}
    assert version(ctx, c) == {:ok, 1}

    assert Cluster.reconcile(nodes, ctx.id) ==
             {:ok, %{a => :unchanged, b => :unchanged, c => :hot_reloaded}}

    # c has the newest version by checksum, through a normal reload that
    # migrated its server's state.
    assert version(ctx, c) == {:ok, 2}
    assert state(ctx, c) == %{count: 5}
    assert store_pid(ctx, c) == c_pid
    assert versions(ctx, nodes) == Map.new(nodes, &{&1, [1, 2]})
    assert current(ctx, c, ctx.store).checksum == current(ctx, a, ctx.store).checksum
    assert Cluster.reconcile(nodes, ctx.id) == {:ok, Map.new(nodes, &{&1, :unchanged})}
  end

  test "a node that joins later gets the current versions; a node going down leaves the view",
       ctx do
    [a, b, _c] = ctx.nodes
    create!(ctx, [a, b])
    assert {:ok, _} = Cluster.hot_reload([a, b], ctx.id, store_beam(ctx, 2))
    {:ok, [e]} = TC.start_nodes(1)

    # From a node that has it (a, which needs no sandbox_path).
    assert {:ok, %{^e => %{status: :running}}} =
             on(a, Cluster, :create_sandbox, [[e], ctx.id, ctx.sup, []])

    assert version(ctx, e) == {:ok, 2}
    assert state(ctx, e) == %{count: 0}
    assert current(ctx, e, ctx.store).checksum == current(ctx, a, ctx.store).checksum
    assert Cluster.reconcile([a, b, e], ctx.id) == {:ok, Map.new([a, b, e], &{&1, :unchanged})}
    assert ClusterFixtures.await_view(ctx.id, [a, b, e]) == :ok

    # Also with from: — and a target other than the copy's is refused.
    assert Cluster.create_sandbox([e], ctx.id, ctx.calc, from: a) ==
             {:error, {:target_mismatch, ctx.sup}}

    TC.stop_nodes([e])
    assert ClusterFixtures.await_view(ctx.id, [a, b]) == :ok
    assert on(a, ClusterFixtures, :await_view, [ctx.id, [a, b]]) == :ok
  end

  test "stopping nodes leaves no node or OS process behind", ctx do
    {:ok, [x, y] = pair} = TC.start_nodes(2)
    create!(ctx, pair)
    os = Enum.map(pair, &TC.os_pid/1)
    below = Enum.flat_map(os, &ClusterFixtures.descendants/1)
    # Each node's C-node at least.
    assert Enum.count(below, &(ClusterFixtures.comm(&1) == "sandbox_cnode")) == 2

    assert TC.stop_nodes(pair) == :ok

    for pid <- os ++ below, do: refute(File.exists?("/proc/#{pid}"), "#{pid} is still running")
    refute x in Node.list() or y in Node.list()
    {:ok, names} = :erl_epmd.names()
    alive = for {name, _port} <- names, do: List.to_atom(name)

    for n <- pair do
      [name, _] = n |> Atom.to_string() |> String.split("@")
      refute String.to_atom(name) in alive
    end

    refute x in TC.nodes() or y in TC.nodes()
    assert Enum.sort(TC.nodes()) == Enum.sort(ctx.nodes)
  end
end
