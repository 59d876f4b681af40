defmodule Sandbox.LiteralAtomsTest do
  # The loader makes the atoms of a module's literal table, which parsing
  # its atom table does not count: a crafted BEAM could fill the VM's atom
  # table (1,048,576 atoms, then the VM stops) when a sandbox loads it.
  use ExUnit.Case, async: true

  import Sandbox.Test.SecurityFixtures
  import Sandbox.Test.AtomFixtures

  alias Sandbox.Test.Peer

  @moduletag :tmp_dir
  @moduletag :slow

  test "a reload whose literals would make more than max_new_atoms atoms is refused, and makes none",
       ctx do
    ns = "LitAtoms#{:erlang.phash2(ctx.test)}"
    id = "litatoms#{:erlang.phash2(ctx.test)}"
    on_exit(fn -> Sandbox.destroy_sandbox(id) end)
    dir = write(Path.join(ctx.tmp_dir, "p"), ns, [])
    {:ok, _} = Sandbox.create_sandbox(id, sup(ns), sandbox_path: dir)

    builder = Peer.start!(apps: [:elixir])
    victim = Peer.start!()
    module = Module.concat(ns, Bomb)
    tag = System.unique_integer([:positive])
    bomb = fresh_atoms_beam(builder, module, :atoms, 70_000, tag)

    # Loaded as it is, every one of them is made.
    count = Peer.call(victim, :erlang, :system_info, [:atom_count])
    {:module, ^module} = Peer.call(victim, :code, :load_binary, [module, ~c"x", bomb])
    assert Peer.call(victim, :erlang, :system_info, [:atom_count]) - count >= 70_000

    assert Sandbox.hot_reload_sandbox(id, bomb) ==
             {:error, {:invalid_beam, module, {:too_many_atoms, :literals, 65_536}}}

    assert existing_atoms(fresh_atom_names(tag, 70_000)) == 0
    refute :erlang.module_loaded(Sandbox.module_name(id, module))

    # Within the bound, a module's literal atoms load as before.
    small = fresh_atoms_beam(builder, module, :atoms, 100)
    assert {:ok, :hot_reloaded} = Sandbox.hot_reload_sandbox(id, small)
    assert {:ok, atoms} = Sandbox.call(id, module, :atoms, [])
    assert length(atoms) == 100
  end
end
