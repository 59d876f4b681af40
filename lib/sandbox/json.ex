defmodule Sandbox.JSON do
  @moduledoc """
  A small JSON encoder for the library's machine-readable output (the mix
  tasks' `--format json`); OTP 25 has none and there is no hex.

  Maps become objects (keys as strings), lists and tuples arrays, atoms
  strings (`true`, `false` and `nil` are JSON's own), binaries strings
  (escaped; a binary that is not UTF-8 is written as its `inspect/1`
  text), numbers numbers. Anything else (pids, references, funs) is written
  as its `inspect/1` text.

      iex> Sandbox.JSON.encode!(%{"a" => [1, 2.5, :b, nil, "é\\n"]})
      ~s({"a":[1,2.5,"b",null,"é\\\\n"]})
  """

  @doc "The JSON text of `term`."
  @spec encode!(term) :: String.t()
  def encode!(term), do: term |> value() |> IO.iodata_to_binary()

  defp value(nil), do: "null"
  defp value(true), do: "true"
  defp value(false), do: "false"
  defp value(atom) when is_atom(atom), do: string(Atom.to_string(atom))
  defp value(n) when is_integer(n), do: Integer.to_string(n)
  defp value(f) when is_float(f), do: :erlang.float_to_binary(f, [:short])

  defp value(bin) when is_binary(bin),
    do: if(String.valid?(bin), do: string(bin), else: string(inspect(bin)))

  defp value(list) when is_list(list), do: ["[", Enum.map_intersperse(list, ",", &value/1), "]"]
  defp value(tuple) when is_tuple(tuple), do: value(Tuple.to_list(tuple))

  defp value(%_{} = struct), do: struct |> Map.from_struct() |> value()

  defp value(map) when is_map(map) do
    pairs = Enum.map_intersperse(map, ",", fn {k, v} -> [key(k), ":", value(v)] end)
    ["{", pairs, "}"]
  end

  defp value(other), do: string(inspect(other))

  defp key(k) when is_binary(k), do: value(k)
  defp key(k) when is_atom(k), do: string(Atom.to_string(k))
  defp key(k), do: string(inspect(k))

  defp string(s), do: [?", escape(s, []), ?"]

  defp escape(<<>>, acc), do: Enum.reverse(acc)
  defp escape(<<?", rest::binary>>, acc), do: escape(rest, ["\\\"" | acc])
  defp escape(<<?\\, rest::binary>>, acc), do: escape(rest, ["\\\\" | acc])
  defp escape(<<?\n, rest::binary>>, acc), do: escape(rest, ["\\n" | acc])
  defp escape(<<?\r, rest::binary>>, acc), do: escape(rest, ["\\r" | acc])
  defp escape(<<?\t, rest::binary>>, acc), do: escape(rest, ["\\t" | acc])

  defp escape(<<c, rest::binary>>, acc) when c < 0x20,
    do: escape(rest, [:io_lib.format("\\u~4.16.0b", [c]) | acc])

  defp escape(<<c::utf8, rest::binary>>, acc), do: escape(rest, [<<c::utf8>> | acc])
end
