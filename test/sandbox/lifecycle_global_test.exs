defmodule Sandbox.LifecycleGlobalTest do
  # These tests look at VM-wide counts or change a host protocol: not async.
  use ExUnit.Case, async: false

  import Sandbox.Test.Fixtures

  @moduletag timeout: 300_000

  test "a consolidated host protocol is consolidated again with a sandbox's types, and without them after" do
    # Consolidate String.Chars with its current implementations (so the host
    # behaves the same), and restore the unconsolidated protocol afterwards.
    {String.Chars, original, file} = :code.get_object_code(String.Chars)
    impls = Protocol.extract_impls(String.Chars, :code.get_path())
    {:ok, consolidated} = Protocol.consolidate(String.Chars, impls)

    restore = fn binary ->
      :code.purge(String.Chars)
      {:module, String.Chars} = :code.load_binary(String.Chars, file, binary)
    end

    restore.(consolidated)
    on_exit(fn -> restore.(original) end)
    assert String.Chars.__protocol__(:consolidated?)
    {:consolidated, before} = String.Chars.__protocol__(:impls)

    assert {:ok, _} =
             Sandbox.create_sandbox("consolidated", :counter, sandbox_path: counter_path())

    point = Sandbox.module_name("consolidated", Counter.Point)

    # Still consolidated, with the sandbox's type added: dispatch finds it.
    assert String.Chars.__protocol__(:consolidated?)
    {:consolidated, during} = String.Chars.__protocol__(:impls)
    assert Enum.sort(during) == Enum.sort([point | before])

    assert {:ok, "1,2"} =
             Sandbox.run("consolidated", fn ->
               to_string(apply(Sandbox.module_name("consolidated", Counter), :point, [1, 2]))
             end)

    assert to_string(:an_atom) == "an_atom"

    assert :ok = Sandbox.destroy_sandbox("consolidated")
    {:consolidated, after_destroy} = String.Chars.__protocol__(:impls)
    assert Enum.sort(after_destroy) == Enum.sort(before)
  end

  test "a consolidated protocol that cannot be consolidated again refuses the create, with the reason" do
    # String.Chars consolidated, and loaded from no file: nothing to
    # consolidate it again from.
    {String.Chars, original, file} = :code.get_object_code(String.Chars)
    impls = Protocol.extract_impls(String.Chars, :code.get_path())
    {:ok, consolidated} = Protocol.consolidate(String.Chars, impls)

    load = fn binary, path ->
      :code.purge(String.Chars)
      {:module, String.Chars} = :code.load_binary(String.Chars, path, binary)
    end

    load.(consolidated, ~c"no/such/file.beam")
    on_exit(fn -> load.(original, file) end)

    assert Sandbox.create_sandbox("unconsolidatable", :counter, sandbox_path: counter_path()) ==
             {:error, {:consolidated_protocol, String.Chars, :no_beam_info}}

    assert loaded_modules("unconsolidatable") == []
    assert {:consolidated, after_refusal} = String.Chars.__protocol__(:impls)
    assert Enum.sort(after_refusal) == Enum.sort(impls)
  end

  test "a crash of the manager loses no sandbox" do
    a = "manager-crash"
    {:ok, _} = Sandbox.create_sandbox(a, :counter, sandbox_path: counter_path())
    {:ok, 1} = Sandbox.call(a, Counter, :increment, [])
    manager = Process.whereis(Sandbox.Manager)
    ref = Process.monitor(manager)
    Process.exit(manager, :kill)
    assert_receive {:DOWN, ^ref, :process, ^manager, :killed}

    # The sandbox, its environment and its lookup row are still there.
    assert {:ok, 2} = Sandbox.call(a, Counter, :increment, [])
    assert {:ok, "hello from counter"} = Sandbox.call(a, Counter, :greeting, [])
    assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(a)
    assert :ok = Sandbox.destroy_sandbox(a)
    assert Sandbox.get_sandbox_info(a) == {:error, :not_found}
  end

  @tag :slow
  test "100 sandboxes at once, then 50 concurrent creates, destroys, lists and calls" do
    ids = for i <- 1..100, do: "many#{i}"

    ids
    |> Task.async_stream(&Sandbox.create_sandbox(&1, :counter, sandbox_path: counter_path()),
      max_concurrency: 8,
      timeout: 60_000
    )
    |> Enum.each(fn {:ok, result} -> assert {:ok, %{status: :running}} = result end)

    assert MapSet.subset?(MapSet.new(ids), listed())

    for id <- Enum.take(ids, 10), do: assert({:ok, 1} = Sandbox.call(id, Counter, :increment, []))

    # Half are destroyed while 50 new ones are created; lists and calls run
    # throughout. No cross-talk: each sandbox's counter counts only its calls.
    {doomed, kept} = Enum.split(ids, 50)
    fresh = for i <- 1..50, do: "fresh#{i}"

    ops =
      Enum.map(doomed, &{:destroy, &1}) ++
        Enum.map(fresh, &{:create, &1}) ++
        Enum.map(kept, &{:call, &1}) ++ for(_ <- 1..50, do: {:list, nil})

    ops
    |> Enum.shuffle()
    |> Task.async_stream(
      fn
        {:destroy, id} ->
          assert Sandbox.destroy_sandbox(id) == :ok
          refute MapSet.member?(listed(), id)

        {:create, id} ->
          assert {:ok, _} = Sandbox.create_sandbox(id, :counter, sandbox_path: counter_path())
          assert MapSet.member?(listed(), id)

        {:call, id} ->
          {:ok, n} = Sandbox.call(id, Counter, :increment, [])
          {:ok, ^n} = Sandbox.call(id, Counter, :value, [])

        {:list, _} ->
          # Every listed sandbox is one that exists at some point of this test.
          assert MapSet.subset?(listed(), MapSet.new(ids ++ fresh) |> MapSet.union(others()))
      end,
      max_concurrency: 50,
      timeout: 60_000
    )
    |> Enum.each(fn result -> assert {:ok, _} = result end)

    assert MapSet.disjoint?(listed(), MapSet.new(doomed))
    assert MapSet.subset?(MapSet.new(kept ++ fresh), listed())

    for id <- kept ++ fresh, do: assert(:ok = Sandbox.destroy_sandbox(id))
    assert MapSet.disjoint?(listed(), MapSet.new(ids ++ fresh))
  end

  defp listed, do: MapSet.new(Sandbox.list_sandboxes(), & &1.id)
  # Sandboxes of other (async) test modules running at the same time.
  defp others,
    do: MapSet.new(for id <- listed(), not String.match?(id, ~r/^(many|fresh)\d+$/), do: id)

  @tag :slow
  @tag timeout: 900_000
  test "1,000 create/destroy cycles leak no processes, ports, ETS tables, modules or atoms" do
    path = counter_path()

    cycle = fn ->
      {:ok, _} = Sandbox.create_sandbox("leak", :counter, sandbox_path: path)
      {:ok, 1} = Sandbox.call("leak", Counter, :increment, [])
      :ok = Sandbox.destroy_sandbox("leak")
    end

    cycle.()
    # The node pool refills in the background after a `:node` sandbox of
    # another test took a VM, and each VM it starts names a node (an atom):
    # the pool is full before counting, and stays so (nothing here takes).
    :ok = Sandbox.Node.Pool.warm()
    before = counts()
    before_pids = Process.list()

    for _ <- 1..1000, do: cycle.()

    after_ = counts()
    # Work a destroy hands off (audit batches, late resumes) may still be
    # running: a process new since the first cycle is a leak if it is still
    # there 5 s later (its :DOWN awaited, not the time).
    leaked = for pid <- Process.list() -- before_pids, alive_after?(pid, 5_000), do: pid
    new = for pid <- leaked, do: {pid, describe(pid)}
    assert after_.atoms == before.atoms, "new atoms: #{inspect(atoms_since(before.atoms))}"
    assert after_.modules == before.modules
    assert after_.ets == before.ets
    assert after_.ports == before.ports
    assert leaked == [], "new processes: #{inspect(new)}"
    assert loaded_modules("leak") == []
  end

  defp alive_after?(pid, ms) do
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> false
    after
      ms ->
        Process.demonitor(ref, [:flush])
        true
    end
  end

  defp describe(pid) do
    Process.info(pid, [:registered_name, :initial_call, :current_function, :dictionary])
    |> then(fn
      nil ->
        :gone

      info ->
        Keyword.update!(info, :dictionary, &Keyword.take(&1, [:"$initial_call", :"$ancestors"]))
    end)
  end

  # The atoms made since the atom table held `count` atoms (the external term
  # format's internal atom reference names an atom by its index).
  defp atoms_since(count) do
    for index <- count..(:erlang.system_info(:atom_count) - 1)//1,
        do: :erlang.binary_to_term(<<131, 75, index::24>>)
  end

  defp counts do
    %{
      processes: length(Process.list()),
      ports: length(Port.list()),
      ets: length(:ets.all()),
      modules: length(:code.all_loaded()),
      atoms: :erlang.system_info(:atom_count)
    }
  end
end
