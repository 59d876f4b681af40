defmodule Sandbox.BeamRelocateCorpusTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.BeamHelpers

  alias Sandbox.Beam

  describe "Elixir's :eex application, relocated" do
    setup do
      Application.load(:eex)
      {:ok, modules} = :application.get_key(:eex, :modules)

      mods =
        for m <- modules do
          {^m, beam, _} = :code.get_object_code(m)
          {m, beam}
        end

      %{renames: relocate_and_load(mods, "eex")}
    end

    test "evaluates templates exactly as the original", %{renames: r} do
      eex = r[EEx]
      assert eex == :"Elixir.Sandbox@eex.EEx"
      refute eex == EEx

      template = "<%= for x <- xs do %><%= x * 2 %>,<% end %> <%= @name %>"
      bindings = [xs: [1, 2, 3], assigns: %{name: "n"}]
      assert eex.eval_string(template, bindings) == EEx.eval_string(template, bindings)
      assert eex.eval_string(template, bindings) == "2,4,6, n"

      # The compiled form refers to the relocated engine, and evaluates the same.
      quoted = eex.compile_string(template)
      assert inspect(quoted) =~ "Sandbox@eex.EEx.Engine"
      refute inspect(EEx.compile_string(template)) =~ "Sandbox@eex"
      {result, _} = Code.eval_quoted(quoted, bindings)
      assert result == EEx.eval_string(template, bindings)

      # Errors are the relocated module's own exception.
      err = catch_error(eex.compile_string("<%= if true do %>"))
      assert err.__struct__ == r[EEx.SyntaxError]
    end

    test "a template function compiled through the relocated macros", %{renames: r} do
      eex = r[EEx]

      [{mod, _}] =
        Code.compile_string("""
        defmodule EExRelocFn do
          require #{inspect(eex)}
          #{inspect(eex)}.function_from_string(:def, :render, "<%= a %>+<%= b %>", [:a, :b])
        end
        """)

      on_exit(fn -> unload(mod) end)
      assert mod.render(1, 2) == "1+2"
    end
  end

  # Every BEAM of the installed OTP and Elixir.
  defp installed_beams do
    Path.wildcard(Path.join(:code.root_dir(), "lib/*/ebin/*.beam")) ++
      Path.wildcard(Path.join(:code.lib_dir(:elixir), "../*/ebin/*.beam"))
  end

  # Relocating with fresh names and back gives a module whose parsed contents
  # (atoms, literals, attributes, compile info, debug info) equal the
  # original's, and whose index-addressed chunks are byte for byte the same.
  @tag :slow
  @tag timeout: 300_000
  test "round trip over every installed BEAM with random rename maps" do
    files = installed_beams()

    :rand.seed(:exsss, {7, 7, 7})
    sample = files

    for file <- sample do
      beam = File.read!(file)
      {:ok, parsed} = Beam.parse(beam)
      candidates = Enum.uniq(parsed.atoms)
      picked = Enum.take_random(candidates, min(length(candidates), 1 + :rand.uniform(20)))
      picked = Enum.uniq([parsed.module | picked])

      # Pairs first: a map with an :__struct__ key would count as a struct.
      pairs = for {a, i} <- Enum.with_index(picked), do: {a, :"zz_round_trip_#{i}"}
      there = Map.new(pairs)
      back = Map.new(pairs, fn {k, v} -> {v, k} end)

      {:ok, moved} = Beam.relocate(beam, there)
      assert :ok = Beam.validate(moved), file
      {:ok, moved_parsed} = Beam.parse(moved)
      assert moved_parsed.module == Map.fetch!(there, parsed.module)

      {:ok, returned} = Beam.relocate(moved, back)
      {:ok, returned_parsed} = Beam.parse(returned)

      assert returned_parsed.atoms == parsed.atoms, file
      assert returned_parsed.attributes == parsed.attributes, file
      assert returned_parsed.compile_info == parsed.compile_info, file
      assert returned_parsed.imports == parsed.imports, file
      assert returned_parsed.external_funs == parsed.external_funs, file
      assert literals(returned) == literals(beam), file

      original = chunks(beam)
      result = chunks(returned)

      for id <- ~w(Code StrT ImpT ExpT LocT FunT Line Type), Map.has_key?(original, id) do
        assert result[id] == original[id], "#{file} #{id}"
      end

      for id <- ~w(Dbgi Docs ExCk Meta), Map.has_key?(original, id) do
        assert :erlang.binary_to_term(result[id]) == :erlang.binary_to_term(original[id]),
               "#{file} #{id}"
      end
    end
  end

  # Every installed BEAM, its dynamic calls rewritten into calls of a guard
  # (and one import of each redirected to it): the loader of a peer VM
  # prepares each (erlang:prepare_loading/2 loads and translates the code
  # without making it current or running an on_load function).
  @tag :slow
  @tag timeout: 600_000
  test "every installed BEAM relocated with dynamic_guard and import_redirects loads in a peer" do
    files = installed_beams()

    peer = Sandbox.Test.Peer.start!(args: [~c"-kernel", ~c"logger_level", ~c"none"])

    guard = {:sandbox_corpus_guard, [:apply, :call_fun, :send]}

    totals =
      for file <- files, reduce: %{rewritten: 0, redirected: 0} do
        acc ->
          beam = File.read!(file)
          {:ok, parsed} = Beam.parse(beam)
          {:ok, sites} = Beam.call_sites(beam)
          bifs = for %{kind: :bif, target: t} <- sites, into: MapSet.new(), do: t

          redirects =
            for {m, f, _a} = mfa <- parsed.imports, not MapSet.member?(bifs, mfa), into: %{} do
              {mfa, {:sandbox_corpus_guard, :"#{m}.#{f}"}}
            end

          {:ok, new} =
            Beam.relocate(beam, %{}, %{}, dynamic_guard: guard, import_redirects: redirects)

          assert :ok = Beam.validate(new), file
          {:ok, new_sites} = Beam.call_sites(new)
          refute Enum.any?(new_sites, &(&1.kind in [:apply, :call_fun, :send])), file

          assert {:ok, %Beam{imports: imports}} = Beam.parse(new)

          for {m, _f, _a} <- Enum.take(imports, length(parsed.imports)),
              do: assert(m == :erlang or m == :sandbox_corpus_guard, file)

          prepared = :peer.call(peer, :erlang, :prepare_loading, [parsed.module, new], 60_000)
          refute match?({:error, _}, prepared), "#{file}: #{inspect(prepared)}"

          dynamic = Enum.count(sites, &(&1.kind in [:apply, :call_fun, :send]))

          %{
            acc
            | rewritten: acc.rewritten + dynamic,
              redirected: acc.redirected + map_size(redirects)
          }
      end

    assert :peer.call(peer, :erlang, :+, [1, 2]) == 3
    assert totals.rewritten > 1000 and totals.redirected > 10_000
  end

  # Every installed BEAM relocated keeping its own name as data
  # (keep_atoms): it validates, beam_lib reads it, its identity and exports
  # are relocated, and the loader of a peer VM prepares it.
  @tag :slow
  @tag timeout: 600_000
  test "every installed BEAM relocated with keep_atoms of its own name loads in a peer" do
    files = installed_beams()

    peer = Sandbox.Test.Peer.start!(args: [~c"-kernel", ~c"logger_level", ~c"none"])

    totals =
      for file <- files, reduce: %{kept: 0, refused: 0} do
        acc ->
          beam = File.read!(file)
          {:ok, parsed} = Beam.parse(beam)
          {:ok, name} = Beam.relocated_name("keep", parsed.module)
          renames = %{parsed.module => name}
          {:ok, new} = Beam.relocate(beam, renames, %{}, keep_atoms: [parsed.module])
          assert :ok = Beam.validate(new), file

          assert {:ok, {^name, [atoms: atoms, exports: exports, imports: _, attributes: _]}} =
                   :beam_lib.chunks(new, [:atoms, :exports, :imports, :attributes]),
                 file

          # The same exports (a function named like its module is renamed
          # with it, keep_atoms or not).
          {:ok, {_, [exports: old_exports]}} = :beam_lib.chunks(beam, [:exports])
          renamed = fn {f, a} -> {Map.get(renames, f, f), a} end
          assert Enum.sort(exports) == Enum.sort(Enum.map(old_exports, renamed)), file
          # At most the one appended atom: the original name.
          extra = length(atoms) - length(parsed.atoms)
          assert extra in [0, 1], file
          if extra == 1, do: assert(List.last(atoms) == {length(atoms), parsed.module}, file)

          # It loads wherever plain relocation does (erts's own preloaded
          # modules' BIFs load only under their own names).
          prepare = &:peer.call(peer, :erlang, :prepare_loading, [name, &1], 60_000)
          prepared = prepare.(new)
          {:ok, plain} = Beam.relocate(beam, renames)

          refused = match?({:error, _}, prepared)
          if refused, do: assert({:error, _} = prepare.(plain), "#{file}: #{inspect(prepared)}")
          %{acc | kept: acc.kept + extra, refused: acc.refused + if(refused, do: 1, else: 0)}
      end

    assert :peer.call(peer, :erlang, :+, [1, 2]) == 3
    # Many modules use their own name as data (registered names, tables);
    # only a few preloaded ones cannot be relocated at all.
    assert totals.kept > 100 and totals.refused < 10
  end
end
