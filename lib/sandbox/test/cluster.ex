defmodule Sandbox.Test.Cluster do
  @moduledoc """
  Real nodes for tests of distributed sandboxes (`Sandbox.Cluster`): the
  seed's ClusterTest integration, built on OTP's `:peer`.

      setup do
        {:ok, nodes} = Sandbox.Test.Cluster.start_nodes(3)
        %{nodes: nodes}
      end

      test "a reload during a partition", %{nodes: [a, b, c] = nodes} do
        :ok = Sandbox.Test.Cluster.partition([[node(), a, b], [c]])
        {:error, %{^c => {:unreachable, ^c}}} = Sandbox.Cluster.hot_reload(nodes, id, beam)
        :ok = Sandbox.Test.Cluster.heal([node() | nodes])
        {:ok, _} = Sandbox.Cluster.reconcile(nodes, id)
      end

  ## Nodes

  `start_nodes/2` makes this VM distributed when it is not (starting
  `epmd -daemon` first when no epmd answers; a unique long name at
  `127.0.0.1`), then starts `:peer` nodes with unique names, this VM's
  cookie and code paths, and the `:sandbox` application running, connected
  to this node and to each other. A peer is controlled through its standard
  input and output, not through distribution, so it can always be stopped,
  even when it is cut off. Peers are stopped by `stop_nodes/1`, when the
  test that started them exits (`ExUnit.Callbacks.on_exit/1` when called
  from a test or `setup_all`), and when their owner process exits; a peer
  also halts when this VM goes away. Stopping waits until the peer's OS
  process (and with it everything it started, such as its C-node) is
  gone. `epmd`, when started here, is left running (it is the machine's).

  Peers run with `prevent_overlapping_partitions` off (`global` would
  otherwise cut extra connections of its own when a partition starts) and
  `dist_auto_connect once`.

  ## Partitions

  `partition/1` cuts every connection between nodes of different groups
  with `:erlang.disconnect_node/1`. With `dist_auto_connect once` on both
  ends (this VM is switched to it by the first partition and back once
  every peer it started is stopped), a connection that was taken down is
  never brought up again implicitly: messages to a node across the cut are
  dropped and calls fail at once with `noconnection`, until `heal/1`
  connects the nodes explicitly (`:net_kernel.connect_node/1`).
  """

  alias __MODULE__.Keeper

  @doc """
  Starts `n` peer nodes (see "Nodes"): `{:ok, nodes}` or `{:error,
  reason}` (no node left running).

  ## Options

    * `:sandbox` — start the `:sandbox` application on them (`true`)
    * `:code_path` — give them this VM's code paths (`true`); with
      `false` they have OTP's only (no Elixir, no Sandbox)
    * `:compiler_pool_size` — warm compile workers per node (`0`: the
      calling node compiles for the cluster)
    * `:log_level` — the nodes' logger level (`:error`)
    * `:args` — extra `erl` arguments (charlists)
    * `:owner` — the process whose exit stops them (the caller)
    * `:boot_timeout` — ms each node may take to start (60,000)
  """
  @spec start_nodes(pos_integer, keyword) :: {:ok, [node]} | {:error, term}
  def start_nodes(n, opts \\ []) when is_integer(n) and n > 0 and is_list(opts) do
    :ok = ensure_distributed()
    owner = Keyword.get(opts, :owner, self())
    keeper = Keeper.ensure_started()
    boot = Keyword.get(opts, :boot_timeout, 60_000)

    started =
      1..n
      |> Task.async_stream(fn _ -> start_peer(opts, boot) end,
        timeout: boot + 5_000,
        on_timeout: :kill_task
      )
      |> Enum.map(fn
        {:ok, result} -> result
        {:exit, reason} -> {:error, {:boot_failed, reason}}
      end)

    for {:ok, peer, node, os_pid} <- started,
        do: Keeper.register(keeper, node, peer, os_pid, owner)

    nodes = for {:ok, _, node, _} <- started, do: node

    with nil <- Enum.find(started, &match?({:error, _}, &1)),
         :ok <- connect_all(nodes),
         :ok <- start_sandbox(nodes, opts) do
      register_on_exit(nodes)
      {:ok, nodes}
    else
      {:error, reason} ->
        stop_nodes(nodes)
        {:error, reason}
    end
  end

  defp start_peer(opts, boot) do
    {host, longnames} = host()
    name = :"sandbox_peer_#{System.pid()}_#{System.unique_integer([:positive])}"

    paths =
      if Keyword.get(opts, :code_path, true) do
        root = List.to_string(:code.root_dir())

        for path <- :code.get_path(),
            not String.starts_with?(List.to_string(path), root),
            arg <- [~c"-pa", path],
            do: arg
      else
        []
      end

    args =
      [~c"-setcookie", Atom.to_charlist(Node.get_cookie())] ++
        [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false"] ++
        [~c"-kernel", ~c"dist_auto_connect", ~c"once"] ++
        [~c"-kernel", ~c"logger_level", ~c"#{Keyword.get(opts, :log_level, :error)}"] ++
        [~c"-sandbox", ~c"compiler_pool_size", ~c"#{Keyword.get(opts, :compiler_pool_size, 0)}"] ++
        paths ++ Keyword.get(opts, :args, [])

    case :peer.start(%{
           name: name,
           host: host,
           longnames: longnames,
           connection: :standard_io,
           args: args,
           wait_boot: boot
         }) do
      {:ok, peer, node} -> {:ok, peer, node, List.to_integer(:peer.call(peer, :os, :getpid, []))}
      {:error, reason} -> {:error, {:boot_failed, reason}}
    end
  catch
    kind, reason -> {:error, {:boot_failed, {kind, reason}}}
  end

  defp host do
    [_, host] = node() |> Atom.to_string() |> String.split("@", parts: 2)
    {String.to_charlist(host), :net_kernel.longnames()}
  end

  # This node connects to every new node, and they to each other.
  defp connect_all(nodes) do
    pairs =
      for {a, i} <- Enum.with_index(nodes), {b, j} <- Enum.with_index(nodes), i < j, do: {a, b}

    Enum.find_value(Enum.map(nodes, &{node(), &1}) ++ pairs, :ok, fn {a, b} ->
      if connect(a, b), do: nil, else: {:error, {:not_connected, a, b}}
    end)
  end

  defp connect(a, b) when a == node(), do: :net_kernel.connect_node(b)

  defp connect(a, b) do
    :erpc.call(a, :net_kernel, :connect_node, [b], 15_000)
  catch
    _, _ -> false
  end

  defp start_sandbox(nodes, opts) do
    if Keyword.get(opts, :sandbox, true) and Keyword.get(opts, :code_path, true) do
      nodes
      |> Enum.map(&{&1, :erpc.send_request(&1, Application, :ensure_all_started, [:sandbox])})
      |> Enum.find_value(:ok, fn {node, req} ->
        case :erpc.receive_response(req, 60_000) do
          {:ok, _} -> nil
          {:error, reason} -> {:error, {:sandbox_not_started, node, reason}}
        end
      end)
    else
      :ok
    end
  end

  # Inside a test (or setup_all), the nodes go when it ends.
  defp register_on_exit(nodes) do
    if Code.ensure_loaded?(ExUnit.Callbacks) do
      try do
        apply(ExUnit.Callbacks, :on_exit, [fn -> stop_nodes(nodes) end])
      rescue
        _ -> :ok
      end
    end

    :ok
  end

  @doc """
  Stops `nodes` (started by `start_nodes/2`) and waits until their OS
  processes are gone. Nodes that are not running (any more) are skipped.
  """
  @spec stop_nodes([node]) :: :ok
  def stop_nodes(nodes) when is_list(nodes) do
    case Process.whereis(Keeper) do
      nil -> :ok
      keeper -> Keeper.stop(keeper, nodes)
    end
  end

  @doc "The nodes started by `start_nodes/2` that are still running."
  @spec nodes() :: [node]
  def nodes do
    case Process.whereis(Keeper) do
      nil -> []
      keeper -> Keeper.nodes(keeper)
    end
  end

  @doc "The OS pid of a node started by `start_nodes/2`, or `nil`."
  @spec os_pid(node) :: pos_integer | nil
  def os_pid(node) do
    case Process.whereis(Keeper) do
      nil -> nil
      keeper -> Keeper.os_pid(keeper, node)
    end
  end

  @doc """
  Cuts every connection between nodes of different `groups` (lists of
  nodes; this node may be in one of them), and keeps them cut until
  `heal/1` (see "Partitions"). The nodes must be connected when it is
  called. `:ok`, or `{:error, {:unreachable, node}}` when a node to be cut
  from another cannot be reached to do it.
  """
  @spec partition([[node]]) :: :ok | {:error, term}
  def partition(groups) when is_list(groups) do
    unless Enum.all?(groups, &(is_list(&1) and Enum.all?(&1, fn n -> is_atom(n) end))),
      do: raise(ArgumentError, "expected a list of lists of nodes, got: #{inspect(groups)}")

    me = node()
    all = groups |> List.flatten() |> Enum.uniq()
    Keeper.once(Keeper.ensure_started())

    indexed = Enum.with_index(groups)

    pairs =
      for {g1, i} <- indexed, {g2, j} <- indexed, i < j, a <- g1, b <- g2, a != b, do: {a, b}

    # Every node refuses implicit reconnection first; the cuts that do not
    # involve this node go before those that do (it must reach the others
    # to have them cut).
    with :ok <-
           on_each(List.delete(all, me), :application, :set_env, [
             :kernel,
             :dist_auto_connect,
             :once
           ]) do
      {mine, others} = Enum.split_with(pairs, fn {a, b} -> me in [a, b] end)

      Enum.find_value(others ++ mine, :ok, fn
        {^me, b} -> if(:erlang.disconnect_node(b) in [true, :ignored], do: nil)
        {a, ^me} -> if(:erlang.disconnect_node(a) in [true, :ignored], do: nil)
        {a, b} -> with :ok <- on_each([a], :erlang, :disconnect_node, [b]), do: nil
      end)
    end
  end

  @doc """
  Connects every two of `nodes` again (and this node to each of them),
  explicitly, after `partition/1`. `:ok`, or `{:error, {:not_connected, a,
  b}}`.
  """
  @spec heal([node]) :: :ok | {:error, term}
  def heal(nodes) when is_list(nodes) do
    remote = nodes |> Enum.uniq() |> List.delete(node())

    pairs =
      for {a, i} <- Enum.with_index(remote), {b, j} <- Enum.with_index(remote), i < j, do: {a, b}

    Enum.find_value(Enum.map(remote, &{node(), &1}) ++ pairs, :ok, fn {a, b} ->
      if connect(a, b), do: nil, else: {:error, {:not_connected, a, b}}
    end)
  end

  defp on_each(nodes, m, f, a) do
    Enum.find_value(nodes, :ok, fn node ->
      try do
        :erpc.call(node, m, f, a, 15_000)
        nil
      catch
        _, _ -> {:error, {:unreachable, node}}
      end
    end)
  end

  @doc false
  # Makes this VM distributed (see "Nodes").
  def ensure_distributed do
    # peers register with epmd as they boot: it must answer first (several
    # peers booting at once would otherwise each start one, and race it)
    :ok = ensure_epmd()

    if Node.alive?() do
      :ok
    else
      name = :"sandbox_test_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1"

      case Node.start(name, :longnames) do
        {:ok, _} -> :ok
        {:error, {:already_started, _}} -> :ok
        {:error, reason} -> raise "could not make this VM distributed: #{inspect(reason)}"
      end
    end
  end

  # epmd answers on this machine: started (`epmd -daemon`) when it does not,
  # then waited for, up to 10 s.
  defp ensure_epmd do
    case :erl_epmd.names() do
      {:ok, _} ->
        :ok

      {:error, _} ->
        epmd = System.find_executable("epmd") || raise "epmd not found: cannot start nodes"
        System.cmd(epmd, ["-daemon"])
        wait_epmd(200)
    end
  end

  defp wait_epmd(0), do: raise("epmd does not answer after `epmd -daemon`")

  defp wait_epmd(tries) do
    case :erl_epmd.names() do
      {:ok, _} ->
        :ok

      {:error, _} ->
        receive do
        after
          50 -> wait_epmd(tries - 1)
        end
    end
  end

  defmodule Keeper do
    @moduledoc false
    # Owns the peers started by Sandbox.Test.Cluster: which node is which
    # peer and OS process, who owns it; stops a node when its owner exits,
    # forgets it when its peer does. Started on first use, unlinked, so it
    # outlives the tests that use it.
    use GenServer

    def ensure_started do
      case GenServer.start(__MODULE__, :ok, name: __MODULE__) do
        {:ok, pid} -> pid
        {:error, {:already_started, pid}} -> pid
      end
    end

    def register(keeper, node, peer, os_pid, owner),
      do: GenServer.call(keeper, {:register, node, peer, os_pid, owner})

    def stop(keeper, nodes), do: GenServer.call(keeper, {:stop, nodes}, :infinity)
    def nodes(keeper), do: GenServer.call(keeper, :nodes)
    def os_pid(keeper, node), do: GenServer.call(keeper, {:os_pid, node})
    def once(keeper), do: GenServer.call(keeper, :once)

    @impl true
    def init(:ok), do: {:ok, %{nodes: %{}, owners: %{}, auto_connect: nil}}

    @impl true
    def handle_call({:register, node, peer, os_pid, owner}, _from, state) do
      Process.monitor(peer)

      owners =
        if Enum.any?(state.owners, fn {_, o} -> o == owner end),
          do: state.owners,
          else: Map.put(state.owners, Process.monitor(owner), owner)

      entry = %{peer: peer, os_pid: os_pid, owner: owner}
      {:reply, :ok, %{state | nodes: Map.put(state.nodes, node, entry), owners: owners}}
    end

    def handle_call({:stop, nodes}, _from, state), do: {:reply, :ok, stop_nodes(state, nodes)}
    def handle_call(:nodes, _from, state), do: {:reply, Map.keys(state.nodes), state}

    def handle_call({:os_pid, node}, _from, state),
      do: {:reply, get_in(state.nodes, [node, :os_pid]), state}

    # This VM refuses implicit reconnection while it has peers (see
    # "Partitions"); the previous setting comes back with the last peer.
    def handle_call(:once, _from, %{auto_connect: nil} = state) do
      previous = Application.get_env(:kernel, :dist_auto_connect, :default)
      Application.put_env(:kernel, :dist_auto_connect, :once)
      {:reply, :ok, %{state | auto_connect: previous}}
    end

    def handle_call(:once, _from, state), do: {:reply, :ok, state}

    @impl true
    def handle_info({:DOWN, ref, :process, pid, _}, state) do
      case Map.pop(state.owners, ref) do
        {^pid, owners} ->
          mine = for {node, %{owner: ^pid}} <- state.nodes, do: node
          {:noreply, stop_nodes(%{state | owners: owners}, mine)}

        {nil, _} ->
          # A peer went away by itself (its node halted).
          gone = for {node, %{peer: ^pid, os_pid: os}} <- state.nodes, do: {node, os}
          for {_, os} <- gone, do: wait_gone(os)
          {:noreply, forget(state, Enum.map(gone, &elem(&1, 0)))}
      end
    end

    defp stop_nodes(state, nodes) do
      entries = for n <- nodes, e = state.nodes[n], e != nil, do: e

      entries
      |> Enum.map(fn e ->
        Task.async(fn ->
          tree = [e.os_pid | descendants(e.os_pid)]

          try do
            :peer.stop(e.peer)
          catch
            :exit, _ -> :ok
          end

          Enum.each(tree, &wait_gone/1)
        end)
      end)
      |> Task.await_many(:infinity)

      forget(state, nodes)
    end

    defp forget(state, nodes) do
      state = %{state | nodes: Map.drop(state.nodes, nodes)}

      if state.nodes == %{} and state.auto_connect != nil do
        case state.auto_connect do
          :default -> Application.delete_env(:kernel, :dist_auto_connect)
          value -> Application.put_env(:kernel, :dist_auto_connect, value)
        end

        %{state | auto_connect: nil}
      else
        state
      end
    end

    # The OS processes below `os_pid` (its C-node, port programs), from /proc.
    defp descendants(os_pid) do
      parents =
        for dir <- File.ls!("/proc"),
            Regex.match?(~r/\A\d+\z/, dir),
            {:ok, stat} <- [File.read("/proc/#{dir}/stat")],
            [_, rest] <- [String.split(stat, ") ", parts: 2)],
            [_state, ppid | _] <- [String.split(rest, " ")],
            do: {String.to_integer(dir), String.to_integer(ppid)}

      children = Enum.group_by(parents, &elem(&1, 1), &elem(&1, 0))
      below(Map.get(children, os_pid, []), children, [])
    end

    defp below([], _children, acc), do: acc

    defp below([pid | rest], children, acc),
      do: below(Map.get(children, pid, []) ++ rest, children, [pid | acc])

    # Waits (up to 10 s, then kills it) until OS process `os_pid` is gone.
    defp wait_gone(os_pid, waited \\ 0) do
      cond do
        not File.exists?("/proc/#{os_pid}") ->
          :ok

        waited >= 10_000 ->
          System.cmd("kill", ["-KILL", "#{os_pid}"], stderr_to_stdout: true)
          :ok

        true ->
          receive do
          after
            10 -> wait_gone(os_pid, waited + 10)
          end
      end
    end
  end
end
