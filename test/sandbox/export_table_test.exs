defmodule Sandbox.ExportTableTest do
  # The VM's export table is never freed, and a full one stops the VM: a
  # sandbox must not be able to fill it (Sandbox.ExportTable). Shown in a
  # peer node.
  use ExUnit.Case, async: true

  import Sandbox.Test.SecurityFixtures

  alias Sandbox.Test.Peer

  @moduletag :tmp_dir

  test "usage/0 reads the table, and a load counts its exports and imports" do
    %{entries: entries, limit: limit, charged: charged} = Sandbox.ExportTable.usage()
    assert entries > 0 and limit >= 65_536 and charged >= 0
    {_, bin, _} = :code.get_object_code(:lists)
    {:ok, parsed} = Sandbox.Beam.parse(bin)
    n = Sandbox.ExportTable.estimate([parsed])
    assert n == length(parsed.exports) + length(parsed.imports) and n > 50
    assert :ok = Sandbox.ExportTable.admit(n)
  end

  @tag :slow
  test "near a full table, creates and funs are refused and the VM lives; without the check it stops",
       ctx do
    ns = "Gxt#{:erlang.phash2(ctx.test)}"

    code = """
    def mk(names), do: length(for f <- names, a <- 0..255, do: :erlang.make_fun(:gx_none, f, a))
    """

    dir = write(Path.join(ctx.tmp_dir, "p"), ns, code: code)
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

    # A running sandbox making funs of functions that do not exist: refused.
    names = for i <- 1..4, do: :"gx#{i}"

    assert {:error, {:exception, %SystemLimitError{}, _}} =
             Peer.call(peer, Sandbox, :call, ["early", code(ns), :mk, [names]])

    assert {:ok, _} = Peer.call(peer, Sandbox, :get_sandbox_info, ["early"])

    # Without the check (host code in the same VM), the same funs stop it.
    spawn(fn ->
      Peer.call(peer, Sandbox.Test.ExportTableFixtures, :make_funs, [:gx_none, 2 * reserve])
    end)

    assert_receive {:DOWN, ^ref, :process, ^peer, _}, 60_000
  end
end
