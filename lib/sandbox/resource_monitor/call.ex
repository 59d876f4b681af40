defmodule Sandbox.ResourceMonitor.Call do
  @moduledoc """
  Runs a function in a new process of a sandbox, for `Sandbox.call/5` and
  `Sandbox.run/3`, in time independent of the number of processes in the
  VM.

  The process gets the sandbox's group leader (so it and everything it
  spawns are the sandbox's members) and traces itself with
  `[:procs, :set_on_spawn]`, with the *caller* as its tracer: while the
  caller waits for the result it receives `spawn`/`exit` events of the
  call's process tree and keeps the set of its live processes. Nothing
  sweeps the process table:

    * a call that spawned nothing costs one spawn, one trace flag and the
      process's own exit event;
    * when the call returns and processes it spawned are still running,
      they stay in the sandbox (they already have its group leader) and
      are untraced, and the caller collects the remaining trace events
      (`:erlang.trace_delivered/1`) so that none reaches its mailbox later;
    * on timeout, the call's process and every process it spawned,
      directly or not, are killed; processes spawned while that happens are
      killed as their spawn events arrive, until a round finds none.

  The caller pays for what the call spawns: about a microsecond per
  process of the tree (two trace messages and an exit). When the tree alone
  grows past the room its sandbox had at its latest sample (a process bomb,
  most likely), the caller asks `Sandbox.ResourceMonitor` for a sample at
  once and lets the tree go (untraces it): the monitor stops the sandbox if
  it is over its `max_processes`, and from then on a timeout kills only
  what was followed until then.

  Limits: a process of the tree that turns its own tracing off, or that is
  already traced by another tracer (the caller traced with `set_on_spawn`
  by a debugging tool, say), is not followed: the call then runs untraced
  and a timeout kills only its own process. Processes that other processes
  (host servers) start on the call's behalf are sandbox members if they get
  its group leader, but are not the call's descendants.
  """

  @type result ::
          {:ok, term}
          | {:error, {:exception, Exception.t(), Exception.stacktrace()}}
          | {:error, {:exit, term}}
          | {:error, :timeout}

  @flags [:procs, :set_on_spawn]

  @doc """
  Runs `fun` in a new process whose group leader is `gl`; returns its
  result within `timeout` ms (or `:infinity`), see `Sandbox.call/5`.

  ## Options

    * `:sandbox` — the sandbox's id: while the call runs, a process tree
      that grows past the room the sandbox had at its latest sample
      (`Sandbox.ResourceMonitor.room/1`) makes the monitor sample at once
      (`Sandbox.ResourceMonitor.suspect/1`)
  """
  @spec run(pid, (() -> term), timeout, keyword) :: result
  def run(gl, fun, timeout, opts \\ []) when is_pid(gl) and is_function(fun, 0) do
    caller = self()
    ref = make_ref()
    id = opts[:sandbox]
    room = if id, do: Sandbox.ResourceMonitor.room(id)
    {pid, mon} = :erlang.spawn_opt(fn -> body(caller, ref, gl, fun) end, [:monitor])
    deadline = if timeout == :infinity, do: :infinity, else: now() + timeout

    await(%{
      pid: pid,
      mon: mon,
      ref: ref,
      deadline: deadline,
      tree: %{pid => true},
      live: 1,
      new: [],
      sandbox: id,
      room: room
    })
  end

  defp body(caller, ref, gl, fun) do
    traced? = trace_self(caller)
    Process.group_leader(self(), gl)

    result =
      try do
        {:ok, fun.()}
      rescue
        e -> {:error, {:exception, e, __STACKTRACE__}}
      catch
        :exit, reason -> {:error, {:exit, reason}}
        :throw, value -> {:error, {:exit, {:nocatch, value}}}
      end

    send(caller, {ref, traced?, result})
  end

  defp trace_self(caller) do
    case :erlang.trace_info(self(), :tracer) do
      {:tracer, []} -> :erlang.trace(self(), true, [{:tracer, caller} | @flags]) == 1
      _ -> false
    end
  catch
    :error, _ -> false
  end

  # Waits for the result, following the call's process tree meanwhile.
  defp await(%{pid: pid, mon: mon, ref: ref, tree: tree} = call) do
    receive do
      {^ref, traced?, result} ->
        finish(call, traced?, result)

      {:DOWN, ^mon, :process, ^pid, reason} ->
        call |> settle(:untrace) |> done({:error, {:exit, reason}})

      {:trace, _, _, _} = event when is_map_key(tree, elem(event, 1)) ->
        await(track(call, event))

      {:trace, _, _, _, _} = event when is_map_key(tree, elem(event, 1)) ->
        await(track(call, event))

      {:trace, _, :spawned, parent, _} = event when is_map_key(tree, parent) ->
        await(track(call, event))
    after
      remaining(call.deadline) ->
        call = settle(call, :kill)

        receive do
          {^ref, _, _} -> :ok
        after
          0 -> :ok
        end

        done(call, {:error, :timeout})
    end
  end

  # The call returned: wait for its process's exit event (or its DOWN when
  # the process was not traced), then let go of what it left running.
  defp finish(call, false, result) do
    receive do
      {:DOWN, ref, :process, _, _} when ref == call.mon -> :ok
    end

    done(call, result)
  end

  defp finish(%{pid: pid, mon: mon, tree: tree} = call, true, result) do
    receive do
      {:trace, ^pid, :exit, _} = event ->
        Process.demonitor(mon, [:flush])
        call = track(call, event)

        if map_size(call.tree) == 1,
          do: done(call, result),
          else: call |> settle(:untrace) |> done(result)

      {:DOWN, ^mon, :process, ^pid, _} ->
        # Tracing was turned off in the process: collect what is in flight.
        call |> settle(:untrace) |> done(result)

      {:trace, _, _, _} = event when is_map_key(tree, elem(event, 1)) ->
        finish(track(call, event), true, result)

      {:trace, _, _, _, _} = event when is_map_key(tree, elem(event, 1)) ->
        finish(track(call, event), true, result)

      {:trace, _, :spawned, parent, _} = event when is_map_key(tree, parent) ->
        finish(track(call, event), true, result)
    end
  end

  defp done(call, result) do
    Process.demonitor(call.mon, [:flush])
    result
  end

  # Untraces (or kills) every live process of the tree, then collects the
  # trace events still in flight; repeats while they reveal new processes.
  defp settle(call, action) do
    live = for {p, true} <- call.tree, do: p
    settle(%{call | new: []}, action, live)
  end

  defp settle(call, action, pids) do
    apply_action(action, pids)
    ref = :erlang.trace_delivered(:all)
    call = drain(ref, %{call | new: []})
    if call.new == [], do: call, else: settle(call, action, call.new)
  end

  # (Without asking whom a process is traced by first: that costs ~10 times
  # more than the untrace, and only a tool that traced a process of the
  # call's tree meanwhile could lose its `procs` flags.)
  defp apply_action(:untrace, pids) do
    for pid <- pids do
      try do
        :erlang.trace(pid, false, @flags)
      catch
        :error, _ -> :ok
      end
    end
  end

  defp apply_action(:kill, pids), do: kill_all(pids)

  @doc """
  Kills `pids` and returns once all are gone. The exit signals go first,
  all of them (a bomb's spawner stops as soon as possible), then the
  monitors (a process already dead answers at once); the `:DOWN` messages
  are taken in whatever order they come (waiting for each in turn would
  scan the mailbox once per process: quadratic for a bomb's thousands).
  """
  @spec kill_all([pid]) :: :ok
  def kill_all(pids) do
    for pid <- pids, do: Process.exit(pid, :kill)
    pids |> Map.new(&{Process.monitor(&1), true}) |> await_down()
  end

  defp await_down(refs) when map_size(refs) == 0, do: :ok

  defp await_down(refs) do
    receive do
      {:DOWN, ref, :process, _, _} when is_map_key(refs, ref) -> await_down(Map.delete(refs, ref))
    end
  end

  defp drain(ref, %{tree: tree} = call) do
    receive do
      {:trace_delivered, :all, ^ref} ->
        call

      {:trace, _, _, _} = event when is_map_key(tree, elem(event, 1)) ->
        drain(ref, track(call, event))

      {:trace, _, _, _, _} = event when is_map_key(tree, elem(event, 1)) ->
        drain(ref, track(call, event))

      {:trace, _, :spawned, parent, _} = event when is_map_key(tree, parent) ->
        drain(ref, track(call, event))
    end
  end

  # Follows one trace event of the tree: a new process (from its parent's
  # `spawn` event or its own `spawned` one, whichever comes first) or an
  # exit; the others (links, names) change nothing.
  defp track(call, {:trace, _parent, :spawn, child, _}), do: add(call, child)
  defp track(call, {:trace, child, :spawned, _parent, _}), do: add(call, child)

  defp track(%{tree: tree} = call, {:trace, pid, :exit, _}) do
    case tree do
      %{^pid => true} -> %{call | tree: Map.put(tree, pid, false), live: call.live - 1}
      _ -> call
    end
  end

  defp track(call, _event), do: call

  defp add(%{tree: tree} = call, child) when is_map_key(tree, child), do: call

  defp add(call, child) do
    call = %{
      call
      | tree: Map.put(call.tree, child, true),
        live: call.live + 1,
        new: [child | call.new]
    }

    if is_integer(call.room) and call.live > call.room do
      # A process bomb, most likely: the monitor samples now (and stops the
      # sandbox if it is over), and the tree is let go at once, so that
      # what it spawns next is neither traced nor reported to the caller.
      Sandbox.ResourceMonitor.suspect(call.sandbox)
      apply_action(:untrace, for({p, true} <- call.tree, do: p))
      %{call | room: nil}
    else
      call
    end
  end

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: max(deadline - now(), 0)

  defp now, do: System.monotonic_time(:millisecond)
end
