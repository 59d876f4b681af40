defmodule Sandbox.GuardExportsTest do
  # A sandbox's copy of the guard exports only the guard functions its code
  # calls: every export takes an entry of the VM's export table, which is
  # never freed (see Sandbox.ChangeSet, "The guard's exports").
  use ExUnit.Case, async: true

  import Sandbox.Test.SecurityFixtures

  @moduletag :tmp_dir

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    id = "gx#{hash}"

    on_exit(fn ->
      for %{id: sid} <- Sandbox.list_sandboxes(),
          String.starts_with?(sid, id),
          do: Sandbox.destroy_sandbox(sid)
    end)

    %{ns: "Gx#{hash}", id: id}
  end

  defp sandbox!(ctx, name, code, profile, opts \\ []) do
    ns = "#{ctx.ns}#{Macro.camelize(name)}"
    dir = write(Path.join(ctx.tmp_dir, name), ns, [code: code] ++ opts)
    id = "#{ctx.id}#{name}#{profile}"
    {:ok, _} = Sandbox.create_sandbox(id, sup(ns), sandbox_path: dir, security_profile: profile)
    {id, code(ns), ns}
  end

  defp guard(id) do
    {:ok, name} = Sandbox.Beam.relocated_name(id, Sandbox.Guard)
    name
  end

  defp gn(m, f), do: Sandbox.Guard.Runtime.guard_name({m, f, 0})

  defp guard_exports(id), do: MapSet.new(guard(id).module_info(:exports))

  defp security_error?({:error, {:exception, %Sandbox.SecurityError{}, _}}), do: true
  defp security_error?(_), do: false

  test "the copy exports what the code calls; a reload that calls more loads the union; a rollback keeps working",
       ctx do
    # The table belongs to the sandbox's worker (a call's process is gone
    # once the call returns).
    t = :"#{ctx.ns}_t"

    code = """
    def put(t, x), do: :ets.insert(t, x)
    """

    init = ":ets.new(#{inspect(t)}, [:named_table, :public])"
    {id, mod, ns} = sandbox!(ctx, "grow", code, :medium, init: init)

    exports = guard_exports(id)
    template = length(Sandbox.Guard.module_info(:exports))
    assert {gn(:ets, :insert), 2} in exports and {gn(:ets, :new), 2} in exports
    refute {gn(:ets, :lookup), 2} in exports
    assert MapSet.size(exports) < 30 and template > 300

    assert {:ok, true} = Sandbox.call(id, mod, :put, [t, {:a, 1}])

    source = """
    defmodule #{ns}.Code do
      #{code}
      def get(t, k), do: :ets.lookup(t, k)
    end
    """

    assert {:ok, :hot_reloaded} = Sandbox.hot_reload_source(id, {:code, source})
    after_reload = guard_exports(id)
    assert {gn(:ets, :lookup), 2} in after_reload
    assert MapSet.subset?(exports, after_reload)
    assert {:ok, [a: 1]} = Sandbox.call(id, mod, :get, [t, :a])
    # The reload's guarded call is checked like any other.
    assert security_error?(Sandbox.call(id, mod, :get, [:ac_tab, :x]))

    assert {:ok, :rolled_back} = Sandbox.rollback_module(id, mod, 1)
    assert {:ok, true} = Sandbox.call(id, mod, :put, [t, {:b, 2}])
    assert guard_exports(id) == after_reload

    :ok = Sandbox.destroy_sandbox(id)
    refute :erlang.module_loaded(guard(id))
  end

  test "dynamic calls and made funs are checked without the copy exporting them", ctx do
    host = :ets.new(:gx_host, [:public])
    :ets.insert(host, {:k, :host})

    # No static call of :ets.insert/2 anywhere in the sandbox's code.
    code = """
    def dyn(t, x), do: apply(:ets, fun(), [t, x])
    def made(t, x), do: :erlang.make_fun(:ets, fun(), 2).(t, x)
    def arity, do: :erlang.make_fun(:ets, fun(), 2) |> Function.info(:arity)
    defp fun, do: String.to_existing_atom("insert")
    """

    # Without the protection (:low), both reach the host's table.
    {low, low_mod, _} = sandbox!(ctx, "dynlow", code, :low)
    refute {gn(:ets, :insert), 2} in guard_exports(low)
    assert {:ok, true} = Sandbox.call(low, low_mod, :dyn, [host, {:k, :dyn}])
    assert :ets.lookup(host, :k) == [k: :dyn]
    assert {:ok, true} = Sandbox.call(low, low_mod, :made, [host, {:k, :made}])
    assert :ets.lookup(host, :k) == [k: :made]

    # Under :medium both are refused and the host's table is left alone.
    {id, mod, _} = sandbox!(ctx, "dynmed", code, :medium)
    refute {gn(:ets, :insert), 2} in guard_exports(id)
    before = :ets.tab2list(host)
    assert security_error?(Sandbox.call(id, mod, :dyn, [host, {:k, :dyn2}]))
    assert security_error?(Sandbox.call(id, mod, :made, [host, {:k, :made2}]))
    assert :ets.tab2list(host) == before
    assert {:ok, {:arity, 2}} = Sandbox.call(id, mod, :arity, [])
  end
end
