defmodule Sandbox.StatePreservation do
  @moduledoc """
  Suspends, migrates, restores and resumes a sandbox's `:sys` processes
  around a hot reload (`Sandbox.hot_reload_sandbox/3`).

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

  alias Sandbox.GroupLeader

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
end
