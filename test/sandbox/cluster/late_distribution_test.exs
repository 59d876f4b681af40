defmodule Sandbox.Cluster.LateDistributionTest do
  # A VM that becomes distributed after :sandbox started (what
  # Sandbox.Test.Cluster.start_nodes/2 does to the test VM), or stops being
  # distributed, must keep talking to its C-node: the pids the program was
  # given before carry the node name the VM had then. Shown in a peer that
  # is not distributed yet.
  use ExUnit.Case, async: true

  alias Sandbox.Test.ClusterFixtures

  @moduletag :slow
  # a peer VM boots and starts the application (C-node, worker pools) first
  @moduletag timeout: 180_000

  test "the C-node's events reach pids encoded before distribution started, or stopped" do
    {_, 0} = System.cmd("epmd", ["-daemon"])
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    args = paths ++ [~c"-kernel", ~c"logger_level", ~c"error"]
    {:ok, peer, _} = :peer.start_link(%{connection: :standard_io, args: args})
    on_exit(fn -> catch_exit(:peer.stop(peer)) end)
    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:sandbox], 60_000)
    name = :"late_dist_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1"

    assert :peer.call(peer, ClusterFixtures, :cnode_across_distribution, [name], 90_000) ==
             {:ok, ["got hi\n", "got bye\n"]}
  end
end
