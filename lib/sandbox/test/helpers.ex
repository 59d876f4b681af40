defmodule Sandbox.Test.Helpers do
  @moduledoc """
  ExUnit helpers for sandboxes: one sandbox per test, assertions about
  sandboxes and their reloads, waiting for compiles, and load.

      defmodule MyApp.CounterTest do
        use ExUnit.Case, async: true
        import Sandbox.Test.Helpers

        setup %{test: test} do
          {:ok, info} = setup_test_sandbox(test, :counter, sandbox_path: "examples/counter")
          %{id: info.id}
        end

        test "counts", %{id: id} do
          assert_sandbox_running(id)
          assert {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
        end
      end

  `Sandbox.Case` does the `setup` for you. The OTP helpers that work on any
  process, sandboxed or not, are `Sandbox.Test.OTPHelpers`,
  `Sandbox.Test.GenServerHelpers` and `Sandbox.Test.Assertions`.

  Assertions fail with `ExUnit.AssertionError` and a message that names
  what differs. Waits are built on monitors, event messages
  (`Sandbox.subscribe/1`) and calls that synchronise with the sandbox's
  processes, never on sleeping.
  """

  import ExUnit.Assertions, only: [flunk: 1]

  alias Sandbox.{FileWatcher, GroupLeader, Manager}
  alias Sandbox.Test.Processes

  @typedoc """
  A stress operation: `{module, function, args}` called through
  `Sandbox.call/5` (`module` by its original name), or a function of one
  argument, given the sandbox id. A call's `{:error, _}` result, and a
  function that raises, exits, throws or returns `{:error, _}`, count as
  errors.
  """
  @type operation :: {module, atom, [term]} | (String.t() -> term)

  @typedoc "What `stress_test_sandbox/3` reports."
  @type stress_results :: %{
          operations: non_neg_integer,
          errors: non_neg_integer,
          error_samples: [term],
          latency_us: %{p50: non_neg_integer, p99: non_neg_integer, max: non_neg_integer}
        }

  @doc """
  Creates a sandbox for the current test and destroys it when the test
  exits (`ExUnit.Callbacks.on_exit/1`: call it from a test or a `setup`
  callback).

  The id is made from `test_name` (the test's name, as in the `:test` key
  of the context) with a unique suffix: valid and unique whatever the
  name (see `test_sandbox_id/1`). `opts` are `Sandbox.create_sandbox/3`'s
  (`:sandbox_path` is required). Returns `Sandbox.create_sandbox/3`'s
  result: `{:ok, info}` (`info.id` is the id) or `{:error, reason}`.
  """
  @spec setup_test_sandbox(String.t() | atom, atom, keyword) ::
          {:ok, Sandbox.info()} | {:error, term}
  def setup_test_sandbox(test_name, module_or_app, opts) do
    id = test_sandbox_id(test_name)

    case Sandbox.create_sandbox(id, module_or_app, opts) do
      {:ok, info} ->
        ExUnit.Callbacks.on_exit(fn -> Sandbox.destroy_sandbox(id) end)
        {:ok, info}

      {:error, _} = error ->
        error
    end
  end

  @doc """
  A valid, unique sandbox id made from `name` (a test name, atom or
  string): its letters, digits, `_` and `-` (others become `_`), at most
  64 characters with a unique suffix.

      iex> Sandbox.Test.Helpers.test_sandbox_id(:"test counts twice") =~ ~r/\\Acounts_twice-[a-z0-9]+\\z/
      true
  """
  @spec test_sandbox_id(String.t() | atom) :: String.t()
  def test_sandbox_id(name) when is_atom(name) or is_binary(name) do
    suffix = "-" <> Integer.to_string(System.unique_integer([:positive]), 36)

    slug =
      name
      |> to_string()
      |> String.replace_prefix("test ", "")
      |> String.replace(~r/[^A-Za-z0-9_-]+/, "_")
      |> String.trim("_")
      |> String.slice(0, 64 - byte_size(suffix) - 1)

    slug = if slug =~ ~r/\A[A-Za-z0-9]/, do: slug, else: "t" <> slug
    String.downcase(slug) <> String.downcase(suffix)
  end

  @doc """
  Asserts that sandbox `id` exists, its status is `:running` and its root
  process is alive.
  """
  @spec assert_sandbox_running(String.t()) :: :ok
  def assert_sandbox_running(id) do
    case Sandbox.get_sandbox_info(id) do
      {:ok, %{status: :running} = info} ->
        root = info.supervisor_pid

        if is_pid(root) and not Process.alive?(root),
          do:
            flunk(
              "sandbox #{inspect(id)} is not running: its root process #{inspect(root)} is dead"
            ),
          else: :ok

      {:ok, info} ->
        error = if info.error, do: " (error: #{inspect(info.error)})", else: ""

        flunk(
          "sandbox #{inspect(id)} is not running: its status is #{inspect(info.status)}#{error}"
        )

      {:error, :not_found} ->
        flunk("sandbox #{inspect(id)} is not running: there is no such sandbox")

      {:error, reason} ->
        flunk("sandbox #{inspect(id)} is not running: #{inspect(reason)}")
    end
  end

  @doc """
  Asserts that the last hot reload of `module` (original name) in sandbox
  `id` succeeded and is what runs: the sandbox is running; `module` has
  been reloaded (its current version is above 1) and the current version
  is its newest (not rolled back); the loaded code is that version's (its
  `vsn` attribute, which the compiler derives from the code); and none of
  the sandbox's processes still runs the previous code (one would be
  killed by the next reload's purge: `:erlang.check_process_code/2`).
  Waits for a reload under way to finish first.
  """
  @spec assert_hot_reload_successful(String.t(), module) :: :ok
  def assert_hot_reload_successful(id, module) do
    assert_sandbox_running(id)
    subject = "hot reload of #{inspect(module)} in sandbox #{inspect(id)}"
    # Versions are read from the instance, after any change under way.
    versions = Sandbox.list_module_versions(id, module)

    if versions == [], do: flunk("#{subject}: #{inspect(module)} is not a module of the sandbox")

    {:ok, current} = Sandbox.get_current_version(id, module)
    newest = versions |> Enum.map(& &1.version) |> Enum.max()
    entry = Enum.find(versions, &(&1.version == current))

    cond do
      current == 1 and newest == 1 ->
        flunk("#{subject}: it was never reloaded (version 1 is its only version)")

      current != newest ->
        flunk(
          "#{subject}: version #{newest} is not current (the current version is #{current}: rolled back?)"
        )

      true ->
        :ok
    end

    loaded = Sandbox.module_name(id, module)

    unless :erlang.module_loaded(loaded),
      do: flunk("#{subject}: #{inspect(loaded)} is not loaded")

    expected_vsn = vsn(entry.beam_data)
    loaded_vsn = Keyword.get(loaded.module_info(:attributes), :vsn)

    if expected_vsn != loaded_vsn do
      flunk(
        "#{subject}: the loaded code is not version #{current} " <>
          "(vsn #{inspect(loaded_vsn)}, expected #{inspect(expected_vsn)})"
      )
    end

    case old_code_users(id, loaded) do
      [] ->
        :ok

      pids ->
        flunk(
          "#{subject}: processes still run the previous code: " <>
            Enum.map_join(pids, ", ", &Processes.describe/1)
        )
    end
  end

  defp vsn(beam) do
    case :beam_lib.version(beam) do
      {:ok, {_module, vsn}} -> vsn
      _ -> nil
    end
  end

  defp old_code_users(id, loaded) do
    with true <- :erlang.check_old_code(loaded),
         {:ok, _pid, %{group_leader: gl}} when is_pid(gl) <- Manager.lookup(id) do
      for pid <- GroupLeader.members(gl), :erlang.check_process_code(pid, loaded), do: pid
    else
      _ -> []
    end
  end

  @doc """
  Waits until sandbox `id` has no compile or reload under way — its create
  (compile, load and start) has finished, no reload is being applied, and
  the file watcher is not compiling its project for an automatic reload —
  and returns `:ok`; `{:error, :timeout}` after `timeout` ms,
  `{:error, :not_found}` when there is no such sandbox (or its create
  failed).

  An edit the file watcher has not yet seen (within its 50 ms debounce) is
  not under way yet: to wait for the reload an edit causes, wait for its
  `[:sandbox, :reload, :reloaded]` event (`Sandbox.subscribe/1`).
  """
  @spec wait_for_compilation(String.t(), timeout) ::
          :ok | {:error, :timeout | :not_found | {:invalid_id, term}}
  def wait_for_compilation(id, timeout \\ 5000) do
    with {:ok, _} <- check_id(id), do: await_idle(id, Processes.deadline(timeout))
  end

  defp check_id(id) do
    # get_sandbox_info/1 validates the id; :not_found is fine here (a create
    # may be reserving it).
    case Sandbox.get_sandbox_info(id) do
      {:error, {:invalid_id, _}} = error -> error
      _ -> {:ok, id}
    end
  end

  defp await_idle(id, deadline) do
    case Manager.lookup(id) do
      {:error, :not_found} ->
        {:error, :not_found}

      {:ok, pid, info} ->
        if instance?(pid) do
          with :ok <- sync_instance(pid, deadline),
               :ok <- await_watcher(id, deadline) do
            # A create that failed meanwhile leaves no sandbox.
            if match?({:ok, _, _}, Manager.lookup(id)), do: :ok, else: {:error, :not_found}
          end
        else
          # Reserved, its instance not started yet: wait for the create's end.
          await_created(id, info, deadline)
        end
    end
  end

  defp instance?(pid) do
    case Process.info(pid, :dictionary) do
      {:dictionary, dict} -> match?({Sandbox.Instance, :init, 1}, dict[:"$initial_call"])
      nil -> false
    end
  end

  # The instance handles one request at a time: a call returns once the
  # setup or reload it is running is over.
  defp sync_instance(pid, deadline) do
    case GenServer.call(pid, {:versions, :project}, Processes.left(deadline)) do
      {:ok, _} -> :ok
    end
  catch
    :exit, {:timeout, _} -> {:error, :timeout}
    :exit, _ -> {:error, :not_found}
  end

  defp await_watcher(id, deadline) do
    with {:ok, %{auto_reload_enabled: true, sandbox_path: root}} <- Sandbox.get_sandbox_info(id),
         %{task: task} when is_pid(task) <- Map.get(FileWatcher.watched(), Path.expand(root)) do
      ref = Process.monitor(task)

      case Processes.await_down(ref, deadline) do
        {:ok, _} -> await_idle(id, deadline)
        :timeout -> Process.demonitor(ref, [:flush]) && {:error, :timeout}
      end
    else
      _ -> :ok
    end
  end

  # The id is reserved and its instance is being started by the
  # DynamicSupervisor: a call to it returns after that start (or failure).
  defp await_created(id, _info, deadline) do
    if Processes.left(deadline) == 0 do
      {:error, :timeout}
    else
      case Processes.sync_children(Process.whereis(Sandbox.InstanceSupervisor), deadline) do
        :timeout -> {:error, :timeout}
        _ -> await_idle(id, deadline)
      end
    end
  end

  @doc """
  Runs `operations` against sandbox `id` concurrently for `duration_ms`
  and reports what happened.

  Each operation is `{module, function, args}`, called through
  `Sandbox.call/5`, or a function of one argument given `id` (see
  `t:operation/0`). Workers (by default twice the schedulers, and at least
  one per operation) each go round the operations from a different start
  until the duration is over; an operation under way then finishes.
  Returns `{:ok, %{operations: n, errors: n, error_samples: [term],
  latency_us: %{p50: n, p99: n, max: n}}}` (`error_samples`: up to 10
  distinct errors; latencies of every operation, errors included), or
  `{:error, :not_found}` (or `{:error, {:invalid_id, id}}`).

  ## Options

    * `:concurrency` — the number of workers
    * `:timeout` — the timeout of each `Sandbox.call/5` (5,000 ms)
  """
  @spec stress_test_sandbox(String.t(), [operation], pos_integer, keyword) ::
          {:ok, stress_results} | {:error, term}
  def stress_test_sandbox(id, operations, duration_ms, opts \\ []) do
    unless is_list(operations) and operations != [] and Enum.all?(operations, &operation?/1),
      do:
        raise(
          ArgumentError,
          "expected a list of {m, f, args} or fun/1, got: #{inspect(operations)}"
        )

    unless is_integer(duration_ms) and duration_ms > 0,
      do: raise(ArgumentError, "expected a duration in ms, got: #{inspect(duration_ms)}")

    with {:ok, _info} <- Sandbox.get_sandbox_info(id) do
      workers =
        Keyword.get(opts, :concurrency, max(System.schedulers_online() * 2, length(operations)))

      call_timeout = Keyword.get(opts, :timeout, 5000)
      ops = List.to_tuple(operations)
      deadline = System.monotonic_time(:millisecond) + duration_ms
      caller = self()

      pids =
        for i <- 0..(workers - 1) do
          spawn_monitor(fn ->
            send(
              caller,
              {:stress_done, self(), stress(id, ops, i, deadline, call_timeout, [], [])}
            )
          end)
        end

      # Every worker ends by the deadline plus one operation.
      grace = Processes.deadline(duration_ms + call_timeout + 5000)

      {latencies, errors} =
        Enum.reduce(pids, {[], []}, fn {pid, ref}, {lat, err} ->
          receive do
            {:stress_done, ^pid, {l, e}} ->
              Process.demonitor(ref, [:flush])
              {[l | lat], [e | err]}

            {:DOWN, ^ref, :process, ^pid, reason} ->
              {lat, [[{:worker_exit, reason}] | err]}
          after
            Processes.left(grace) ->
              Process.exit(pid, :kill)
              Process.demonitor(ref, [:flush])
              {lat, [[:worker_timeout] | err]}
          end
        end)

      latencies = latencies |> List.flatten() |> Enum.sort()
      errors = List.flatten(errors)

      {:ok,
       %{
         operations: length(latencies),
         errors: length(errors),
         error_samples: errors |> Enum.uniq() |> Enum.take(10),
         latency_us: percentiles(latencies)
       }}
    end
  end

  defp operation?({m, f, a}), do: is_atom(m) and is_atom(f) and is_list(a)
  defp operation?(fun), do: is_function(fun, 1)

  defp stress(id, ops, i, deadline, timeout, lat, err) do
    if System.monotonic_time(:millisecond) >= deadline do
      {lat, err}
    else
      op = elem(ops, rem(i, tuple_size(ops)))
      t0 = System.monotonic_time()
      outcome = run_operation(id, op, timeout)
      us = System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond)
      err = if outcome == :ok, do: err, else: [outcome | err]
      stress(id, ops, i + 1, deadline, timeout, [us | lat], err)
    end
  end

  defp run_operation(id, {m, f, a}, timeout) do
    case Sandbox.call(id, m, f, a, timeout: timeout) do
      {:ok, _} -> :ok
      {:error, reason} -> reason
    end
  end

  defp run_operation(id, fun, _timeout) do
    case fun.(id) do
      {:error, reason} -> reason
      _ -> :ok
    end
  rescue
    e -> {:exception, e}
  catch
    :exit, reason -> {:exit, reason}
    :throw, value -> {:throw, value}
  end

  defp percentiles([]), do: %{p50: 0, p99: 0, max: 0}

  defp percentiles(sorted) do
    n = length(sorted)
    tuple = List.to_tuple(sorted)
    at = fn q -> elem(tuple, min(n - 1, trunc(q * (n - 1) + 0.5))) end
    %{p50: at.(0.5), p99: at.(0.99), max: elem(tuple, n - 1)}
  end
end
