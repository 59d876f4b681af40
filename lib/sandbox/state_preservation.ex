defmodule Sandbox.StatePreservation do
  @moduledoc """
  Applies a change (`Sandbox.ChangeSet`) to a running sandbox: loads it
  two-version safe, suspending, migrating, restoring and resuming the
  sandbox's `:sys` processes around it (`apply/2`).

  ## Applying a change

    1. The added, changed and relinked modules are prepared for loading
       (`:code.prepare_loading/1`: all or none).
    2. Soft purge: the old code of each module the change replaces or
       removes is purged with `:code.soft_purge/1`. A process still running
       it fails the change with `{:old_code_in_use, module, pids}`; nothing
       is killed. A process running a module the change removes (in its
       stack, or as its callback module) fails it with
       `{:module_in_use, module, pids}`.
    3. The sandbox's `:sys` processes whose callback module is one of the
       changed modules, or one that (transitively) calls them, are
       suspended, callers first (the reverse of the reload order), so that a
       server busy calling another affected server finishes that call
       before it is suspended; the states of those to migrate are captured.
    4. The modules are loaded together (`:code.finish_loading/1`), and the
       processes whose callback module changed are migrated in dependency
       order.
    5. Everything is resumed; removed modules are deleted and purged.

  Any failure after step 3 restores the previous binaries and the captured
  states, then resumes. A process whose migration timed out is still inside
  the new code: it is killed once the previous code is back, so its
  supervisor restarts it under that code, and the reason says `:killed`.
  A create is a change from nothing (no process to suspend); a destroy is a
  change to nothing, applied after the sandbox's processes are gone.

  `apply/2` is two halves that can also be called apart (a cluster's
  two-phase reload, `Sandbox.Cluster`): `prepare/2` does steps 1–3 and
  holds the processes suspended; `commit/1` does steps 4–5, `abort/1`
  resumes everything and loads nothing.

  ## Which processes

  A sandbox's processes are the members of its group leader
  (`Sandbox.GroupLeader.members/1`). Among them, the `:sys` processes are
  recognised by the `$initial_call` that `proc_lib` records in their
  process dictionary, read without sending them anything:

    * `{module, :init, 1}` — a `gen_server` or `gen_statem` whose callback
      module is `module`;
    * `{:supervisor, module, 1}` — a supervisor whose callback module is
      `module`.

  A process counts as running a module when that module is its callback
  module. Processes that are not `:sys` processes (plain `spawn`, tasks) are
  never suspended: they cannot answer system messages.

  ## Migration

  A process whose callback module changes is migrated while suspended:

    * with a migration function, through `:sys.replace_state/3` (arity 1:
      `fun.(old_state)`; arity 3: `fun.(old_state, from_version,
      to_version)`), except supervisors, whose state belongs to OTP;
    * otherwise through `:sys.change_code/5`, which calls the new code's
      `code_change(old_vsn, state, extra)` (`old_vsn` is the version being
      left, an integer, or `{:down, version}` for a downgrade; `extra` is
      `%{from: from_version, to: to_version}`). `code_change/3` is always
      the one of the code just loaded: on a downgrade that is the restored
      (older) version, which must therefore know how to convert the newer
      state back, as in OTP release handling.

  A suspension that times out leaves the suspend request queued in the
  process: `resume_later/2` answers it with an asynchronous resume from a
  process of the sandbox, so that nothing stays suspended.
  """

  alias Sandbox.{ChangeSet, GroupLeader}

  @typedoc "A `:sys` process of a sandbox and its (relocated) callback module."
  @type target :: %{pid: pid, module: module, kind: :gen | :supervisor}

  @doc """
  The `:sys` processes among `pids`, with their callback modules (see the
  module documentation).
  """
  @spec sys_processes([pid]) :: [target]
  def sys_processes(pids) do
    for pid <- pids,
        {:dictionary, dict} <- [Process.info(pid, :dictionary)],
        {:"$initial_call", call} <- [List.keyfind(dict, :"$initial_call", 0)],
        target <- callback(pid, call),
        do: target
  end

  defp callback(pid, {:supervisor, module, 1}) when is_atom(module),
    do: [%{pid: pid, module: module, kind: :supervisor}]

  defp callback(pid, {module, :init, 1}) when is_atom(module),
    do: [%{pid: pid, module: module, kind: :gen}]

  defp callback(_pid, _call), do: []

  @doc """
  Suspends `targets` one after the other, waiting up to `timeout` ms for
  each. A target that is already gone is left out of the result.

  On failure every process suspended so far is resumed, the one that did
  not answer is resumed asynchronously (see `resume_later/2`), and the
  result is `{:error, {:suspend_timeout, module, pid}}` or
  `{:error, {:suspend_failed, module, pid, reason}}`.
  """
  @spec suspend_all([target], timeout, pid | nil) :: {:ok, [target]} | {:error, term}
  def suspend_all(targets, timeout, gl) do
    Enum.reduce_while(targets, {:ok, []}, fn target, {:ok, done} ->
      try do
        :ok = :sys.suspend(target.pid, timeout)
        {:cont, {:ok, [target | done]}}
      catch
        :exit, reason ->
          cond do
            not Process.alive?(target.pid) ->
              {:cont, {:ok, done}}

            timeout?(reason) ->
              resume_later(target.pid, gl)
              resume_all(done, timeout, gl)
              {:halt, {:error, {:suspend_timeout, name(target), target.pid}}}

            true ->
              resume_later(target.pid, gl)
              resume_all(done, timeout, gl)
              {:halt, {:error, {:suspend_failed, name(target), target.pid, exit_reason(reason)}}}
          end
      end
    end)
    |> case do
      {:ok, done} -> {:ok, Enum.reverse(done)}
      error -> error
    end
  end

  @doc """
  The states of suspended `targets`: `{:ok, %{pid => state}}`, or
  `{:error, {:process_died, pid, reason}}` / `{:error, {:suspend_timeout,
  module, pid}}`.
  """
  @spec capture([target], timeout) :: {:ok, %{pid => term}} | {:error, term}
  def capture(targets, timeout) do
    Enum.reduce_while(targets, {:ok, %{}}, fn target, {:ok, acc} ->
      try do
        {:cont, {:ok, Map.put(acc, target.pid, :sys.get_state(target.pid, timeout))}}
      catch
        :exit, reason -> {:halt, {:error, call_error(target, reason)}}
      end
    end)
  end

  @doc """
  Migrates one suspended target from version `from` to version `to` (see
  the module documentation). `direction` is `:up` or `:down`.

  Returns `:ok` or `{:error, reason}` with `reason` one of
  `{:migration_failed, module, pid, reason}`,
  `{:migration_timeout, module, pid}` (the process is still inside the
  migration) and `{:process_died, pid, reason}`.
  """
  @spec migrate(target, fun | nil, pos_integer, pos_integer, :up | :down, timeout) ::
          :ok | {:error, term}
  def migrate(target, migration, from, to, direction, timeout) do
    result =
      case {target.kind, migration} do
        {:gen, fun} when is_function(fun, 1) and direction == :up ->
          replace(target, fn state -> fun.(state) end, timeout)

        {:gen, fun} when is_function(fun, 3) ->
          replace(target, fn state -> fun.(state, from, to) end, timeout)

        _ ->
          vsn = if direction == :down, do: {:down, to}, else: from
          :sys.change_code(target.pid, target.module, vsn, %{from: from, to: to}, timeout)
      end

    case result do
      :ok -> :ok
      {:error, reason} -> {:error, {:migration_failed, name(target), target.pid, reason}}
    end
  catch
    :exit, reason ->
      case call_error(target, reason) do
        {:suspend_timeout, _, pid} -> {:error, {:migration_timeout, name(target), pid}}
        other -> {:error, other}
      end

    :error, reason ->
      {:error, {:migration_failed, name(target), target.pid, reason}}
  end

  # Errors name the module by its original name when the caller gave it.
  defp name(target), do: Map.get(target, :original, target.module)

  defp replace(target, fun, timeout) do
    _ = :sys.replace_state(target.pid, fun, timeout)
    :ok
  end

  @doc """
  Puts captured states back (`%{pid => state}`), skipping processes that
  are gone or listed in `skip`. Best effort: a process that does not answer
  within `timeout` keeps the state it has.
  """
  @spec restore_states(%{pid => term}, [pid], timeout) :: :ok
  def restore_states(captured, skip, timeout) do
    for {pid, state} <- captured, pid not in skip, Process.alive?(pid) do
      try do
        :sys.replace_state(pid, fn _ -> state end, timeout)
      catch
        _, _ -> :ok
      end
    end

    :ok
  end

  @doc """
  Resumes `targets` (those still alive); one that does not answer within
  `timeout` is resumed asynchronously.
  """
  @spec resume_all([target], timeout, pid | nil) :: :ok
  def resume_all(targets, timeout, gl) do
    for %{pid: pid} <- targets, Process.alive?(pid) do
      try do
        :sys.resume(pid, timeout)
      catch
        :exit, _ -> resume_later(pid, gl)
      end
    end

    :ok
  end

  @doc """
  Resumes `pid` from another process, whenever it gets to it: the answer to
  a suspend request that timed out but is still queued in `pid`. The
  resuming process belongs to the sandbox (group leader `gl`), so destroying
  the sandbox ends it too; it ends when `pid` answers or exits.
  """
  @spec resume_later(pid, pid | nil) :: pid
  def resume_later(pid, gl) do
    fun = fn ->
      try do
        :sys.resume(pid, :infinity)
      catch
        :exit, _ -> :ok
      end
    end

    if is_pid(gl) and Process.alive?(gl), do: GroupLeader.spawn_in(gl, fun), else: spawn(fun)
  end

  defp call_error(target, reason) do
    cond do
      not Process.alive?(target.pid) -> {:process_died, target.pid, exit_reason(reason)}
      timeout?(reason) -> {:suspend_timeout, name(target), target.pid}
      true -> {:process_died, target.pid, exit_reason(reason)}
    end
  end

  defp timeout?({:timeout, _}), do: true
  defp timeout?(_), do: false

  defp exit_reason({reason, {_m, _f, _a}}), do: reason
  defp exit_reason(reason), do: reason

  ## Applying a change

  @typedoc """
  How to apply a change: the sandbox's group leader (`nil` when it has no
  processes), the migration function (`nil`: `code_change/3`) and the
  timeout (ms) for each suspension and migration.
  """
  @type env :: %{group_leader: pid | nil, migration: fun | nil, timeout: timeout}

  @doc """
  Applies `change` (see the module documentation). Returns
  `{:ok, %{migrated: n}}` or `{:error, reason}` with everything as it was:
  `{:load_failed, failures}`, `{:old_code_in_use, module, pids}`,
  `{:module_in_use, module, pids}`, or a suspension or migration error (see
  `Sandbox.hot_reload_sandbox/3`).
  """
  @spec apply(ChangeSet.t(), env) :: {:ok, %{migrated: non_neg_integer}} | {:error, term}
  def apply(%ChangeSet{kind: :destroy} = change, _env) do
    for e <- change.removed do
      :code.purge(e.name)
      :code.delete(e.name)
      :code.purge(e.name)
    end

    {:ok, %{migrated: 0}}
  end

  def apply(%ChangeSet{} = change, env) do
    with {:ok, prepared} <- prepare(change, env), do: commit(prepared)
  end

  ## Two phases: prepare, then commit or abort (Sandbox.Cluster)

  defmodule Prepared do
    @moduledoc """
    A change prepared by `Sandbox.StatePreservation.prepare/2` and not yet
    committed or aborted: its code prepared for loading, the processes it
    suspended, their captured states and the monitors on them (which belong
    to the process that prepared it).
    """
    @enforce_keys [:change, :env, :code]
    defstruct [:change, :env, :code, suspended: [], alive: [], monitors: %{}, captured: %{}]

    @type t :: %__MODULE__{
            change: Sandbox.ChangeSet.t(),
            env: Sandbox.StatePreservation.env(),
            code: term,
            suspended: [Sandbox.StatePreservation.target()],
            alive: [{Sandbox.StatePreservation.target(), map}],
            monitors: %{reference => pid},
            captured: %{pid => term}
          }
  end

  @doc """
  The first half of `apply/2`: everything up to and including the
  suspension and the capture of states. The change's code is prepared for
  loading (`:code.prepare_loading/1`), the old code soft-purged, removed
  modules checked unused, and the affected `:sys` processes suspended
  (callers first) with the states of those to migrate captured. Nothing is
  loaded yet.

  Returns `{:ok, prepared}`, holding the processes suspended until
  `commit/1` or `abort/1` (which must run in the same process: the
  monitors on the suspended processes are its own, see
  `Sandbox.StatePreservation.Prepared`), or `{:error, reason}` (the errors
  of `apply/2` up to that point) with every process resumed. `apply/2` is
  `prepare/2` followed at once by `commit/1`.
  """
  @spec prepare(ChangeSet.t(), env) :: {:ok, Prepared.t()} | {:error, term}
  def prepare(%ChangeSet{kind: kind} = change, env) when kind != :destroy do
    load = change.shims ++ change.order
    replaced = change.changed ++ change.relinked
    gl = env.group_leader
    members = if is_pid(gl) and Process.alive?(gl), do: GroupLeader.members(gl), else: []

    with :ok <- admit(load),
         {:ok, code} <- prepare_code(load, :binary),
         :ok <- soft_purge(replaced ++ change.removed),
         :ok <- not_in_use(change.removed, members) do
      prepared = %Prepared{change: change, env: env, code: code}

      if members == [] or change.changed == [],
        do: {:ok, prepared},
        else: suspend_and_capture(prepared, members)
    end
  end

  @doc """
  The second half of `apply/2`: loads the prepared code
  (`:code.finish_loading/1`), migrates the captured processes, resumes
  everything and removes the removed modules. Results as `apply/2`; on
  failure the previous code and the captured states are restored.
  """
  @spec commit(Prepared.t()) :: {:ok, %{migrated: non_neg_integer}} | {:error, term}
  def commit(%Prepared{change: change} = prepared) do
    result =
      if prepared.monitors == %{} and prepared.suspended == [],
        do: finish(prepared.code, change),
        else: migrate_suspended(prepared)

    demonitor(prepared.monitors)
    with {:ok, _} <- result, do: remove(change.removed)
    result
  end

  @doc """
  Abandons a prepared change: nothing is loaded, every suspended process
  is resumed (asynchronously when it does not answer in time) and the
  monitors go. Always `:ok`.
  """
  @spec abort(Prepared.t()) :: :ok
  def abort(%Prepared{env: env} = prepared) do
    resume_all(prepared.suspended, env.timeout, env.group_leader)
    demonitor(prepared.monitors)
    :ok
  end

  @doc """
  The monitors a prepared change holds on its suspended processes
  (`%{reference => pid}`): a `:DOWN` for one of them means a process died
  while suspended, after which the change can only be aborted.
  """
  @spec monitors(Prepared.t()) :: %{reference => pid}
  def monitors(%Prepared{monitors: monitors}), do: monitors

  defp demonitor(monitors), do: for({ref, _} <- monitors, do: Process.demonitor(ref, [:flush]))

  defp finish(prepared, change) do
    case :code.finish_loading(prepared) do
      :ok ->
        {:ok, %{migrated: 0}}

      {:error, failures} ->
        {:error, {:load_failed, originals(failures, change)}}
    end
  end

  defp suspend_and_capture(%Prepared{change: change, env: env} = prepared, members) do
    %{group_leader: gl, timeout: timeout} = env
    suspend_names = suspend_set(change)
    originals = Map.new(change.renames, fn {original, name} -> {name, original} end)

    last = suspend_names |> Map.values() |> Enum.max(fn -> 0 end)
    rank = fn t -> Map.get(suspend_names, t.module, last + 1) end
    original = fn t -> Map.put(t, :original, Map.get(originals, t.module, t.module)) end

    # The affected processes, and every supervisor of the sandbox: a child
    # that crashes during the change is restarted after it, with the code
    # the change leaves (not before the load, with state of the other
    # version that nothing migrates).
    sys =
      for t <- sys_processes(members),
          Map.has_key?(suspend_names, t.module) or t.kind == :supervisor,
          do: original.(t)

    # Callers first: a server busy calling another one finishes its call
    # before it suspends, instead of waiting on a suspended server; the
    # supervisors last.
    sys = Enum.sort_by(sys, rank)

    case suspend_all(sys, timeout, gl) do
      {:ok, suspended} ->
        # A child restarted before its supervisor suspended is one more.
        known = MapSet.new(sys, & &1.pid)
        now = if is_pid(gl) and Process.alive?(gl), do: GroupLeader.members(gl), else: []

        late =
          for t <- sys_processes(now),
              not MapSet.member?(known, t.pid),
              Map.has_key?(suspend_names, t.module),
              do: original.(t)

        suspend_and_capture(prepared, sys ++ late, suspended, late)

      {:error, _} = error ->
        error
    end
  end

  defp suspend_and_capture(prepared, sys, suspended, []),
    do: capture_suspended(prepared, sys, suspended)

  defp suspend_and_capture(%Prepared{env: env} = prepared, sys, suspended, late) do
    case suspend_all(late, env.timeout, env.group_leader) do
      {:ok, more} ->
        capture_suspended(prepared, sys, more ++ suspended)

      {:error, _} = error ->
        resume_all(suspended, env.timeout, env.group_leader)
        error
    end
  end

  defp capture_suspended(%Prepared{change: change, env: env} = prepared, sys, suspended) do
    %{group_leader: gl, timeout: timeout} = env

    to_migrate =
      for e <- change.order, e.kind == :changed, p <- sys, p.module == e.name, do: {p, e}

    monitors = Map.new(suspended, &{Process.monitor(&1.pid), &1.pid})

    alive = Enum.filter(to_migrate, fn {p, _} -> Enum.any?(suspended, &(&1.pid == p.pid)) end)

    case capture(Enum.map(alive, &elem(&1, 0)), timeout) do
      {:ok, captured} ->
        {:ok,
         %{prepared | suspended: suspended, alive: alive, monitors: monitors, captured: captured}}

      {:error, {:process_died, pid, _}} ->
        resume_all(suspended, timeout, gl)
        reason = down_reason(monitors, pid)
        demonitor(monitors)
        {:error, {:process_died, pid, reason}}

      {:error, reason} ->
        resume_all(suspended, timeout, gl)
        demonitor(monitors)
        {:error, reason}
    end
  end

  defp migrate_suspended(%Prepared{change: change, env: env} = prepared) do
    %{group_leader: gl, timeout: timeout, migration: migration} = env
    %{suspended: suspended, alive: alive, monitors: mons, captured: captured} = prepared
    undo = fn kill -> restore(change, captured, suspended, kill, timeout, gl) end

    case :code.finish_loading(prepared.code) do
      :ok ->
        case migrate_all(alive, migration, timeout) do
          :ok ->
            case died(mons) do
              nil ->
                resume_all(suspended, timeout, gl)
                {:ok, %{migrated: length(alive)}}

              {pid, reason} ->
                undo.([])
                {:error, {:process_died, pid, reason}}
            end

          {:error, {:migration_timeout, module, pid}} ->
            undo.([pid])
            {:error, {:migration_timeout, module, pid, :killed}}

          {:error, {:process_died, pid, _}} ->
            undo.([])
            {:error, {:process_died, pid, down_reason(mons, pid)}}

          {:error, reason} ->
            undo.([])
            {:error, reason}
        end

      {:error, failures} ->
        resume_all(suspended, timeout, gl)
        {:error, {:load_failed, originals(failures, change)}}
    end
  end

  defp migrate_all(pairs, migration, timeout) do
    Enum.find_value(pairs, :ok, fn {proc, e} ->
      direction = if e.to < e.from, do: :down, else: :up

      case migrate(proc, migration, e.from, e.to, direction, timeout) do
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

  # Puts the previous binaries back (added modules go), then kills the
  # processes left inside the new code (their supervisors restart them
  # under the previous code), puts the captured states back and resumes
  # everything.
  defp restore(change, captured, suspended, kill, timeout, gl) do
    deadline = System.monotonic_time(:millisecond) + timeout
    back = change.changed ++ change.relinked

    for e <- change.order, do: wait_soft_purge(e.name, deadline)
    {:ok, prepared} = prepare_code(back, :old_binary)
    :ok = :code.finish_loading(prepared)

    for e <- change.added do
      :code.delete(e.name)
      wait_soft_purge(e.name, deadline)
    end

    GroupLeader.kill_and_wait(kill)
    restore_states(captured, kill, timeout)
    resume_all(Enum.reject(suspended, &(&1.pid in kill)), timeout, gl)
  end

  # Old code that clients of the sandbox may still be inside (waiting for a
  # suspended server) is purged softly, retrying until `deadline`, and only
  # then hard.
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

  # Every module loaded takes entries of the VM's export table, which a
  # full table stops (Sandbox.ExportTable).
  defp admit(load) do
    parsed =
      for e <- load do
        case e.parsed do
          nil -> with({:ok, p} <- Sandbox.Beam.parse(e.binary), do: p, else: (_ -> nil))
          p -> p
        end
      end

    Sandbox.ExportTable.admit(Sandbox.ExportTable.estimate(Enum.reject(parsed, &is_nil/1)))
  end

  defp prepare_code(entries, key) do
    loads = for e <- entries, do: {e.name, ~c"sandbox:#{e.name}", Map.fetch!(e, key)}

    case :code.prepare_loading(loads) do
      {:ok, prepared} -> {:ok, prepared}
      {:error, failures} -> {:error, {:load_failed, failures}}
    end
  end

  defp originals(failures, change) do
    by_name = Map.new(change.order ++ change.shims, &{&1.name, &1.module})
    for {name, why} <- failures, do: {Map.get(by_name, name, name), why}
  end

  defp soft_purge(entries) do
    Enum.find_value(entries, :ok, fn e ->
      if :code.soft_purge(e.name) do
        nil
      else
        holders = for pid <- Process.list(), :erlang.check_process_code(pid, e.name), do: pid
        {:error, {:old_code_in_use, e.module, holders}}
      end
    end)
  end

  # A module about to be removed must not be running: in a process's stack,
  # or as the callback module of one of the sandbox's :sys processes.
  defp not_in_use([], _members), do: :ok

  defp not_in_use(removed, members) do
    callbacks = Map.new(sys_processes(members), &{&1.pid, &1.module})

    Enum.find_value(removed, :ok, fn e ->
      marker = "(" <> inspect_atom(e.name) <> ":"

      users =
        for pid <- members,
            Map.get(callbacks, pid) == e.name or in_stack?(pid, marker),
            do: pid

      if users != [], do: {:error, {:module_in_use, e.module, users}}
    end)
  end

  defp inspect_atom(name), do: name |> :io_lib.write_atom() |> IO.iodata_to_binary()

  defp in_stack?(pid, marker) do
    case Process.info(pid, :backtrace) do
      {:backtrace, text} -> String.contains?(text, marker)
      nil -> false
    end
  end

  # Removed modules go once the change is in. One that a process entered
  # meanwhile stays as old code until the next change or the destroy.
  defp remove(removed) do
    for e <- removed do
      :code.delete(e.name)
      :code.soft_purge(e.name)
    end

    :ok
  end

  # The relocated names of the changed modules and of every module that
  # (transitively) calls one of them, whose processes are suspended, each
  # with its rank in the reverse reload order (callers first).
  defp suspend_set(change) do
    graph = change.graph
    {:ok, groups} = Sandbox.Beam.reload_order(graph)
    rank = groups |> Enum.concat() |> Enum.reverse() |> Enum.with_index() |> Map.new()

    callers =
      Enum.reduce(graph, %{}, fn {m, deps}, acc ->
        Enum.reduce(deps, acc, fn d, acc -> Map.update(acc, d, [m], &[m | &1]) end)
      end)

    closure = reach(Enum.map(change.changed, & &1.module), callers, MapSet.new())
    Map.new(closure, &{Map.fetch!(change.renames, &1), Map.get(rank, &1, 0)})
  end

  defp reach([], _callers, seen), do: seen

  defp reach([m | rest], callers, seen) do
    if MapSet.member?(seen, m),
      do: reach(rest, callers, seen),
      else: reach(Map.get(callers, m, []) ++ rest, callers, MapSet.put(seen, m))
  end
end
