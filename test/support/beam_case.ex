defmodule Sandbox.Test.BeamHelpers do
  @moduledoc false
  # Helpers for the toolkit's tests: compiling fixtures without leaving the
  # originals loaded, relocating sets of modules and reading chunks back.

  @doc "Compiles `source`, unloads the result, returns `[{module, beam}]`."
  def compile_unloaded(source) do
    mods = Code.compile_string(source)
    for {m, _} <- mods, do: unload(m)
    mods
  end

  def unload(module) do
    :code.purge(module)
    :code.delete(module)
    :code.purge(module)
  end

  @doc "Relocates every module of `mods` into sandbox `id` and loads the copies."
  def relocate_and_load(mods, id, redirects \\ %{}, opts \\ []) do
    parsed = for {_, beam} <- mods, do: elem(Sandbox.Beam.parse(beam), 1)
    {:ok, renames} = Sandbox.Beam.rename_map(id, parsed)

    for {m, beam} <- mods do
      {:ok, new} = Sandbox.Beam.relocate(beam, renames, redirects, opts)
      :ok = Sandbox.Beam.validate(new)
      {:module, _} = :code.load_binary(renames[m], ~c"relocated", new)
    end

    renames
  end

  @doc "The decoded literals of a BEAM's LitT chunk, in order."
  def literals(beam) do
    case :beam_lib.chunks(beam, [~c"LitT"]) do
      {:ok, {_, [{_, <<_size::32, z::binary>>}]}} ->
        <<count::32, rest::binary>> = :zlib.uncompress(z)
        decode_literals(rest, count, [])

      {:error, :beam_lib, {:missing_chunk, _, _}} ->
        []
    end
  end

  defp decode_literals(<<>>, 0, acc), do: Enum.reverse(acc)

  defp decode_literals(<<size::32, term::binary-size(size), rest::binary>>, n, acc),
    do: decode_literals(rest, n - 1, [:erlang.binary_to_term(term) | acc])

  @doc "Every chunk of a BEAM as `%{id => data}`."
  def chunks(beam) do
    {:ok, _, chunks} = :beam_lib.all_chunks(beam)
    Map.new(chunks, fn {id, data} -> {List.to_string(id), data} end)
  end

  @doc "Decodes a term chunk (compressed or not)."
  def term_chunk(beam, id), do: :erlang.binary_to_term(chunks(beam)[id])
end
