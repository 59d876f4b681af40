defmodule Sandbox.Test.ResourceHelpers do
  @moduledoc false
  # Helpers for the resource monitor's tests: the fixture sandbox, and a
  # watch over the host's figures while a bomb runs.

  import Sandbox.Test.Fixtures, only: [await_event: 3]

  @hog Path.expand("../fixtures/resources/hog", __DIR__)

  def hog_path, do: @hog

  @doc "Creates a sandbox of the hog fixture with `limits`; returns its info."
  def create_hog!(id, limits \\ %{}) do
    opts = [sandbox_path: @hog] ++ if(limits == %{}, do: [], else: [resource_limits: limits])
    {:ok, info} = Sandbox.create_sandbox(id, :hog, opts)
    info
  end

  @doc """
  Starts watching the host: the VM's process count and total memory, read
  every millisecond (the watch is the measurement) until `stop_watch/1`,
  which returns the baseline and the peaks. With `notify: {figure, bound}`
  the caller gets `{:bound_passed, figure}` once the figure (`:processes`
  or `:memory`) is more than `bound` above its baseline.
  """
  def start_watch(opts \\ []) do
    parent = self()
    :erlang.garbage_collect()
    base = %{processes: :erlang.system_info(:process_count), memory: :erlang.memory(:total)}

    pid =
      spawn_link(fn ->
        Process.flag(:priority, :high)
        send(parent, {:watching, self()})
        watch(base, base, parent, opts[:notify])
      end)

    receive do
      {:watching, ^pid} -> pid
    end
  end

  defp watch(base, peak, parent, notify) do
    peak = %{
      processes: max(peak.processes, :erlang.system_info(:process_count)),
      memory: max(peak.memory, :erlang.memory(:total))
    }

    notify =
      case notify do
        {figure, bound}
        when :erlang.map_get(figure, peak) - :erlang.map_get(figure, base) > bound ->
          send(parent, {:bound_passed, figure})
          nil

        other ->
          other
      end

    receive do
      {:stop, from} -> send(from, {:watched, self(), base, peak})
    after
      1 -> watch(base, peak, parent, notify)
    end
  end

  def stop_watch(pid) do
    send(pid, {:stop, self()})

    receive do
      {:watched, ^pid, base, peak} -> %{base: base, peak: peak}
    end
  end

  @doc """
  The host's figures once they are back within `slack` (`%{processes: n,
  memory: bytes}`) of `base`, read every millisecond (freed memory can
  reach the allocators' counters late), or the last ones read after
  `timeout` ms.
  """
  def await_back(base, slack, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    back(base, slack, deadline)
  end

  defp back(base, slack, deadline) do
    :erlang.garbage_collect()
    now = %{processes: :erlang.system_info(:process_count), memory: :erlang.memory(:total)}

    back? =
      now.processes - base.processes < slack.processes and
        now.memory - base.memory < slack.memory

    if back? or System.monotonic_time(:millisecond) > deadline do
      now
    else
      receive do
      after
        1 -> back(base, slack, deadline)
      end
    end
  end

  @doc """
  Calls `Hog.Server.ping/0` of sandbox `id` in a loop in another process
  until `stop_pinger/1`, which returns `{ok_count, other_results}`.
  """
  def start_pinger(id) do
    parent = self()
    spawn_link(fn -> ping_loop(id, parent, 0, []) end)
  end

  defp ping_loop(id, parent, ok, other) do
    {ok, other} =
      case Sandbox.call(id, Hog.Server, :ping, []) do
        {:ok, {:pong, _}} -> {ok + 1, other}
        result -> {ok, [result | other]}
      end

    receive do
      {:stop, from} -> send(from, {:pinged, self(), ok, other})
    after
      0 -> ping_loop(id, parent, ok, other)
    end
  end

  def stop_pinger(pid) do
    send(pid, {:stop, self()})

    receive do
      {:pinged, ^pid, ok, other} -> {ok, other}
    end
  end

  @doc "Waits for `[:sandbox, :limit, :exceeded]` of `id` (subscribed)."
  def await_exceeded(id, timeout \\ 30_000), do: await_event(id, :exceeded, timeout)
end
