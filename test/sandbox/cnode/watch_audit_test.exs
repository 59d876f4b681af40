defmodule Sandbox.CNode.WatchAuditTest do
  use ExUnit.Case, async: true

  alias Sandbox.CNode
  alias Sandbox.TestJSON

  defp tmp_dir(tag) do
    dir = Path.join(System.tmp_dir!(), "cnode_#{tag}_#{System.unique_integer([:positive])}")
    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  describe "watch" do
    test "a burst of saves in nested and new directories is one coalesced event" do
      dir = tmp_dir("watch")
      lib = Path.join(dir, "lib")
      File.mkdir_p!(lib)
      File.write!(Path.join(lib, "old.ex"), "old")
      {:ok, wid} = CNode.watch(dir, debounce: 1_000)

      File.write!(Path.join(lib, "a.ex"), "a")
      File.mkdir_p!(Path.join([lib, "new", "deeper"]))
      File.write!(Path.join([lib, "new", "deeper", "b.ex"]), "b")
      File.write!(Path.join([lib, "new", "c.exs"]), "c")
      File.write!(Path.join(lib, "notes.txt"), "not included")
      File.mkdir_p!(Path.join([dir, "_build", "x"]))
      File.write!(Path.join([dir, "_build", "x", "d.ex"]), "ignored dir")
      # an editor's save: write a temporary file, rename it over the target
      File.write!(Path.join(lib, ".#tmp123.ex"), "new old")
      File.rename!(Path.join(lib, ".#tmp123.ex"), Path.join(lib, "old.ex"))
      File.write!(Path.join(lib, "a.ex"), "a again")

      assert_receive {:sandbox_cnode, ^wid, {:changed, paths}}, 20_000

      assert paths ==
               Enum.sort([
                 Path.join(lib, "a.ex"),
                 Path.join([lib, "new", "deeper", "b.ex"]),
                 Path.join([lib, "new", "c.exs"]),
                 Path.join(lib, "old.ex")
               ])

      # nothing of the burst is left over: the next event holds only the next save
      File.write!(Path.join([lib, "new", "deeper", "z.erl"]), "z")
      assert_receive {:sandbox_cnode, ^wid, {:changed, [only]}}, 20_000
      assert only == Path.join([lib, "new", "deeper", "z.erl"])

      assert :ok = CNode.unwatch(wid)
      assert {:error, :not_found} = CNode.unwatch(wid)
    end

    test "overlapping watches each get their events; unwatching one keeps the other" do
      dir = tmp_dir("watch_overlap")
      sub = Path.join(dir, "sub")
      File.mkdir_p!(sub)
      {:ok, outer} = CNode.watch(dir, debounce: 20)
      {:ok, inner} = CNode.watch(sub, debounce: 20)
      file = Path.join(sub, "x.ex")
      File.write!(file, "1")
      assert_receive {:sandbox_cnode, ^outer, {:changed, [^file]}}, 20_000
      assert_receive {:sandbox_cnode, ^inner, {:changed, [^file]}}, 20_000

      assert :ok = CNode.unwatch(outer)
      File.write!(file, "2")
      assert_receive {:sandbox_cnode, ^inner, {:changed, [^file]}}, 20_000
      # Both watches would flush in the same round, before the program reads the
      # next request: after this reply, an event of the outer one would be here.
      assert {:pong, _} = CNode.request(CNode, :ping, %{})
      refute_received {:sandbox_cnode, ^outer, _}
      CNode.unwatch(inner)
    end

    test "a deleted file is a change; include [] takes every file" do
      dir = tmp_dir("watch_del")
      File.write!(Path.join(dir, "x.txt"), "x")
      {:ok, wid} = CNode.watch(dir, include: [], debounce: 20)
      File.rm!(Path.join(dir, "x.txt"))
      assert_receive {:sandbox_cnode, ^wid, {:changed, [path]}}, 20_000
      assert path == Path.join(dir, "x.txt")
      CNode.unwatch(wid)
    end

    test "an inotify queue overflow is answered with a rescan reporting every file" do
      dir = tmp_dir("watch_overflow")
      File.write!(Path.join(dir, "untouched.ex"), "u")
      spec = Supervisor.child_spec({CNode, name: nil}, id: make_ref())
      server = start_supervised!(spec)
      {:ok, wid} = CNode.watch(dir, debounce: 20, server: server)
      os_pid = Integer.to_string(CNode.os_pid(server))

      # While the program is stopped, more events than the kernel queues
      # (max_queued_events: 16384 by default, far more on some machines).
      # One write syscall is one IN_MODIFY; writes alternate between files,
      # so that no event merges with the one before it.
      {_, 0} = System.cmd("kill", ["-STOP", os_pid])
      limit = "/proc/sys/fs/inotify/max_queued_events" |> File.read!() |> String.trim()
      writes = String.to_integer(limit) + 2_000

      fds =
        for k <- 0..19 do
          {:ok, fd} = :file.open(Path.join(dir, "f#{k}.ex"), [:raw, :binary, :append])
          fd
        end
        |> List.to_tuple()

      try do
        for i <- 1..writes, do: :ok = :file.write(elem(fds, rem(i, 20)), "x")
      after
        for fd <- Tuple.to_list(fds), do: :file.close(fd)
        {_, 0} = System.cmd("kill", ["-CONT", os_pid])
      end

      assert_receive {:sandbox_cnode, ^wid, {:changed, paths}}, 20_000
      assert Path.join(dir, "untouched.ex") in paths
      assert length(paths) == 21
    end

    test "errors" do
      assert {:error, {:watch_failed, :enoent}} = CNode.watch("/nonexistent/dir")
      assert_raise ArgumentError, fn -> CNode.watch(:dir) end
      assert_raise ArgumentError, fn -> CNode.watch("/tmp", debounce: -1) end
    end
  end

  describe "audit" do
    test "appends valid JSON lines" do
      log = Path.join(tmp_dir("audit"), "audit.log")
      {:ok, server} = CNode.start_link(name: nil, audit_log: log)

      assert :ok =
               CNode.audit(
                 %{event: :created, id: "a", n: 1, ok: true, pid: self(), t: {1, "x"}, q: "\"\n"},
                 server
               )

      assert :ok =
               CNode.audit(%{"event" => "destroyed", "nested" => %{"l" => [1, 2.5, nil]}}, server)

      [l1, l2] = log |> File.read!() |> String.split("\n", trim: true)

      assert {:ok,
              %{"event" => "created", "n" => 1, "ok" => true, "t" => [1, "x"], "q" => "\"\n"} = e1} =
               TestJSON.decode(l1)

      assert e1["pid"] == inspect(self())
      assert is_binary(e1["ts"])
      assert {:ok, %{"nested" => %{"l" => [1, 2.5, nil]}}} = TestJSON.decode(l2)
      GenServer.stop(server)
    end

    test "rotates by size" do
      dir = tmp_dir("audit_rot")
      log = Path.join(dir, "audit.log")

      {:ok, server} =
        CNode.start_link(name: nil, audit_log: log, audit_max_bytes: 200, audit_keep: 2)

      for i <- 1..20, do: :ok = CNode.audit(%{i: i, pad: String.duplicate("x", 50)}, server)
      assert File.exists?(log <> ".1")
      assert File.exists?(log <> ".2")
      refute File.exists?(log <> ".3")
      GenServer.stop(server)
    end

    @tag :slow
    @tag :capture_log
    test "every acknowledged line survives a SIGKILL in the middle of 10,000 events" do
      log = Path.join(tmp_dir("audit_kill"), "audit.log")
      {:ok, server} = CNode.start_link(name: nil, audit_log: log)
      os_pid = CNode.os_pid(server)
      parent = self()

      tasks =
        for w <- 0..49 do
          Task.async(fn ->
            for i <- 0..199 do
              seq = w * 200 + i
              send(parent, {:acked, seq, CNode.audit(%{seq: seq, pad: "p#{seq}"}, server)})
            end
          end)
        end

      results =
        for n <- 1..10_000 do
          receive do
            {:acked, seq, r} ->
              if n == 2_000, do: System.cmd("kill", ["-9", Integer.to_string(os_pid)])
              {seq, r}
          end
        end

      Task.await_many(tasks, 120_000)
      acked = for {seq, :ok} <- results, do: seq
      assert Enum.any?(results, &match?({_, {:error, :cnode_down}}, &1))
      assert length(acked) >= 2_000

      on_disk =
        log
        |> File.read!()
        |> String.split("\n", trim: true)
        |> Enum.flat_map(fn line ->
          case TestJSON.decode(line) do
            {:ok, %{"seq" => seq}} -> [seq]
            _ -> []
          end
        end)
        |> MapSet.new()

      missing = Enum.reject(acked, &MapSet.member?(on_disk, &1))
      assert missing == []
      GenServer.stop(server)
    end
  end
end
