defmodule Sandbox.CNode.DistListenerTest do
  # The C-node's distribution listener under attack: what it binds to, and
  # clients that connect and never complete a handshake. Starts distribution
  # in this VM: not async.
  use ExUnit.Case, async: false
  import Sandbox.CNodeHelpers

  alias Sandbox.CNode

  @moduletag :slow

  setup do
    {_, 0} = System.cmd("epmd", ["-daemon"])
    was_alive = Node.alive?()

    unless was_alive do
      {:ok, _} =
        Node.start(:"cnode_lis_#{System.unique_integer([:positive])}@127.0.0.1", :longnames)
    end

    on_exit(fn -> unless was_alive, do: Node.stop() end)
    :ok
  end

  # The local address of the listening TCP socket on port, as /proc shows it.
  defp listen_address(port) do
    hex_port = port |> Integer.to_string(16) |> String.pad_leading(4, "0")

    File.read!("/proc/net/tcp")
    |> String.split("\n", trim: true)
    |> Enum.drop(1)
    |> Enum.map(&String.split/1)
    |> Enum.find_value(fn [_, local, _, state | _] ->
      case String.split(local, ":") do
        [addr, ^hex_port] when state == "0A" -> addr
        _ -> nil
      end
    end)
  end

  test "the listener binds to the loopback address unless told otherwise" do
    server = private_cnode()
    assert {:ok, _} = CNode.node_name(server)
    {:ok, %{dist: %{bind: "127.0.0.1", port: port}}} = CNode.info(server)
    assert port > 0
    assert listen_address(port) == "0100007F"

    server = private_cnode(dist_bind: "0.0.0.0")
    assert {:ok, _} = CNode.node_name(server)
    {:ok, %{dist: %{bind: "0.0.0.0", port: port}}} = CNode.info(server)
    assert listen_address(port) == "00000000"

    assert_raise RuntimeError, fn -> private_cnode(dist_bind: "localhost") end
  end

  test "clients that never finish a handshake stall nothing and are dropped at the deadline" do
    server = private_cnode(handshake_timeout: 1_000)
    assert {:ok, cnode} = CNode.node_name(server)
    {:ok, %{dist: %{port: port}}} = CNode.info(server)

    # one client says nothing; one announces a 65,535-byte name and trickles it
    # a byte at a time (each byte used to restart ei's 5 s read timeout)
    {:ok, silent} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: true])
    {:ok, trickle} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: true])
    :ok = :gen_tcp.send(trickle, <<0xFF, 0xFF, ?n>>)
    {:ok, timer} = :timer.apply_interval(100, :gen_tcp, :send, [trickle, "x"])
    # and more at once than may handshake concurrently
    crowd =
      for _ <- 1..12 do
        {:ok, s} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: true])
        s
      end

    try do
      # requests over the port and over distribution are served meanwhile (the
      # first round trip makes sure the program has seen the connections)
      os_pid = CNode.os_pid(server)
      assert {:pong, ^os_pid} = CNode.request(server, :ping, %{})
      assert {:pong, ^os_pid} = CNode.request(server, :ping, %{})
      ref = make_ref()
      send({:sandbox_cnode, cnode}, {self(), ref, :ping, %{}})
      assert_receive {^ref, {:pong, ^os_pid}}, 10_000

      # a real node still gets in while they hang
      {:ok, peer, peer_node} =
        :peer.start(%{
          name: :"cnode_lis_peer_#{System.unique_integer([:positive])}",
          host: ~c"127.0.0.1",
          longnames: true,
          args: [~c"-setcookie", Atom.to_charlist(Node.get_cookie()), ~c"-hidden"]
        })

      try do
        # code the peer can run without this module: evaluated there. While
        # every handshake slot is taken, a new connection is closed at once
        # (the peer's send is then dropped): the peer connects first, trying
        # again until the stalled clients' deadline frees a slot.
        code = ~c"""
        Connect = fun Connect(0) -> false;
                      Connect(N) ->
                          case net_kernel:connect_node(CNode) of
                              true -> true;
                              false -> receive after 200 -> Connect(N - 1) end
                          end
                  end,
        true = Connect(50),
        Ref = make_ref(),
        {sandbox_cnode, CNode} ! {self(), Ref, ping, \#{}},
        receive {Ref, Reply} -> Reply after 10000 -> timeout end.
        """

        {:ok, tokens, _} = :erl_scan.string(code)
        {:ok, exprs} = :erl_parse.parse_exprs(tokens)
        bindings = :erl_eval.add_binding(:CNode, cnode, :erl_eval.new_bindings())

        assert {:value, {:pong, ^os_pid}, _} =
                 :erpc.call(peer_node, :erl_eval, :exprs, [exprs, bindings], 15_000)
      after
        :peer.stop(peer)
      end

      # every client that did not complete its handshake is gone by now or soon
      assert_receive {:tcp_closed, ^silent}, 10_000
      assert_receive {:tcp_closed, ^trickle}, 10_000
      for s <- crowd, do: assert_receive({:tcp_closed, ^s}, 10_000)
      {:ok, %{dist: %{handshakes_dropped: dropped}}} = CNode.info(server)
      assert dropped >= 14
    after
      :timer.cancel(timer)
      Enum.each([silent, trickle | crowd], &:gen_tcp.close/1)
    end
  end
end
