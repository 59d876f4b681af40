defmodule Sandbox.BeamTest do
  use ExUnit.Case, async: true
  doctest Sandbox.Beam

  import Bitwise

  alias Sandbox.Beam

  @beam_lib_chunks [:atoms, :imports, :exports, :locals, :attributes, :compile_info]

  # ---------------------------------------------------------------------------
  # The corpus: every .beam of the installed OTP and Elixir.

  @elixir_apps [:elixir, :eex, :ex_unit, :iex, :logger, :mix]

  defp corpus do
    otp = Path.wildcard(Path.join(List.to_string(:code.root_dir()), "lib/*/ebin/*.beam"))

    elixir =
      for app <- @elixir_apps,
          file <- Path.wildcard(Path.join([:code.lib_dir(app), "ebin", "*.beam"])),
          do: file

    Enum.uniq(otp ++ elixir) |> Enum.sort()
  end

  defp object_code(module) do
    {^module, bin, _} = :code.get_object_code(module)
    bin
  end

  # ---------------------------------------------------------------------------
  # What beam_lib and the Erlang term decoder say about a module, in the shape
  # of Sandbox.Beam's fields.

  defp beam_lib_view(bin) do
    {:ok, {module, chunks}} = :beam_lib.chunks(bin, @beam_lib_chunks)

    %{
      module: module,
      atoms: chunks[:atoms] |> Enum.sort() |> Enum.map(fn {_index, atom} -> atom end),
      imports: chunks[:imports],
      exports: chunks[:exports],
      locals: chunks[:locals],
      attributes: chunks[:attributes],
      compile_info: chunks[:compile_info],
      external_funs: literal_external_funs(bin)
    }
  end

  # Our view, normalised the way beam_lib normalises: imports, exports and
  # locals sorted (their table order is checked against the raw chunks), attributes grouped by key (keys sorted, values of a repeated key
  # appended in order).
  defp our_view(%Beam{} = beam) do
    %{
      module: beam.module,
      atoms: beam.atoms,
      imports: Enum.sort(beam.imports),
      exports: Enum.sort(beam.exports),
      locals: Enum.sort(beam.locals),
      attributes: group_attributes(beam.attributes),
      compile_info: beam.compile_info,
      external_funs: beam.external_funs
    }
  end

  defp group_attributes(attrs) do
    attrs
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    |> Enum.sort_by(&elem(&1, 0))
    |> Enum.map(fn {key, values} -> {key, Enum.concat(values)} end)
  end

  # The external funs `fun M:F/A` among the literals, found by decoding the
  # literal table with zlib and binary_to_term.
  defp literal_external_funs(bin) do
    literals(bin)
    |> Enum.reduce([], &external_funs_in/2)
    |> Enum.uniq()
    |> Enum.sort()
  end

  defp literals(bin) do
    case :beam_lib.chunks(bin, [~c"LitT"]) do
      {:ok, {_, [{_, <<0::32, table::binary>>}]}} -> decode_literal_table(table)
      {:ok, {_, [{_, <<_::32, z::binary>>}]}} -> decode_literal_table(:zlib.uncompress(z))
      {:error, :beam_lib, {:missing_chunk, _, _}} -> []
    end
  end

  defp decode_literal_table(<<count::32, rest::binary>>) do
    {terms, <<>>} =
      Enum.map_reduce(List.duplicate(nil, count), rest, fn nil,
                                                           <<size::32, term::binary-size(size),
                                                             rest::binary>> ->
        {:erlang.binary_to_term(term), rest}
      end)

    terms
  end

  defp external_funs_in(term, acc) when is_function(term) do
    case :erlang.fun_info(term, :type) do
      {:type, :external} ->
        {:module, m} = :erlang.fun_info(term, :module)
        {:name, f} = :erlang.fun_info(term, :name)
        {:arity, a} = :erlang.fun_info(term, :arity)
        [{m, f, a} | acc]

      {:type, :local} ->
        acc
    end
  end

  defp external_funs_in(term, acc) when is_tuple(term),
    do: term |> Tuple.to_list() |> Enum.reduce(acc, &external_funs_in/2)

  defp external_funs_in([head | tail], acc),
    do: external_funs_in(tail, external_funs_in(head, acc))

  defp external_funs_in(term, acc) when is_map(term),
    do: :maps.fold(fn k, v, acc -> external_funs_in(v, external_funs_in(k, acc)) end, acc, term)

  defp external_funs_in(_term, acc), do: acc

  # Every difference between our parse and beam_lib for one file.
  defp differences(path) do
    bin = File.read!(path)
    theirs = beam_lib_view(bin)

    diffs =
      case {Beam.parse(bin), Beam.validate(bin)} do
        {{:ok, beam}, :ok} ->
          ours = our_view(beam)

          for {key, value} <- theirs, ours[key] != value do
            {Path.basename(path), key, ours: ours[key], beam_lib: value}
          end

        other ->
          [{Path.basename(path), :result, other}]
      end

    {diffs, theirs.external_funs != []}
  end

  defp differential(files) do
    files
    |> Task.async_stream(&differences/1,
      max_concurrency: System.schedulers_online(),
      ordered: false,
      timeout: :infinity
    )
    |> Enum.reduce({[], 0}, fn {:ok, {diffs, funs?}}, {all, with_funs} ->
      {diffs ++ all, if(funs?, do: with_funs + 1, else: with_funs)}
    end)
  end

  describe "agrees with :beam_lib" do
    # About 1,700 files, checked two at a time: about a second here.
    test "on every .beam of the installed OTP and Elixir" do
      files = corpus()
      assert length(files) > 1000
      {diffs, with_external_funs} = differential(files)
      assert diffs == []
      # The external fun comparison is not vacuous.
      assert with_external_funs > 20
    end

    test "imports, exports and locals are in table order" do
      for module <- [:gen_server, Enum, :beam_lib] do
        bin = object_code(module)
        {:ok, {^module, [atoms: atoms]}} = :beam_lib.chunks(bin, [:atoms])
        atom = &(atoms |> List.keyfind(&1, 0) |> elem(1))
        chunks = all_chunks(bin)
        table = fn id -> chunks |> List.keyfind(id, 0) |> elem(1) |> table_entries() end
        {:ok, beam} = Beam.parse(bin)
        assert beam.imports == for({m, f, a} <- table.(~c"ImpT"), do: {atom.(m), atom.(f), a})
        assert beam.exports == for({f, a, _label} <- table.(~c"ExpT"), do: {atom.(f), a})
        assert beam.locals == for({f, a, _label} <- table.(~c"LocT"), do: {atom.(f), a})
        assert beam.imports != Enum.sort(beam.imports)
      end
    end

    test "module, chunk table and chunk flags match beam_lib.all_chunks" do
      for module <- [:lists, :gen_server, Enum, Sandbox.Beam] do
        bin = object_code(module)
        {:ok, ^module, all} = :beam_lib.all_chunks(bin)
        {:ok, beam} = Beam.parse(bin)

        assert Enum.map(beam.chunks, fn {id, _, size} -> {id, size} end) ==
                 Enum.map(all, fn {id, data} -> {List.to_string(id), byte_size(data)} end)

        assert chunk_layout(all) == beam.chunks

        for {flag, id} <- [
              has_literals: ~c"LitT",
              has_debug_info: ~c"Dbgi",
              has_docs: ~c"Docs",
              has_exck: ~c"ExCk"
            ] do
          assert Map.fetch!(beam, flag) == List.keymember?(all, id, 0), "#{module} #{flag}"
        end

        for {id, offset, size} <- beam.chunks do
          assert binary_part(bin, offset, size) ==
                   elem(List.keyfind(all, String.to_charlist(id), 0), 1)
        end
      end
    end

    test "Elixir modules have docs and ExCk, Erlang modules a literal table" do
      assert {:ok, %Beam{has_docs: true, has_exck: true}} = Beam.parse(object_code(Enum))
      assert {:ok, %Beam{has_literals: true}} = Beam.parse(object_code(:gen_server))
    end
  end

  # The IFF layout of a chunk list, computed independently of the parser:
  # [{id, data_offset, size}].
  defp chunk_layout(chunks) do
    {layout, _} =
      Enum.map_reduce(chunks, 12, fn {id, data}, pos ->
        size = byte_size(data)
        {{List.to_string(id), pos + 8, size}, pos + 8 + align4(size)}
      end)

    layout
  end

  defp align4(n), do: n + 3 &&& -4

  defp table_entries(<<count::32, entries::binary>>) do
    list = for <<a::32, b::32, c::32 <- entries>>, do: {a, b, c}
    assert length(list) == count
    list
  end

  # ---------------------------------------------------------------------------
  # Old and new atom chunk formats, built from real modules.

  defp all_chunks(bin) do
    {:ok, _, chunks} = :beam_lib.all_chunks(bin)
    chunks
  end

  defp atom_names(chunks) do
    {_, <<count::32, names::binary>>} = List.keyfind(chunks, ~c"AtU8", 0)
    list = split_names(names, [])
    assert length(list) == count
    list
  end

  defp split_names(<<>>, acc), do: Enum.reverse(acc)

  defp split_names(<<len, name::binary-size(len), rest::binary>>, acc),
    do: split_names(rest, [name | acc])

  defp replace_atom_chunk(chunks, id, data) do
    index = Enum.find_index(chunks, fn {cid, _} -> cid == ~c"AtU8" end)
    List.replace_at(chunks, index, {id, data})
  end

  defp build(chunks) do
    {:ok, bin} = :beam_lib.build_module(chunks)
    bin
  end

  # The old `Atom` chunk: the same table with latin-1 names.
  defp to_latin1_atom_chunk(chunks) do
    names = atom_names(chunks)

    data =
      for name <- names, into: <<length(names)::32>> do
        latin1 = :unicode.characters_to_binary(name, :utf8, :latin1)
        <<byte_size(latin1), latin1::binary>>
      end

    replace_atom_chunk(chunks, ~c"Atom", data)
  end

  # The compact format: a negative count, then lengths as compact-term
  # unsigned integers (tag 0) — one byte below 16, two bytes below 2048.
  defp to_compact_atom_chunk(chunks, names) do
    data =
      for name <- names, into: <<-length(names)::signed-32>> do
        <<compact_u(byte_size(name))::binary, name::binary>>
      end

    replace_atom_chunk(chunks, ~c"AtU8", data)
  end

  defp atom_chunk(names) do
    for name <- names, into: <<length(names)::32>>, do: <<byte_size(name), name::binary>>
  end

  defp compact_u(n) when n < 16, do: <<n::4, 0::1, 0::3>>
  defp compact_u(n) when n < 2048, do: <<n >>> 8::3, 1::2, 0::3, n &&& 255>>

  # A module exporting one function of arity 0 per atom, so that each atom is
  # in the atom table (atoms in a literal would only be in LitT).
  defp tiny_module(module, atoms) do
    functions =
      for name <- atoms, do: {:function, 1, name, 0, [{:clause, 1, [], [], [{:atom, 1, :ok}]}]}

    forms =
      [{:attribute, 1, :module, module}, {:attribute, 1, :export, Enum.map(atoms, &{&1, 0})}] ++
        functions

    {:ok, ^module, bin} = :compile.forms(forms, [:binary, :no_line_info])
    bin
  end

  defp without_chunk_table(%Beam{} = beam), do: %{beam | chunks: nil, atom_encoding: nil}

  describe "the old latin-1 Atom chunk" do
    test "parses the same as AtU8, and as beam_lib reads it" do
      for module <- [:lists, :gen_server, :sys, Enum, Keyword] do
        bin = object_code(module)
        old = bin |> all_chunks() |> to_latin1_atom_chunk() |> build()
        assert {:ok, ours} = Beam.parse(old)
        assert {:ok, original} = Beam.parse(bin)
        assert ours.atom_encoding == :latin1
        assert original.atom_encoding == :utf8
        assert without_chunk_table(ours) == without_chunk_table(original)
        assert [{"Atom", _, _} | _] = ours.chunks
        assert Beam.validate(old) == :ok
        theirs = beam_lib_view(old)
        ours = our_view(ours)
        for key <- Map.keys(theirs), do: assert(ours[key] == theirs[key], "#{module} #{key}")
      end
    end

    test "decodes names above 127 as latin-1" do
      bin = tiny_module(:latin1_fixture, [:café, :"naïve×"])
      old = bin |> all_chunks() |> to_latin1_atom_chunk() |> build()
      {_, <<_::32, names::binary>>} = List.keyfind(all_chunks(old), ~c"Atom", 0)
      assert names =~ <<"caf", 0xE9>>
      assert {:ok, beam} = Beam.parse(old)
      assert :café in beam.atoms and :"naïve×" in beam.atoms
      assert our_view(beam) == beam_lib_view(old)
    end
  end

  describe "the compact atom chunk (negative count)" do
    test "parses the same as the one-byte-length format" do
      for module <- [:lists, :gen_server, Enum] do
        bin = object_code(module)
        chunks = all_chunks(bin)
        compact = chunks |> to_compact_atom_chunk(atom_names(chunks)) |> build()
        assert {:ok, ours} = Beam.parse(compact)
        assert {:ok, original} = Beam.parse(bin)
        assert without_chunk_table(ours) == without_chunk_table(original)
        assert Beam.validate(compact) == :ok
      end
    end

    test "carries UTF-8 atoms longer than 255 bytes" do
      placeholder = String.duplicate("p", 200)
      long = String.duplicate("é", 200)
      long_ascii = String.duplicate("x", 255)
      bin = tiny_module(:long_atoms, [String.to_atom(placeholder), :short])
      chunks = all_chunks(bin)

      names =
        Enum.map(atom_names(chunks), fn
          ^placeholder -> long
          other -> other
        end)

      assert long in names
      fixture = chunks |> to_compact_atom_chunk(names ++ [long_ascii]) |> build()
      assert {:ok, beam} = Beam.parse(fixture)
      assert String.to_atom(long) in beam.atoms
      assert List.last(beam.atoms) == String.to_atom(long_ascii)
      assert length(beam.atoms) == length(names) + 1
    end

    test "refuses an atom of 256 characters and a cut length" do
      bin = tiny_module(:long_atoms2, [:a])
      chunks = all_chunks(bin)
      names = atom_names(chunks)
      too_long = chunks |> to_compact_atom_chunk(names ++ [String.duplicate("é", 256)]) |> build()
      assert Beam.parse(too_long) == {:error, {:bad_atom, length(names) + 1}}

      # A two-byte length with its second byte missing: the chunk ends early.
      data = <<-1::signed-32, 0x08>>
      cut = chunks |> replace_atom_chunk(~c"AtU8", data) |> build()
      assert {:error, {:truncated, "AtU8"}} = Beam.parse(cut)
    end
  end

  # ---------------------------------------------------------------------------
  # Corruptions, each with its documented reason.

  defp gen_server_bin, do: object_code(:gen_server)

  # binary_to_term/1 ignores bytes after the term; the loader's literals and
  # our validator do not, so `:used` tells whether the whole binary is one term.
  defp invalid_etf?(bin) do
    {_term, used} = :erlang.binary_to_term(bin, [:used])
    used != byte_size(bin)
  rescue
    ArgumentError -> true
  end

  defp put_u32(bin, offset, value) do
    <<pre::binary-size(offset), _::32, post::binary>> = bin
    <<pre::binary, value::32, post::binary>>
  end

  defp chunk!(beam, id), do: List.keyfind(beam.chunks, id, 0)

  defp both(bin), do: {Beam.parse(bin) |> strip_ok(), Beam.validate(bin)}
  defp strip_ok({:ok, %Beam{}}), do: :ok
  defp strip_ok(error), do: error

  describe "truncation" do
    test "at every byte of a small module: header, form or the chunk it cuts" do
      bin = object_code(:erl_anno) |> all_chunks() |> Enum.take(8) |> build()
      layout = chunk_layout(all_chunks(bin))

      for cut <- 0..(byte_size(bin) - 1) do
        expected =
          cond do
            cut < 12 ->
              {:truncated, :header}

            # From a chunk's header up to its data: the form is cut between chunks.
            Enum.any?(layout, fn {_, off, _} -> cut >= off - 8 and cut < off end) ->
              {:truncated, :form}

            true ->
              {id, _, _} =
                Enum.find(layout, fn {_, off, size} -> cut >= off and cut < off + align4(size) end)

              {:truncated, id}
          end

        part = binary_part(bin, 0, cut)
        assert both(part) == {{:error, expected}, {:error, expected}}, "cut at #{cut}"
      end
    end

    test "at every chunk boundary and inside every chunk of real modules" do
      for module <- [:gen_server, Enum, :beam_lib] do
        bin = object_code(module)
        layout = chunk_layout(all_chunks(bin))

        for {id, off, size} <- layout do
          assert both(binary_part(bin, 0, off - 8)) ==
                   {{:error, {:truncated, :form}}, {:error, {:truncated, :form}}}

          if size > 0 do
            inside = binary_part(bin, 0, off + div(size, 2))
            assert both(inside) == {{:error, {:truncated, id}}, {:error, {:truncated, id}}}
          end
        end
      end
    end

    test "the form size claims more than the file holds" do
      bin = gen_server_bin()
      longer = put_u32(bin, 4, byte_size(bin) - 8 + 4)
      assert both(longer) == {{:error, {:truncated, :form}}, {:error, {:truncated, :form}}}
      longer = put_u32(bin, 4, byte_size(bin) - 8 + 400)
      assert both(longer) == {{:error, {:truncated, :form}}, {:error, {:truncated, :form}}}
    end
  end

  describe "wrong sizes" do
    test "a chunk size past the end of the file" do
      bin = gen_server_bin()
      {:ok, beam} = Beam.parse(bin)
      {id, off, _} = List.last(beam.chunks)
      bad = put_u32(bin, off - 4, 0x7FFF_FFF0)
      assert both(bad) == {{:error, {:truncated, id}}, {:error, {:truncated, id}}}
    end

    test "a last chunk shorter than declared leaves bytes after it" do
      bin = gen_server_bin()
      {:ok, beam} = Beam.parse(bin)
      {_id, off, size} = List.last(beam.chunks)
      bad = put_u32(bin, off - 4, align4(size) - 4)
      assert both(bad) == {{:error, {:trailing_bytes, 4}}, {:error, {:trailing_bytes, 4}}}
    end

    test "a form shorter than the file" do
      bin = gen_server_bin()
      bad = put_u32(bin, 4, byte_size(bin) - 8 - 12)
      assert both(bad) == {{:error, {:trailing_bytes, 12}}, {:error, {:trailing_bytes, 12}}}
    end

    test "a chunk size off by one exposes non-zero padding" do
      bin = gen_server_bin()
      {:ok, beam} = Beam.parse(bin)
      # A chunk whose size is a multiple of 4 and whose last byte is not zero.
      {id, off, size} =
        Enum.find(beam.chunks, fn {_, off, size} ->
          size > 0 and rem(size, 4) == 0 and :binary.at(bin, off + size - 1) != 0
        end)

      bad = put_u32(bin, off - 4, size - 1)
      assert both(bad) == {{:error, {:bad_padding, id}}, {:error, {:bad_padding, id}}}
    end

    test "table counts that do not match the chunk size" do
      bin = gen_server_bin()
      {:ok, beam} = Beam.parse(bin)

      for {id, n} <- [{"ImpT", length(beam.imports)}, {"ExpT", length(beam.exports)}] do
        {^id, off, _} = chunk!(beam, id)

        assert both(put_u32(bin, off, n + 1)) ==
                 {{:error, {:truncated, id}}, {:error, {:truncated, id}}}

        assert both(put_u32(bin, off, n - 1)) ==
                 {{:error, {:bad_chunk, id}}, {:error, {:bad_chunk, id}}}
      end

      {"LocT", off, _} = chunk!(beam, "LocT")

      assert both(put_u32(bin, off, 0xFFFF_FFFF)) ==
               {{:error, {:truncated, "LocT"}}, {:error, {:truncated, "LocT"}}}
    end

    test "an atom count larger than the table" do
      bin = gen_server_bin()
      {:ok, beam} = Beam.parse(bin)
      {"AtU8", off, _} = chunk!(beam, "AtU8")
      n = length(beam.atoms)
      assert {:error, {:truncated, "AtU8"}} = Beam.parse(put_u32(bin, off, n + 1))
      assert {:error, {:bad_chunk, "AtU8"}} = Beam.parse(put_u32(bin, off, n - 1))
      assert {:error, {:bad_chunk, "AtU8"}} = Beam.parse(put_u32(bin, off, 0))
    end
  end

  describe "atom indices out of range" do
    test "in imports, exports and locals" do
      bin = gen_server_bin()
      {:ok, {:gen_server, [atoms: atoms]}} = :beam_lib.chunks(bin, [:atoms])
      {:ok, beam} = Beam.parse(bin)
      n = length(atoms)

      cases = [
        # {chunk, byte offset of the word in the first entry, table}
        {"ImpT", 0, :imports},
        {"ImpT", 4, :imports},
        {"ExpT", 0, :exports},
        {"LocT", 0, :locals}
      ]

      for {id, word, table} <- cases, index <- [0, n + 1, 0xFFFF_FFFF] do
        {^id, off, _} = chunk!(beam, id)
        bad = put_u32(bin, off + 4 + word, index)
        reason = {:bad_atom_index, table, index}
        assert both(bad) == {{:error, reason}, {:error, reason}}
      end

      # The last valid index is accepted.
      {"ImpT", off, _} = chunk!(beam, "ImpT")
      assert {:ok, _} = Beam.parse(put_u32(bin, off + 4 + 4, n))
    end
  end

  describe "literal table" do
    # A module whose LitT is compressed.
    defp with_compressed_literals do
      bin = gen_server_bin()
      {:ok, beam} = Beam.parse(bin)
      {"LitT", off, size} = chunk!(beam, "LitT")
      <<usize::32, _::binary>> = binary_part(bin, off, size)
      assert usize > 0
      {bin, off, size}
    end

    test "a bad zlib stream" do
      {bin, off, size} = with_compressed_literals()
      # Break the stream's check value (its last byte) and its header byte.
      for at <- [off + size - 1, off + 4] do
        <<pre::binary-size(at), byte, post::binary>> = bin
        bad = <<pre::binary, bxor(byte, 0xFF), post::binary>>
        z = binary_part(bad, off + 4, size - 4)
        assert catch_error(:zlib.uncompress(z))
        assert {:error, {:zlib_error, "LitT"}} = Beam.validate(bad)
        assert {:error, {:zlib_error, "LitT"}} = Beam.parse(bad)
      end
    end

    test "a declared size that is not the inflated size" do
      {bin, off, _size} = with_compressed_literals()
      <<_::binary-size(off), usize::32, _::binary>> = bin

      for wrong <- [usize - 1, usize + 1, 1_000_000] do
        assert Beam.validate(put_u32(bin, off, wrong)) == {:error, {:zlib_error, "LitT"}}
      end

      # Over the cap on inflated bytes: refused before inflating anything.
      assert Beam.validate(put_u32(bin, off, 0xFFFF_FFFF)) ==
               {:error, {:too_large, "LitT", 0xFFFF_FFFF, 256 * 1024 * 1024}}
    end

    defp replace_literals(bin, fun, compress? \\ true) do
      chunks = all_chunks(bin)
      literal_table = literals_raw(chunks)
      new_table = fun.(literal_table)

      data =
        if compress?,
          do: <<byte_size(new_table)::32, :zlib.compress(new_table)::binary>>,
          else: <<0::32, new_table::binary>>

      chunks |> List.keyreplace(~c"LitT", 0, {~c"LitT", data}) |> build()
    end

    defp literals_raw(chunks) do
      {_, <<_usize::32, z::binary>>} = List.keyfind(chunks, ~c"LitT", 0)
      :zlib.uncompress(z)
    end

    defp map_literal(table, index, fun) do
      <<count::32, rest::binary>> = table

      {terms, <<>>} =
        Enum.map_reduce(1..count, rest, fn _, <<size::32, t::binary-size(size), rest::binary>> ->
          {t, rest}
        end)

      terms = List.update_at(terms, index, fun)
      for t <- terms, into: <<count::32>>, do: <<byte_size(t)::32, t::binary>>
    end

    test "a re-compressed and an uncompressed table parse like the original" do
      bin = gen_server_bin()
      {:ok, original} = Beam.parse(bin)

      for compress? <- [true, false] do
        rebuilt = replace_literals(bin, & &1, compress?)
        # OTP 25's loader refuses an uncompressed table, and so does validate.
        expected = if compress?, do: :ok, else: {:error, {:zlib_error, "LitT"}}
        assert Beam.validate(rebuilt) == expected
        assert {:ok, ours} = Beam.parse(rebuilt)
        assert %{ours | chunks: nil} == %{original | chunks: nil}
        assert ours.external_funs == literal_external_funs(rebuilt)
      end
    end

    test "an uncompressed table with no literals" do
      bin = gen_server_bin()
      empty = replace_literals(bin, fn _ -> <<0::32>> end, false)
      assert {:ok, %Beam{external_funs: [], has_literals: true}} = Beam.parse(empty)
      # The table frames correctly, but OTP 25's loader reads only compressed
      # tables, so validate refuses it.
      assert Beam.validate(empty) == {:error, {:zlib_error, "LitT"}}
    end

    test "a literal that is not valid external term format" do
      bin = gen_server_bin()
      {:ok, {_, [{_, <<_::32, z::binary>>}]}} = :beam_lib.chunks(bin, [~c"LitT"])
      <<count::32, _::binary>> = :zlib.uncompress(z)
      index = count - 1

      for corrupt <- [
            fn <<131, rest::binary>> -> <<130, rest::binary>> end,
            fn <<131, _tag, rest::binary>> -> <<131, 255, rest::binary>> end,
            fn t -> t <> <<0>> end,
            fn t -> binary_part(t, 0, byte_size(t) - 1) end
          ] do
        bad = replace_literals(bin, &map_literal(&1, index, corrupt))
        [bad_term] = bad |> all_chunks() |> literals_raw() |> map_literal_terms() |> Enum.take(-1)
        assert invalid_etf?(bad_term)
        assert Beam.validate(bad) == {:error, {:bad_literal, index}}
        assert Beam.parse(bad) == {:error, {:bad_literal, index}}
      end
    end

    test "a literal size running past the table" do
      bin = gen_server_bin()

      bad =
        replace_literals(bin, fn <<count::32, size::32, rest::binary>> ->
          <<count::32, size + 1_000_000::32, rest::binary>>
        end)

      assert Beam.validate(bad) == {:error, {:bad_literal, 0}}
      assert Beam.parse(bad) == {:error, {:bad_literal, 0}}
    end

    test "bytes after the last literal" do
      bad = replace_literals(gen_server_bin(), &(&1 <> <<0, 0, 0, 0>>))
      assert Beam.validate(bad) == {:error, {:bad_chunk, "LitT"}}
    end

    defp map_literal_terms(<<count::32, rest::binary>>) do
      {terms, <<>>} =
        Enum.map_reduce(1..count, rest, fn _, <<size::32, t::binary-size(size), rest::binary>> ->
          {t, rest}
        end)

      terms
    end
  end

  describe "term chunks and the code header" do
    test "a bad Attr or CInf term" do
      for id <- [~c"Attr", ~c"CInf"],
          data <- [<<131, 255>>, <<131, 106, 0>>, <<130, 106>>, <<>>] do
        assert invalid_etf?(data)
        bad = gen_server_bin() |> all_chunks() |> List.keyreplace(id, 0, {id, data}) |> build()
        reason = {:bad_term, List.to_string(id)}
        assert both(bad) == {{:error, reason}, {:error, reason}}
      end
    end

    test "a compressed Attr term is accepted" do
      chunks = all_chunks(gen_server_bin())
      {_, attr} = List.keyfind(chunks, ~c"Attr", 0)
      # Large enough that term_to_binary does compress it.
      term = :erlang.binary_to_term(attr) ++ [sandbox_test: List.duplicate(:repeated, 500)]
      compressed = :erlang.term_to_binary(term, compressed: 9)
      assert <<131, 80, _::binary>> = compressed
      fixture = chunks |> List.keyreplace(~c"Attr", 0, {~c"Attr", compressed}) |> build()
      assert Beam.validate(fixture) == :ok
      assert {:ok, beam} = Beam.parse(fixture)
      assert beam.attributes == term
    end

    defp with_code_header(fun) do
      chunks = all_chunks(gen_server_bin())
      {_, code} = List.keyfind(chunks, ~c"Code", 0)
      chunks |> List.keyreplace(~c"Code", 0, {~c"Code", fun.(code)}) |> build()
    end

    test "an unknown instruction set, an opcode above the system's, a short header" do
      {:ok, {_, [{~c"Code", code}]}} = :beam_lib.chunks(gen_server_bin(), [~c"Code"])
      <<_hdr::32, 0::32, opmax::32, _::binary>> = code
      assert opmax > 0

      bad =
        with_code_header(fn <<h::32, _::32, rest::binary>> -> <<h::32, 1::32, rest::binary>> end)

      assert Beam.validate(bad) == {:error, {:unsupported_instruction_set, 1}}

      bad =
        with_code_header(fn <<h::32, i::32, _::32, rest::binary>> ->
          <<h::32, i::32, 9999::32, rest::binary>>
        end)

      assert Beam.validate(bad) == {:error, {:unsupported_opcode, 9999}}

      bad = with_code_header(fn <<_::32, rest::binary>> -> <<8::32, rest::binary>> end)
      assert Beam.validate(bad) == {:error, {:bad_chunk, "Code"}}

      bad =
        with_code_header(fn code ->
          <<byte_size(code)::32, binary_part(code, 4, byte_size(code) - 4)::binary>>
        end)

      assert Beam.validate(bad) == {:error, {:bad_chunk, "Code"}}

      bad = with_code_header(fn code -> binary_part(code, 0, 12) end)
      assert Beam.validate(bad) == {:error, {:truncated, "Code"}}

      # parse/1 does not look at the code.
      assert {:ok, _} = Beam.parse(bad)
    end
  end

  describe "container" do
    test "trailing bytes after the form" do
      bin = gen_server_bin()

      for n <- [1, 4, 8, 100] do
        reason = {:trailing_bytes, n}
        assert both(bin <> :binary.copy(<<0>>, n)) == {{:error, reason}, {:error, reason}}
      end
    end

    test "a duplicate chunk" do
      chunks = all_chunks(gen_server_bin())

      for id <- [~c"StrT", ~c"Code", ~c"Meta"] do
        bad = build(chunks ++ [List.keyfind(chunks, id, 0)])
        reason = {:duplicate_chunk, List.to_string(id)}
        assert both(bad) == {{:error, reason}, {:error, reason}}
      end
    end

    test "a missing chunk" do
      chunks = all_chunks(gen_server_bin())

      for id <- ["Code", "StrT", "ImpT", "ExpT"] do
        bad = chunks |> List.keydelete(String.to_charlist(id), 0) |> build()
        assert {:ok, _} = Beam.parse(bad)
        assert Beam.validate(bad) == {:error, {:missing_chunk, id}}
      end

      bad = chunks |> List.keydelete(~c"AtU8", 0) |> build()
      assert both(bad) == {{:error, {:missing_chunk, "AtU8"}}, {:error, {:missing_chunk, "AtU8"}}}
    end

    test "optional chunks may be absent; unknown ones are listed" do
      chunks = all_chunks(gen_server_bin())
      # The code refers to literals and lambdas: LitT and FunT stay.
      keep = [~c"AtU8", ~c"Code", ~c"StrT", ~c"ImpT", ~c"ExpT", ~c"LitT", ~c"FunT"]
      minimal = chunks |> Enum.filter(fn {id, _} -> id in keep end)
      bin = build(minimal ++ [{~c"Zzz9", "odd"}])
      assert Beam.validate(bin) == :ok
      assert {:ok, beam} = Beam.parse(bin)
      assert {"Zzz9", _, 3} = List.last(beam.chunks)
      assert %Beam{locals: [], attributes: [], compile_info: [], has_debug_info: false} = beam

      # Without them, the code's literal and lambda operands point nowhere.
      for id <- [~c"LitT", ~c"FunT"] do
        bad = build(List.keydelete(minimal, id, 0))
        assert {:ok, _} = Beam.parse(bad)
        assert {:error, {:bad_code, offset}} = Beam.validate(bad)
        assert is_integer(offset)
      end
    end

    test "chunk ids are always 4 bytes, NUL bytes included" do
      id = [0, ?a, 0, 0]
      bin = build(all_chunks(gen_server_bin()) ++ [{id, "odd"}])
      assert {:ok, beam} = Beam.parse(bin)
      assert {<<0, ?a, 0, 0>>, _, 3} = List.last(beam.chunks)
      bad = binary_part(bin, 0, byte_size(bin) - 1) <> <<1>>
      reason = {:bad_padding, <<0, ?a, 0, 0>>}
      assert both(bad) == {{:error, reason}, {:error, reason}}
      cut = binary_part(bin, 0, byte_size(bin) - 2)
      reason = {:truncated, <<0, ?a, 0, 0>>}
      assert both(cut) == {{:error, reason}, {:error, reason}}
    end

    test "non-zero padding, not IFF, not BEAM" do
      bin = build(all_chunks(gen_server_bin()) ++ [{~c"Zzz9", "odd"}])
      bad = binary_part(bin, 0, byte_size(bin) - 1) <> <<1>>
      assert both(bad) == {{:error, {:bad_padding, "Zzz9"}}, {:error, {:bad_padding, "Zzz9"}}}

      <<_::32, rest::binary>> = bin
      assert both("RIFF" <> rest) == {{:error, :not_iff}, {:error, :not_iff}}
      <<head::binary-size(8), _::32, rest::binary>> = bin
      assert both(head <> "WAVE" <> rest) == {{:error, :not_beam}, {:error, :not_beam}}
    end
  end

  # ---------------------------------------------------------------------------
  # Random byte flips.

  defp documented_reason?(reason) do
    id? = &(is_binary(&1) and byte_size(&1) == 4)

    case reason do
      r when r in [:not_iff, :not_beam, :out_of_memory] ->
        true

      {:truncated, x} ->
        x in [:header, :form] or id?.(x)

      {:trailing_bytes, n} ->
        is_integer(n) and n > 0

      {tag, id} when tag in [:bad_padding, :duplicate_chunk, :missing_chunk, :bad_chunk] ->
        id?.(id)

      {:bad_atom, n} ->
        is_integer(n) and n > 0

      {:bad_atom_index, t, n} ->
        t in [:imports, :exports, :locals] and is_integer(n) and n >= 0

      {:zlib_error, "LitT"} ->
        true

      {:bad_literal, n} ->
        is_integer(n) and n >= 0

      {:bad_term, id} ->
        id in ["Attr", "CInf", "Dbgi", "Docs", "ExCk", "Meta"]

      {:too_large, id, total, cap} ->
        id?.(id) and is_integer(total) and is_integer(cap) and total > cap

      {:too_many_atoms, count, max} ->
        is_integer(count) and is_integer(max) and count > max

      {:unsupported_instruction_set, n} ->
        is_integer(n)

      {:unsupported_opcode, n} ->
        is_integer(n)

      {:bad_code, offset} ->
        is_integer(offset) and offset >= 0

      _ ->
        false
    end
  end

  # `count` flipped copies of `bin`: 1 to 4 bytes each xor-ed with a non-zero
  # byte, half of them inside `focus` ({offset, size}) when given.
  defp flips(bin, count, seed, focus \\ nil) do
    :rand.seed(:exsss, {seed, 17, 4711})

    for i <- 1..count do
      {lo, size} = if focus && rem(i, 2) == 0, do: focus, else: {0, byte_size(bin)}

      Enum.reduce(1..:rand.uniform(4), bin, fn _, acc ->
        at = lo + :rand.uniform(size) - 1
        <<pre::binary-size(at), byte, post::binary>> = acc
        <<pre::binary, bxor(byte, :rand.uniform(255)), post::binary>>
      end)
    end
  end

  defp check_flipped(flipped) do
    parsed = Beam.parse(flipped)
    validated = Beam.validate(flipped)

    case parsed do
      {:ok, %Beam{}} -> :ok
      {:error, reason} -> assert documented_reason?(reason), inspect(reason)
    end

    case validated do
      :ok -> assert {:ok, %Beam{}} = parsed
      {:error, reason} -> assert documented_reason?(reason), inspect(reason)
    end

    validated
  end

  describe "random byte flips" do
    test "never crash and give :ok or a documented reason" do
      for {module, seed} <- Enum.with_index([:gen_server, :lists, Enum, :erl_anno, String], 1) do
        bin = object_code(module)
        Enum.each(flips(bin, 300, seed), &check_flipped/1)
      end
    end

    @tag :slow
    @tag timeout: 600_000
    test "over many modules and flips" do
      files = Enum.take_every(corpus(), 7)

      files
      |> Enum.with_index()
      |> Task.async_stream(
        fn {file, seed} -> Enum.each(flips(File.read!(file), 200, seed), &check_flipped/1) end,
        timeout: :infinity
      )
      |> Stream.run()
    end

    @tag :slow
    @tag timeout: 300_000
    test "binaries that validate accepts load or are refused in a peer node" do
      # The loader logs every refusal; the peer keeps quiet about them.
      {:ok, peer, _node} =
        :peer.start_link(%{
          connection: :standard_io,
          args: [~c"-kernel", ~c"logger_level", ~c"none"]
        })

      # The peer is linked to the test process and may be going down with it
      # when on_exit runs: stopping it then exits with :shutdown, which is fine.
      on_exit(fn ->
        try do
          :peer.stop(peer)
        catch
          :exit, _ -> :ok
        end
      end)

      # Modules the peer has not loaded, outside its sticky kernel, stdlib and
      # compiler directories, and without an on_load function (loading must
      # not run code).
      modules =
        for module <- [Enum, String, Keyword, :xmerl_scan, :mnesia_lib, :cover, :eunit_lib],
            {:ok, beam} = Beam.parse(object_code(module)),
            not List.keymember?(beam.attributes, :on_load, 0),
            do: module

      assert length(modules) >= 5

      accepted =
        for {module, seed} <- Enum.with_index(modules, 100),
            bin = object_code(module),
            {:ok, beam} = Beam.parse(bin),
            {"Code", off, size} = List.keyfind(beam.chunks, "Code", 0),
            flipped <- flips(bin, 400, seed, {off, size}),
            check_flipped(flipped) == :ok do
          flipped
        end

      # Every accepted binary is loaded (the first 200 flips of each module
      # are the ones an earlier version of this test sampled 120 from).
      sample = accepted
      assert length(sample) >= 60

      results =
        for flipped <- sample do
          {:ok, %Beam{module: module}} = Beam.parse(flipped)
          result = :peer.call(peer, :code, :load_binary, [module, ~c"flipped.beam", flipped])
          # Unload again so the next sample starts from a clean slate.
          :peer.call(peer, :code, :purge, [module])
          :peer.call(peer, :code, :delete, [module])
          :peer.call(peer, :code, :purge, [module])
          result
        end

      for result <- results do
        assert match?({:module, _}, result) or match?({:error, _}, result), inspect(result)
      end

      assert Process.alive?(peer)
      assert :peer.call(peer, :erlang, :+, [1, 2]) == 3
      assert Enum.any?(results, &match?({:module, _}, &1))
    end
  end

  # ---------------------------------------------------------------------------
  # Argument types and checksums.

  describe "argument types" do
    test "wrong types raise ArgumentError" do
      for arg <- [:atom, 42, <<1::3>>, [<<"FOR1">>], {"FOR1"}, nil] do
        assert_raise ArgumentError, fn -> Beam.parse(arg) end
        assert_raise ArgumentError, fn -> Beam.validate(arg) end
      end

      for arg <- [
            :atom,
            42,
            <<1::3>>,
            [1 | 2],
            [256],
            [-1],
            [:a],
            {"x"},
            ["a", [<<1::7>>]]
          ] do
        assert_raise ArgumentError, fn -> Beam.checksum(arg) end
        assert_raise ArgumentError, fn -> Beam.checksum_hex(arg) end
      end
    end
  end

  describe "checksum" do
    test "matches the xxh128sum command on random data" do
      dir =
        Path.join(System.tmp_dir!(), "sandbox-beam-test-#{System.unique_integer([:positive])}")

      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)

      %{checksum: threshold} = :sandbox_nif.dirty_thresholds()

      sizes = [
        0,
        1,
        3,
        16,
        17,
        128,
        129,
        240,
        241,
        4096,
        65_543,
        threshold,
        threshold + 1,
        3 * 1024 * 1024 + 5
      ]

      for size <- sizes do
        data = :rand.bytes(size)
        path = Path.join(dir, "data-#{size}")
        File.write!(path, data)
        {out, 0} = System.cmd("xxh128sum", [path])
        [hex, _] = String.split(out, "  ", parts: 2)
        assert Beam.checksum_hex(data) == hex, "size #{size}"
        assert Beam.checksum(data) == Base.decode16!(hex, case: :lower)
      end
    end

    test "iodata gives the digest of the flattened binary" do
      %{checksum: threshold} = :sandbox_nif.dirty_thresholds()

      for size <- [0, 5, 1000, 70_000, threshold + 10] do
        data = :rand.bytes(size)
        iodata = random_iodata(data)
        assert IO.iodata_to_binary(iodata) == data
        assert Beam.checksum(iodata) == Beam.checksum(data)
        assert Beam.checksum_hex(iodata) == Beam.checksum_hex(data)
      end

      refute Beam.checksum("abc") == Beam.checksum("abd")
    end

    # A nested iolist of random pieces: binaries, bytes, lists, binary tails.
    defp random_iodata(<<>>), do: []

    defp random_iodata(data) do
      n = min(byte_size(data), :rand.uniform(64 * 1024))
      <<piece::binary-size(n), rest::binary>> = data

      piece =
        case :rand.uniform(3) do
          1 -> piece
          2 when n < 64 -> :binary.bin_to_list(piece)
          _ -> [piece]
        end

      case :rand.uniform(2) do
        1 -> [piece | random_iodata(rest)]
        2 -> [[piece], random_iodata(rest)]
      end
    end
  end

  describe "dirty path" do
    # A real module grown past a threshold with an extra, uninterpreted chunk.
    defp grown(bin, threshold) do
      build(all_chunks(bin) ++ [{~c"Zpad", :binary.copy(<<7>>, threshold + 1)}])
    end

    test "inputs above the thresholds give the same results as below" do
      %{parse: p, validate: v} = :sandbox_nif.dirty_thresholds()
      bin = gen_server_bin()
      {:ok, small} = Beam.parse(bin)

      for threshold <- [p, v] do
        big = grown(bin, threshold)
        assert byte_size(big) > threshold
        assert Beam.validate(big) == :ok
        assert {:ok, large} = Beam.parse(big)
        assert %{large | chunks: nil} == %{small | chunks: nil}
        assert Enum.drop(large.chunks, -1) == small.chunks

        # The same corruptions give the same reasons on both paths.
        {"ImpT", off, _} = chunk!(small, "ImpT")
        assert both(put_u32(big, off + 4, 0)) == both(put_u32(bin, off + 4, 0))
        assert both(big <> <<0>>) == both(bin <> <<0>>)
        {"Zpad", zoff, _} = List.last(large.chunks)

        assert both(binary_part(big, 0, zoff + 100)) ==
                 {{:error, {:truncated, "Zpad"}}, {:error, {:truncated, "Zpad"}}}
      end

      assert Beam.validate(:binary.copy(<<0>>, max(p, v) + 1)) == {:error, :not_iff}
    end

    # Below the size thresholds, but expensive: the NIF reschedules these as
    # dirty (see bench/beam_bench.exs for the scheduler times).
    test "small inputs with costly contents give the same results as beam_lib" do
      keep = [~c"AtU8", ~c"Code", ~c"StrT", ~c"ImpT", ~c"ExpT"]
      base = :erl_anno |> object_code() |> all_chunks() |> Enum.filter(&(elem(&1, 0) in keep))
      names = atom_names(base)

      # 10,000 extra atoms in about 40 KiB.
      extra = for i <- 1..10_000, do: Integer.to_string(i, 36)
      atom_heavy = base |> replace_atom_chunk(~c"AtU8", atom_chunk(names ++ extra)) |> build()
      assert byte_size(atom_heavy) < :sandbox_nif.dirty_thresholds().parse
      assert Beam.validate(atom_heavy) == :ok
      assert {:ok, beam} = Beam.parse(atom_heavy)
      {:ok, {:erl_anno, theirs}} = :beam_lib.chunks(atom_heavy, [:atoms, :imports, :exports])
      assert beam.atoms == theirs[:atoms] |> Enum.sort() |> Enum.map(&elem(&1, 1))
      assert Enum.sort(beam.imports) == theirs[:imports]
      assert Enum.sort(beam.exports) == theirs[:exports]
      assert length(beam.atoms) == length(names) + 10_000

      # A literal table of a few KiB that inflates to about 4 MiB.
      term = [(&:lists.reverse/1) | List.duplicate(1, 2_000_000)] ++ [&Enum.map/2]
      literal = :erlang.term_to_binary(term)
      table = <<1::32, byte_size(literal)::32, literal::binary>>
      litt = <<byte_size(table)::32, :zlib.compress(table)::binary>>
      literal_heavy = build(base ++ [{~c"LitT", litt}])
      assert byte_size(literal_heavy) < :sandbox_nif.dirty_thresholds().validate
      assert Beam.validate(literal_heavy) == :ok
      assert {:ok, beam} = Beam.parse(literal_heavy)
      assert beam.external_funs == [{Enum, :map, 2}, {:lists, :reverse, 1}]
      assert beam.external_funs == literal_external_funs(literal_heavy)
    end
  end
end
