defmodule Sandbox.Cluster.LateDistributionTest do
  # A VM that becomes distributed after :sandbox started (what
  # Sandbox.Test.Cluster.start_nodes/2 does to the test VM), or stops being
  # distributed, must keep talking to its C-node: the pids the program was
  # given before carry the node name the VM had then. Shown in a peer that
  # is not distributed yet.
  use ExUnit.Case, async: true

  alias Sandbox.Test.{ClusterFixtures, Peer}

  @moduletag :slow

  test "the C-node's events reach pids encoded before distribution started, or stopped" do
    {_, 0} = System.cmd("epmd", ["-daemon"])
    {peer, _} = Peer.start!()
    name = :"late_dist_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1"

    assert {:ok, {:ok, ["got hi\n", "got bye\n"]}} =
             Peer.call(peer, ClusterFixtures, :cnode_across_distribution, [name], 90_000)
  end
end
