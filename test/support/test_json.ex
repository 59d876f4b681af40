defmodule Sandbox.TestJSON do
  @moduledoc false
  # A strict JSON decoder for the tests (OTP 25 has none and there is no hex):
  # objects become maps with string keys. {:ok, term} | :error.

  def decode(text) when is_binary(text) do
    case value(ws(text)) do
      {:ok, v, rest} -> if ws(rest) == "", do: {:ok, v}, else: :error
      :error -> :error
    end
  end

  defp ws(<<c, rest::binary>>) when c in [?\s, ?\t, ?\n, ?\r], do: ws(rest)
  defp ws(s), do: s

  defp value("{" <> rest), do: object(ws(rest), %{})
  defp value("[" <> rest), do: array(ws(rest), [])
  defp value("\"" <> rest), do: string(rest, [])
  defp value("true" <> rest), do: {:ok, true, rest}
  defp value("false" <> rest), do: {:ok, false, rest}
  defp value("null" <> rest), do: {:ok, nil, rest}
  defp value(<<c, _::binary>> = s) when c in ?0..?9 or c == ?-, do: number(s)
  defp value(_), do: :error

  defp object("}" <> rest, acc), do: {:ok, acc, rest}

  defp object("\"" <> rest, acc) do
    with {:ok, k, rest} <- string(rest, []),
         ":" <> rest <- ws(rest),
         {:ok, v, rest} <- value(ws(rest)) do
      case ws(rest) do
        "," <> rest -> object_next(ws(rest), Map.put(acc, k, v))
        "}" <> rest -> {:ok, Map.put(acc, k, v), rest}
        _ -> :error
      end
    else
      _ -> :error
    end
  end

  defp object(_, _), do: :error

  defp object_next("\"" <> _ = s, acc), do: object(s, acc)
  defp object_next(_, _), do: :error

  defp array("]" <> rest, []), do: {:ok, [], rest}

  defp array(s, acc) do
    case value(s) do
      {:ok, v, rest} ->
        case ws(rest) do
          "," <> rest -> array(ws(rest), [v | acc])
          "]" <> rest -> {:ok, Enum.reverse([v | acc]), rest}
          _ -> :error
        end

      :error ->
        :error
    end
  end

  defp string("\"" <> rest, acc) do
    s = acc |> Enum.reverse() |> IO.iodata_to_binary()
    if String.valid?(s), do: {:ok, s, rest}, else: :error
  end

  defp string("\\u" <> <<h::binary-size(4), rest::binary>>, acc) do
    case Integer.parse(h, 16) do
      {cp, ""} when cp in 0xD800..0xDFFF -> string(rest, ["\uFFFD" | acc])
      {cp, ""} -> string(rest, [<<cp::utf8>> | acc])
      _ -> :error
    end
  end

  defp string(<<?\\, c, rest::binary>>, acc) do
    case c do
      ?" -> string(rest, ["\"" | acc])
      ?\\ -> string(rest, ["\\" | acc])
      ?/ -> string(rest, ["/" | acc])
      ?b -> string(rest, ["\b" | acc])
      ?f -> string(rest, ["\f" | acc])
      ?n -> string(rest, ["\n" | acc])
      ?r -> string(rest, ["\r" | acc])
      ?t -> string(rest, ["\t" | acc])
      _ -> :error
    end
  end

  defp string(<<c, _::binary>>, _) when c < 0x20, do: :error
  defp string(<<c, rest::binary>>, acc), do: string(rest, [c | acc])
  defp string("", _), do: :error

  defp number(s) do
    case Regex.run(~r/^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/, s) do
      [num | _] ->
        rest = binary_part(s, byte_size(num), byte_size(s) - byte_size(num))

        v =
          if String.contains?(num, [".", "e", "E"]),
            do: elem(Float.parse(num), 0),
            else: String.to_integer(num)

        {:ok, v, rest}

      nil ->
        :error
    end
  end
end
