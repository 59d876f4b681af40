defmodule Sandbox.GroupLeader do
  @moduledoc """
  A sandbox's group leader, as `application_master` is an application's.

  Every process spawned inside a sandbox inherits its group leader, which is
  how the library knows which processes belong to which sandbox: for
  `resource_usage`, for killing everything on destroy, and for running
  `Sandbox.call/5` and `Sandbox.run/3` inside it. I/O requests are passed
  on to the upstream group leader (the one of the process that started the
  sandbox), which answers the requester directly; with `capture: true` the
  output of `:put_chars` requests is also kept and can be read with
  `output/1`.

  Membership is best effort: a process can change its own group leader
  (and then no longer counts as the sandbox's), and host servers can do
  work on a sandbox's behalf. Destroy therefore also stops the sandbox's
  supervision tree and kills linked processes.

  Every group leader is recorded in the `Sandbox.GroupLeader` ETS table as
  `{pid, sandbox_id}`, so that one sweep over the process table can
  attribute processes to sandboxes (`members/1`, `sweep/0`). A group leader
  can have a parent group leader (`Sandbox.call/5` gives each call its own,
  so that a timed-out call's processes can be found and killed); its members
  count as the parent's sandbox's.
  """

  use GenServer

  @table __MODULE__

  @doc false
  def create_table do
    :ets.new(@table, [:set, :public, :named_table, read_concurrency: true])
  end

  @doc """
  Starts a group leader for sandbox `id` (linked to the caller).

  ## Options

    * `:upstream` — where I/O goes (default: the caller's group leader)
    * `:capture` — keep a copy of the output (default `false`)
  """
  @spec start_link(String.t(), keyword) :: GenServer.on_start()
  def start_link(id, opts \\ []) do
    upstream = Keyword.get_lazy(opts, :upstream, fn -> Process.group_leader() end)
    GenServer.start_link(__MODULE__, {id, upstream, Keyword.get(opts, :capture, false)})
  end

  @doc "The captured output so far (with `capture: true`)."
  @spec output(pid) :: String.t()
  def output(gl), do: GenServer.call(gl, :output)

  @doc "Stops the group leader."
  @spec stop(pid) :: :ok
  def stop(gl), do: GenServer.stop(gl, :normal, :infinity)

  @doc """
  The processes whose group leader is `gl` or one of `gl`'s children
  (group leaders started with `upstream: gl`).
  """
  @spec members(pid) :: [pid]
  def members(gl) do
    gls = MapSet.new([gl | children(gl)])

    for pid <- Process.list(),
        {:group_leader, leader} <- [Process.info(pid, :group_leader)],
        MapSet.member?(gls, leader),
        do: pid
  end

  defp children(gl) do
    for [child] <- :ets.match(@table, {:"$1", :_, gl}), do: child
  end

  @doc """
  Kills `pids` (`:kill`) and returns once every one of them is dead.
  """
  @spec kill_and_wait([pid]) :: :ok
  def kill_and_wait(pids) do
    refs = for pid <- pids, do: Process.monitor(pid)
    for pid <- pids, do: Process.exit(pid, :kill)

    for ref <- refs do
      receive do
        {:DOWN, ^ref, :process, _, _} -> :ok
      end
    end

    :ok
  end

  @doc """
  Kills every member of `gl` (`members/1`) and waits until they are dead,
  including processes they spawn meanwhile.
  """
  @spec kill_members(pid) :: :ok
  def kill_members(gl) do
    case members(gl) do
      [] ->
        :ok

      pids ->
        kill_and_wait(pids)
        kill_members(gl)
    end
  end

  @doc """
  Runs `fun` in a new process whose group leader is `gl`; returns its pid.
  The process is not linked to the caller.
  """
  @spec spawn_in(pid, (() -> any)) :: pid
  def spawn_in(gl, fun) do
    spawn(fn ->
      Process.group_leader(self(), gl)
      fun.()
    end)
  end

  @impl true
  def init({id, upstream, capture}) do
    :ets.insert(@table, {self(), id, upstream})
    {:ok, %{id: id, upstream: upstream, capture: capture, output: []}}
  end

  @impl true
  def handle_call(:output, _from, state) do
    {:reply, state.output |> Enum.reverse() |> IO.iodata_to_binary(), state}
  end

  @impl true
  def handle_info({:io_request, from, reply_as, request}, state) do
    send(state.upstream, {:io_request, from, reply_as, request})
    {:noreply, capture(request, state)}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, _state) do
    :ets.delete(@table, self())
  end

  defp capture(_request, %{capture: false} = state), do: state

  defp capture({:put_chars, chars}, state), do: keep(chars, state)
  defp capture({:put_chars, _encoding, chars}, state), do: keep(chars, state)

  defp capture({:put_chars, _encoding, m, f, a}, state) do
    keep(apply(m, f, a), state)
  rescue
    _ -> state
  end

  defp capture({:requests, requests}, state), do: Enum.reduce(requests, state, &capture/2)
  defp capture(_request, state), do: state

  defp keep(chars, state) do
    %{state | output: [IO.chardata_to_string(chars) | state.output]}
  rescue
    _ -> state
  end
end
