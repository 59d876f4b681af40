defmodule Sandbox.Cluster.PrepareTest do
  # The two phases on one node: the instance's prepared-change slot
  # (Sandbox.Instance.prepare/6, commit/3, abort/2, revert/3), and
  # Sandbox.Cluster on this node alone (no distribution needed).
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures, only: [project: 2, await_event: 2]

  alias Sandbox.{Cluster, Instance, Manager}
  alias Sandbox.Test.ReloadFixtures

  @moduletag :tmp_dir

  # One namespace for the module (its tests run one after the other), so
  # that every sandbox is built from the same sources: one compile.
  @ns "Prep#{:erlang.phash2(__MODULE__)}"

  setup ctx do
    id = "p#{:erlang.phash2(ctx.test)}"
    on_exit(fn -> Sandbox.destroy_sandbox(id) end)
    dir = project(Path.join(ctx.tmp_dir, "project"), ReloadFixtures.sources(@ns))

    %{
      id: id,
      dir: dir,
      sup: Module.concat(@ns, Sup),
      store: Module.concat(@ns, Store),
      calc: Module.concat(@ns, Calc)
    }
  end

  defp start!(ctx) do
    {:ok, _} = Sandbox.create_sandbox(ctx.id, ctx.sup, sandbox_path: ctx.dir)
    {:ok, instance, _} = Manager.lookup(ctx.id)
    server = Process.whereis(Sandbox.module_name(ctx.id, ctx.store))
    GenServer.call(server, :bump)
    GenServer.call(server, :bump)
    {instance, server}
  end

  defp v2(module \\ :store) do
    case module do
      :store -> ReloadFixtures.beam!(ReloadFixtures.store_source(@ns, 2))
      :calc -> ReloadFixtures.beam!(ReloadFixtures.calc_source(@ns, 2))
    end
  end

  defp coordinator do
    spawn(fn ->
      receive do
        :never -> :ok
      end
    end)
  end

  defp sys_status(pid) do
    {:status, ^pid, _, [_, status | _]} = :sys.get_status(pid)
    status
  end

  defp versions(ctx, module),
    do: Enum.map(Sandbox.list_module_versions(ctx.id, module), & &1.version)

  # Waits until `pid` is blocked in a GenServer call (its request is then
  # in the callee's mailbox).
  defp await_calling(pid) do
    case Process.info(pid, :current_function) do
      {:current_function, {:gen, :do_call, 4}} ->
        :ok

      _ ->
        :erlang.yield()
        await_calling(pid)
    end
  end

  test "a prepared change holds the servers suspended, serves reads, and makes changes wait",
       ctx do
    {instance, server} = start!(ctx)
    ref = make_ref()
    coord = coordinator()

    assert Instance.prepare(instance, ref, v2(), [], coord, 60_000) == {:ok, :prepared, 1}
    assert sys_status(server) == :suspended
    assert {:ok, %{status: :reloading}} = Sandbox.get_sandbox_info(ctx.id)
    assert versions(ctx, ctx.store) == [1]

    # A reload of this node alone waits for the prepared change.
    calc = v2(:calc)
    waiting = Task.async(fn -> Sandbox.hot_reload_sandbox(ctx.id, calc) end)
    :ok = await_calling(waiting.pid)
    assert [{{:reload, _, _}, _}] = :sys.get_state(instance).deferred

    assert Instance.commit(instance, ref, {2, 0, node()}) == {:ok, :hot_reloaded}
    assert Task.await(waiting) == {:ok, :hot_reloaded}
    assert sys_status(server) == :running
    assert GenServer.call(server, :state) == %{count: 2}
    assert versions(ctx, ctx.store) == [1, 2] and versions(ctx, ctx.calc) == [1, 2]
    assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(ctx.id)

    # The prepared change's stamp, and a local one above it for the next.
    stamps = :sys.get_state(instance).stamps
    assert stamps[ctx.store] == {2, 0, node()}
    assert {3, _, _} = stamps[ctx.calc]
    assert Instance.commit(instance, ref, {9, 0, node()}) == {:error, :not_prepared}
  end

  test "a prepared change aborts when its coordinator goes away", ctx do
    {instance, server} = start!(ctx)
    :ok = Sandbox.subscribe(ctx.id)
    ref = make_ref()
    coord = coordinator()
    assert {:ok, :prepared, _} = Instance.prepare(instance, ref, v2(), [], coord, 60_000)
    Process.exit(coord, :kill)

    {_, meta} = await_event(ctx.id, :failed)
    assert meta.reason == {:aborted, {:coordinator_down, :killed}}
    assert meta.trigger == :cluster
    assert sys_status(server) == :running
    assert GenServer.call(server, :state) == 2
    assert GenServer.call(server, :version) == 1

    assert Instance.commit(instance, ref, {2, 0, node()}) ==
             {:error, {:aborted, {:coordinator_down, :killed}}}

    assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(ctx.id)
  end

  test "a prepared change aborts when its lease runs out", ctx do
    {instance, server} = start!(ctx)
    :ok = Sandbox.subscribe(ctx.id)
    ref = make_ref()
    assert {:ok, :prepared, _} = Instance.prepare(instance, ref, v2(), [], coordinator(), 50)

    {_, meta} = await_event(ctx.id, :failed)
    assert meta.reason == {:aborted, :expired}
    assert sys_status(server) == :running
    assert Instance.commit(instance, ref, {2, 0, node()}) == {:error, {:aborted, :expired}}
    assert versions(ctx, ctx.store) == [1]
  end

  test "a suspended server that dies aborts the prepared change", ctx do
    {instance, server} = start!(ctx)
    :ok = Sandbox.subscribe(ctx.id)
    ref = make_ref()

    assert {:ok, :prepared, _} = Instance.prepare(instance, ref, v2(), [], coordinator(), 60_000)

    Process.exit(server, :kill)

    {_, meta} = await_event(ctx.id, :failed)
    assert meta.reason == {:aborted, {:process_died, server, :killed}}

    assert {:error, {:aborted, {:process_died, ^server, :killed}}} =
             Instance.commit(instance, ref, {2, 0, node()})

    # Nothing was loaded; the next change goes through.
    assert versions(ctx, ctx.store) == [1]
    assert Sandbox.hot_reload_sandbox(ctx.id, v2()) == {:ok, :hot_reloaded}
  end

  test "a root that exits aborts the prepared change; the sandbox restarts as usual", ctx do
    {instance, _server} = start!(ctx)
    :ok = Sandbox.subscribe(ctx.id)
    ref = make_ref()
    assert {:ok, :prepared, _} = Instance.prepare(instance, ref, v2(), [], coordinator(), 60_000)
    {:ok, %{supervisor_pid: sup}} = Sandbox.get_sandbox_info(ctx.id)
    Process.exit(sup, :kill)

    {_, meta} = await_event(ctx.id, :failed)
    assert meta.reason == {:aborted, {:root_exited, :killed}}
    {_, %{reason: :killed}} = await_event(ctx.id, :restarted)

    assert Instance.commit(instance, ref, {2, 0, node()}) ==
             {:error, {:aborted, {:root_exited, :killed}}}

    server = Process.whereis(Sandbox.module_name(ctx.id, ctx.store))
    assert GenServer.call(server, :version) == 1
    assert versions(ctx, ctx.store) == [1]
  end

  test "destroy aborts a prepared change first; revert undoes a committed one", ctx do
    {instance, server} = start!(ctx)
    ref = make_ref()

    assert {:ok, :prepared, _} = Instance.prepare(instance, ref, v2(), [], coordinator(), 60_000)

    assert Instance.revert(instance, ref, {3, 0, node()}) == {:ok, :aborted}
    assert sys_status(server) == :running

    ref = make_ref()

    assert {:ok, :prepared, _} = Instance.prepare(instance, ref, v2(), [], coordinator(), 60_000)

    assert Instance.commit(instance, ref, {2, 0, node()}) == {:ok, :hot_reloaded}
    assert GenServer.call(server, :state) == %{count: 2}
    assert Instance.revert(instance, ref, {3, 0, node()}) == {:ok, :rolled_back}
    assert GenServer.call(server, :state) == 2
    assert Sandbox.get_current_version(ctx.id, ctx.store) == {:ok, 1}
    assert Instance.revert(instance, ref, {4, 0, node()}) == {:ok, :not_committed}

    ref = make_ref()

    assert {:ok, :prepared, _} = Instance.prepare(instance, ref, v2(), [], coordinator(), 60_000)

    mon = Process.monitor(server)
    assert Sandbox.destroy_sandbox(ctx.id) == :ok
    assert_receive {:DOWN, ^mon, :process, ^server, _}
    assert Sandbox.Test.Fixtures.loaded_modules(ctx.id) == []
  end

  test "Sandbox.Cluster on this node alone; arguments", ctx do
    me = node()
    # One binary: the same BEAM is :unchanged.
    store2 = v2()

    assert {:ok, %{^me => %{status: :running}}} =
             Cluster.create_sandbox([me], ctx.id, ctx.sup, sandbox_path: ctx.dir)

    assert Cluster.hot_reload([me], ctx.id, store2) == {:ok, %{me => :hot_reloaded}}
    assert Cluster.hot_reload([me], ctx.id, [store2]) == {:ok, %{me => :unchanged}}
    assert Cluster.call(me, ctx.id, ctx.calc, :version, []) == {:ok, 1}
    assert %{^me => [%{version: 1}, %{version: 2}]} = Cluster.versions([me], ctx.id, ctx.store)
    assert Cluster.reconcile([me], ctx.id) == {:ok, %{me => :unchanged}}
    assert Cluster.nodes(ctx.id) == [me]

    # A create from this node's copy refuses here (it has it already).
    assert {:error, {:create_failed, %{^me => {:already_exists, _}}}} =
             Cluster.create_sandbox([me], ctx.id, ctx.sup, [])

    # Bad input: tagged errors before anything is done, or ArgumentError.
    for bad <- ["", "a b", :atom, nil] do
      assert Cluster.create_sandbox([me], bad, ctx.sup, []) == {:error, {:invalid_id, bad}}
      assert Cluster.hot_reload([me], bad, <<>>) == {:error, {:invalid_id, bad}}
      assert Cluster.info([me], bad) == {:error, {:invalid_id, bad}}
      assert Cluster.reconcile([me], bad) == {:error, {:invalid_id, bad}}
      assert Cluster.destroy_sandbox([me], bad) == {:error, {:invalid_id, bad}}
      assert Cluster.call(me, bad, X, :f, []) == {:error, {:invalid_id, bad}}
    end

    assert_raise ArgumentError, fn -> Cluster.info([], ctx.id) end
    assert_raise ArgumentError, fn -> Cluster.info(me, ctx.id) end
    assert_raise ArgumentError, fn -> Cluster.hot_reload([me], ctx.id, :nope) end
    assert_raise ArgumentError, fn -> Cluster.hot_reload([me], ctx.id, <<>>, timeout: 0) end
    assert Cluster.hot_reload([me], ctx.id, []) == {:error, :no_beams}

    assert Cluster.hot_reload([me], ctx.id, store2, nope: 1) ==
             {:error, {:unknown_option, :nope}}

    assert {:error, %{^me => {:invalid_beam, nil, _}}} =
             Cluster.hot_reload([me], ctx.id, <<1, 2>>)

    # A node nobody runs: unreachable, at once.
    nobody = :"nobody_#{System.unique_integer([:positive])}@127.0.0.1"
    assert Cluster.info([nobody], ctx.id) == %{nobody => {:error, {:unreachable, nobody}}}

    assert Cluster.hot_reload([me, nobody], ctx.id, store2) ==
             {:error, %{me => :unchanged, nobody => {:unreachable, nobody}}}

    assert Cluster.call(nobody, ctx.id, ctx.calc, :version, []) ==
             {:error, {:unreachable, nobody}}

    assert Cluster.destroy_sandbox([me], ctx.id) == %{me => :ok}
    assert Sandbox.Test.ClusterFixtures.await_view(ctx.id, []) == :ok
  end
end
