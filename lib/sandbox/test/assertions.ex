defmodule Sandbox.Test.Assertions do
  @moduledoc """
  Assertions about OTP processes — Supertester's `Assertions`, under our
  name. Each fails with an `ExUnit.AssertionError` whose message names what
  differs (never a `MatchError`), and returns `:ok` otherwise.

      import Sandbox.Test.Assertions

      test "the counter server", %{sandbox: id} do
        assert_process_alive({id, Counter.Server})
        assert_genserver_state({id, Counter.Server}, 0)
        assert_all_children_alive({id, Counter.Application})
      end

  A process is a pid, a name, or `{sandbox_id, module}` for the process of
  a sandbox registered under `module`'s name (see
  `Sandbox.Test.OTPHelpers`). Waits (`assert_process_restarted/2`) are built
  on monitors and calls, never on sleeping.
  """

  import ExUnit.Assertions, only: [flunk: 1]

  alias Sandbox.Test.{OTPHelpers, Processes}

  @type server :: Processes.server_ref()

  @doc "Asserts that `process` exists and is alive."
  @spec assert_process_alive(server) :: :ok
  def assert_process_alive(process) do
    case Processes.alive(process) do
      nil -> flunk("expected #{inspect(process)} to be alive, but #{gone(process)}")
      _pid -> :ok
    end
  end

  @doc "Asserts that `process` is dead (for a name: that no live process has it)."
  @spec assert_process_dead(server) :: :ok
  def assert_process_dead(process) do
    case Processes.alive(process) do
      nil ->
        :ok

      pid ->
        flunk(
          "expected #{inspect(process)} to be dead, but it is alive: #{Processes.describe(pid)}"
        )
    end
  end

  @doc """
  Asserts that the process registered as `name`, `original_pid` before, has
  been restarted: another live process holds the name. Waits (up to 5 s,
  synchronising with its supervisor) when the restart is still under way.
  """
  @spec assert_process_restarted(server, pid) :: :ok
  def assert_process_restarted(name, original_pid) when is_pid(original_pid) do
    case OTPHelpers.wait_for_process_restart(name, original_pid, 5000) do
      {:ok, _pid} ->
        :ok

      {:error, :not_restarted} ->
        flunk(
          "expected #{inspect(name)} to be restarted after #{inspect(original_pid)} died, " <>
            "but its supervisor did not restart it"
        )

      {:error, :timeout} ->
        alive = if Process.alive?(original_pid), do: " (it is still alive)", else: ""

        flunk(
          "expected #{inspect(name)} to be restarted within 5000 ms, " <>
            "but #{inspect(original_pid)} was not replaced#{alive}"
        )
    end
  end

  @doc """
  Asserts the state of the GenServer (any `:sys` process) `server`: equal
  to `expected`, or, when `expected` is a function of one argument, one for
  which it returns a truthy value.
  """
  @spec assert_genserver_state(server, term | (term -> as_boolean(term))) :: :ok
  def assert_genserver_state(server, expected) do
    case Sandbox.Test.GenServerHelpers.get_server_state_safely(server) do
      {:ok, state} ->
        cond do
          is_function(expected, 1) ->
            if expected.(state),
              do: :ok,
              else: fail("state of #{inspect(server)} does not satisfy the given function", state)

          state == expected ->
            :ok

          true ->
            raise ExUnit.AssertionError,
              message: "state of #{inspect(server)} differs from the expected state",
              left: state,
              right: expected
        end

      {:error, reason} ->
        flunk("could not read the state of #{inspect(server)}: #{inspect(reason)}")
    end
  end

  defp fail(message, state),
    do:
      raise(ExUnit.AssertionError, message: message <> "\nstate: #{inspect(state, pretty: true)}")

  @doc """
  Asserts that `server` answers a `:sys` round trip within `timeout` ms
  (1 s by default): it is alive and handling its messages.
  """
  @spec assert_genserver_responsive(server, timeout) :: :ok
  def assert_genserver_responsive(server, timeout \\ 1000) do
    case OTPHelpers.wait_for_genserver_sync(server, timeout) do
      :ok ->
        :ok

      {:error, :timeout} ->
        flunk(
          "expected #{inspect(server)} to be responsive, but it did not answer within #{timeout} ms"
        )

      {:error, reason} ->
        flunk("expected #{inspect(server)} to be responsive, but: #{inspect(reason)}")
    end
  end

  @doc "Asserts that `supervisor` has `expected` active children."
  @spec assert_child_count(server, non_neg_integer) :: :ok
  def assert_child_count(supervisor, expected) when is_integer(expected) and expected >= 0 do
    counts = count_children(supervisor)

    if counts.active == expected,
      do: :ok,
      else:
        flunk(
          "expected #{inspect(supervisor)} to have #{expected} active children, " <>
            "but it has #{counts.active} (#{inspect(counts)})"
        )
  end

  @doc "Asserts that every child of `supervisor` is running (none restarting or stopped)."
  @spec assert_all_children_alive(server) :: :ok
  def assert_all_children_alive(supervisor) do
    children = which_children(supervisor)

    not_alive =
      for {id, child, _, _} <- children,
          not (is_pid(child) and Process.alive?(child)),
          do: {id, child}

    if not_alive == [],
      do: :ok,
      else:
        flunk(
          "expected every child of #{inspect(supervisor)} to be alive, but these are not: " <>
            inspect(not_alive)
        )
  end

  defp which_children(supervisor) do
    case Processes.sync_children(supervisor_pid(supervisor), :infinity) do
      children when is_list(children) -> children
      _ -> flunk("no supervisor #{inspect(supervisor)}")
    end
  end

  defp count_children(supervisor) do
    Map.new(Supervisor.count_children(supervisor_pid(supervisor)))
  catch
    :exit, _ -> flunk("no supervisor #{inspect(supervisor)}")
  end

  defp supervisor_pid(supervisor) do
    case Processes.alive(supervisor) do
      nil -> flunk("expected a supervisor, but #{gone(supervisor)}")
      pid -> pid
    end
  end

  @doc """
  Runs `operation` (a function of no arguments) and asserts that it leaves
  no process behind: every process it spawned, directly or not, has
  exited by the time it returns (those exiting at that moment get 100 ms).

  The operation runs in the calling process with a group leader of its own
  for its duration, which the processes it spawns inherit: that is how
  they are told from the processes of concurrent tests. A process started
  on its behalf by a server that was already running (a supervisor's
  child, a sandbox process started by `Sandbox.run/3`) is not the
  operation's. Leaked processes are killed after the failure is reported.
  """
  @spec assert_no_process_leaks((() -> any)) :: :ok
  def assert_no_process_leaks(operation) when is_function(operation, 0) do
    {_result, tracker} = Processes.track(operation)

    leaked =
      tracker
      |> Processes.tracked()
      |> Processes.survivors(Processes.deadline(100))

    descriptions = Enum.map(leaked, &Processes.describe/1)
    Processes.kill_all(leaked)
    Processes.stop_tracker(tracker)

    if leaked == [],
      do: :ok,
      else:
        flunk(
          "expected no process leaks, but #{length(leaked)} process(es) spawned by the " <>
            "operation are still alive:\n  " <> Enum.join(descriptions, "\n  ")
        )
  end

  @doc """
  Asserts that running `operation` (a function of no arguments) repeatedly
  does not make memory grow: it is run once (a warm-up), memory measured,
  run `runs` more times, measured again; the growth must be at most
  `tolerance` of the first measure. Processes measured are garbage
  collected first.

  The second argument is the tolerance (a fraction, `0.1`), or options:

    * `:tolerance` — the fraction (0.1)
    * `:runs` — runs after the warm-up (10)
    * `:scope` — what is measured: `:vm` (`:erlang.memory(:total)`, the
      default; noisy when other tests run at the same time), a pid or a
      list of pids (their memory), or `{:sandbox, id}` (the sandbox's
      `resource_usage.current_memory`)
  """
  @spec assert_memory_usage_stable((() -> any), float | keyword) :: :ok
  def assert_memory_usage_stable(operation, tolerance_or_opts \\ 0.1)

  def assert_memory_usage_stable(operation, tolerance) when is_number(tolerance),
    do: assert_memory_usage_stable(operation, tolerance: tolerance)

  def assert_memory_usage_stable(operation, opts)
      when is_function(operation, 0) and is_list(opts) do
    tolerance = Keyword.get(opts, :tolerance, 0.1)
    runs = Keyword.get(opts, :runs, 10)
    scope = Keyword.get(opts, :scope, :vm)

    operation.()
    before = measure(scope)
    for _ <- 1..runs, do: operation.()
    later = measure(scope)
    growth = later - before

    if growth <= tolerance * before do
      :ok
    else
      pct = Float.round(growth * 100 / max(before, 1), 1)

      flunk(
        "expected memory of #{inspect(scope)} to stay within #{tolerance * 100}% over #{runs} runs, " <>
          "but it grew by #{growth} bytes (#{pct}%): from #{before} to #{later} bytes"
      )
    end
  end

  defp measure(:vm) do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    :erlang.memory(:total)
  end

  defp measure({:sandbox, id}) do
    case Sandbox.Manager.lookup(id) do
      {:ok, _pid, %{group_leader: gl}} when is_pid(gl) ->
        for pid <- Sandbox.GroupLeader.members(gl), do: :erlang.garbage_collect(pid)
        {:ok, info} = Sandbox.get_sandbox_info(id)
        info.resource_usage.current_memory

      _ ->
        flunk("no running sandbox #{inspect(id)}")
    end
  end

  defp measure(pid) when is_pid(pid), do: measure([pid])

  defp measure(pids) when is_list(pids) do
    pids
    |> Enum.map(fn pid ->
      :erlang.garbage_collect(pid)

      case Process.info(pid, :memory) do
        {:memory, bytes} -> bytes
        nil -> flunk("#{inspect(pid)} died while its memory was measured")
      end
    end)
    |> Enum.sum()
  end

  defp gone(process) when is_pid(process), do: "it is dead"
  defp gone(process), do: "no live process is registered as #{inspect(Processes.name(process))}"
end
