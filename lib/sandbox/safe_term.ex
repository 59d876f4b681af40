defmodule Sandbox.SafeTerm do
  @moduledoc """
  Decodes external-term-format binaries written by untrusted code (a
  compile worker runs the project's macros, `mix.exs` and config, so
  whatever it writes is hostile input) without letting them exhaust the
  host's atom table.

  `:erlang.binary_to_term/2` with `:safe` refuses every atom that does not
  exist yet, which a compile result cannot avoid (the project's module and
  application names are new atoms). Instead the binary is walked first,
  without decoding anything: its atoms are collected, those that do not
  exist yet are counted against a budget, and only when the whole binary is
  well formed and within the budget are the new atoms created and the term
  decoded (with `:safe`, which then only refuses what the walk refuses too).
  A refused binary creates no atom at all.

  Refused: funs (external or local: a fun from untrusted input is code to
  call later), the distribution-only atom cache references, the
  compressed form (a decompression bomb needs no budget to hurt), trailing
  bytes, truncation, atoms that are not valid UTF-8/Latin-1 or longer than
  255 characters.

      iex> bin = :erlang.term_to_binary({:ok, [1, "two", :three]})
      iex> Sandbox.SafeTerm.decode(bin)
      {:ok, {:ok, [1, "two", :three]}}

      iex> Sandbox.SafeTerm.decode(:erlang.term_to_binary(&Enum.map/2))
      {:error, {:unsafe_term, :fun}}
  """

  @default_max_new_atoms 50_000

  @typedoc """
  Why a binary is refused:

    * `:not_etf` — no version byte (131)
    * `:truncated`, `:trailing_bytes`
    * `{:unsafe_term, :fun | :compressed | :atom_cache_ref | {:tag, byte}}`
    * `{:bad_atom, name}` — invalid encoding or over 255 characters
    * `{:too_many_atoms, max}` — more than `max` atoms that do not exist yet
  """
  @type reason ::
          :not_etf
          | :truncated
          | :trailing_bytes
          | {:unsafe_term, :fun | :compressed | :atom_cache_ref | {:tag, byte}}
          | {:bad_atom, binary}
          | {:too_many_atoms, non_neg_integer}

  @doc """
  Decodes `binary` (see the module documentation).

  ## Options

    * `:max_new_atoms` — how many atoms that do not exist yet the term may
      bring (default #{@default_max_new_atoms}, or the application
      environment's `:max_new_atoms`); `:infinity` for no budget
  """
  @spec decode(binary, keyword) :: {:ok, term} | {:error, reason}
  def decode(binary, opts \\ [])

  def decode(binary, opts) when is_binary(binary) and is_list(opts) do
    max =
      Keyword.get_lazy(opts, :max_new_atoms, fn ->
        Application.get_env(:sandbox, :max_new_atoms, @default_max_new_atoms)
      end)

    unless max == :infinity or (is_integer(max) and max >= 0),
      do: raise(ArgumentError, "expected :max_new_atoms as a count, got: #{inspect(max)}")

    with {:ok, new_atoms} <- new_atoms(binary, max) do
      Enum.each(new_atoms, &:erlang.binary_to_atom(&1, :utf8))

      try do
        {:ok, :erlang.binary_to_term(binary, [:safe])}
      rescue
        ArgumentError -> {:error, {:unsafe_term, :rejected}}
      end
    end
  end

  def decode(binary, opts),
    do: raise(ArgumentError, "expected a binary and options, got: #{inspect({binary, opts})}")

  @doc """
  The atoms in `binary` that do not exist yet (UTF-8 names), without
  creating any: `{:ok, names}` or `{:error, reason}` as `decode/2`.

  ## Options

    * `:external_funs` — when `true`, an external fun (`fun M:F/A`, as in
      a module's literals) is read as its module, function and arity
      instead of being refused (default `false`)
  """
  @spec new_atoms(binary, non_neg_integer | :infinity, keyword) ::
          {:ok, [binary]} | {:error, reason}
  def new_atoms(binary, max, opts \\ [])

  def new_atoms(<<131, rest::binary>>, max, opts) do
    acc = %{seen: MapSet.new(), new: [], count: 0, max: max}
    acc = Map.put(acc, :external_funs, Keyword.get(opts, :external_funs, false))

    case walk(rest, 1, acc) do
      {:ok, acc} -> {:ok, acc.new}
      {:error, _} = error -> error
    end
  end

  def new_atoms(binary, _max, _opts) when is_binary(binary), do: {:error, :not_etf}

  # `n` counts the terms still to read; every term is a prefix code, so the
  # walk is one linear pass with no recursion however deep the nesting.
  defp walk(<<>>, 0, acc), do: {:ok, acc}
  defp walk(_rest, 0, _acc), do: {:error, :trailing_bytes}
  defp walk(<<>>, _n, _acc), do: {:error, :truncated}

  # EXPORT_EXT: a module atom, a function atom and a small integer follow.
  defp walk(<<113, rest::binary>>, n, %{external_funs: true} = acc), do: walk(rest, n + 2, acc)

  defp walk(<<tag, rest::binary>>, n, acc) do
    case step(tag, rest) do
      {:skip, size, children} ->
        case rest do
          <<_::binary-size(size), rest::binary>> -> walk(rest, n - 1 + children, acc)
          _ -> {:error, :truncated}
        end

      {:atom, encoding, len_bytes, children} ->
        with <<len::size(len_bytes)-unit(8), name::binary-size(len), rest::binary>> <- rest,
             {:ok, acc} <- atom(name, encoding, acc) do
          walk(rest, n - 1 + children, acc)
        else
          {:error, _} = error -> error
          _ -> {:error, :truncated}
        end

      {:header, size, children, after_atom} ->
        # A pid, port or reference: a node atom, then fixed data.
        case rest do
          <<head::binary-size(size), rest::binary>> ->
            walk_node(rest, n - 1 + children, acc, after_atom.(head))

          _ ->
            {:error, :truncated}
        end

      {:error, _} = error ->
        error
    end
  end

  # The node atom of a pid, port or reference, then `tail` bytes.
  defp walk_node(<<tag, rest::binary>>, n, acc, tail) when tag in [100, 115, 118, 119] do
    {len_bytes, encoding} = atom_tag(tag)

    with <<len::size(len_bytes)-unit(8), name::binary-size(len), _::binary-size(tail),
           rest::binary>> <- rest,
         {:ok, acc} <- atom(name, encoding, acc) do
      walk(rest, n, acc)
    else
      {:error, _} = error -> error
      _ -> {:error, :truncated}
    end
  end

  defp walk_node(<<_tag, _::binary>>, _n, _acc, _tail), do: {:error, {:unsafe_term, :node}}
  defp walk_node(<<>>, _n, _acc, _tail), do: {:error, :truncated}

  defp atom_tag(100), do: {2, :latin1}
  defp atom_tag(115), do: {1, :latin1}
  defp atom_tag(118), do: {2, :utf8}
  defp atom_tag(119), do: {1, :utf8}

  # {:skip, bytes, children} | {:atom, encoding, length bytes, 0} |
  # {:header, bytes, 0, fun(header) -> bytes after the node atom}
  defp step(97, _), do: {:skip, 1, 0}
  defp step(98, _), do: {:skip, 4, 0}
  defp step(70, _), do: {:skip, 8, 0}
  defp step(99, _), do: {:skip, 31, 0}
  defp step(106, _), do: {:skip, 0, 0}
  defp step(104, <<arity, _::binary>>), do: {:skip, 1, arity}
  defp step(105, <<arity::32, _::binary>>), do: {:skip, 4, arity}
  defp step(108, <<len::32, _::binary>>), do: {:skip, 4, len + 1}
  defp step(116, <<arity::32, _::binary>>), do: {:skip, 4, 2 * arity}
  defp step(107, <<len::16, _::binary>>), do: {:skip, 2 + len, 0}
  defp step(109, <<len::32, _::binary>>), do: {:skip, 4 + len, 0}
  defp step(77, <<len::32, _::binary>>), do: {:skip, 5 + len, 0}
  defp step(110, <<n, _::binary>>), do: {:skip, 2 + n, 0}
  defp step(111, <<n::32, _::binary>>), do: {:skip, 5 + n, 0}
  defp step(tag, _) when tag in [100, 118], do: {:atom, elem(atom_tag(tag), 1), 2, 0}
  defp step(tag, _) when tag in [115, 119], do: {:atom, elem(atom_tag(tag), 1), 1, 0}
  defp step(88, _), do: {:header, 0, 0, fn _ -> 12 end}
  defp step(103, _), do: {:header, 0, 0, fn _ -> 9 end}
  defp step(89, _), do: {:header, 0, 0, fn _ -> 8 end}
  defp step(102, _), do: {:header, 0, 0, fn _ -> 5 end}
  defp step(120, _), do: {:header, 0, 0, fn _ -> 12 end}
  defp step(101, _), do: {:header, 0, 0, fn _ -> 5 end}
  defp step(114, <<_::16, _::binary>>), do: {:header, 2, 0, fn <<w::16>> -> 1 + 4 * w end}
  defp step(90, <<_::16, _::binary>>), do: {:header, 2, 0, fn <<w::16>> -> 4 + 4 * w end}
  defp step(tag, _) when tag in [112, 113, 117], do: {:error, {:unsafe_term, :fun}}
  defp step(80, _), do: {:error, {:unsafe_term, :compressed}}
  defp step(82, _), do: {:error, {:unsafe_term, :atom_cache_ref}}

  defp step(tag, _) when tag in [104, 105, 108, 116, 107, 109, 77, 110, 111, 114, 90],
    do: {:error, :truncated}

  defp step(tag, _), do: {:error, {:unsafe_term, {:tag, tag}}}

  defp atom(name, encoding, acc) do
    with {:ok, utf8} <- utf8_name(name, encoding) do
      cond do
        MapSet.member?(acc.seen, utf8) ->
          {:ok, acc}

        existing?(utf8) ->
          {:ok, %{acc | seen: MapSet.put(acc.seen, utf8)}}

        acc.max != :infinity and acc.count >= acc.max ->
          {:error, {:too_many_atoms, acc.max}}

        true ->
          {:ok,
           %{acc | seen: MapSet.put(acc.seen, utf8), new: [utf8 | acc.new], count: acc.count + 1}}
      end
    end
  end

  defp utf8_name(name, :utf8) do
    if String.valid?(name) and String.length(name) <= 255,
      do: {:ok, name},
      else: {:error, {:bad_atom, name}}
  end

  defp utf8_name(name, :latin1) do
    if byte_size(name) <= 255,
      do: {:ok, :unicode.characters_to_binary(name, :latin1)},
      else: {:error, {:bad_atom, name}}
  end

  defp existing?(name) do
    _ = :erlang.binary_to_existing_atom(name, :utf8)
    true
  rescue
    ArgumentError -> false
  end
end
