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

  # Relocating with fresh names and back gives a module whose parsed contents
  # (atoms, literals, attributes, compile info, debug info) equal the
  # original's, and whose index-addressed chunks are byte for byte the same.
  @tag :slow
  @tag timeout: 300_000
  test "round trip over every installed BEAM with random rename maps" do
    files =
      Path.wildcard(Path.join(:code.root_dir(), "lib/*/ebin/*.beam")) ++
        Path.wildcard(Path.join(:code.lib_dir(:elixir), "../*/ebin/*.beam"))

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
end
