defmodule Sandbox.ResourceMonitor.Sample do
  @moduledoc """
  The measuring half of `Sandbox.ResourceMonitor`: the sweep of the process
  table and the per-sandbox figures. Pure functions over the VM's state;
  the monitor process calls them and keeps what they return.

  ## The sweep

  `sweep/1` walks `:erlang.processes/0` once and asks each process for its
  group leader only (`process_info(pid, :group_leader)`, which the caller
  reads directly, without a signal to the target); processes whose group
  leader is one of the indexed group leaders are grouped by sandbox. Its
  cost is one cheap `process_info/2` per process of the VM, whatever the
  number of sandboxes.

  ## Per sandbox

  `measure/4` takes a sandbox's members and its previous figures:

    * one `process_info(pid, :reductions)` per member (cheap); a member
      whose reductions did not change since the previous sample has not run,
      so its previous memory figures are reused;
    * the others get `process_info(pid, [:memory, :binary])` (this one is
      served by the target process itself, about 1–2 µs, and costs it a
      reduction: the reductions are read again after it, so that a
      measurement does not make an idle process look busy);
    * memory = the members' `:memory` (heap, stack, message queue, process
      structure) + every off-heap binary they reference, counted once per
      sandbox by its id in the `:binary` info + the ETS tables they own
      (`:ets.info(t, :memory)`, read at every sample, since other processes
      can write to them).
  """

  @word :erlang.system_info(:wordsize)

  @typedoc "The figures of one sandbox's members, kept between samples."
  @type figures :: %{
          pids: [pid],
          reds: [non_neg_integer],
          infos: [{non_neg_integer, [{term, non_neg_integer}]}],
          proc_memory: non_neg_integer,
          bin_memory: non_neg_integer
        }

  @doc "Figures with no members."
  @spec empty() :: figures
  def empty, do: %{pids: [], reds: [], infos: [], proc_memory: 0, bin_memory: 0}

  @doc """
  One sweep of the process table. `index` maps the sandboxes' group leader
  pids to their ids; a group leader started with one of them as its
  upstream (`Sandbox.GroupLeader`'s children) counts as that sandbox's too
  (looked up once per sweep for each group leader the index does not know).
  Returns `{%{id => [pid]}, processes_swept}`; the member lists are in
  process-table order, so two sweeps of an unchanged sandbox give equal
  lists.
  """
  @spec sweep(%{pid => term}) :: {%{term => [pid]}, non_neg_integer}
  def sweep(index) when map_size(index) == 0, do: {%{}, 0}
  def sweep(index), do: sweep(:erlang.processes(), index, %{}, %{}, 0)

  defp sweep([pid | rest] = all, index, acc, others, n) do
    case :erlang.process_info(pid, :group_leader) do
      {:group_leader, gl} ->
        case index do
          %{^gl => id} ->
            acc =
              case acc do
                %{^id => list} -> %{acc | id => [pid | list]}
                _ -> Map.put(acc, id, [pid])
              end

            sweep(rest, index, acc, others, n + 1)

          _ when is_map_key(others, gl) ->
            sweep(rest, index, acc, others, n + 1)

          _ ->
            case child_of(gl, index) do
              nil -> sweep(rest, index, acc, Map.put(others, gl, true), n + 1)
              id -> sweep(all, Map.put(index, gl, id), acc, others, n)
            end
        end

      _ ->
        sweep(rest, index, acc, others, n + 1)
    end
  end

  defp sweep([], _index, acc, _others, n), do: {acc, n}

  defp child_of(gl, index) do
    case :ets.lookup(Sandbox.GroupLeader, gl) do
      [{^gl, _id, upstream}] -> Map.get(index, upstream)
      _ -> nil
    end
  end

  @doc """
  Measures a sandbox's members `pids` against its previous figures.
  `refresh?` re-reads every member's memory (a member that received
  messages without running changed its memory without its reductions).
  Returns `{figures, reductions_delta, changed?}`: `reductions_delta` is the
  reductions the members spent since the previous figures (a new member
  counts its whole reductions), `changed?` whether any member or figure
  changed. Members that died meanwhile are left out.
  """
  @spec measure([pid], figures, boolean) :: {figures, non_neg_integer, boolean}
  def measure(pids, prev, refresh?) do
    {pids, reds} = reductions(pids, [], [])

    if not refresh? and pids == prev.pids and reds == prev.reds do
      {prev, 0, false}
    else
      old = Map.new(:lists.zip(prev.pids, :lists.zip(prev.reds, prev.infos)))
      {pids, reds, infos, delta} = infos(pids, reds, old, refresh?, [], [], [], 0)
      {proc, bins} = totals(infos)
      figures = %{pids: pids, reds: reds, infos: infos, proc_memory: proc, bin_memory: bins}
      changed? = pids != prev.pids or proc != prev.proc_memory or bins != prev.bin_memory
      {figures, delta, changed? or delta > 0}
    end
  end

  @doc """
  Whether none of `pids` ran since their reductions were `reds` (and none
  died): one cheap `process_info/2` each, no allocation.
  """
  @spec unchanged?([pid], [non_neg_integer]) :: boolean
  def unchanged?([pid | pids], [r | reds]) do
    case :erlang.process_info(pid, :reductions) do
      {:reductions, ^r} -> unchanged?(pids, reds)
      _ -> false
    end
  end

  def unchanged?([], []), do: true

  defp reductions([pid | rest], pids, reds) do
    case :erlang.process_info(pid, :reductions) do
      {:reductions, r} -> reductions(rest, [pid | pids], [r | reds])
      :undefined -> reductions(rest, pids, reds)
    end
  end

  defp reductions([], pids, reds), do: {:lists.reverse(pids), :lists.reverse(reds)}

  defp infos([pid | pids], [r | reds], old, refresh?, ps, rs, is, delta) do
    case old do
      %{^pid => {^r, info}} when not refresh? ->
        infos(pids, reds, old, refresh?, [pid | ps], [r | rs], [info | is], delta)

      _ ->
        spent =
          case old do
            %{^pid => {r0, _}} when r0 <= r -> r - r0
            _ -> r
          end

        case :erlang.process_info(pid, [:memory, :binary]) do
          [{:memory, mem}, {:binary, bins}] ->
            info = {mem, for({id, size, _refc} <- bins, do: {id, size})}
            # Serving the request cost the process a reduction: the next
            # comparison starts after it.
            r = after_measure(pid, r)
            infos(pids, reds, old, refresh?, [pid | ps], [r | rs], [info | is], delta + spent)

          :undefined ->
            infos(pids, reds, old, refresh?, ps, rs, is, delta)
        end
    end
  end

  defp infos([], [], _old, _refresh?, ps, rs, is, delta),
    do: {:lists.reverse(ps), :lists.reverse(rs), :lists.reverse(is), delta}

  defp after_measure(pid, r) do
    case :erlang.process_info(pid, :reductions) do
      {:reductions, r} -> r
      :undefined -> r
    end
  end

  # Process memory, and each referenced binary once.
  defp totals(infos) do
    {proc, seen} =
      Enum.reduce(infos, {0, %{}}, fn {mem, bins}, {proc, seen} ->
        {proc + mem, Enum.reduce(bins, seen, fn {id, size}, seen -> Map.put(seen, id, size) end)}
      end)

    {proc, seen |> Map.values() |> Enum.sum()}
  end

  @doc """
  The ETS tables of the VM by owner: `%{owner_pid => [table]}`, from
  `owners` (`%{table => owner}`, the previous answer's source) brought up
  to date: tables that appeared get their owner looked up; with `refresh?`
  every owner is looked up again (a table can be given away).
  Returns `{by_owner, owners}`.
  """
  @spec ets_owners(%{term => pid}, boolean) :: {%{pid => [term]}, %{term => pid}}
  def ets_owners(owners, refresh?) do
    owners =
      Enum.reduce(:ets.all(), %{}, fn t, acc ->
        case owners do
          %{^t => owner} when not refresh? ->
            Map.put(acc, t, owner)

          _ ->
            case :ets.info(t, :owner) do
              owner when is_pid(owner) -> Map.put(acc, t, owner)
              _ -> acc
            end
        end
      end)

    by_owner =
      Enum.reduce(owners, %{}, fn {t, owner}, acc ->
        Map.update(acc, owner, [t], &[t | &1])
      end)

    {by_owner, owners}
  end

  @doc "Bytes of the ETS tables that `pids` own (`by_owner` from `ets_owners/2`)."
  @spec ets_memory([pid], %{pid => [term]}) :: non_neg_integer
  def ets_memory(_pids, by_owner) when map_size(by_owner) == 0, do: 0

  def ets_memory(pids, by_owner) do
    Enum.reduce(pids, 0, fn pid, acc ->
      case by_owner do
        %{^pid => tables} ->
          Enum.reduce(tables, acc, fn t, acc ->
            case :ets.info(t, :memory) do
              words when is_integer(words) -> acc + words * @word
              _ -> acc
            end
          end)

        _ ->
          acc
      end
    end)
  end

  @doc """
  The busy time of the normal schedulers between two
  `:erlang.statistics(:scheduler_wall_time)` readings, in schedulers (1.0 =
  one scheduler busy all the time).
  """
  @spec busy([{pos_integer, integer, integer}] | :undefined, [tuple] | :undefined) :: float
  def busy(prev, now) when is_list(prev) and is_list(now) do
    normal = :erlang.system_info(:schedulers)
    old = Map.new(prev, fn {id, a, t} -> {id, {a, t}} end)

    Enum.reduce(now, 0.0, fn
      {id, a, t}, acc when id <= normal ->
        case old do
          %{^id => {a0, t0}} when t > t0 -> acc + (a - a0) / (t - t0)
          _ -> acc
        end

      _, acc ->
        acc
    end)
  end

  def busy(_prev, _now), do: 0.0
end
