defmodule Sandbox.ModuleVersionManager do
  @moduledoc """
  Module versions of a sandbox: history, relocation, two-version safe
  loading, rollback and reload order.

  A sandbox's version store lives in its `Sandbox.Instance` process, which
  serialises every change; the functions here run in that process. Every
  module of the sandbox is registered as version 1 when the sandbox is
  created; each reload that changes a module adds the next version (numbers
  are never reused, even after a rollback).

  ## A change (reload or rollback)

    1. The BEAMs (original names, as the user's compile produced them) are
       parsed, validated and relocated into the sandbox (same renames and
       redirects as at create), and prepared for loading
       (`:code.prepare_loading/1`).
    2. Soft purge: the old code of each module is purged with
       `:code.soft_purge/1`. A process still running it fails the change
       with `{:old_code_in_use, module, pids}`; nothing is killed.
    3. The sandbox's `:sys` processes whose callback module is one of the
       changed modules, or one that (transitively) calls them, are
       suspended (see `Sandbox.StatePreservation`), callers first (the
       reverse of the reload order), so that a server busy calling another
       affected server finishes that call before it is suspended; the
       states of those to migrate are captured.
    4. The modules are loaded together (`:code.finish_loading/1`: all or
       none), and the processes whose callback module changed are migrated
       in dependency order.
    5. Everything is resumed.

  Any failure after step 3 restores the previous binaries and the captured
  states, then resumes. A process whose migration timed out is still inside
  the new code: it is killed once the previous code is back, so its
  supervisor restarts it under that code, and the reason says `:killed`.
  """

  alias Sandbox.{Beam, GroupLeader, StatePreservation, Telemetry}

  @typedoc "One version of a module (original names)."
  @type module_version :: %{
          sandbox_id: String.t(),
          module: module,
          version: pos_integer,
          beam_data: binary,
          checksum: String.t(),
          loaded_at: DateTime.t(),
          dependencies: [module],
          rolled_back_at: DateTime.t() | nil
        }

  @typedoc "A sandbox's version store."
  @type t :: %{
          id: String.t(),
          max_versions: pos_integer,
          modules: %{
            module => %{
              current: pos_integer,
              next: pos_integer,
              history: [module_version],
              binary: binary
            }
          }
        }

  @typedoc """
  What the instance hands over for a change: the sandbox's id, renames,
  redirects, group leader, config and version store.
  """
  @type context :: %{
          id: String.t(),
          renames: %{module => module},
          redirects: %{module => module},
          group_leader: pid | nil,
          config: map,
          versions: t
        }

  @reload_defaults [state_migration: :config, suspend_timeout: 5_000, rollback_window: 0]

  ## Store

  @doc """
  A new store: version 1 of every module of `originals` (`[{module,
  beam}]`, original names), `parsed` their `Sandbox.Beam.parse/1` results
  and `relocated` `%{relocated_name => binary}` as loaded.
  """
  @spec new(
          String.t(),
          [{module, binary}],
          [Beam.t()],
          %{module => module},
          %{module => binary},
          pos_integer
        ) :: t
  def new(id, originals, parsed, renames, relocated, max_versions) do
    own = MapSet.new(originals, &elem(&1, 0))
    parsed = Map.new(parsed, &{&1.module, &1})

    modules =
      Map.new(originals, fn {module, beam} ->
        entry = entry(id, module, 1, beam, dependencies(parsed[module], own))

        {module,
         %{
           current: 1,
           next: 2,
           history: [entry],
           binary: Map.fetch!(relocated, Map.fetch!(renames, module))
         }}
      end)

    %{id: id, max_versions: max_versions, modules: modules}
  end

  defp entry(id, module, version, beam, deps) do
    %{
      sandbox_id: id,
      module: module,
      version: version,
      beam_data: beam,
      checksum: Beam.checksum_hex(beam),
      loaded_at: DateTime.utc_now(),
      dependencies: deps,
      rolled_back_at: nil
    }
  end

  defp dependencies(nil, _own), do: []

  defp dependencies(parsed, own) do
    (Enum.map(parsed.imports, &elem(&1, 0)) ++ Enum.map(parsed.external_funs, &elem(&1, 0)))
    |> Enum.filter(&(&1 != parsed.module and MapSet.member?(own, &1)))
    |> Enum.uniq()
    |> Enum.sort()
  end

  @doc "The current version of `module`: `{:ok, version}` or `{:error, :not_found}`."
  @spec current_version(t, module) :: {:ok, pos_integer} | {:error, :not_found}
  def current_version(store, module) do
    case store.modules do
      %{^module => %{current: v}} -> {:ok, v}
      _ -> {:error, :not_found}
    end
  end

  @doc "The kept versions of `module`, oldest first (`[]` for an unknown module)."
  @spec versions(t, module) :: [module_version]
  def versions(store, module) do
    case store.modules do
      %{^module => %{history: history}} -> history
      _ -> []
    end
  end

  @doc "The current BEAM (as given) of every module: `[{module, beam}]`."
  @spec current_beams(t) :: [{module, binary}]
  def current_beams(store) do
    for {module, %{current: v, history: history}} <- store.modules do
      {module, Enum.find(history, &(&1.version == v)).beam_data}
    end
  end

  @doc """
  The dependency graph of the current versions: `%{module => [module]}`,
  original names, each module's calls into other modules of the sandbox.
  """
  @spec dependency_graph(t) :: %{module => [module]}
  def dependency_graph(store) do
    Map.new(store.modules, fn {module, %{current: v, history: history}} ->
      {module, Enum.find(history, &(&1.version == v)).dependencies}
    end)
  end

  @doc """
  `modules` in reload order, dependencies first, the members of a cycle
  adjacent: `{:ok, modules}` or `{:error, {:unknown_module, module}}`.
  """
  @spec reload_order(t, [module]) :: {:ok, [module]} | {:error, term}
  def reload_order(store, modules) when is_list(modules) do
    case Enum.find(modules, &(not Map.has_key?(store.modules, &1))) do
      nil ->
        wanted = MapSet.new(modules)
        {:ok, groups} = Beam.reload_order(dependency_graph(store))
        {:ok, groups |> Enum.concat() |> Enum.filter(&MapSet.member?(wanted, &1))}

      unknown ->
        {:error, {:unknown_module, unknown}}
    end
  end

  ## Reload

  @doc """
  Validates hot reload options (see `Sandbox.hot_reload_sandbox/3`).
  """
  @spec reload_options(keyword) :: {:ok, keyword} | {:error, term}
  def reload_options(opts) do
    with true <- Keyword.keyword?(opts) || {:error, {:invalid_option, opts}},
         nil <- Enum.find(Keyword.keys(opts), &(not Keyword.has_key?(@reload_defaults, &1))) do
      opts = Keyword.merge(@reload_defaults, opts)

      Enum.find_value(opts, {:ok, opts}, fn
        {:state_migration, f} when f == :config or is_nil(f) -> nil
        {:state_migration, f} when is_function(f, 1) or is_function(f, 3) -> nil
        {:suspend_timeout, t} when is_integer(t) and t > 0 -> nil
        {:rollback_window, t} when is_integer(t) and t >= 0 -> nil
        {key, value} -> {:error, {:invalid_option, {key, value}}}
      end)
    else
      {:error, _} = error -> error
      key -> {:error, {:unknown_option, key}}
    end
  end

  @doc """
  Reloads `beams` (one BEAM or a list, original names) as one change.

  Returns `{:ok, :hot_reloaded, store, change}` (`change` describes what
  was done, for an automatic rollback), `{:ok, :unchanged, store}` or
  `{:error, reason, store}`. Emits `[:sandbox, :reload, :reloaded]` or
  `[:sandbox, :reload, :failed]`.
  """
  @spec reload(context, binary | [binary], keyword) ::
          {:ok, :hot_reloaded, t, map} | {:ok, :unchanged, t} | {:error, term, t}
  def reload(ctx, beams, opts) do
    t0 = System.monotonic_time()
    store = ctx.versions

    with {:ok, opts} <- reload_options(opts),
         {:ok, given} <- parse_given(List.wrap(beams), store) do
      case Enum.reject(given, &unchanged?(store, &1)) do
        [] ->
          {:ok, :unchanged, store}

        changed ->
          do_reload(ctx, changed, opts, t0)
      end
    else
      {:error, reason} ->
        emit_failed(ctx.id, reason, t0)
        {:error, reason, store}
    end
  end

  defp do_reload(ctx, changed, opts, t0) do
    store = ctx.versions
    own = MapSet.new(Map.keys(store.modules))

    with {:ok, targets} <- relocate(ctx, changed, own),
         targets = in_dependency_order(targets),
         migration = migration(opts, ctx.config),
         {:ok, info} <- apply_change(ctx, targets, migration, opts[:suspend_timeout]) do
      store = record_up(store, targets)
      versions = Map.new(targets, &{&1.module, &1.to})

      Telemetry.emit(
        :reload,
        :reloaded,
        %{duration: System.monotonic_time() - t0, processes: info.migrated},
        %{sandbox_id: ctx.id, modules: Enum.map(targets, & &1.module), versions: versions}
      )

      change = %{
        targets: targets,
        window: opts[:rollback_window],
        timeout: opts[:suspend_timeout]
      }

      {:ok, :hot_reloaded, store, change}
    else
      {:error, reason} ->
        emit_failed(ctx.id, reason, t0)
        {:error, reason, store}
    end
  end

  defp emit_failed(id, reason, t0) do
    Telemetry.emit(:reload, :failed, %{duration: System.monotonic_time() - t0}, %{
      sandbox_id: id,
      reason: reason
    })
  end

  defp migration(opts, config) do
    case opts[:state_migration] do
      :config -> config.state_migration
      other -> other
    end
  end

  defp parse_given([], _store), do: {:error, :no_beams}

  defp parse_given(beams, store) do
    Enum.reduce_while(beams, {:ok, []}, fn beam, {:ok, acc} ->
      with true <- is_binary(beam) || {:error, {:invalid_beam, nil, :not_a_binary}},
           {:ok, parsed} <- parse(beam),
           :ok <- validate(parsed.module, beam),
           true <-
             Map.has_key?(store.modules, parsed.module) ||
               {:error, {:unknown_module, parsed.module}},
           :ok <- unique(acc, parsed.module) do
        {:cont, {:ok, [%{module: parsed.module, beam: beam, parsed: parsed} | acc]}}
      else
        {:error, _} = error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, list} -> {:ok, Enum.reverse(list)}
      error -> error
    end
  end

  defp unique(acc, module) do
    if Enum.any?(acc, &(&1.module == module)),
      do: {:error, {:duplicate_module, module}},
      else: :ok
  end

  defp parse(beam) do
    case Beam.parse(beam) do
      {:ok, parsed} -> {:ok, parsed}
      {:error, reason} -> {:error, {:invalid_beam, nil, reason}}
    end
  end

  defp validate(module, beam) do
    case Beam.validate(beam) do
      :ok -> :ok
      {:error, reason} -> {:error, {:invalid_beam, module, reason}}
    end
  end

  defp unchanged?(store, %{module: module, beam: beam}) do
    %{current: v, history: history} = store.modules[module]
    current = Enum.find(history, &(&1.version == v))
    current.checksum == Beam.checksum_hex(beam) and current.beam_data == beam
  end

  defp relocate(ctx, changed, own) do
    store = ctx.versions

    Enum.reduce_while(changed, {:ok, []}, fn item, {:ok, acc} ->
      case Beam.relocate(item.beam, ctx.renames, ctx.redirects, debug_info: :strip) do
        {:ok, bin} ->
          slot = store.modules[item.module]

          target = %{
            module: item.module,
            name: Map.fetch!(ctx.renames, item.module),
            bin: bin,
            old_bin: slot.binary,
            beam: item.beam,
            deps: dependencies(item.parsed, own),
            from: slot.current,
            to: slot.next
          }

          {:cont, {:ok, [target | acc]}}

        {:error, reason} ->
          {:halt, {:error, {:relocation_failed, item.module, reason}}}
      end
    end)
    |> case do
      {:ok, list} -> {:ok, Enum.reverse(list)}
      error -> error
    end
  end

  defp in_dependency_order([_] = targets), do: targets

  defp in_dependency_order(targets) do
    graph = Map.new(targets, &{&1.module, &1.deps})
    {:ok, groups} = Beam.reload_order(graph)
    by_module = Map.new(targets, &{&1.module, &1})
    for m <- Enum.concat(groups), t = by_module[m], t != nil, do: t
  end

  defp record_up(store, targets) do
    Enum.reduce(targets, store, fn t, store ->
      slot = store.modules[t.module]
      entry = entry(store.id, t.module, t.to, t.beam, t.deps)

      slot = %{
        slot
        | current: t.to,
          next: t.to + 1,
          binary: t.bin,
          history: trim(slot.history ++ [entry], t.to, store.max_versions)
      }

      put_in(store, [:modules, t.module], slot)
    end)
  end

  # Keeps the newest `max` versions, never dropping the current one.
  defp trim(history, current, max) do
    excess = length(history) - max

    if excess <= 0 do
      history
    else
      {_dropped, kept} =
        Enum.reduce(history, {0, []}, fn entry, {n, kept} ->
          if n < excess and entry.version != current,
            do: {n + 1, kept},
            else: {n, [entry | kept]}
        end)

      Enum.reverse(kept)
    end
  end

  ## Rollback

  @doc """
  Rolls `module` back (or forward) to a kept `version`: its BEAM is
  relocated again and loaded as a change, live processes are migrated with
  `code_change({:down, version}, state, extra)` (or the create option's
  arity-3 migration function). The version left is marked `rolled_back_at`.
  Emits `[:sandbox, :reload, :rolled_back]` with reason `:requested`.
  """
  @spec rollback(context, module, pos_integer, timeout) :: {:ok, t} | {:error, term, t}
  def rollback(ctx, module, version, timeout \\ 5_000) do
    store = ctx.versions

    with {:ok, slot} <- fetch_slot(store, module),
         {:ok, entry} <- fetch_version(slot, module, version),
         true <- version != slot.current || {:error, {:already_current, module, version}},
         {:ok, bin} <- relocate_entry(ctx, entry) do
      target = %{
        module: module,
        name: Map.fetch!(ctx.renames, module),
        bin: bin,
        old_bin: slot.binary,
        beam: entry.beam_data,
        deps: entry.dependencies,
        from: slot.current,
        to: version
      }

      case roll(ctx, [target], timeout, :requested) do
        {:ok, store} -> {:ok, store}
        {:error, reason} -> {:error, reason, store}
      end
    else
      {:error, reason} -> {:error, reason, store}
    end
  end

  @doc """
  Undoes `change` (from `reload/3`) after a crash within its rollback
  window: every changed module goes back to the version it had, live
  processes are migrated down. Emits `[:sandbox, :reload, :rolled_back]`
  with `reason` (`{:crash, pid, exit_reason}`).
  """
  @spec auto_rollback(context, map, term) :: {:ok, t} | {:error, term, t}
  def auto_rollback(ctx, change, reason) do
    targets =
      for t <- Enum.reverse(change.targets) do
        %{t | bin: t.old_bin, old_bin: t.bin, from: t.to, to: t.from, beam: nil}
      end

    case roll(ctx, targets, change.timeout, reason) do
      {:ok, store} -> {:ok, store}
      {:error, reason} -> {:error, reason, ctx.versions}
    end
  end

  defp roll(ctx, targets, timeout, reason) do
    t0 = System.monotonic_time()
    migration = ctx.config.state_migration

    case apply_change(ctx, targets, migration, timeout) do
      {:ok, info} ->
        store = record_rollback(ctx.versions, targets)

        Telemetry.emit(
          :reload,
          :rolled_back,
          %{duration: System.monotonic_time() - t0, processes: info.migrated},
          %{
            sandbox_id: ctx.id,
            modules: Enum.map(targets, & &1.module),
            versions: Map.new(targets, &{&1.module, &1.to}),
            reason: reason
          }
        )

        {:ok, store}

      {:error, error} ->
        emit_failed(ctx.id, {:rollback_failed, error}, t0)
        {:error, error}
    end
  end

  defp record_rollback(store, targets) do
    now = DateTime.utc_now()

    Enum.reduce(targets, store, fn t, store ->
      slot = store.modules[t.module]

      history =
        Enum.map(slot.history, fn
          %{version: v} = e when v == t.from -> %{e | rolled_back_at: now}
          e -> e
        end)

      put_in(store, [:modules, t.module], %{slot | current: t.to, binary: t.bin, history: history})
    end)
  end

  defp fetch_slot(store, module) do
    case store.modules do
      %{^module => slot} -> {:ok, slot}
      _ -> {:error, {:unknown_module, module}}
    end
  end

  defp fetch_version(slot, module, version) do
    case Enum.find(slot.history, &(&1.version == version)) do
      nil -> {:error, {:unknown_version, module, version}}
      entry -> {:ok, entry}
    end
  end

  defp relocate_entry(ctx, entry) do
    case Beam.relocate(entry.beam_data, ctx.renames, ctx.redirects, debug_info: :strip) do
      {:ok, bin} -> {:ok, bin}
      {:error, reason} -> {:error, {:relocation_failed, entry.module, reason}}
    end
  end

  ## The change itself

  # Loads `targets` (relocated binaries, dependency order) as one change
  # under one suspension; see the moduledoc. `{:ok, %{migrated: n}}` or
  # `{:error, reason}` with everything as it was.
  defp apply_change(ctx, targets, migration, timeout) do
    gl = ctx.group_leader

    with {:ok, prepared} <- prepare(targets, :bin),
         :ok <- soft_purge(targets) do
      suspend_names = suspend_set(ctx, targets)
      originals = Map.new(ctx.renames, fn {original, name} -> {name, original} end)
      members = if is_pid(gl) and Process.alive?(gl), do: GroupLeader.members(gl), else: []

      sys =
        for t <- StatePreservation.sys_processes(members),
            Map.has_key?(suspend_names, t.module),
            do: Map.put(t, :original, Map.get(originals, t.module, t.module))

      # Callers first: a server busy calling another one finishes its call
      # before it suspends, instead of waiting on a suspended server.
      sys = Enum.sort_by(sys, &Map.fetch!(suspend_names, &1.module))

      to_migrate = for t <- targets, p <- sys, p.module == t.name, do: {p, t}

      monitors = Map.new(sys, &{Process.monitor(&1.pid), &1.pid})

      result =
        case StatePreservation.suspend_all(sys, timeout, gl) do
          {:ok, suspended} ->
            under_suspension(
              prepared,
              targets,
              suspended,
              to_migrate,
              migration,
              timeout,
              monitors,
              gl
            )

          {:error, _} = error ->
            error
        end

      for {ref, _} <- monitors, do: Process.demonitor(ref, [:flush])
      result
    end
  end

  defp under_suspension(prepared, targets, suspended, to_migrate, migration, timeout, mons, gl) do
    alive = Enum.filter(to_migrate, fn {p, _} -> Enum.any?(suspended, &(&1.pid == p.pid)) end)

    case StatePreservation.capture(Enum.map(alive, &elem(&1, 0)), timeout) do
      {:error, {:process_died, pid, _}} ->
        StatePreservation.resume_all(suspended, timeout, gl)
        {:error, {:process_died, pid, down_reason(mons, pid)}}

      {:error, reason} ->
        StatePreservation.resume_all(suspended, timeout, gl)
        {:error, reason}

      {:ok, captured} ->
        case :code.finish_loading(prepared) do
          :ok ->
            case migrate_all(alive, migration, timeout) do
              :ok ->
                case died(mons) do
                  nil ->
                    StatePreservation.resume_all(suspended, timeout, gl)
                    {:ok, %{migrated: length(alive)}}

                  {pid, reason} ->
                    restore(targets, captured, suspended, [], timeout, gl)
                    {:error, {:process_died, pid, reason}}
                end

              {:error, {:migration_timeout, module, pid}} ->
                restore(targets, captured, suspended, [pid], timeout, gl)
                {:error, {:migration_timeout, module, pid, :killed}}

              {:error, {:process_died, pid, _}} ->
                restore(targets, captured, suspended, [], timeout, gl)
                {:error, {:process_died, pid, down_reason(mons, pid)}}

              {:error, reason} ->
                restore(targets, captured, suspended, [], timeout, gl)
                {:error, reason}
            end

          {:error, failures} ->
            StatePreservation.resume_all(suspended, timeout, gl)
            {:error, {:load_failed, failures}}
        end
    end
  end

  defp migrate_all(pairs, migration, timeout) do
    Enum.find_value(pairs, :ok, fn {proc, t} ->
      direction = if t.to < t.from, do: :down, else: :up

      case StatePreservation.migrate(proc, migration, t.from, t.to, direction, timeout) do
        :ok -> nil
        error -> error
      end
    end)
  end

  # The exit reason of a monitored process that is gone (its `:DOWN`).
  defp down_reason(monitors, pid) do
    Enum.find_value(monitors, :noproc, fn
      {ref, ^pid} ->
        receive do
          {:DOWN, ^ref, :process, ^pid, reason} -> reason
        end

      _ ->
        nil
    end)
  end

  defp died(monitors) do
    Enum.find_value(monitors, fn {ref, pid} ->
      receive do
        {:DOWN, ^ref, :process, ^pid, reason} -> {pid, reason}
      after
        0 -> nil
      end
    end)
  end

  # Puts the previous binaries back, then kills the processes left inside
  # the new code (their supervisors restart them under the previous code),
  # puts the captured states back and resumes everything.
  defp restore(targets, captured, suspended, kill, timeout, gl) do
    restore_code(targets, timeout)

    for pid <- kill do
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)

      receive do
        {:DOWN, ^ref, :process, ^pid, _} -> :ok
      end
    end

    StatePreservation.restore_states(captured, kill, timeout)
    StatePreservation.resume_all(Enum.reject(suspended, &(&1.pid in kill)), timeout, gl)
  end

  # The previous code is now "old" code: clients of the sandbox may still
  # be inside it (waiting for a suspended server), so it is purged softly,
  # retrying until `timeout`, and only then hard.
  defp restore_code(targets, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout

    for t <- targets, do: wait_soft_purge(t.name, deadline)

    {:ok, prepared} = prepare(targets, :old_bin)
    :ok = :code.finish_loading(prepared)
  end

  defp wait_soft_purge(name, deadline) do
    cond do
      :code.soft_purge(name) ->
        :ok

      System.monotonic_time(:millisecond) >= deadline ->
        :code.purge(name)

      true ->
        receive do
        after
          5 -> wait_soft_purge(name, deadline)
        end
    end
  end

  defp prepare(targets, key) do
    entries = for t <- targets, do: {t.name, ~c"sandbox:#{t.name}", Map.fetch!(t, key)}

    case :code.prepare_loading(entries) do
      {:ok, prepared} -> {:ok, prepared}
      {:error, failures} -> {:error, {:load_failed, failures}}
    end
  end

  defp soft_purge(targets) do
    Enum.find_value(targets, :ok, fn t ->
      if :code.soft_purge(t.name) do
        nil
      else
        {:error, {:old_code_in_use, t.module, old_code_holders(t.name)}}
      end
    end)
  end

  defp old_code_holders(name) do
    for pid <- Process.list(), :erlang.check_process_code(pid, name), do: pid
  end

  # The relocated names of the changed modules and of every module that
  # (transitively) calls one of them, whose processes are suspended, each
  # with its rank in the reverse reload order (callers first).
  defp suspend_set(ctx, targets) do
    graph = dependency_graph(ctx.versions)
    {:ok, groups} = Beam.reload_order(graph)

    rank = groups |> Enum.concat() |> Enum.reverse() |> Enum.with_index() |> Map.new()

    callers =
      Enum.reduce(graph, %{}, fn {m, deps}, acc ->
        Enum.reduce(deps, acc, fn d, acc -> Map.update(acc, d, [m], &[m | &1]) end)
      end)

    closure = reach(Enum.map(targets, & &1.module), callers, MapSet.new())
    Map.new(closure, &{Map.fetch!(ctx.renames, &1), Map.get(rank, &1, 0)})
  end

  defp reach([], _callers, seen), do: seen

  defp reach([m | rest], callers, seen) do
    if MapSet.member?(seen, m),
      do: reach(rest, callers, seen),
      else: reach(Map.get(callers, m, []) ++ rest, callers, MapSet.put(seen, m))
  end
end
