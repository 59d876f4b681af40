defmodule Sandbox.ResourceMonitor.Throttle do
  @moduledoc """
  The duty cycle of one sandbox over its CPU share
  (`max_cpu_percentage`).

  Started by `Sandbox.ResourceMonitor` (linked to it) when a sandbox's
  measured CPU goes over its limit, and stopped when the sandbox is back
  under it. Each period (the monitor's interval) is split in a run phase of
  `fraction × period` ms, during which the sandbox's processes run, and an
  off phase during which they are suspended with
  `:erlang.suspend_process/2`. The monitor sets the fraction from what it
  measures (see `Sandbox.ResourceMonitor`) and hands over the current
  members at every sample.

  Only this process suspends, so when it exits, for whatever reason, the VM
  resumes every process it had suspended: a sandbox cannot stay frozen
  because its throttle went away. It runs at high priority, so the phases
  keep their length when the sandbox's processes fill the run queues.
  """

  @doc "Starts a throttle, linked to the caller, with `fraction` (0 < f < 1) and `pids`."
  @spec start_link(float, [pid], pos_integer) :: pid
  def start_link(fraction, pids, period) do
    spawn_link(fn ->
      Process.flag(:priority, :high)
      run_phase(%{fraction: fraction, pids: pids, period: period, suspended: []})
    end)
  end

  @doc "Sets the fraction of each period the sandbox runs, and its current members."
  @spec update(pid, float, [pid]) :: :ok
  def update(throttle, fraction, pids) do
    send(throttle, {:update, fraction, pids})
    :ok
  end

  @doc "Stops the throttle and waits until it is gone (its processes are resumed)."
  @spec stop(pid) :: :ok
  def stop(throttle) do
    ref = Process.monitor(throttle)
    Process.unlink(throttle)
    Process.exit(throttle, :kill)

    receive do
      {:DOWN, ^ref, :process, _, _} -> :ok
    end
  end

  defp run_phase(state) do
    state = resume_all(state)
    run = max(round(state.fraction * state.period), 1)
    wait(state, System.monotonic_time(:millisecond) + run, &off_phase/1)
  end

  defp off_phase(state) do
    suspended =
      for pid <- state.pids,
          pid != self(),
          suspend(pid),
          do: pid

    off = max(state.period - round(state.fraction * state.period), 1)
    wait(%{state | suspended: suspended}, System.monotonic_time(:millisecond) + off, &run_phase/1)
  end

  # Waits until `deadline`, taking updates meanwhile; then `next`.
  defp wait(state, deadline, next) do
    remaining = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:update, fraction, pids} ->
        wait(%{state | fraction: fraction, pids: pids}, deadline, next)
    after
      remaining -> next.(state)
    end
  end

  defp suspend(pid) do
    :erlang.suspend_process(pid, [:asynchronous, :unless_suspending])
  catch
    :error, _ -> false
  end

  defp resume_all(%{suspended: suspended} = state) do
    for pid <- suspended do
      try do
        :erlang.resume_process(pid)
      catch
        :error, _ -> :ok
      end
    end

    %{state | suspended: []}
  end
end
