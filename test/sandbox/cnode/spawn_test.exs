defmodule Sandbox.CNode.SpawnTest do
  use ExUnit.Case, async: true
  import Sandbox.CNodeHelpers

  alias Sandbox.CNode

  describe "spawn" do
    test "delivers stdout, stderr and the exit status" do
      {:ok, %{id: id, os_pid: os_pid}} =
        CNode.spawn(["sh", "-c", "echo out; echo err >&2; exit 3"], [])

      assert is_integer(id) and is_integer(os_pid)
      assert %{stdout: "out\n", stderr: "err\n", exit: {:status, 3}} = collect(id)
    end

    test "reports a signal" do
      {:ok, %{id: id}} = CNode.spawn(["sh", "-c", "kill -USR1 $$"], [])
      assert %{exit: {:signal, 10}} = collect(id)
    end

    test "passes env and cd, and can unset a variable" do
      dir = System.tmp_dir!()

      {:ok, %{id: id}} =
        CNode.spawn(["sh", "-c", ~S[echo "$SANDBOX_X:`pwd`:${HOME-unset}"]],
          env: [{"SANDBOX_X", "42"}, {"HOME", nil}],
          cd: dir
        )

      assert %{stdout: out, exit: {:status, 0}} = collect(id)
      assert out == "42:#{Path.expand(dir)}:unset\n"
    end

    test "a missing executable is an error reply" do
      assert {:error, {:spawn_failed, :enoent}} = CNode.spawn(["/nonexistent/x"], [])
      assert {:error, {:spawn_failed, :enoent}} = CNode.spawn(["/bin/true"], cd: "/nonexistent")
    end

    test "stdin is written and closed" do
      {:ok, %{id: id}} = CNode.spawn(["cat"], [])
      assert :ok = CNode.write_stdin(id, ["hello ", ?w, "orld"])
      assert :ok = CNode.close_stdin(id)
      assert %{stdout: "hello world", exit: {:status, 0}} = collect(id)
      assert {:error, :not_found} = CNode.write_stdin(id, "late")
    end

    test "a large stdin goes through without blocking the C-node" do
      data = :binary.copy("0123456789abcdef", 64 * 1024)
      {:ok, %{id: id}} = CNode.spawn(["wc", "-c"], [])
      assert :ok = CNode.write_stdin(id, data)
      assert :ok = CNode.close_stdin(id)
      assert %{stdout: out, exit: {:status, 0}} = collect(id)
      assert String.trim(out) == Integer.to_string(byte_size(data))
    end

    test "events go to the given subscriber" do
      parent = self()

      sub =
        spawn_link(fn ->
          receive do
            {:sandbox_cnode, id, {:exit, r}} -> send(parent, {:got, id, r})
          end
        end)

      {:ok, %{id: id}} = CNode.spawn(["/bin/true"], subscriber: sub)
      assert_receive {:got, ^id, {:status, 0}}, 10_000
    end

    test "the child inherits no descriptor beyond 0, 1 and 2 (closefrom)" do
      # a descriptor of our own, open while spawning
      {:ok, f} = File.open(__ENV__.file, [:read])
      {:ok, %{id: id}} = CNode.spawn(["sh", "-c", "ls /proc/$$/fd"], [])
      assert %{stdout: out, exit: {:status, 0}} = collect(id)
      File.close(f)
      assert String.split(out) == ["0", "1", "2"]
    end

    test "the child has its own process group" do
      {:ok, %{id: id, os_pid: os_pid}} =
        CNode.spawn(["sh", "-c", "cut -d' ' -f5 /proc/$$/stat"], [])

      assert %{stdout: out} = collect(id)
      assert String.trim(out) == Integer.to_string(os_pid)
    end

    test "kill sends a signal to the job's processes and names them" do
      {:ok, %{id: id, os_pid: os_pid}} = CNode.spawn(["sleep", "60"], [])
      assert {:ok, %{signalled: [^os_pid]}} = CNode.kill(id, :sigterm)
      assert %{exit: {:signal, 15}} = collect(id)
      assert {:error, :not_found} = CNode.kill(id)
    end

    test "bad arguments" do
      assert_raise ArgumentError, fn -> CNode.spawn([], []) end
      assert_raise ArgumentError, fn -> CNode.spawn([:ls], []) end
      assert_raise ArgumentError, fn -> CNode.spawn(["ls"], limits: %{memory: -1}) end
      assert_raise ArgumentError, fn -> CNode.spawn(["ls"], bogus: 1) end
      assert_raise ArgumentError, fn -> CNode.write_stdin(:x, "a") end
      assert {:error, :not_found} = CNode.close_stdin(999_999_999)
      assert {:error, {:bad_option, :argv}} = CNode.request(CNode, :spawn, %{argv: "ls"})

      assert {:error, {:bad_limit, :memory}} =
               CNode.request(CNode, :spawn, %{argv: ["ls"], limits: %{memory: "x"}})

      assert {:error, :unknown_limit} =
               CNode.request(CNode, :spawn, %{argv: ["ls"], limits: %{nope: 1}})

      assert {:error, {:unknown_command, :nope}} = CNode.request(CNode, :nope, %{})
      assert {:pong, _} = CNode.request(CNode, :ping, %{})
    end
  end

  describe "timeout" do
    test "kills a sleeper and every grandchild, including one that called setsid" do
      script = "sleep 300 & echo $!; setsid sleep 300 & echo $!; sleep 300"
      {:ok, %{id: id, os_pid: os_pid}} = CNode.spawn(["sh", "-c", script], timeout: 300)
      pids = read_lines(id, 2) |> Enum.map(&String.to_integer/1)

      # the setsid one really left the group and the session
      for pid <- pids, do: assert(alive?(pid))

      assert %{exit: :timeout} = collect(id)
      refute alive?(os_pid)
      for pid <- pids, do: refute(alive?(pid), "process #{pid} survived")
    end
  end

  describe "limits" do
    test "a memory limit stops a memory hog" do
      # tail buffers an endless line from /dev/zero
      {:ok, %{id: id}} =
        CNode.spawn(["tail", "/dev/zero"],
          limits: %{memory: 64 * 1024 * 1024},
          sample_interval: 10
        )

      assert %{exit: {:limit, :memory}} = collect(id)
    end

    test "a process limit stops a fork loop" do
      {:ok, %{id: id}} =
        CNode.spawn(["sh", "-c", "while :; do sleep 60 & done"], limits: %{processes: 16})

      assert %{exit: {:limit, :processes}} = collect(id)
    end

    test "a CPU limit stops a spinner" do
      {:ok, %{id: id}} =
        CNode.spawn(["sh", "-c", "while :; do :; done"], limits: %{cpu_seconds: 1})

      assert %{exit: {:limit, :cpu}} = collect(id)
    end

    test "a file-size limit stops a writer" do
      path = Path.join(System.tmp_dir!(), "cnode_fsize_#{System.unique_integer([:positive])}")

      {:ok, %{id: id}} =
        CNode.spawn(["dd", "if=/dev/zero", "of=#{path}", "bs=1000", "count=100"],
          limits: %{file_size: 4096}
        )

      assert %{exit: {:limit, :file_size}} = collect(id)
      assert File.stat!(path).size <= 4096
      File.rm(path)
    end

    test "set_limits tightens the process limit of a running child" do
      {:ok, %{id: id}} = CNode.spawn(["sh", "-c", "sleep 60 & sleep 60 & echo up; wait"], [])
      assert ["up"] = read_lines(id, 1)
      assert :ok = CNode.set_limits(id, %{processes: 1})
      assert %{exit: {:limit, :processes}} = collect(id)
    end

    test "set_limits sets a CPU limit relative to the CPU already used" do
      {:ok, %{id: id}} = CNode.spawn(["sh", "-c", "while :; do :; done"], [])
      assert :ok = CNode.set_limits(id, %{cpu_seconds: 1})
      assert %{exit: {:limit, :cpu}} = collect(id)
    end

    test "set_limits on an unknown id" do
      assert {:error, :not_found} = CNode.set_limits(123_456_789, %{memory: 1})
    end
  end
end
