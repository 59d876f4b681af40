defmodule Sandbox.CNode.LifecycleTest do
  use ExUnit.Case, async: true
  import Sandbox.CNodeHelpers
  import ExUnit.CaptureLog

  alias Sandbox.CNode

  defp private(opts \\ []) do
    spec =
      Supervisor.child_spec({CNode, [name: nil] ++ opts}, id: make_ref(), restart: :temporary)

    start_supervised!(spec)
  end

  defp wait_os_exit(os_pid) do
    # a real process that ends when os_pid does, spawned by the shared C-node
    {:ok, %{id: id}} =
      CNode.spawn(["tail", "--pid=#{os_pid}", "-s", "0.02", "-f", "/dev/null"], [])

    assert %{exit: {:status, 0}} = collect(id)
  end

  test "when the program dies it is restarted; running spawns report :cnode_down" do
    server = private()

    capture_log(fn ->
      old = CNode.os_pid(server)
      {:ok, %{id: id, os_pid: child}} = CNode.spawn(["sleep", "60"], server: server)
      System.cmd("kill", ["-9", Integer.to_string(old)])
      assert_receive {:sandbox_cnode, ^id, {:exit, :cnode_down}}, 10_000
      new = CNode.os_pid(server)
      assert new != old
      assert {:pong, ^new} = CNode.request(server, :ping, %{})
      # the direct child died with it (PR_SET_PDEATHSIG)
      wait_os_exit(child)
    end)
  end

  test "requests in flight when the program dies get {:error, :cnode_down}" do
    server = private()

    capture_log(fn ->
      old = CNode.os_pid(server)
      :sys.suspend(server)
      req = :gen_server.send_request(server, {:request, :ping, %{}})
      System.cmd("kill", ["-9", Integer.to_string(old)])
      :sys.resume(server)
      assert {:reply, {:error, :cnode_down}} = :gen_server.wait_response(req, 10_000)
    end)
  end

  test "after the port closes no descendant is left" do
    server = private()
    script = "sleep 300 & echo $!; setsid sleep 300 & echo $!; sleep 300"
    {:ok, %{id: id, os_pid: child}} = CNode.spawn(["sh", "-c", script], server: server)
    pids = [child | read_lines(id, 2) |> Enum.map(&String.to_integer/1)]
    cnode = CNode.os_pid(server)
    for pid <- pids, do: assert(alive?(pid))
    GenServer.stop(server)
    wait_os_exit(cnode)
    for pid <- pids, do: refute(alive?(pid), "process #{pid} survived")
  end

  test "on SIGTERM the program kills every descendant and exits" do
    server = private()

    capture_log(fn ->
      script = "sleep 300 & echo $!; setsid sleep 300 & echo $!; sleep 300"
      {:ok, %{id: id, os_pid: child}} = CNode.spawn(["sh", "-c", script], server: server)
      pids = [child | read_lines(id, 2) |> Enum.map(&String.to_integer/1)]
      System.cmd("kill", ["-TERM", Integer.to_string(CNode.os_pid(server))])
      # sent once the program has exited, which it does after reaping them all
      assert_receive {:sandbox_cnode, ^id, {:exit, :cnode_down}}, 10_000
      for pid <- pids, do: refute(alive?(pid), "process #{pid} survived")
    end)
  end

  @tag :slow
  test "a program that keeps dying soon after its start is given up on, however slowly it dies" do
    # each run lasts longer than the old policy's window allowed for
    dir = Path.join(System.tmp_dir!(), "cnode_dies_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    exe = Path.join(dir, "dies_slowly")
    File.write!(exe, "#!/bin/sh\nsleep 1.2\nexit 3\n")
    File.chmod!(exe, 0o755)
    server = private(executable: exe)
    ref = Process.monitor(server)

    capture_log(fn ->
      assert_receive {:DOWN, ^ref, _, _, {:cnode_exited, 3}}, 30_000
    end)
  end

  test "malformed and unknown requests get error replies and the program keeps serving" do
    server = private(max_frame: 4096)
    port = :sys.get_state(server).port

    ref = make_ref()
    Port.command(port, :erlang.term_to_binary({self(), ref, :spawn, :not_a_map}))
    assert_receive {^ref, {:error, :bad_args}}, 5_000

    ref = make_ref()
    Port.command(port, :erlang.term_to_binary({self(), ref, "not an atom", 1}))
    assert_receive {^ref, {:error, :malformed_request}}, 5_000

    ref = make_ref()
    Port.command(port, :erlang.term_to_binary({self(), ref, :ping, fn -> :ok end}))
    assert_receive {^ref, {:error, {:malformed_request, :unsupported_term}}}, 5_000

    log =
      capture_log(fn ->
        Port.command(port, <<1, 2, 3>>)
        Port.command(port, <<131, 104, 9>>)
        assert {:pong, _} = CNode.request(server, :ping, %{})
      end)

    assert log =~ "malformed_request"

    # too large: refused by the C side after its first bytes, the rest skipped
    ref = make_ref()
    big = :binary.copy("x", 10_000)
    frame = :erlang.term_to_binary({self(), ref, :write_stdin, %{id: 1, data: big}})
    Port.command(port, frame)
    assert_receive {^ref, {:error, {:frame_too_large, size, 4096}}}, 5_000
    assert size == byte_size(frame)
    assert {:pong, _} = CNode.request(server, :ping, %{})

    # and by the Elixir side before sending
    assert {:error, {:frame_too_large, _, 4096}} = CNode.write_stdin(1, big, server)
  end

  test "sample reports /proc figures, with descendants and the host VM" do
    {:ok, %{id: id, os_pid: sh}} = CNode.spawn(["sh", "-c", "sleep 60 & echo $!; wait"], [])
    [sleep] = read_lines(id, 1) |> Enum.map(&String.to_integer/1)

    assert {:ok, %{^sh => s}} = CNode.sample([sh])
    assert %{rss: rss, vsize: _, threads: 1, state: state, cpu_user: u, cpu_system: _} = s
    assert rss > 0 and is_float(u) and is_atom(state)

    assert {:ok, %{^sh => %{self: _, descendants: d, total: t}, :host => host}} =
             CNode.sample([sh, 999_999_999], descendants: true, host: true)

    assert Map.keys(d) == [sleep]
    assert t.processes == 2
    assert host.self.threads > 1
    CNode.kill(id)
    collect(id)
  end
end
