defmodule Sandbox.OriginalNames do
  @moduledoc """
  Maps a sandbox's relocated module names inside a term back to the names
  its source uses (`original_names: true` of `Sandbox.call/5` and
  `Sandbox.run/3`): `%:"Elixir.Sandbox@a.Jason.DecodeError"{}` becomes
  `%Jason.DecodeError{}`, in structs, exceptions, stack traces, maps,
  lists, tuples and improper lists alike. Other atoms, binaries, pids,
  references and funs are left as they are.

  Plain Elixir, so a large term never holds a scheduler: the walk is
  preempted like any other code. Each distinct atom is mapped once per
  call.

      iex> Sandbox.OriginalNames.map("a", {:"Elixir.Sandbox@a.Demo.Point", :"Elixir.Demo", 1})
      {Demo.Point, Demo, 1}
  """

  @doc "The term with sandbox `id`'s relocated module names replaced by their originals."
  @spec map(String.t(), term) :: term
  def map(id, term) when is_binary(id) do
    patterns = ["Elixir.Sandbox@#{id}.", "sandbox@#{id}@", "Sandbox@#{id}."]
    {mapped, _cache} = walk(term, patterns, %{})
    mapped
  end

  defp walk(atom, patterns, cache) when is_atom(atom) do
    case cache do
      %{^atom => mapped} ->
        {mapped, cache}

      _ ->
        mapped = original(atom, patterns)
        {mapped, Map.put(cache, atom, mapped)}
    end
  end

  defp walk([head | tail], patterns, cache) do
    {head, cache} = walk(head, patterns, cache)
    {tail, cache} = walk(tail, patterns, cache)
    {[head | tail], cache}
  end

  defp walk(tuple, patterns, cache) when is_tuple(tuple) do
    {list, cache} = walk(Tuple.to_list(tuple), patterns, cache)
    {List.to_tuple(list), cache}
  end

  defp walk(%{} = map, patterns, cache) do
    {pairs, cache} =
      Enum.map_reduce(Map.to_list(map), cache, fn {k, v}, cache ->
        {k, cache} = walk(k, patterns, cache)
        {v, cache} = walk(v, patterns, cache)
        {{k, v}, cache}
      end)

    {Map.new(pairs), cache}
  end

  defp walk(other, _patterns, cache), do: {other, cache}

  # "Elixir.Sandbox@a.X" -> "Elixir.X"; "sandbox@a@m" -> "m"; a protocol
  # implementation "Elixir.P.Sandbox@a.T" -> "Elixir.P.T".
  defp original(atom, [elixir, erlang, impl]) do
    name = Atom.to_string(atom)

    cond do
      String.starts_with?(name, elixir) ->
        to_atom(
          "Elixir." <> binary_part(name, byte_size(elixir), byte_size(name) - byte_size(elixir))
        )

      String.starts_with?(name, erlang) ->
        to_atom(binary_part(name, byte_size(erlang), byte_size(name) - byte_size(erlang)))

      String.contains?(name, "." <> impl) ->
        to_atom(String.replace(name, impl, ""))

      true ->
        atom
    end
  end

  # The originals of a sandbox's names: bounded by its modules.
  defp to_atom(name), do: String.to_atom(name)
end
