defmodule Sandbox.CNode.PidReuseTest do
  # A pid the C-node saw in a job's tree, reaped and then given by the kernel
  # to a process of another job, must never be taken for the first job's:
  # not signalled when the first job ends, not waited for. The kernel is made
  # to reuse the pid through /proc/sys/kernel/ns_last_pid (root only).
  use ExUnit.Case, async: false
  import Sandbox.CNodeHelpers

  alias Sandbox.CNode

  @moduletag :slow
  @ns_last_pid "/proc/sys/kernel/ns_last_pid"
  @writable match?({:ok, %{access: :read_write}}, File.stat(@ns_last_pid))

  @tag skip: if(@writable, do: false, else: "needs a writable #{@ns_last_pid} (root)")
  test "a reaped pid reused by another job is left alone when the first job ends" do
    server = private_cnode()
    assert attempt(server, 30) == :ok
  end

  defp attempt(_server, 0), do: flunk("could not make the kernel reuse a pid")

  defp attempt(server, tries) do
    # job J: a child lives long enough to be sampled, then is reaped by J
    script = "sleep 0.3 & echo $!; wait; echo reaped; read x; exit 0"
    {:ok, %{id: j}} = CNode.spawn(["sh", "-c", script], server: server, sample_interval: 60_000)
    [p] = read_lines(j, 1) |> Enum.map(&String.to_integer/1)
    # start sampling J now, while p is in its tree
    :ok = CNode.set_limits(j, %{memory: 1_000_000_000_000}, server)
    assert ["reaped"] = read_lines(j, 1)
    refute alive?(p)

    # job K gets pid p (its leader or its command)
    File.write!(@ns_last_pid, Integer.to_string(p - 1))
    {:ok, %{id: k, os_pid: k_pid}} = CNode.spawn(["sleep", "600"], server: server)

    if p in [k_pid, leader_of(k_pid)] do
      # J ends: whatever it remembered, K must live on
      :ok = CNode.close_stdin(j, server)
      assert %{exit: {:status, 0}} = collect(j)
      assert {:pong, _} = CNode.request(server, :ping, %{})
      assert running?(k_pid), "the other job's process #{k_pid} was killed"
      assert {:ok, %{signalled: [^k_pid]}} = CNode.kill(k, :sigkill, server)
      assert %{exit: {:signal, 9}} = collect(k)
      :ok
    else
      # someone else forked first: try again with a new pid
      CNode.kill(k, :sigkill, server)
      collect(k)
      CNode.close_stdin(j, server)
      collect(j)
      attempt(server, tries - 1)
    end
  end
end
