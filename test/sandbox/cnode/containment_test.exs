defmodule Sandbox.CNode.ContainmentTest do
  # Descendants of a job cannot escape it: not by setsid, not by a double
  # fork, not by killing their leader, not when the C-node is SIGKILLed. Each
  # test runs under both mechanisms: :auto (a cgroup per job where this
  # machine allows it) and :subreaper (forced: the job leaders alone).
  # Processes are found in /proc by a marker in their command line.
  use ExUnit.Case, async: true
  import Sandbox.CNodeHelpers
  import ExUnit.CaptureLog

  alias Sandbox.CNode

  test "info reports the mechanism, and a forced fallback says so" do
    server = private_cnode(containment: :subreaper)

    assert {:ok, %{containment: :subreaper, containment_reason: :forced, cgroup: nil}} =
             CNode.info(server)

    server = private_cnode()
    assert {:ok, %{containment: mode, containment_reason: why} = info} = CNode.info(server)
    assert mode in [:cgroup, :subreaper]
    # a cgroup run has its directory, which the C-node made
    if mode == :cgroup do
      assert why == :cgroup2
      assert File.dir?(info.cgroup)
      assert Path.basename(info.cgroup) =~ ~r/^sandbox_cnode\.\d+\.#{info.os_pid}\.\d+$/
    else
      assert is_atom(why)
    end
  end

  for mode <- [:auto, :subreaper] do
    describe "containment #{mode}" do
      @mode mode

      test "a setsid grandchild of a job under limits dies when the job ends" do
        server = private_cnode(containment: @mode)
        m = marker()
        # the shell exits at once, leaving a sleep in a session of its own
        script = ~s(setsid sh -c "sleep #{m} & echo \\$!")

        for limits <- [%{memory: 1_000_000_000, processes: 50}, %{}] do
          {:ok, %{id: id}} = CNode.spawn(["sh", "-c", script], server: server, limits: limits)
          assert %{stdout: out, exit: {:status, 0}} = collect(id)
          sleep = out |> String.trim() |> String.to_integer()
          # the exit event comes once the tree is gone
          refute running?(sleep), "the setsid sleep #{sleep} escaped its job"
          assert marked(m) == []
        end
      end

      test "a daemon (double fork, setsid, SIGHUP and SIGTERM ignored) dies with its job" do
        server = private_cnode(containment: @mode)
        m = marker()

        script = """
        trap '' HUP TERM
        ( setsid sh -c 'trap "" HUP TERM; sleep #{m} & echo $!; exec sleep #{m}' & ) 
        sleep #{m} & echo $!
        read line
        exit 0
        """

        {:ok, %{id: id}} = CNode.spawn(["sh", "-c", script], server: server)
        pids = read_lines(id, 2) |> Enum.map(&String.to_integer/1)
        # the two sleeps in the background, the daemon's exec'd sleep (and shells)
        assert length(marked(m)) >= 3
        CNode.close_stdin(id, server)
        assert %{exit: {:status, 0}} = collect(id)
        for pid <- pids, do: refute(running?(pid), "#{pid} survived its job")
        assert marked(m) == []
      end

      test "kill signals every process of the tree, not only the group, and says which" do
        server = private_cnode(containment: @mode)
        file = Path.join(System.tmp_dir!(), "cnode_kill_#{System.unique_integer([:positive])}")
        on_exit(fn -> File.rm(file) end)

        # the child left the group and the session; it records SIGTERM when
        # it gets it. The parent waits for it, across its own SIGTERM.
        script = """
        trap 'true' TERM
        setsid sh -c 'trap "echo term > #{file}; exit 0" TERM; echo $$; while :; do sleep 0.05; done' &
        c=$!
        until wait $c; do :; done
        """

        {:ok, %{id: id, os_pid: sh}} = CNode.spawn(["sh", "-c", script], server: server)
        [child] = read_lines(id, 1) |> Enum.map(&String.to_integer/1)
        assert stat(child).session != stat(sh).session
        leader = leader_of(sh)

        assert {:ok, %{signalled: signalled}} = CNode.kill(id, :sigterm, server)
        assert sh in signalled and child in signalled
        refute leader in signalled
        assert %{exit: {:status, 0}} = collect(id)
        assert File.read!(file) == "term\n"
        assert {:error, :not_found} = CNode.kill(id, :sigterm, server)
      end

      test "SIGKILL to a job takes every process of it, forks in flight included" do
        server = private_cnode(containment: @mode)
        m = marker()
        # a fork loop: new processes appear while the signal is being sent
        script = "setsid sleep #{m} & while :; do sleep #{m} & echo $!; sleep 0.005; done"
        {:ok, %{id: id}} = CNode.spawn(["sh", "-c", script], server: server)
        forked = read_lines(id, 4) |> Enum.map(&String.to_integer/1)
        assert {:ok, %{signalled: signalled}} = CNode.kill(id, :sigkill, server)
        # the shell, the setsid sleep and the sleeps it forked
        assert length(signalled) >= 6, inspect({forked, signalled})
        assert Enum.all?(forked, &(&1 in signalled))
        assert %{exit: {:signal, 9}} = collect(id)
        assert marked(m) == []
      end

      test "a job that SIGKILLs its own leader leaves nothing behind" do
        server = private_cnode(containment: @mode)
        m = marker()
        # $PPID is the job's leader
        script = "setsid sleep #{m} & echo $!; kill -9 $PPID; exec sleep #{m}"
        {:ok, %{id: id}} = CNode.spawn(["sh", "-c", script], server: server)
        assert %{stdout: out, exit: {:signal, 9}} = collect(id)
        refute running?(out |> String.trim() |> String.to_integer())
        assert marked(m) == []
        assert {:pong, _} = CNode.request(server, :ping, %{})
      end

      test "SIGKILL of the C-node leaves no process of any job alive" do
        server = private_cnode(containment: @mode)
        m = marker()

        # each prints a line once its processes are there
        scripts = [
          "echo up; exec sleep #{m}",
          ~s(setsid sh -c "sleep #{m} & echo \\$!"; echo up; exec sleep #{m}),
          "trap '' HUP TERM; ( setsid sleep #{m} & ); sleep #{m} & echo up; wait",
          "while :; do sleep #{m} & echo up; sleep 0.01; done"
        ]

        capture_log(fn ->
          jobs =
            for script <- scripts do
              {:ok, %{id: id, os_pid: pid}} = CNode.spawn(["sh", "-c", script], server: server)
              read_lines(id, 1)
              {id, pid, leader_of(pid)}
            end

          cnode = CNode.os_pid(server)
          System.cmd("kill", ["-9", Integer.to_string(cnode)])

          for {id, _, _} <- jobs,
              do: assert_receive({:sandbox_cnode, ^id, {:exit, :cnode_down}}, 10_000)

          # each leader kills its tree and exits; then nothing of the jobs runs
          wait_dead([cnode | for({_, pid, leader} <- jobs, do: [pid, leader]) |> List.flatten()])
          assert marked(m) == []
        end)
      end
    end
  end

  test "a job cgroup is removed with its job, and the run's directory with the C-node" do
    server = private_cnode()
    {:ok, info} = CNode.info(server)

    if info.containment == :cgroup do
      {:ok, %{id: id}} = CNode.spawn(["sh", "-c", "read x; true"], server: server)
      assert [job] = File.ls!(info.cgroup) |> Enum.filter(&String.starts_with?(&1, "job-"))
      assert File.read!(Path.join([info.cgroup, job, "cgroup.procs"])) != ""
      CNode.close_stdin(id, server)
      assert %{exit: {:status, 0}} = collect(id)
      refute File.exists?(Path.join(info.cgroup, job))
      GenServer.stop(server)
      wait_dead([info.os_pid])
      refute File.exists?(info.cgroup)
    end
  end

  test "a new C-node empties and removes the cgroups of a run whose C-node is gone" do
    {:ok, info} = CNode.info(private_cnode())

    if info.containment == :cgroup do
      # a run of a C-node that no longer exists (no such pid), in our pid
      # namespace, whose job still holds a process
      parent = Path.dirname(info.cgroup)
      ns = File.stat!("/proc/self/ns/pid").inode
      stale = Path.join(parent, "sandbox_cnode.#{ns}.99999999.1")
      job = Path.join(stale, "job-1")
      File.mkdir!(stale)
      File.mkdir!(job)
      port = Port.open({:spawn_executable, "/bin/sleep"}, [:exit_status, args: ["600"]])
      {:os_pid, pid} = Port.info(port, :os_pid)
      File.write!(Path.join(job, "cgroup.procs"), Integer.to_string(pid))
      assert running?(pid)

      # any C-node that starts now cleans up (this test's, or one of a test
      # running beside it): the process dies, then the directories go
      private_cnode()
      assert_receive {^port, {:exit_status, _}}, 10_000
      wait_removed(stale)
    end
  end

  defp wait_removed(path) do
    script =
      "i=0; while [ -e \"$1\" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; [ ! -e \"$1\" ]"

    assert {_, 0} = System.cmd("sh", ["-c", script, "wait", path]), "#{path} is still there"
  end
end
