defmodule Sandbox.ReloadTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures, only: [project: 2, await_event: 2]
  import Sandbox.Test.ReloadFixtures

  alias Sandbox.Test.ReloadFixtures

  @moduletag :tmp_dir

  # How long to wait for a message that is on its way (a bound, not a
  # measurement: the machine may be busy).
  @wait 10_000

  # Every test writes the fixture project under a namespace and ids of its
  # own, and destroys its sandboxes on exit.
  setup ctx do
    hash = :erlang.phash2(ctx.test)
    ns = "R#{hash}"
    id = "r#{hash}"

    on_exit(fn ->
      for %{id: sid} <- Sandbox.list_sandboxes(),
          String.starts_with?(sid, id),
          do: Sandbox.destroy_sandbox(sid)
    end)

    dir = project(Path.join(ctx.tmp_dir, "project"), sources(ns))

    %{
      ns: ns,
      id: id,
      dir: dir,
      sup: Module.concat(ns, Sup),
      store: Module.concat(ns, Store),
      second: Module.concat(ns, Second),
      calc: Module.concat(ns, Calc),
      ping: Module.concat(ns, Ping),
      pong: Module.concat(ns, Pong),
      relay: Module.concat(ns, Relay)
    }
  end

  defp start!(ctx, opts \\ [], id \\ nil) do
    id = id || ctx.id
    {:ok, _} = Sandbox.create_sandbox(id, ctx.sup, [sandbox_path: ctx.dir] ++ opts)
    id
  end

  # The pids of the two Store servers (registered as Store and Second).
  defp servers(ctx, id \\ nil) do
    id = id || ctx.id

    {Process.whereis(Sandbox.module_name(id, ctx.store)),
     Process.whereis(Sandbox.module_name(id, ctx.second))}
  end

  defp store_beam(ctx, version, opts \\ []),
    do: ReloadFixtures.beam!(store_source(ctx.ns, version, opts))

  defp calc_beam(ctx, version), do: ReloadFixtures.beam!(calc_source(ctx.ns, version))

  defp versions(ctx, module, id \\ nil),
    do: Enum.map(Sandbox.list_module_versions(id || ctx.id, module), & &1.version)

  defp running?(pid), do: match?({:status, ^pid, _, [_, :running | _]}, :sys.get_status(pid))

  defp await_down(pid) do
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, :process, ^pid, reason} -> reason
    end
  end

  # The pid the sandbox's supervisor has for child `child_id` (it restarts
  # children while handling the EXIT, before it answers this call).
  defp child(ctx, child_id, id \\ nil) do
    sup = Process.whereis(Sandbox.module_name(id || ctx.id, ctx.sup))

    Enum.find_value(Supervisor.which_children(sup), fn
      {^child_id, pid, _, _} -> pid
      _ -> nil
    end)
  end

  describe "versions" do
    test "every module starts at version 1 with its BEAM as compiled", ctx do
      id = start!(ctx)

      for m <- [ctx.sup, ctx.store, ctx.calc, ctx.ping, ctx.pong, ctx.second, ctx.relay] do
        assert Sandbox.get_current_version(id, m) == {:ok, 1}
      end

      assert [v1] = Sandbox.list_module_versions(id, ctx.store)

      assert %{
               sandbox_id: ^id,
               version: 1,
               beam_data: beam,
               checksum: checksum,
               loaded_at: %DateTime{},
               dependencies: deps,
               rolled_back_at: nil
             } = v1

      assert v1.module == ctx.store
      assert deps == [ctx.calc]
      assert {:ok, %{module: module}} = Sandbox.Beam.parse(beam)
      assert module == ctx.store
      assert checksum == Sandbox.Beam.checksum_hex(beam)

      assert Sandbox.get_current_version(id, Nope) == {:error, :not_found}
      assert Sandbox.list_module_versions(id, Nope) == []
      assert Sandbox.get_current_version("#{id}x", ctx.store) == {:error, :not_found}
      assert Sandbox.list_module_versions("#{id}x", ctx.store) == []
    end

    test "invalid ids and unknown sandboxes", ctx do
      for bad <- ["", "a b", :atom, nil, String.duplicate("a", 65)] do
        assert Sandbox.hot_reload_sandbox(bad, <<>>) == {:error, {:invalid_id, bad}}
        assert Sandbox.hot_reload_source(bad, {:code, ""}) == {:error, {:invalid_id, bad}}
        assert Sandbox.rollback_module(bad, X, 1) == {:error, {:invalid_id, bad}}
        assert Sandbox.get_current_version(bad, X) == {:error, {:invalid_id, bad}}
        assert_raise ArgumentError, fn -> Sandbox.list_module_versions(bad, X) end
        assert Sandbox.get_dependency_graph(bad) == {:error, {:invalid_id, bad}}
        assert Sandbox.calculate_reload_order(bad, [X]) == {:error, {:invalid_id, bad}}
      end

      missing = "#{ctx.id}missing"
      beam = calc_beam(ctx, 2)
      assert Sandbox.hot_reload_sandbox(missing, beam) == {:error, :not_found}
      assert Sandbox.hot_reload_source(missing, {:code, ""}) == {:error, :not_found}
      assert Sandbox.rollback_module(missing, X, 1) == {:error, :not_found}
      assert Sandbox.get_dependency_graph(missing) == {:error, :not_found}
      assert Sandbox.calculate_reload_order(missing, [X]) == {:error, :not_found}
    end

    test "a BEAM identical to the current version's is unchanged and makes no version", ctx do
      id = start!(ctx)
      [%{beam_data: v1}] = Sandbox.list_module_versions(id, ctx.store)
      assert Sandbox.hot_reload_sandbox(id, v1) == {:ok, :unchanged}
      assert versions(ctx, ctx.store) == [1]

      v2 = store_beam(ctx, 2)
      assert Sandbox.hot_reload_sandbox(id, v2) == {:ok, :hot_reloaded}
      assert Sandbox.hot_reload_sandbox(id, v2) == {:ok, :unchanged}
      [%{beam_data: calc_v1}] = Sandbox.list_module_versions(id, ctx.calc)
      assert Sandbox.hot_reload_sandbox(id, [v2, calc_v1]) == {:ok, :unchanged}
      assert versions(ctx, ctx.store) == [1, 2]
    end

    test "history is bounded by max_versions; dropped BEAMs are freed", ctx do
      id = start!(ctx, max_versions: 3)
      {:ok, instance, _} = Sandbox.Manager.lookup(id)
      beams = Map.new(2..6, &{&1, store_beam(ctx, &1)})

      for v <- 2..4, do: {:ok, :hot_reloaded} = Sandbox.hot_reload_sandbox(id, beams[v])
      assert versions(ctx, ctx.store) == [2, 3, 4]
      held = refc(beams[2], instance)

      for v <- 5..6, do: {:ok, :hot_reloaded} = Sandbox.hot_reload_sandbox(id, beams[v])
      assert versions(ctx, ctx.store) == [4, 5, 6]
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 6}
      assert refc(beams[2], instance) < held

      assert Sandbox.rollback_module(id, ctx.store, 2) ==
               {:error, {:unknown_version, ctx.store, 2}}
    end
  end

  # The reference count of the refc binary `beam` (held by this process,
  # and by the instance while it keeps it), after collecting the instance's
  # garbage. Each version's BEAM has its own size (see `pad/0`).
  defp refc(beam, instance) do
    :erlang.garbage_collect(instance)
    {:binary, bins} = Process.info(self(), :binary)
    [count] = for {_, size, count} <- bins, size == byte_size(beam), uniq: true, do: count
    count
  end

  describe "reload keeps processes and their state" do
    test "code_change/3 migrates every server of the module; pids stay", ctx do
      id = start!(ctx)
      :ok = Sandbox.subscribe(id)
      {first, second} = servers(ctx)
      assert GenServer.call(first, :bump) == 1
      assert GenServer.call(first, :bump) == 2

      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2)) == {:ok, :hot_reloaded}
      assert servers(ctx) == {first, second}
      assert GenServer.call(first, :state) == %{count: 2}
      assert GenServer.call(second, :state) == %{count: 0}
      assert GenServer.call(first, :version) == 2
      assert GenServer.call(first, :bump) == 3
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 2}
      assert Sandbox.get_current_version(id, ctx.calc) == {:ok, 1}
      assert running?(first) and running?(second)

      store = ctx.store
      {%{processes: 2}, meta} = await_event(id, :reloaded)
      assert meta.versions == %{store => 2}
      assert meta.modules == [store]
    end

    test "a state_migration given at create (arity 1) or per reload (arity 3) replaces code_change",
         ctx do
      id = start!(ctx, state_migration: fn n -> %{count: n * 10} end)
      {first, _} = servers(ctx)
      assert GenServer.call(first, :bump) == 1

      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2)) == {:ok, :hot_reloaded}
      assert GenServer.call(first, :state) == %{count: 10}

      migration = fn state, from, to -> Map.put(state, :migrated, {from, to}) end

      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 3), state_migration: migration) ==
               {:ok, :hot_reloaded}

      assert GenServer.call(first, :state) == %{count: 10, migrated: {2, 3}}
      assert GenServer.call(first, :version) == 3
    end

    test "twelve reloads in a row kill no process", ctx do
      id = start!(ctx)
      {first, second} = servers(ctx)
      {:ok, %{supervisor_pid: sup}} = Sandbox.get_sandbox_info(id)
      refs = for pid <- [first, second, sup], do: Process.monitor(pid)
      GenServer.call(first, :bump)

      for n <- 2..13 do
        beams = [store_beam(ctx, rem(n, 2) + 2), calc_beam(ctx, n)]
        assert Sandbox.hot_reload_sandbox(id, beams) == {:ok, :hot_reloaded}
        assert GenServer.call(first, :pair) == {rem(n, 2) + 2, n}
      end

      for ref <- refs, do: refute_received({:DOWN, ^ref, _, _, _})
      assert servers(ctx) == {first, second}
      assert GenServer.call(first, :state) == %{count: 1}
      assert Sandbox.get_current_version(id, ctx.calc) == {:ok, 13}
      # Default history: the newest ten.
      assert versions(ctx, ctx.calc) == Enum.to_list(4..13)
    end

    test "a process still in the oldest code fails the reload, named and not killed", ctx do
      id = start!(ctx)
      calc = Sandbox.module_name(id, ctx.calc)
      test_pid = self()
      {:ok, parked} = Sandbox.run(id, fn -> spawn(fn -> calc.park(test_pid) end) end)
      assert_receive {:parked, ^parked}, @wait

      assert Sandbox.hot_reload_sandbox(id, calc_beam(ctx, 2)) == {:ok, :hot_reloaded}
      # `parked` now runs the old version 1; a third version would purge it.
      assert Sandbox.hot_reload_sandbox(id, calc_beam(ctx, 3)) ==
               {:error, {:old_code_in_use, ctx.calc, [parked]}}

      assert Process.alive?(parked)
      assert Sandbox.get_current_version(id, ctx.calc) == {:ok, 2}
      assert Sandbox.call(id, ctx.calc, :version, []) == {:ok, 2}

      Process.exit(parked, :kill)
      await_down(parked)
      assert Sandbox.hot_reload_sandbox(id, calc_beam(ctx, 3)) == {:ok, :hot_reloaded}
      assert Sandbox.call(id, ctx.calc, :version, []) == {:ok, 3}
    end

    test "a reload in one sandbox never touches another sandbox's processes", ctx do
      a = start!(ctx)
      b = start!(ctx, [], "#{ctx.id}b")
      {a1, _} = servers(ctx, a)
      {b1, b2} = servers(ctx, b)
      GenServer.call(b1, :bump)
      GenServer.call(a1, :bump)

      assert Sandbox.hot_reload_sandbox(a, store_beam(ctx, 2)) == {:ok, :hot_reloaded}
      assert GenServer.call(a1, :state) == %{count: 1}
      assert servers(ctx, b) == {b1, b2}
      assert GenServer.call(b1, :state) == 1
      assert GenServer.call(b1, :version) == 1
      assert running?(b1) and running?(b2)
      assert Sandbox.get_current_version(b, ctx.store) == {:ok, 1}
    end
  end

  describe "failures leave everything as it was" do
    test "invalid BEAMs, unknown modules and bad options", ctx do
      id = start!(ctx)
      {first, _} = servers(ctx)
      GenServer.call(first, :bump)
      good = store_beam(ctx, 2)
      :ok = Sandbox.subscribe(id)

      assert {:error, {:invalid_beam, nil, :not_iff}} =
               Sandbox.hot_reload_sandbox(id, "not a beam")

      assert {:error, {:invalid_beam, _, _}} =
               Sandbox.hot_reload_sandbox(id, binary_part(good, 0, div(byte_size(good), 2)))

      assert {_, %{reason: {:invalid_beam, nil, :not_iff}}} = await_event(id, :failed)

      other = ReloadFixtures.beam!("defmodule #{ctx.ns}.Other, do: def(x, do: 1)")
      other_mod = Module.concat(ctx.ns, Other)

      # A module new to the sandbox is added to it, at version 1.
      assert Sandbox.hot_reload_sandbox(id, other) == {:ok, :hot_reloaded}
      assert Sandbox.get_current_version(id, other_mod) == {:ok, 1}
      assert Sandbox.call(id, other_mod, :x, []) == {:ok, 1}
      refute Code.ensure_loaded?(other_mod)

      # Relocation renames the Calc key to the second key: two equal keys.
      relocated_calc = inspect(Sandbox.module_name(id, ctx.calc))

      clash =
        store_beam(ctx, 2,
          code_change: """
          def code_change(_old, state, _extra), do: {:ok, state}
          def clash, do: %{#{ctx.ns}.Calc => 1, #{relocated_calc} => 2}
          """
        )

      assert {:error, {:relocation_failed, store, {:duplicate_map_key, _}}} =
               Sandbox.hot_reload_sandbox(id, clash)

      assert store == ctx.store

      assert Sandbox.hot_reload_sandbox(id, [good, good]) ==
               {:error, {:duplicate_module, ctx.store}}

      assert Sandbox.hot_reload_sandbox(id, []) == {:error, :no_beams}

      assert Sandbox.hot_reload_sandbox(id, good, suspend_timeout: 0) ==
               {:error, {:invalid_option, {:suspend_timeout, 0}}}

      assert Sandbox.hot_reload_sandbox(id, good, bogus: 1) == {:error, {:unknown_option, :bogus}}

      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 1}
      assert GenServer.call(first, :state) == 1
      assert running?(first)
    end

    test "a code_change/3 that raises: previous code and state, resumed", ctx do
      id = start!(ctx)
      {first, second} = servers(ctx)
      GenServer.call(first, :bump)
      bad = store_beam(ctx, 2, code_change: "def code_change(_, _, _), do: raise(\"no\")")

      assert {:error, {:migration_failed, store, pid, _}} = Sandbox.hot_reload_sandbox(id, bad)
      assert store == ctx.store
      assert pid in [first, second]
      assert servers(ctx) == {first, second}
      assert GenServer.call(first, :version) == 1
      assert GenServer.call(first, :state) == 1
      assert GenServer.call(first, :bump) == 2
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 1}
      assert versions(ctx, ctx.store) == [1]
      assert running?(first) and running?(second)
    end

    test "a state_migration that raises: every state restored", ctx do
      id = start!(ctx)
      {first, second} = servers(ctx)
      GenServer.call(first, :bump)

      # The first server migrates, the second raises: the first is put back.
      migration = fn state ->
        if self() == second, do: raise("no")
        %{count: state}
      end

      assert {:error, {:migration_failed, _, ^second, _}} =
               Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2), state_migration: migration)

      assert GenServer.call(first, :state) == 1
      assert GenServer.call(second, :state) == 0
      assert GenServer.call(first, :version) == 1
    end

    test "a process that dies while suspended fails the reload", ctx do
      id = start!(ctx)
      {first, second} = servers(ctx)
      GenServer.call(first, :bump)
      test_pid = self()

      # The first migration waits until the test has killed the other server.
      migration = fn state ->
        send(test_pid, {:migrating, self()})

        receive do
          :go -> %{count: state}
        end
      end

      task =
        Task.async(fn ->
          Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2), state_migration: migration)
        end)

      assert_receive {:migrating, migrating}, @wait
      victim = if migrating == first, do: second, else: first
      Process.exit(victim, :kill)
      await_down(victim)
      send(migrating, :go)

      assert Task.await(task) == {:error, {:process_died, victim, :killed}}
      assert Process.alive?(migrating)
      assert GenServer.call(migrating, :version) == 1
      assert GenServer.call(migrating, :state) == if(migrating == first, do: 1, else: 0)
      assert running?(migrating)
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 1}
    end

    test "a code_change/3 that times out: that process is killed and restarts under the previous code",
         ctx do
      id = start!(ctx)
      {first, second} = servers(ctx)
      GenServer.call(first, :bump)
      GenServer.call(second, :bump)

      stuck =
        store_beam(ctx, 2,
          code_change: """
          def code_change(_old, state, _extra) do
            receive do
              :never -> {:ok, state}
            end
          end
          """
        )

      assert {:error, {:migration_timeout, store, killed, :killed}} =
               Sandbox.hot_reload_sandbox(id, stuck, suspend_timeout: 500)

      assert store == ctx.store
      refute Process.alive?(killed)
      {survivor, child_id} = if killed == first, do: {second, :first}, else: {first, :second}

      restarted = child(ctx, child_id)
      assert is_pid(restarted) and restarted != killed
      assert GenServer.call(restarted, :version) == 1
      assert GenServer.call(restarted, :state) == 0
      assert GenServer.call(survivor, :state) == 1
      assert GenServer.call(survivor, :version) == 1
      assert running?(survivor)
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 1}
    end

    test "a server busy in a long call: the suspension times out, nothing changes, it answers afterwards",
         ctx do
      id = start!(ctx)
      {first, _} = servers(ctx)
      test_pid = self()

      spawn(fn ->
        send(test_pid, {:reply, GenServer.call(first, {:block, test_pid}, :infinity)})
      end)

      assert_receive {:blocked, ^first}, @wait

      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2), suspend_timeout: 500) ==
               {:error, {:suspend_timeout, ctx.store, first}}

      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 1}

      # The late suspend request is still queued behind the long call; the
      # asynchronous resume follows it.
      send(first, :release)
      assert_receive {:reply, :released}, @wait
      assert GenServer.call(first, :version) == 1
      assert GenServer.call(first, :state) == 0
      assert running?(first)

      # And the next reload goes through.
      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2)) == {:ok, :hot_reloaded}
      assert GenServer.call(first, :state) == %{count: 0}
    end
  end

  describe "rollback" do
    @tag :capture_log
    test "with a rollback window, a crash rolls the change back", ctx do
      id = start!(ctx)
      :ok = Sandbox.subscribe(id)
      {first, second} = servers(ctx)
      GenServer.call(second, :bump)

      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2), rollback_window: 60_000) ==
               {:ok, :hot_reloaded}

      await_event(id, :reloaded)
      assert GenServer.call(second, :state) == %{count: 1}
      catch_exit(GenServer.call(first, :crash))

      {_, meta} = await_event(id, :rolled_back)
      assert {:crash, ^first, {%RuntimeError{message: "crash"}, _}} = meta.reason
      store = ctx.store
      assert meta.versions == %{store => 1}

      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 1}

      assert [%{version: 1, rolled_back_at: nil}, %{version: 2, rolled_back_at: %DateTime{}}] =
               Sandbox.list_module_versions(id, ctx.store)

      # The live server was migrated down, keeping its pid.
      assert servers(ctx) |> elem(1) == second
      assert GenServer.call(second, :state) == 1
      assert GenServer.call(second, :version) == 1
      # The crashed one was restarted and runs the restored code.
      restarted = child(ctx, :first)
      assert restarted != first
      assert GenServer.call(restarted, :version) == 1
      assert GenServer.call(restarted, :state) == 0

      # And reloading afterwards works.
      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 3)) == {:ok, :hot_reloaded}
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 3}
    end

    @tag :capture_log
    test "without a rollback window a crash rolls nothing back", ctx do
      id = start!(ctx)
      {first, _} = servers(ctx)
      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2)) == {:ok, :hot_reloaded}
      catch_exit(GenServer.call(first, :crash))
      await_down(first)
      restarted = child(ctx, :first)
      assert GenServer.call(restarted, :version) == 2
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 2}
    end

    test "rollback_module restores behaviour and version; reloading again works", ctx do
      id = start!(ctx)
      :ok = Sandbox.subscribe(id)
      {first, _} = servers(ctx)
      GenServer.call(first, :bump)
      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2)) == {:ok, :hot_reloaded}
      assert GenServer.call(first, :state) == %{count: 1}

      assert Sandbox.rollback_module(id, ctx.store, 1) == {:ok, :rolled_back}
      {_, %{reason: :requested}} = await_event(id, :rolled_back)
      assert GenServer.call(first, :version) == 1
      assert GenServer.call(first, :state) == 1
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 1}

      assert [%{rolled_back_at: nil}, %{version: 2, rolled_back_at: %DateTime{}}] =
               Sandbox.list_module_versions(id, ctx.store)

      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 3)) == {:ok, :hot_reloaded}
      assert GenServer.call(first, :version) == 3
      assert GenServer.call(first, :state) == %{count: 1}
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 3}
      assert versions(ctx, ctx.store) == [1, 2, 3]

      assert Sandbox.rollback_module(id, ctx.store, 3) ==
               {:error, {:already_current, ctx.store, 3}}

      assert Sandbox.rollback_module(id, ctx.store, 9) ==
               {:error, {:unknown_version, ctx.store, 9}}

      assert Sandbox.rollback_module(id, Nope, 1) == {:error, {:unknown_module, Nope}}
    end

    test "restart_sandbox runs the current versions", ctx do
      id = start!(ctx)
      assert Sandbox.hot_reload_sandbox(id, store_beam(ctx, 2)) == {:ok, :hot_reloaded}
      assert {:ok, _} = Sandbox.restart_sandbox(id)
      {first, _} = servers(ctx)
      assert GenServer.call(first, :version) == 2
      assert GenServer.call(first, :state) == %{count: 0}
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 2}
    end
  end

  describe "several modules" do
    test "are loaded atomically under one suspension: a client never sees a mix or :undef",
         ctx do
      id = start!(ctx)
      {first, _} = servers(ctx)
      test_pid = self()
      beams = [store_beam(ctx, 2), calc_beam(ctx, 2)]

      client =
        spawn_link(fn ->
          answers = pair_loop(first, test_pid, MapSet.new(), false, 0)
          send(test_pid, {:answers, answers})
        end)

      assert_receive :client_running, @wait
      assert Sandbox.hot_reload_sandbox(id, beams) == {:ok, :hot_reloaded}
      send(client, :stop)
      assert_receive {:answers, answers}, @wait
      assert MapSet.member?(answers, {1, 1})
      assert MapSet.member?(answers, {2, 2})
      assert MapSet.subset?(answers, MapSet.new([{1, 1}, {2, 2}]))
    end

    test "migrations run in dependency order", ctx do
      id = start!(ctx)
      {first, second} = servers(ctx)
      relay = Process.whereis(Sandbox.module_name(id, ctx.relay))
      test_pid = self()

      migration = fn state ->
        send(test_pid, {:migrated, self()})
        state
      end

      # Relay calls Store: the Store servers migrate first, whatever the list order.
      beams = [ReloadFixtures.beam!(relay_source(ctx.ns, 2)), store_beam(ctx, 2)]

      assert Sandbox.hot_reload_sandbox(id, beams, state_migration: migration) ==
               {:ok, :hot_reloaded}

      order =
        for _ <- 1..3 do
          receive do
            {:migrated, pid} -> pid
          after
            @wait -> :missing
          end
        end

      assert Enum.sort(Enum.take(order, 2)) == Enum.sort([first, second])
      assert List.last(order) == relay
      assert Sandbox.call(id, ctx.relay, :version, []) == {:ok, 2}
    end

    test "dependency graph and reload order", ctx do
      id = start!(ctx)
      {:ok, graph} = Sandbox.get_dependency_graph(id)
      assert graph[ctx.store] == [ctx.calc]
      assert graph[ctx.ping] == [ctx.pong]
      assert graph[ctx.pong] == [ctx.ping]
      assert graph[ctx.calc] == []
      assert graph[ctx.relay] == [ctx.store]
      assert map_size(graph) == 7

      assert Sandbox.calculate_reload_order(id, [ctx.store, ctx.calc]) ==
               {:ok, [ctx.calc, ctx.store]}

      {:ok, order} = Sandbox.calculate_reload_order(id, [ctx.pong, ctx.store, ctx.ping, ctx.calc])
      assert Enum.sort(order) == Enum.sort([ctx.pong, ctx.store, ctx.ping, ctx.calc])
      index = &Enum.find_index(order, fn m -> m == &1 end)
      assert index.(ctx.calc) < index.(ctx.store)
      assert abs(index.(ctx.ping) - index.(ctx.pong)) == 1

      assert Sandbox.calculate_reload_order(id, [ctx.store, Nope]) ==
               {:error, {:unknown_module, Nope}}
    end
  end

  describe "suspension order" do
    test "callers are suspended first: a server busy calling an affected one finishes its call",
         ctx do
      id = start!(ctx)
      relay = Process.whereis(Sandbox.module_name(id, ctx.relay))
      test_pid = self()
      beam = store_beam(ctx, 2)

      spawn(fn ->
        send(test_pid, {:relayed, GenServer.call(relay, {:relay, test_pid}, :infinity)})
      end)

      assert_receive {:relaying, ^relay}, @wait
      # The relay calls the Store only once its suspend request is queued:
      # had the Store been suspended first, that call would wait for it.
      :erlang.trace(relay, true, [:receive])
      task = Task.async(fn -> Sandbox.hot_reload_sandbox(id, beam, suspend_timeout: 2_000) end)
      assert_receive {:trace, ^relay, :receive, {:system, _, :suspend}}, @wait
      :erlang.trace(relay, false, [:receive])
      send(relay, :go)

      assert_receive {:relayed, 1}, @wait
      assert Task.await(task) == {:ok, :hot_reloaded}

      assert Sandbox.call(id, ctx.store, :version_of, [Sandbox.module_name(id, ctx.store)]) ==
               {:ok, 2}
    end
  end

  # Calls the server until told to stop and the new version has answered
  # (bounded); returns every distinct answer, an exception or exit as
  # `{:raised, kind, reason}`.
  defp pair_loop(server, test_pid, seen, stop?, n) do
    answer =
      try do
        GenServer.call(server, :pair)
      catch
        kind, reason -> {:raised, kind, reason}
      end

    if n == 0, do: send(test_pid, :client_running)
    seen = MapSet.put(seen, answer)

    stop? =
      stop? or
        receive do
          :stop -> true
        after
          0 -> false
        end

    cond do
      stop? and answer == {2, 2} -> seen
      n > 1_000_000 -> MapSet.put(seen, :too_long)
      true -> pair_loop(server, test_pid, seen, stop?, n + 1)
    end
  end

  describe "hot_reload_source/3" do
    test "compiles a code string or a file in a compile worker and reloads it", ctx do
      id = start!(ctx)
      {first, _} = servers(ctx)

      assert Sandbox.hot_reload_source(id, {:code, store_source(ctx.ns, 2)}) ==
               {:ok, :hot_reloaded}

      assert GenServer.call(first, :version) == 2
      assert GenServer.call(first, :state) == %{count: 0}

      file = Path.join(ctx.tmp_dir, "calc_v2.ex")
      File.write!(file, calc_source(ctx.ns, 2))
      assert Sandbox.hot_reload_source(id, {:file, file}) == {:ok, :hot_reloaded}
      assert GenServer.call(first, :pair) == {2, 2}

      assert {:error, {:compilation_failed, [_ | _]}} =
               Sandbox.hot_reload_source(id, {:code, "defmodule #{ctx.ns}.Calc do"})

      assert Sandbox.get_current_version(id, ctx.calc) == {:ok, 2}
      assert Sandbox.get_current_version(id, ctx.store) == {:ok, 2}
    end
  end
end
