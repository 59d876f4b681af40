defmodule Sandbox.CNode.DistTest do
  # Starts distribution in this VM: not async.
  use ExUnit.Case, async: false
  import Sandbox.CNodeHelpers

  alias Sandbox.CNode

  @moduletag :slow

  setup do
    {_, 0} = System.cmd("epmd", ["-daemon"])
    was_alive = Node.alive?()

    unless was_alive do
      {:ok, _} =
        Node.start(:"cnode_test_#{System.unique_integer([:positive])}@127.0.0.1", :longnames)
    end

    on_exit(fn -> unless was_alive, do: Node.stop() end)
    :ok
  end

  test "the program becomes a hidden C-node reachable from the host and from a peer" do
    # the shared server was started before distribution: it notices now
    assert {:ok, cnode} = CNode.node_name()
    assert cnode |> Atom.to_string() |> String.starts_with?("sandbox_cnode_")
    os_pid = CNode.os_pid()

    # the cookie never appears on the program's command line or in its environment
    cookie = Atom.to_string(Node.get_cookie())
    refute File.read!("/proc/#{os_pid}/cmdline") =~ cookie
    refute File.read!("/proc/#{os_pid}/environ") =~ cookie

    # the distribution sockets (ei does not open them close-on-exec) do not leak
    # into children: closefrom
    {:ok, %{id: id}} = CNode.spawn(["sh", "-c", "ls /proc/$$/fd"], [])
    assert %{stdout: fds, exit: {:status, 0}} = collect(id)
    assert String.split(fds) == ["0", "1", "2"]

    # hidden: connected, yet not among the visible nodes
    assert cnode in Node.list(:hidden)
    refute cnode in Node.list()

    # a request over distribution from this node; the reply comes back by the port
    ref = make_ref()
    send({:sandbox_cnode, cnode}, {self(), ref, :ping, %{}})
    assert_receive {^ref, {:pong, ^os_pid}}, 10_000

    ref = make_ref()
    send({:sandbox_cnode, cnode}, {self(), ref, :spawn, %{argv: ["/bin/echo", "over dist"]}})
    assert_receive {^ref, {:ok, %{id: id}}}, 10_000
    assert %{stdout: "over dist\n", exit: {:status, 0}} = collect(id)

    # a second node sends the same request and gets the reply itself
    cookie = Node.get_cookie()

    {:ok, peer, peer_node} =
      :peer.start(%{
        name: :"cnode_peer_#{System.unique_integer([:positive])}",
        host: ~c"127.0.0.1",
        longnames: true,
        args: [~c"-setcookie", Atom.to_charlist(cookie), ~c"-hidden"]
      })

    try do
      code = ~c"""
      Ref = make_ref(),
      {sandbox_cnode, CNode} ! {self(), Ref, sample, \#{pids => [OsPid]}},
      receive {Ref, Reply} -> {node(), Reply} after 10000 -> timeout end.
      """

      {:ok, tokens, _} = :erl_scan.string(code)
      {:ok, exprs} = :erl_parse.parse_exprs(tokens)
      bindings = :erl_eval.add_binding(:CNode, cnode, :erl_eval.new_bindings())
      bindings = :erl_eval.add_binding(:OsPid, os_pid, bindings)

      assert {:value, {^peer_node, {:ok, %{^os_pid => %{rss: rss}}}}, _} =
               :erpc.call(peer_node, :erl_eval, :exprs, [exprs, bindings])

      assert rss > 0
    after
      :peer.stop(peer)
    end
  end

  test "requests sent just after the host's distribution restarts under another name are answered" do
    server = private_cnode()
    {:ok, first} = CNode.node_name(server)
    # the program now knows the host by its first name; the host takes another
    :ok = Node.stop()
    second = :"cnode_test_#{System.unique_integer([:positive])}@127.0.0.1"
    {:ok, _} = Node.start(second, :longnames)

    # before the server notices (it checks every 500 ms), a request whose sender
    # is named by the second name: its reply still comes back through the port
    # (it used to be routed to the unknown node and dropped)
    assert {:ok, %{id: id}} = CNode.spawn(["/bin/echo", "after restart"], server: server)
    assert %{stdout: "after restart\n", exit: {:status, 0}} = collect(id)
    assert {:pong, _} = CNode.request(server, :ping, %{})

    # the program registers again under the new name when asked
    {:ok, again} = CNode.node_name(server)
    assert again != first
    assert again |> Atom.to_string() |> String.ends_with?("@127.0.0.1")
  end

  # A request encoded while the VM had one name and creation, answered after
  # it has another: the reply names the caller (pid and reference) as they
  # were encoded. The program is stopped so that the reply can only come
  # after the change.
  describe "a reply that arrives after the host's distribution changed reaches its caller" do
    test "distribution stopped" do
      assert_answered_across(fn -> :ok = Node.stop() end)
    end

    test "distribution started" do
      name = node()
      :ok = Node.stop()

      assert_answered_across(fn -> {:ok, _} = Node.start(name, :longnames) end)
    end

    test "distribution restarted under the same name (a new creation)" do
      name = node()

      assert_answered_across(fn ->
        :ok = Node.stop()
        {:ok, _} = Node.start(name, :longnames)
      end)

      assert node() == name
    end
  end

  defp assert_answered_across(change) do
    server = private_cnode()
    os_pid = CNode.os_pid(server)
    {_, 0} = System.cmd("kill", ["-STOP", Integer.to_string(os_pid)])

    task =
      try do
        task = Task.async(fn -> CNode.request(server, :ping, %{}) end)
        # the request is on its way (encoded, written to the port)
        await_pending(server)
        change.()
        task
      after
        {_, 0} = System.cmd("kill", ["-CONT", Integer.to_string(os_pid)])
      end

    assert {:pong, ^os_pid} = Task.await(task, 15_000)
  end

  defp await_pending(server) do
    if map_size(:sys.get_state(server).pending) == 0, do: await_pending(server)
  end
end
