# relocate/4 against a reference relocation written here in Elixir that does
# the same work with OTP's own tools: :beam_lib.all_chunks/1, the atom chunk
# rewritten, LitT inflated and every literal decoded, walked and re-encoded,
# Attr, CInf, ExCk, Meta (and Dbgi, Docs for :keep) decoded, walked and
# re-encoded (compressed where the original was), :beam_lib.build_module/1.
#
# Renames are realistic: every module of the same application, relocated
# into sandbox "bench". Median per module over the installed corpus.
defmodule RelocateBench.Reference do
  @moduledoc false

  def relocate(beam, renames, strip?) do
    {:ok, _, chunks} = :beam_lib.all_chunks(beam)

    chunks =
      Enum.flat_map(chunks, fn
        {~c"AtU8", data} ->
          [{~c"AtU8", atoms(data, renames)}]

        {~c"LitT", data} ->
          [{~c"LitT", literals(data, renames)}]

        {id, _} when strip? and id in [~c"Dbgi", ~c"Docs"] ->
          []

        {id, data} when id in [~c"Attr", ~c"CInf", ~c"ExCk", ~c"Meta", ~c"Dbgi", ~c"Docs"] ->
          [{id, term(data, renames)}]

        other ->
          [other]
      end)

    {:ok, out} = :beam_lib.build_module(chunks)
    out
  end

  defp atoms(<<count::32, rest::binary>>, renames) do
    names = for <<len, name::binary-size(len) <- rest>>, do: rename_name(name, renames)
    [<<count::32>> | Enum.map(names, &<<byte_size(&1), &1::binary>>)] |> IO.iodata_to_binary()
  end

  defp rename_name(name, renames) do
    case renames do
      %{^name => new} -> new
      _ -> name
    end
  end

  defp literals(<<_size::32, z::binary>>, renames) do
    <<count::32, rest::binary>> = :zlib.uncompress(z)
    table = [<<count::32>> | for(lit <- split(rest), do: sized(term(lit, renames)))]
    table = IO.iodata_to_binary(table)
    <<byte_size(table)::32, :zlib.compress(table)::binary>>
  end

  defp split(<<>>), do: []
  defp split(<<size::32, lit::binary-size(size), rest::binary>>), do: [lit | split(rest)]
  defp sized(bin), do: <<byte_size(bin)::32, bin::binary>>

  defp term(data, renames) do
    opts = if match?(<<131, 80, _::binary>>, data), do: [:compressed], else: []
    data |> :erlang.binary_to_term() |> walk(renames) |> :erlang.term_to_binary(opts)
  end

  defp walk(a, renames) when is_atom(a), do: Map.get(renames, a, a)

  defp walk(t, renames) when is_tuple(t),
    do: t |> Tuple.to_list() |> walk_list(renames) |> List.to_tuple()

  defp walk(l, renames) when is_list(l), do: walk_list(l, renames)

  defp walk(m, renames) when is_map(m),
    do: :maps.from_list(for {k, v} <- :maps.to_list(m), do: {walk(k, renames), walk(v, renames)})

  defp walk(f, renames) when is_function(f) do
    case Function.info(f, :type) do
      {:type, :external} ->
        {:module, m} = Function.info(f, :module)
        {:name, n} = Function.info(f, :name)
        {:arity, a} = Function.info(f, :arity)
        Function.capture(walk(m, renames), n, a)

      _ ->
        f
    end
  end

  defp walk(other, _renames), do: other

  defp walk_list([], _renames), do: []
  defp walk_list([h | t], renames), do: [walk(h, renames) | walk_list(t, renames)]
  defp walk_list(tail, renames), do: walk(tail, renames)
end

alias Sandbox.Bench

by_app =
  (Path.wildcard(Path.join(:code.root_dir(), "lib/*/ebin/*.beam")) ++
     Path.wildcard(Path.join(:code.lib_dir(:elixir), "../*/ebin/*.beam")))
  |> Enum.group_by(&Path.dirname/1)

work =
  for {_dir, files} <- by_app do
    beams = Enum.map(files, &File.read!/1)
    parsed = for b <- beams, do: elem(Sandbox.Beam.parse(b), 1)
    {:ok, renames} = Sandbox.Beam.rename_map("bench", parsed)
    ref_renames = Map.new(:maps.to_list(renames), fn {k, v} -> {k, v} end)

    bin_renames =
      Map.new(:maps.to_list(renames), fn {k, v} -> {Atom.to_string(k), Atom.to_string(v)} end)

    for b <- beams, do: {b, renames, ref_renames, bin_renames}
  end
  |> Enum.concat()

time = fn fun ->
  t0 = System.monotonic_time()
  fun.()
  System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
end

for {label, strip?, opts} <- [{"strip", true, [debug_info: :strip]}, {"keep", false, []}] do
  {ours, base} =
    work
    |> Enum.map(fn {beam, renames, ref_renames, bin_renames} ->
      o =
        for _ <- 1..3,
            do: time.(fn -> {:ok, _} = Sandbox.Beam.relocate(beam, renames, %{}, opts) end)

      r =
        for _ <- 1..3,
            do:
              time.(fn ->
                RelocateBench.Reference.relocate(
                  beam,
                  Map.merge(ref_renames, bin_renames),
                  strip?
                )
              end)

      {Bench.median(o), Bench.median(r)}
    end)
    |> Enum.unzip()

  Bench.compare("relocate_#{label}_corpus_median", Bench.median(ours), Bench.median(base))
end

# keep_atoms: the cost of keeping each module's own name as data (its code
# walked and rewritten when it uses the name as data) against the same
# relocation without it, as a sandbox relocates (debug info stripped),
# measured module by module in turn.
{kept, plain} =
  work
  |> Enum.map(fn {beam, renames, _, _} ->
    {:ok, %{module: module}} = Sandbox.Beam.parse(beam)
    keep = [debug_info: :strip, keep_atoms: [module]]
    strip = [debug_info: :strip]

    {o, b} =
      for _ <- 1..3 do
        {time.(fn -> {:ok, _} = Sandbox.Beam.relocate(beam, renames, %{}, keep) end),
         time.(fn -> {:ok, _} = Sandbox.Beam.relocate(beam, renames, %{}, strip) end)}
      end
      |> Enum.unzip()

    {Bench.median(o), Bench.median(b)}
  end)
  |> Enum.unzip()

Bench.compare("relocate_keep_atoms_corpus_median", Bench.median(kept), Bench.median(plain))
