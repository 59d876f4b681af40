defmodule Sandbox.Cluster.LateDistributionTest do
  # A VM that becomes distributed after :sandbox started (what
  # Sandbox.Test.Cluster.start_nodes/2 does to the test VM) must keep
  # talking to its C-node: the pids the program was given before carry the
  # node name `nonode@nohost`. Shown in a peer that is not distributed yet.
  use ExUnit.Case, async: true

  alias Sandbox.Test.Peer

  @moduletag :slow

  test "the C-node's replies and events reach pids encoded before distribution started" do
    {_, 0} = System.cmd("epmd", ["-daemon"])
    {peer, _} = Peer.start!()
    name = :"late_dist_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1"

    assert {:ok, {:ok, "got hi\n"}} =
             Peer.call(
               peer,
               Sandbox.Test.ClusterFixtures,
               :cnode_after_distribution,
               [name],
               90_000
             )
  end
end
