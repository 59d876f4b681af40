defmodule Sandbox.ExportTable do
  @moduledoc """
  Admission against the VM's export table.

  Every function a loaded module exports or calls, and every function named
  by `:erlang.make_fun/3` before its module is loaded, takes an entry of
  the VM's export table. Entries are never freed, and when the table is
  full (524,288 entries in OTP 25) the VM stops ("no more index entries in
  export_list"). A sandbox must not be able to do that to its host, so:

    * every change a sandbox loads (`Sandbox.StatePreservation.prepare/2`)
      is admitted here first, counting each module's exports and imports
      as new entries, and refused with `{:error, {:system_limit,
      :export_table}}` when they would leave less than `reserve/0` entries
      free;
    * every fun a sandbox makes of a function that is not exported yet
      (`:erlang.make_fun/3`, `Function.capture/3`, through the guard) is
      charged here, once per function, and raises `SystemLimitError` past
      the same point, or past #{10_000} such functions for one sandbox
      id (so that one sandbox cannot take the room of the others; the
      count stays with the id, since the entries stay too).

  The table's use is read from `:erlang.system_info(:info)`, which stops
  every scheduler while it prints (well under a millisecond), so it is
  read rarely: once, then again only when the estimate — the last reading,
  plus the entries of every load admitted since, plus every fun charged —
  comes within #{65_536} entries of the reserve, or when the reading is a
  minute old. The estimate only overcounts (a load counts all its exports
  and imports, present or not), except for modules the host loads itself
  in between, which the margin covers. The reading shows the table of the
  active code: entries made by `make_fun/3` since the last code load are
  not in it yet, so charges are added to every estimate for the rest of
  the VM's life.
  """

  @table __MODULE__
  @reserve 16_384
  # The table is read again when the estimate comes within this many
  # entries of the reserve, or when the last reading is older than this.
  @margin 65_536
  @max_age_ms 60_000
  @max_funs_per_sandbox 10_000

  @doc false
  def create_table do
    :ets.new(@table, [:set, :public, :named_table, write_concurrency: true])

    :ets.insert(@table, [
      {:charges, 0},
      {:since, 0},
      {:reading, 0, :infinity, -@max_age_ms - 1}
    ])
  end

  @doc "The entries kept free for the host: a load or fun that would use them is refused."
  @spec reserve() :: pos_integer
  def reserve, do: @reserve

  @doc """
  The export table now: `%{entries: n, limit: n, charged: n}`, where
  `charged` counts the funs charged so far (see the module documentation).
  """
  @spec usage() :: %{entries: non_neg_integer, limit: pos_integer, charged: non_neg_integer}
  def usage do
    {entries, limit} = read()
    %{entries: entries, limit: limit, charged: charges()}
  end

  @doc """
  Admits a load that may add `new_entries` entries: `:ok`, or
  `{:error, {:system_limit, :export_table}}` when fewer than `reserve/0`
  entries would be left.
  """
  @spec admit(non_neg_integer) :: :ok | {:error, {:system_limit, :export_table}}
  def admit(new_entries) when is_integer(new_entries) and new_entries >= 0 do
    with :ok <- check(new_entries) do
      :ets.update_counter(@table, :since, new_entries)
      :ok
    end
  end

  @doc """
  The new entries loading the modules parsed as `parsed`
  (`Sandbox.Beam.t()`) may take: their exports, imports and external funs
  in literals, counted as if none were in the table yet.
  """
  @spec estimate([Sandbox.Beam.t()]) :: non_neg_integer
  def estimate(parsed),
    do:
      Enum.reduce(
        parsed,
        0,
        &(&2 + length(&1.exports) + length(&1.imports) + length(&1.external_funs))
      )

  @doc """
  Charges one fun of `{m, f, a}` that sandbox `id` is about to make:
  `:ok` when the function is exported already or was charged before (no
  new entry), or when the table and the sandbox's share of it have room;
  else `{:error, {:system_limit, :export_table}}`.
  """
  @spec charge_fun(atom, module, atom, arity) :: :ok | {:error, {:system_limit, :export_table}}
  def charge_fun(id, m, f, a) do
    cond do
      :erlang.function_exported(m, f, a) -> :ok
      :ets.member(@table, {:fun, m, f, a}) -> :ok
      true -> charge_new_fun(id, {m, f, a})
    end
  end

  defp charge_new_fun(id, {m, f, a}) do
    n = :ets.update_counter(@table, {:sandbox, id}, 1, {{:sandbox, id}, 0})

    with true <- n <= @max_funs_per_sandbox || full(),
         :ok <- charge() do
      :ets.insert(@table, {{:fun, m, f, a}})
      :ok
    end
  end

  defp charge do
    with :ok <- check(1) do
      :ets.update_counter(@table, :charges, 1)
      :ok
    end
  end

  # Whether `n` more entries leave the reserve free: from the estimate when
  # it is far from the limit, else from a fresh reading.
  defp check(n) do
    [{:reading, entries, limit, at}] = :ets.lookup(@table, :reading)
    estimate = entries + counter(:since) + charges() + n

    if limit != :infinity and estimate + @reserve + @margin <= limit and
         now() - at <= @max_age_ms do
      :ok
    else
      {entries, limit} = read()
      if entries + charges() + n + @reserve <= limit, do: :ok, else: full()
    end
  end

  defp full, do: {:error, {:system_limit, :export_table}}

  defp counter(key) do
    case :ets.lookup(@table, key) do
      [{^key, n}] -> n
      [] -> 0
    end
  end

  defp charges, do: counter(:charges)

  # The active table's entries and limit, remembered (and the loads
  # admitted before it counted in it).
  defp read do
    info = :erlang.system_info(:info)
    {at, _} = :binary.match(info, "=index_table:export_list\n")
    section = :binary.part(info, at, min(200, byte_size(info) - at))
    entries = field(section, "entries: ")
    limit = field(section, "limit: ")
    :ets.insert(@table, [{:reading, entries, limit, now()}, {:since, 0}])
    {entries, limit}
  end

  defp field(section, label) do
    [_, rest] = :binary.split(section, label)
    {n, _} = Integer.parse(rest)
    n
  end

  defp now, do: System.monotonic_time(:millisecond)
end
