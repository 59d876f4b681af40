defmodule Sandbox.Test.ClusterFixtures do
  @moduledoc false
  # Code the cluster tests run on peer nodes (funs of a module every node
  # has, so that they can travel): state migrations, and the late
  # distribution check of the C-node.

  alias Sandbox.CNode

  @doc """
  A `:state_migration` function (the Store's integer state to `%{count:
  n}`, as its `code_change/3` does) that halts the VM it runs on when that
  is `target`: a node killed during the commit of a cluster reload.
  """
  def migrate_or_halt(target) do
    fn
      n when is_integer(n) ->
        if node() == target, do: :erlang.halt(0, flush: false)
        %{count: n}

      other ->
        other
    end
  end

  @doc "The Store's migration (integer state to `%{count: n}`) as a function."
  def migrate(n) when is_integer(n), do: %{count: n}
  def migrate(other), do: other

  @doc """
  Run in a VM that is not distributed yet, with :sandbox running: spawns a
  program through the C-node, makes the VM distributed, then talks to the
  program (every pid the C-node knew was encoded before distribution
  started); spawns a second program, stops distribution, and talks to that
  one (its subscriber was encoded under the node name that is gone).
  `{:ok, [output]}` or `{:error, reason}`.
  """
  def cnode_across_distribution(name) do
    false = Node.alive?()
    echo = ["sh", "-c", "while read x; do echo got $x; done"]
    {:ok, %{id: before}} = CNode.spawn(echo, [])
    {:ok, _} = Node.start(name, :longnames)

    try do
      with {:ok, first} <- echo(before, "hi"),
           {:ok, %{id: during}} <- CNode.spawn(echo, []),
           :ok <- Node.stop(),
           {:ok, second} <- echo(during, "bye") do
        {:ok, [first, second]}
      end
    catch
      :exit, reason -> {:error, {:exit, reason, cnode_diagnosis()}}
    end
  end

  # What the C-node's server was doing when a call to it timed out.
  defp cnode_diagnosis do
    pid = Process.whereis(CNode)
    info = Process.info(pid, [:status, :message_queue_len, :current_stacktrace, :messages])

    state =
      try do
        st = :sys.get_state(pid, 5_000)
        Map.take(st, [:dist, :dist_host, :dist_pending, :pending, :os_pid])
      catch
        :exit, e -> {:no_state, e}
      end

    %{info: info, state: state, node: node(), creation: :erlang.system_info(:creation)}
  end

  defp echo(id, text) do
    :ok = CNode.write_stdin(id, text <> "\n")

    receive do
      {:sandbox_cnode, ^id, {:stdout, out}} -> {:ok, out}
    after
      10_000 -> {:error, {:no_output, text}}
    end
  end

  @doc """
  Makes the server registered as `name` (a Store) busy: a process of this
  node calls it with `{:block, self()}`, which keeps it inside the call
  until it gets `:release`. Returns the server's pid once it is blocked.
  """
  def block(name) do
    me = self()
    spawn(fn -> GenServer.call(name, {:block, me}, :infinity) end)

    receive do
      {:blocked, server} -> server
    after
      10_000 -> raise "#{inspect(name)} did not block"
    end
  end

  @doc """
  Waits until this node's view of sandbox `id` (`Sandbox.Cluster.nodes/1`)
  is `expected` (sorted), following `Sandbox.Cluster.monitor/1`'s
  messages. `:ok` or `{:timeout, nodes}`.
  """
  def await_view(id, expected, timeout \\ 10_000) do
    {ref, nodes} = Sandbox.Cluster.monitor(id)
    deadline = System.monotonic_time(:millisecond) + timeout

    try do
      await_view(ref, id, Enum.sort(expected), nodes, deadline)
    after
      Sandbox.Cluster.demonitor(ref)
    end
  end

  defp await_view(_ref, _id, expected, expected, _deadline), do: :ok

  defp await_view(ref, id, expected, nodes, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^ref, _, {:sandbox, ^id, _}, _} ->
        await_view(ref, id, expected, Sandbox.Cluster.nodes(id), deadline)
    after
      wait -> {:timeout, nodes}
    end
  end

  @doc "Every descendant of OS process `os_pid` (from /proc), now."
  def descendants(os_pid) do
    parents =
      for dir <- File.ls!("/proc"),
          Regex.match?(~r/\A\d+\z/, dir),
          {:ok, stat} <- [File.read("/proc/#{dir}/stat")],
          [_, rest] <- [String.split(stat, ") ", parts: 2)],
          [_state, ppid | _] <- [String.split(rest, " ")],
          do: {String.to_integer(dir), String.to_integer(ppid)}

    children = Enum.group_by(parents, &elem(&1, 1), &elem(&1, 0))
    collect(Map.get(children, os_pid, []), children, [])
  end

  defp collect([], _children, acc), do: acc

  defp collect([pid | rest], children, acc),
    do: collect(Map.get(children, pid, []) ++ rest, children, [pid | acc])

  @doc "The command name of OS process `os_pid` (`/proc/<pid>/comm`), or nil."
  def comm(os_pid) do
    case File.read("/proc/#{os_pid}/comm") do
      {:ok, name} -> String.trim(name)
      _ -> nil
    end
  end
end
