defmodule Sandbox.Test.GenServerHelpers do
  @moduledoc """
  Testing GenServers: reading state, calls that cannot hang a test, casts
  followed by a synchronisation, concurrent load and crash recovery —
  Supertester's `GenServerHelpers`, under our name.

      import Sandbox.Test.GenServerHelpers

      test "a cast is handled", %{sandbox: id} do
        :ok = cast_and_sync({id, MyApp.Counter}, {:add, 5})
        {:ok, %{count: 5}} = get_server_state_safely({id, MyApp.Counter})
      end

  A server is a pid, a name, or `{sandbox_id, module}` for the process of a
  sandbox registered under `module`'s name (see `Sandbox.Test.OTPHelpers`).
  Nothing here sleeps: synchronisation is a call or a `:sys` round trip,
  which the server answers after every message sent to it before.
  """

  alias Sandbox.Test.{OTPHelpers, Processes}

  @type server :: Processes.server_ref()

  @doc """
  The state of `server` (`:sys.get_state/2`, 5 s): `{:ok, state}` or
  `{:error, :noproc | :timeout | reason}`; never raises.
  """
  @spec get_server_state_safely(server) :: {:ok, term} | {:error, term}
  def get_server_state_safely(server) do
    {:ok, :sys.get_state(Processes.name(server), 5000)}
  catch
    :exit, reason -> {:error, exit_reason(reason)}
  end

  @doc """
  `GenServer.call(server, message, timeout)` as `{:ok, reply}` or
  `{:error, :noproc | :timeout | reason}` (the exit reason); never
  raises or exits.
  """
  @spec call_with_timeout(server, term, timeout) :: {:ok, term} | {:error, term}
  def call_with_timeout(server, message, timeout \\ 1000) do
    {:ok, GenServer.call(Processes.name(server), message, timeout)}
  catch
    :exit, reason -> {:error, exit_reason(reason)}
  end

  @doc """
  Casts `message` to `server`, then synchronises with it, so that the cast
  has been handled when this returns.

  `sync` is how: `:sys` (the default) is a `:sys.get_state/2` round trip,
  which every OTP process answers after the messages sent before it, so
  the server needs no code for it; any other term is sent with
  `GenServer.call/3` (Supertester's `:__supertester_sync__` convention).
  Returns `:ok` (a `:sys` sync, or a call answered `:ok`), `{:ok, reply}`,
  or `{:error, :noproc | :timeout | reason}`.
  """
  @spec cast_and_sync(server, term, term) :: :ok | {:ok, term} | {:error, term}
  def cast_and_sync(server, message, sync \\ :sys) do
    name = Processes.name(server)
    :ok = GenServer.cast(name, message)

    case sync do
      :sys ->
        _ = :sys.get_state(name, 5000)
        :ok

      sync ->
        case GenServer.call(name, sync, 5000) do
          :ok -> :ok
          reply -> {:ok, reply}
        end
    end
  catch
    :exit, reason -> {:error, exit_reason(reason)}
  end

  @doc """
  Sends each of `calls` to `server` from `count` processes at once (all
  started before any call is made): `{:ok, [{call, [result]}]}`, in the
  order of `calls`, each result `{:ok, reply}` or `{:error, reason}` (as
  `call_with_timeout/3`, 5 s).
  """
  @spec concurrent_calls(server, [term], pos_integer) :: {:ok, [{term, [term]}]}
  def concurrent_calls(server, calls, count \\ 10)
      when is_list(calls) and is_integer(count) and count > 0 do
    caller = self()
    go = make_ref()
    jobs = for {call, i} <- Enum.with_index(calls), _ <- 1..count, do: {i, call}

    workers =
      for {i, call} <- jobs do
        {pid, ref} =
          spawn_monitor(fn ->
            receive do
              ^go -> send(caller, {self(), i, call_with_timeout(server, call, 5000)})
            end
          end)

        {pid, ref}
      end

    # Every caller exists before the first call: they run concurrently.
    for {pid, _} <- workers, do: send(pid, go)

    results =
      for {pid, ref} <- workers do
        receive do
          {^pid, i, result} ->
            Process.demonitor(ref, [:flush])
            {i, result}

          {:DOWN, ^ref, :process, ^pid, reason} ->
            {nil, {:error, reason}}
        end
      end

    grouped = Enum.group_by(results, &elem(&1, 0), &elem(&1, 1))
    {:ok, for({call, i} <- Enum.with_index(calls), do: {call, Map.get(grouped, i, [])})}
  end

  @doc """
  Runs `operations` against `server` from several processes (twice the
  schedulers) for `duration` ms, each process picking operations at
  random: `{:call, message}` (a call) or `{:cast, message}`. Once the
  duration is over it synchronises with the server (so every cast has been
  handled) and returns `{:ok, %{calls: n, casts: n, errors: n,
  error_samples: [reason], duration_ms: n}}` (`errors`: calls that failed;
  up to 10 distinct reasons as samples).

  ## Options

    * `:call_timeout` — the timeout of each call, ms (5,000)
  """
  @spec stress_test_server(server, [{:call, term} | {:cast, term}], pos_integer, keyword) ::
          {:ok, map}
  def stress_test_server(server, operations, duration \\ 5000, opts \\ [])
      when is_list(operations) and operations != [] and is_integer(duration) and duration > 0 do
    for op <- operations, not match?({kind, _} when kind in [:call, :cast], op) do
      raise ArgumentError, "expected {:call, message} or {:cast, message}, got: #{inspect(op)}"
    end

    name = Processes.name(server)
    timeout = Keyword.get(opts, :call_timeout, 5000)
    ops = List.to_tuple(operations)
    started = System.monotonic_time(:millisecond)
    deadline = started + duration
    caller = self()

    workers =
      for _ <- 1..(System.schedulers_online() * 2) do
        spawn_monitor(fn ->
          send(caller, {self(), stress(name, ops, deadline, timeout, zero())})
        end)
      end

    stats =
      Enum.reduce(workers, zero(), fn {pid, ref}, acc ->
        receive do
          {^pid, stats} ->
            Process.demonitor(ref, [:flush])
            merge(acc, stats)

          {:DOWN, ^ref, :process, ^pid, reason} ->
            merge(acc, %{zero() | errors: 1, error_samples: [{:worker_exit, reason}]})
        end
      end)

    _ = OTPHelpers.wait_for_genserver_sync(server, 5000)

    {:ok,
     stats
     |> Map.update!(:error_samples, &Enum.reverse/1)
     |> Map.put(:duration_ms, System.monotonic_time(:millisecond) - started)}
  end

  defp zero, do: %{calls: 0, casts: 0, errors: 0, error_samples: []}

  defp stress(name, ops, deadline, timeout, acc) do
    if System.monotonic_time(:millisecond) >= deadline do
      acc
    else
      acc =
        case elem(ops, :rand.uniform(tuple_size(ops)) - 1) do
          {:call, message} ->
            case call_with_timeout(name, message, timeout) do
              {:ok, _} -> %{acc | calls: acc.calls + 1}
              {:error, reason} -> error(acc, reason)
            end

          {:cast, message} ->
            GenServer.cast(name, message)
            %{acc | casts: acc.casts + 1}
        end

      stress(name, ops, deadline, timeout, acc)
    end
  end

  defp error(acc, reason) do
    samples =
      if length(acc.error_samples) < 10 and reason not in acc.error_samples,
        do: [reason | acc.error_samples],
        else: acc.error_samples

    %{acc | errors: acc.errors + 1, error_samples: samples}
  end

  defp merge(a, b) do
    samples = Enum.take(Enum.uniq(b.error_samples ++ a.error_samples), 10)

    %{
      calls: a.calls + b.calls,
      casts: a.casts + b.casts,
      errors: a.errors + b.errors,
      error_samples: samples
    }
  end

  @doc """
  Crashes `server` with exit reason `reason` and waits for it to be
  restarted: `{:ok, %{recovered: boolean, original_pid: pid, new_pid: pid
  | nil, crash_reason: reason}}` (`recovered: false` with
  `recovery_error: :not_restarted | :timeout` when no restart came within
  5 s), or `{:error, :noproc}` when there is no such process.

  A registered server is found again by its name; a pid, by its place in
  its supervisor (the child with the same id). Waiting synchronises with
  the supervisor, never sleeps.
  """
  @spec test_server_crash_recovery(server, term) :: {:ok, map} | {:error, term}
  def test_server_crash_recovery(server, reason) do
    case Processes.alive(server) do
      nil ->
        {:error, :noproc}

      pid ->
        sup = Processes.supervisor_of(pid)
        child_id = sup && child_id(sup, pid)
        ref = Process.monitor(pid)
        Process.exit(pid, reason)
        {:ok, _} = Processes.await_down(ref, :infinity)

        recovery =
          if is_pid(server) do
            await_child(sup, child_id, pid, Processes.deadline(5000))
          else
            Processes.await_registered(server, pid, sup, Processes.deadline(5000))
          end

        base = %{original_pid: pid, crash_reason: reason}

        case recovery do
          {:ok, new} ->
            {:ok, Map.merge(base, %{recovered: true, new_pid: new})}

          {:error, why} ->
            {:ok, Map.merge(base, %{recovered: false, new_pid: nil, recovery_error: why})}
        end
    end
  end

  defp child_id(sup, pid) do
    case Processes.sync_children(sup, Processes.deadline(5000)) do
      children when is_list(children) ->
        Enum.find_value(children, fn {id, child, _, _} -> if child == pid, do: {:id, id} end)

      _ ->
        nil
    end
  end

  defp await_child(nil, _id, _old, _deadline), do: {:error, :not_restarted}
  defp await_child(_sup, nil, _old, _deadline), do: {:error, :not_restarted}

  defp await_child(sup, {:id, id}, old, deadline) do
    case Processes.sync_children(sup, deadline) do
      children when is_list(children) ->
        case List.keyfind(children, id, 0) do
          {_, pid, _, _} when is_pid(pid) and pid != old ->
            {:ok, pid}

          # Restarting, or the exit not handled yet.
          {_, child, _, _} when child == :restarting or child == old ->
            if Processes.left(deadline) == 0,
              do: {:error, :timeout},
              else: await_child(sup, {:id, id}, old, deadline)

          _ ->
            {:error, :not_restarted}
        end

      :timeout ->
        {:error, :timeout}

      :noproc ->
        {:error, :not_restarted}
    end
  end

  defp exit_reason({:noproc, _}), do: :noproc
  defp exit_reason({:timeout, _}), do: :timeout
  defp exit_reason({reason, {_m, _f, _a}}), do: reason
  defp exit_reason(reason), do: reason
end
