defmodule Sandbox.BeamHardeningTest do
  # Attacks on the native toolkit, each run against a VM of its own (a
  # :peer node) where it could stop the VM: a stack overflow in relocation,
  # atoms from a refused BEAM filling the atom table, decompression bombs,
  # costly small inputs held on a normal scheduler. Each of these tests
  # failed on the toolkit before issue 10's fixes: the first two by killing
  # the peer, the others by results the fixes changed.
  use ExUnit.Case, async: true

  alias Sandbox.Beam

  # ---------------------------------------------------------------------------
  # Building BEAMs.

  # A small real module, compiled here (never loaded).
  defp base_module(name) do
    forms = [
      {:attribute, 1, :module, name},
      {:attribute, 1, :export, [f: 0]},
      {:function, 1, :f, 0, [{:clause, 1, [], [], [{:atom, 1, :ok}]}]}
    ]

    {:ok, ^name, bin} = :compile.forms(forms, [:binary])
    bin
  end

  defp chunks(bin) do
    {:ok, _, chunks} = :beam_lib.all_chunks(bin)
    chunks
  end

  defp build(chunks) do
    {:ok, bin} = :beam_lib.build_module(chunks)
    bin
  end

  # The module with `extra` chunks added, replacing any of the same id.
  defp with_chunks(bin, extra) do
    ids = for {id, _} <- extra, do: id
    build(Enum.reject(chunks(bin), fn {id, _} -> id in ids end) ++ extra)
  end

  # The module's atom table with `names` appended (no code refers to them).
  defp with_atoms(bin, names) do
    {_, <<count::32, table::binary>>} = List.keyfind(chunks(bin), ~c"AtU8", 0)
    more = for name <- names, into: <<>>, do: <<byte_size(name), name::binary>>
    with_chunks(bin, [{~c"AtU8", <<count + length(names)::32, table::binary, more::binary>>}])
  end

  # A literal table chunk of the given external terms.
  defp literal_table(terms) do
    table = [<<length(terms)::32>> | for(t <- terms, do: [<<byte_size(t)::32>>, t])]
    table = IO.iodata_to_binary(table)
    <<byte_size(table)::32, :zlib.compress(table)::binary>>
  end

  # A compressed term chunk (version 131, tag 80, size, zlib).
  defp compressed_term(term_without_version) do
    <<131, 80, byte_size(term_without_version)::32, :zlib.compress(term_without_version)::binary>>
  end

  # Atom names no VM has seen.
  defp fresh_names(n) do
    tag = System.unique_integer([:positive])
    for i <- 1..n, do: "hx#{tag}_#{Integer.to_string(i, 36)}"
  end

  # ---------------------------------------------------------------------------
  # Peers.

  defp peer!(args \\ []) do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, peer, _node} =
      :peer.start_link(%{
        connection: :standard_io,
        args: args ++ paths,
        # A dying peer writes no crash dump.
        env: [{~c"ERL_CRASH_DUMP_BYTES", ~c"0"}]
      })

    # The peer is linked to the test process and may be gone by on_exit.
    on_exit(fn ->
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end
    end)

    # Load the toolkit there (loading modules makes atoms) before counting.
    warm = base_module(:hardening_warm_up)
    {:ok, _} = :peer.call(peer, Beam, :parse, [warm, [max_new_atoms: 10]])

    {:error, _} =
      :peer.call(peer, Beam, :parse, [with_atoms(warm, fresh_names(2)), [max_new_atoms: 1]])

    {:ok, _} = :peer.call(peer, Beam, :relocate, [warm, %{}])
    :ok = :peer.call(peer, Beam, :validate, [warm])
    peer
  end

  defp alive?(peer), do: :peer.call(peer, :erlang, :+, [1, 2]) == 3

  defp atom_count(peer), do: :peer.call(peer, :erlang, :system_info, [:atom_count])

  # ---------------------------------------------------------------------------

  describe "a latin-1 atom longer than 255 bytes in a term chunk" do
    # {m, 'é' x 5000} in a Meta chunk, relocated with m renamed: the atom used
    # to be converted to UTF-8 into a 510-byte stack buffer, which killed the
    # VM (validate and parse accepted the file: neither looked at Meta, and
    # the relocator's change check stopped at the renamed m).
    test "is refused by relocate/4 and validate/2 instead of killing the VM" do
      name = :hardening_meta
      m = Atom.to_string(name)

      term =
        <<104, 2, 119, byte_size(m), m::binary, 100, 5000::16,
          :binary.copy(<<0xE9>>, 5000)::binary>>

      plain = with_chunks(base_module(name), [{~c"Meta", <<131, term::binary>>}])
      compressed = with_chunks(base_module(name), [{~c"Meta", compressed_term(term)}])
      renames = %{name => :sandbox@h@hardening_meta}
      peer = peer!()

      for bin <- [plain, compressed], debug_info <- [:keep, :strip] do
        assert :peer.call(peer, Beam, :relocate, [bin, renames, %{}, [debug_info: debug_info]]) ==
                 {:error, {:bad_term, "Meta"}}

        assert :peer.call(peer, Beam, :validate, [bin]) == {:error, {:bad_term, "Meta"}}
      end

      assert alive?(peer)
    end
  end

  describe "atoms from untrusted input" do
    # The peer's atom table has room for about 10,000 more atoms: a BEAM of
    # 20,000 new atom names and a bad literal used to make all its atoms
    # before the literal was checked, and the VM aborted with a full table.
    test "a refused BEAM creates none, however many it names" do
      peer = peer!([~c"+t", ~c"20000"])
      before = atom_count(peer)
      bad_literal = literal_table([<<131, 1>>])

      bin =
        base_module(:hardening_atoms)
        |> with_atoms(fresh_names(20_000))
        |> with_chunks([{~c"LitT", bad_literal}])

      assert :peer.call(peer, Beam, :parse, [bin]) == {:error, {:bad_literal, 0}}
      assert atom_count(peer) == before
      assert alive?(peer)
    end

    # Attr was decoded (binary_to_term without the safe flag, making its
    # atoms) before a later check of the same parse failed.
    test "the atoms of a term chunk are not made before everything is checked" do
      peer = peer!()
      [fresh] = fresh_names(1)
      attr = :erlang.term_to_binary([{String.to_atom(fresh), [1]}])
      # (String.to_atom above made the atom in this VM, not in the peer.)
      bin =
        base_module(:hardening_attr)
        |> with_chunks([{~c"Attr", attr}, {~c"LitT", literal_table([<<131, 1>>])}])

      before = atom_count(peer)
      assert :peer.call(peer, Beam, :parse, [bin]) == {:error, {:bad_literal, 0}}
      assert atom_count(peer) == before

      # Without the bad literal it parses, and the attribute's atom is made.
      good = with_chunks(base_module(:hardening_attr), [{~c"Attr", attr}])
      assert {:ok, %Beam{attributes: [{atom, [1]}]}} = :peer.call(peer, Beam, :parse, [good])
      assert Atom.to_string(atom) == fresh
      assert atom_count(peer) > before
    end

    test "a call makes no more atoms than its budget" do
      peer = peer!()
      names = fresh_names(3_000)
      bin = with_atoms(base_module(:hardening_budget), names)
      before = atom_count(peer)

      assert :peer.call(peer, Beam, :parse, [bin, [max_new_atoms: 1_000]]) ==
               {:error, {:too_many_atoms, 3_001, 1_000}}

      assert atom_count(peer) == before

      # The budget also comes from the application environment.
      :ok = :peer.call(peer, :application, :set_env, [:sandbox, :max_new_atoms, 2_000])
      assert :peer.call(peer, Beam, :parse, [bin]) == {:error, {:too_many_atoms, 3_001, 2_000}}
      assert atom_count(peer) == before

      # 3,000 new names and the module's own: within 5,000, all made.
      assert {:ok, %Beam{atoms: atoms}} =
               :peer.call(peer, Beam, :parse, [bin, [max_new_atoms: 5_000]])

      assert atom_count(peer) == before + 3_001
      assert Enum.take(Enum.map(atoms, &Atom.to_string/1), -3_000) == names
    end
  end

  describe "decompression bombs" do
    # A literal table that really inflates to 2 MiB, from a few KiB.
    defp literal_bomb(bytes) do
      base_module(:hardening_bomb)
      |> with_chunks([
        {~c"LitT", literal_table([:erlang.term_to_binary(:binary.copy(<<0>>, bytes))])}
      ])
    end

    test "inflated sizes are capped by the option or the application environment" do
      bin = literal_bomb(2 * 1024 * 1024)
      assert byte_size(bin) < 16 * 1024
      declared = 4 + 4 + 6 + 2 * 1024 * 1024
      cap = 1024 * 1024
      too_large = {:error, {:too_large, "LitT", declared, cap}}

      assert Beam.validate(bin) == :ok
      assert Beam.validate(bin, max_inflated_bytes: cap) == too_large
      assert Beam.parse(bin, max_inflated_bytes: cap) == too_large
      assert Beam.relocate(bin, %{}, %{}, max_inflated_bytes: cap) == too_large
      assert Beam.validate(bin, max_inflated_bytes: declared) == :ok

      peer = peer!()
      :ok = :peer.call(peer, :application, :set_env, [:sandbox, :max_inflated_bytes, cap])
      assert :peer.call(peer, Beam, :validate, [bin]) == too_large
      assert :peer.call(peer, Beam, :validate, [bin, [max_inflated_bytes: declared]]) == :ok
    end

    test "every compressed chunk counts, and the limits are checked" do
      term = :erlang.term_to_binary(:binary.copy(<<0>>, 600_000), [:compressed])
      bin = with_chunks(literal_bomb(600_000), [{~c"Meta", term}])
      <<131, 80, meta_size::32, _::binary>> = term
      lit_size = 4 + 4 + 6 + 600_000

      assert Beam.validate(bin, max_inflated_bytes: lit_size + meta_size) == :ok

      assert Beam.validate(bin, max_inflated_bytes: lit_size) ==
               {:error, {:too_large, "Meta", lit_size + meta_size, lit_size}}

      for opts <- [[max_inflated_bytes: 0], [max_inflated_bytes: :big], [max_new_atoms: -1]] do
        assert_raise ArgumentError, fn -> Beam.parse(bin, opts) end
      end

      assert_raise ArgumentError, fn -> Beam.validate(bin, max_new_atoms: 10) end
      assert_raise ArgumentError, fn -> Beam.relocate(bin, %{}, %{}, nope: 1) end
    end
  end

  describe "scheduling" do
    # Runs `call` (an Erlang expression using the variable Bin) in the peer,
    # and returns its result and the dirty CPU schedulers' active time
    # during it. The scheduler_wall_time flag lasts as long as the process
    # that set it, so the whole measurement runs in one process there
    # (erl_eval in the process of one :peer.call).
    defp dirty_active_during(peer, call, bin) do
      {:ok, tokens, _} =
        :erl_scan.string(~c"""
        erlang:system_flag(scheduler_wall_time, true),
        S0 = erlang:statistics(scheduler_wall_time),
        R = #{call},
        S1 = erlang:statistics(scheduler_wall_time),
        {R, S0, S1}.
        """)

      {:ok, exprs} = :erl_parse.parse_exprs(tokens)
      bindings = :erl_eval.add_binding(:Bin, bin, :erl_eval.new_bindings())
      {:value, {result, s0, s1}, _} = :peer.call(peer, :erl_eval, :exprs, [exprs, bindings])
      normal = :peer.call(peer, :erlang, :system_info, [:schedulers])
      # Scheduler ids above the normal schedulers' are the dirty CPU ones.
      active = fn s -> for {id, a, _} <- s, id > normal, reduce: 0, do: (acc -> acc + a) end
      {result, active.(s1) - active.(s0)}
    end

    # A BEAM of about 10 KiB whose Meta chunk inflates to 8 MiB: relocating
    # it (renaming the module, which Meta names) rewrites and recompresses
    # 8 MiB. Relocation had no cost estimate: it went dirty only above
    # 16 KiB, and held a normal scheduler for the whole of it.
    test "a small BEAM that declares a large Meta is relocated on a dirty scheduler" do
      name = :hardening_dirty
      term = :erlang.term_to_binary({name, :binary.copy(<<0>>, 8 * 1024 * 1024)}, [:compressed])
      bin = with_chunks(base_module(name), [{~c"Meta", term}])
      assert byte_size(bin) < :sandbox_nif.dirty_thresholds().relocate

      peer = peer!()

      call =
        "'Elixir.Sandbox.Beam':relocate(Bin, \#{hardening_dirty => 'sandbox@h@hardening_dirty'})"

      assert {{:ok, out}, dirty} = dirty_active_during(peer, call, bin)
      assert dirty > 0
      assert {:ok, %Beam{module: :sandbox@h@hardening_dirty}} = Beam.parse(out)
      assert :ok = Beam.validate(out)
    end
  end
end
