defmodule Sandbox.Protocols do
  @moduledoc """
  Consolidated host protocols and sandbox types.

  A consolidated protocol (Mix consolidates them in `dev` and `prod`)
  dispatches only to the types it was consolidated with. When a sandbox
  brings an implementation of a consolidated host protocol for one of its
  own types (`String.Chars` for `Counter.Point`, `@derive Inspect`, ...),
  the protocol is consolidated again with the sandbox's (relocated) types
  added, and loaded; when the sandbox goes, or a reload drops the
  implementation, it is consolidated again without them.

  The new version keeps every type the protocol had, so host dispatch never
  misses an implementation; it is loaded after the sandbox's
  implementations (`sync/2` is called once the sandbox's change is in), and
  its old code is purged softly (a process still inside it is waited for,
  never killed). Changes of one protocol are serialised across sandboxes
  (a lock per protocol). A protocol whose BEAM cannot be consolidated again
  (no debug info) refuses the change:
  `{:consolidated_protocol, protocol, reason}`.
  """

  @purge_timeout 5_000

  @typedoc "The sandbox types added to each consolidated protocol."
  @type t :: %{module => [module]}

  @doc """
  The consolidated host protocols that `parsed` modules (the sandbox's whole
  set, original names) implement for the sandbox's own types, with the
  types' relocated names (`renames`).
  """
  @spec implementations([Sandbox.Beam.t()], %{module => module}) :: t
  def implementations(parsed, renames) do
    for %{attributes: attrs} <- parsed,
        impl = Keyword.get(List.wrap(attrs), :__impl__),
        is_list(impl),
        protocol = Keyword.get(impl, :protocol),
        type = Keyword.get(impl, :for),
        is_atom(protocol) and is_atom(type),
        not Map.has_key?(renames, protocol),
        Map.has_key?(renames, type),
        consolidated?(protocol),
        reduce: %{} do
      acc -> Map.update(acc, protocol, [renames[type]], &Enum.uniq([renames[type] | &1]))
    end
  end

  @doc "Whether `protocol` is a loaded, consolidated protocol."
  @spec consolidated?(module) :: boolean
  def consolidated?(protocol) do
    Code.ensure_loaded?(protocol) and function_exported?(protocol, :__protocol__, 1) and
      protocol.__protocol__(:consolidated?)
  end

  @doc """
  Brings the protocols from the types in `from` to those in `to` (both
  `t:t/0`): each protocol whose set differs is consolidated again and
  loaded. All or nothing: `:ok`, or `{:error, {:consolidated_protocol,
  protocol, reason}}` with every protocol as it was.
  """
  @spec sync(t, t) :: :ok | {:error, term}
  def sync(from, to) do
    changes =
      for protocol <- Enum.uniq(Map.keys(from) ++ Map.keys(to)),
          add = Map.get(to, protocol, []) -- Map.get(from, protocol, []),
          drop = Map.get(from, protocol, []) -- Map.get(to, protocol, []),
          add != [] or drop != [],
          do: {protocol, add, drop}

    Enum.reduce_while(changes, {:ok, []}, fn {protocol, add, drop}, {:ok, done} ->
      case change(protocol, add, drop) do
        :ok -> {:cont, {:ok, [{protocol, drop, add} | done]}}
        {:error, reason} -> {:halt, {:error, {:consolidated_protocol, protocol, reason}, done}}
      end
    end)
    |> case do
      {:ok, _} ->
        :ok

      {:error, reason, done} ->
        # Undo what was done, in reverse.
        for {protocol, add, drop} <- done, do: change(protocol, add, drop)
        {:error, reason}
    end
  end

  # One protocol: consolidated again with `add` and without `drop`, under
  # a lock of its own.
  defp change(protocol, add, drop) do
    :global.trans(
      {{__MODULE__, protocol}, self()},
      fn ->
        with {:consolidated, current} <- protocol.__protocol__(:impls),
             types = Enum.uniq((current -- drop) ++ add),
             {:ok, binary} <- Protocol.consolidate(protocol, types) do
          load(protocol, binary)
        else
          {:error, reason} -> {:error, reason}
          other -> {:error, {:not_consolidated, other}}
        end
      end,
      [node()],
      :infinity
    )
  end

  defp load(protocol, binary) do
    file =
      case :code.which(protocol) do
        path when is_list(path) -> path
        _ -> ~c"sandbox:#{protocol}"
      end

    with :ok <- soft_purge(protocol, System.monotonic_time(:millisecond) + @purge_timeout),
         {:ok, prepared} <- :code.prepare_loading([{protocol, file, binary}]),
         :ok <- :code.finish_loading(prepared) do
      :ok
    else
      {:error, reason} -> {:error, reason}
    end
  end

  # Processes inside the protocol's old code are waited for, not killed.
  defp soft_purge(module, deadline) do
    cond do
      :code.soft_purge(module) ->
        :ok

      System.monotonic_time(:millisecond) >= deadline ->
        {:error, :old_code_in_use}

      true ->
        receive do
        after
          5 -> soft_purge(module, deadline)
        end
    end
  end
end
