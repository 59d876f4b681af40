defmodule Sandbox.Tools.JSON do
  @moduledoc """
  A small JSON encoder for the mix tasks' `--format json` output (the
  project has no hex dependencies, and OTP 25 has no JSON module).

  Maps become objects (keys: strings, atoms or numbers, written as
  strings), lists and tuples arrays, binaries strings (UTF-8; a binary that
  is not is written as its `inspect/1`), `nil` `null`, booleans themselves,
  other atoms strings, numbers numbers. Anything else (pids, references,
  funs) is written as its `inspect/1` string.

      iex> Sandbox.Tools.JSON.encode!(%{"a" => [1, 2.5, nil, true, :b, "c\\n"]})
      ~S({"a":[1,2.5,null,true,"b","c\\n"]})
  """

  @doc "Encodes `term` as a JSON text (a string)."
  @spec encode!(term) :: String.t()
  def encode!(term), do: term |> encode() |> IO.iodata_to_binary()

  defp encode(nil), do: "null"
  defp encode(true), do: "true"
  defp encode(false), do: "false"
  defp encode(atom) when is_atom(atom), do: string(Atom.to_string(atom))
  defp encode(int) when is_integer(int), do: Integer.to_string(int)
  defp encode(float) when is_float(float), do: :erlang.float_to_binary(float, [:short])
  defp encode(bin) when is_binary(bin), do: string(bin)

  defp encode(map) when is_map(map) do
    pairs =
      map
      |> Enum.map(fn {k, v} -> {key(k), v} end)
      |> Enum.sort_by(&elem(&1, 0))
      |> Enum.map(fn {k, v} -> [string(k), ?:, encode(v)] end)

    [?{, Enum.intersperse(pairs, ?,), ?}]
  end

  defp encode(list) when is_list(list),
    do: [?[, Enum.intersperse(Enum.map(list, &encode/1), ?,), ?]]

  defp encode(tuple) when is_tuple(tuple), do: encode(Tuple.to_list(tuple))
  defp encode(other), do: string(inspect(other))

  defp key(k) when is_binary(k), do: k
  defp key(k) when is_atom(k), do: Atom.to_string(k)
  defp key(k) when is_number(k), do: to_string(k)
  defp key(k), do: inspect(k)

  defp string(s) do
    s = if String.valid?(s), do: s, else: inspect(s)
    [?", escape(s, []), ?"]
  end

  defp escape(<<>>, acc), do: Enum.reverse(acc)
  defp escape(<<?", rest::binary>>, acc), do: escape(rest, ["\\\"" | acc])
  defp escape(<<?\\, rest::binary>>, acc), do: escape(rest, ["\\\\" | acc])
  defp escape(<<?\n, rest::binary>>, acc), do: escape(rest, ["\\n" | acc])
  defp escape(<<?\r, rest::binary>>, acc), do: escape(rest, ["\\r" | acc])
  defp escape(<<?\t, rest::binary>>, acc), do: escape(rest, ["\\t" | acc])

  defp escape(<<c, rest::binary>>, acc) when c < 0x20,
    do: escape(rest, [:io_lib.format("\\u~4.16.0B", [c]) | acc])

  # U+2028 and U+2029 are valid JSON but break JavaScript readers.
  defp escape(<<0x2028::utf8, rest::binary>>, acc), do: escape(rest, ["\\u2028" | acc])
  defp escape(<<0x2029::utf8, rest::binary>>, acc), do: escape(rest, ["\\u2029" | acc])
  defp escape(<<c::utf8, rest::binary>>, acc), do: escape(rest, [<<c::utf8>> | acc])
end
