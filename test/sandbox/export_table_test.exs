defmodule Sandbox.ExportTableTest do
  # The VM's export table is never freed, and a full one stops the VM: a
  # sandbox must not be able to fill it (Sandbox.ExportTable). The full
  # table is shown in a peer node.
  use ExUnit.Case, async: true

  import Sandbox.Test.SecurityFixtures

  alias Sandbox.Test.Peer

  @moduletag :tmp_dir

  # Funs of functions of :lists (allowed in every profile) that do not
  # exist, each taking an export-table entry: how many were made before a
  # refusal (`{:refused_after, n}`), or all of them (`{:made, n}`).
  @code """
  def mk(names, arities) do
    pairs = for f <- names, a <- arities, do: {f, a}

    Enum.reduce_while(pairs, {:made, 0}, fn {f, a}, {:made, n} ->
      try do
        _ = :erlang.make_fun(:lists, f, a)
        {:cont, {:made, n + 1}}
      rescue
        SystemLimitError -> {:halt, {:refused_after, n}}
      end
    end)
  end

  def same(n, f), do: for(_ <- 1..n, do: :erlang.make_fun(:lists, f, 1)) |> length()
  def wide(a), do: :erlang.make_fun(:lists, :gx_wide, a)
  """

  defp sandbox!(ctx, name, profile \\ :medium) do
    ns = "Gxt#{:erlang.phash2({ctx.test, name})}"
    dir = write(Path.join(ctx.tmp_dir, name), ns, code: @code)
    id = "gxt#{:erlang.phash2({ctx.test, name})}"
    on_exit(fn -> Sandbox.destroy_sandbox(id) end)
    {:ok, _} = Sandbox.create_sandbox(id, sup(ns), sandbox_path: dir, security_profile: profile)
    {id, code(ns), dir, ns}
  end

  test "usage/0 reads the table, and a load counts its exports and imports" do
    %{entries: entries, limit: limit, charged: charged} = Sandbox.ExportTable.usage()
    assert entries > 0 and limit >= 65_536 and charged >= 0
    {_, bin, _} = :code.get_object_code(:lists)
    {:ok, parsed} = Sandbox.Beam.parse(bin)
    n = Sandbox.ExportTable.estimate([parsed])
    assert n == length(parsed.exports) + length(parsed.imports) + length(parsed.external_funs)
    assert n > 50
    assert :ok = Sandbox.ExportTable.admit(n)
  end

  test "a fun made again, or of a wrong arity, is not charged; a sandbox's share is bounded",
       ctx do
    {id, mod, _, _} = sandbox!(ctx, "share")
    before = Sandbox.ExportTable.usage().charged
    assert {:ok, 1000} = Sandbox.call(id, mod, :same, [1000, :gx_same])
    assert {:error, {:exception, %ArgumentError{}, _}} = Sandbox.call(id, mod, :wide, [300])
    # (Other tests may charge at the same time: at most a few of their own.)
    assert Sandbox.ExportTable.usage().charged - before < 1000

    # The one function charged above counts against the sandbox's share.
    names = for i <- 1..40, do: :"gx_share_#{i}"

    assert {:ok, {:refused_after, 9_999}} =
             Sandbox.call(id, mod, :mk, [names, Enum.to_list(0..255)])
  end

  @tag :slow
  test "near a full table, creates and funs are refused and the VM lives; without the check it stops",
       ctx do
    ns = "Gxt#{:erlang.phash2(ctx.test)}"
    dir = write(Path.join(ctx.tmp_dir, "p"), ns, code: @code)

    # A VM that stops writes no crash dump (it takes longer than the test).
    peer =
      Peer.start!(
        apps: [:sandbox],
        args: [~c"-kernel", ~c"logger_level", ~c"error"],
        env: [{"ERL_CRASH_DUMP_SECONDS", "0"}]
      )

    ref = Process.monitor(peer)
    create = [sup(ns), [sandbox_path: dir, security_profile: :medium]]

    {:ok, _} = Peer.call(peer, Sandbox, :create_sandbox, ["early" | create])
    %{limit: limit} = Peer.call(peer, Sandbox.ExportTable, :usage, [])
    reserve = Peer.call(peer, Sandbox.ExportTable, :reserve, [])
    filled = Peer.call(peer, Sandbox.Test.ExportTableFixtures, :fill_to, [limit - reserve - 50])
    assert filled >= limit - reserve - 50

    # A create (hundreds of exports and imports) is refused, and leaves nothing.
    assert {:error, {:system_limit, :export_table}} =
             Peer.call(peer, Sandbox, :create_sandbox, ["late" | create])

    ids = Peer.call(peer, Sandbox, :list_sandboxes, []) |> Enum.map(& &1.id)
    assert ids == ["early"]

    # A running sandbox making funs of functions that do not exist: refused
    # once the reserve is reached (at most the 50 entries left above it).
    assert {:ok, {:refused_after, n}} =
             Peer.call(peer, Sandbox, :call, ["early", code(ns), :mk, [[:gx_a, :gx_b], [0, 1]]])

    assert n <= 50
    assert {:ok, _} = Peer.call(peer, Sandbox, :get_sandbox_info, ["early"])

    # Without the check (host code in the same VM), such funs stop it.
    spawn(fn ->
      Peer.call(peer, Sandbox.Test.ExportTableFixtures, :make_funs, [:gx_none, 2 * reserve])
    end)

    assert_receive {:DOWN, ^ref, :process, ^peer, _}, 60_000
  end
end
