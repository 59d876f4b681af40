defmodule Sandbox.CNode.WatchTreeTest do
  # Watching trees that are deep, that get deep, and whose directories move.
  use ExUnit.Case, async: true
  import Sandbox.CNodeHelpers
  import ExUnit.CaptureLog

  alias Sandbox.CNode

  defp tmp_dir(tag) do
    dir = Path.join(System.tmp_dir!(), "cnode_#{tag}_#{System.unique_integer([:positive])}")
    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    # rm copes with trees deeper than PATH_MAX; File.rm_rf does not
    on_exit(fn -> System.cmd("rm", ["-rf", dir]) end)
    dir
  end

  # A chain of `levels` directories named "d" below dir, built by a shell that
  # descends with cd, 100 levels per mkdir (the full path may grow past
  # PATH_MAX). Returns the path of the first level.
  defp deep_chain(dir, levels) do
    chunk = String.duplicate("d/", 100)

    script = """
    cd "$1" || exit 1
    left=#{levels}
    while [ $left -ge 100 ]; do mkdir -p #{chunk} && cd #{chunk} || exit 1; left=$((left-100)); done
    while [ $left -gt 0 ]; do mkdir d && cd d || exit 1; left=$((left-1)); done
    """

    {_, 0} = System.cmd("sh", ["-c", script, "deep", dir])
    Path.join(dir, "d")
  end

  @tag :slow
  test "watching a 2,000-level tree is a clear error, and the program lives on" do
    server = private_cnode()
    dir = tmp_dir("deep_now")
    deep_chain(dir, 2000)
    os_pid = CNode.os_pid(server)

    assert {:error, {:too_deep, path}} = CNode.watch(dir, server: server)
    # the first directory beyond the default limit of 64 levels
    assert path == dir <> String.duplicate("/d", 65)
    assert {:error, {:too_deep, _}} = CNode.watch(dir, server: server, max_depth: 100)
    # allowed that deep, the whole tree is watched: no recursion, no crash
    assert {:ok, wid} = CNode.watch(dir, server: server, max_depth: 4096, debounce: 20)
    file = Path.join(dir, String.duplicate("d/", 2000) <> "bottom.ex")

    {_, 0} =
      System.cmd("sh", [
        "-c",
        "cd \"$1\"#{String.duplicate("/d", 2000)} && echo x > bottom.ex",
        "w",
        dir
      ])

    assert_receive {:sandbox_cnode, ^wid, {:changed, [^file]}}, 20_000
    assert {:pong, ^os_pid} = CNode.request(server, :ping, %{})
  end

  test "a tree whose paths exceed PATH_MAX is refused, not a crash" do
    server = private_cnode()
    dir = tmp_dir("long")
    name = String.duplicate("n", 200)
    half = Enum.map_join(1..10, "/", fn _ -> name end)
    # 21 levels of 200 characters, made by relative paths of less than PATH_MAX
    {_, 0} =
      System.cmd("sh", [
        "-c",
        "cd \"$1\" && mkdir -p #{half} && cd #{half} && mkdir -p #{half}/#{name}",
        "l",
        dir
      ])

    assert {:error, {:watch_failed, :enametoolong}} = CNode.watch(dir, server: server)
    assert {:pong, _} = CNode.request(server, :ping, %{})
  end

  @tag :slow
  test "a tree that grows 2,000 levels deep under a watch: the excess is left out, the rest works" do
    server = private_cnode()
    dir = tmp_dir("deep_later")
    {:ok, wid} = CNode.watch(dir, server: server, debounce: 20, max_depth: 10)
    os_pid = CNode.os_pid(server)
    # built elsewhere and moved in: the watch meets all 2,000 levels at once
    # (this made the old recursive walk overflow its stack, and crash again
    # on every re-watch after a restart)
    src = tmp_dir("deep_src")
    deep_chain(src, 2000)
    File.rename!(Path.join(src, "d"), Path.join(dir, "d"))

    assert_receive {:sandbox_cnode, ^wid, {:not_watched, path, :too_deep}}, 20_000
    assert path == dir <> String.duplicate("/d", 11)
    # the program did not die, the watch did not go, and shallow changes arrive
    file = Path.join([dir, "d", "d", "x.ex"])
    File.write!(file, "x")
    assert_receive {:sandbox_cnode, ^wid, {:changed, changed}}, 20_000
    assert file in changed
    assert {:pong, ^os_pid} = CNode.request(server, :ping, %{})
  end

  test "after a restart, a watch that cannot be re-established is dropped and its owner told" do
    server = private_cnode()
    dir = tmp_dir("rewatch")
    {:ok, keep} = CNode.watch(dir, server: server, debounce: 20)
    {:ok, wid} = CNode.watch(dir, server: server, debounce: 20, max_depth: 3)
    src = tmp_dir("rewatch_src")
    deep_chain(src, 6)
    File.rename!(Path.join(src, "d"), Path.join(dir, "d"))
    assert_receive {:sandbox_cnode, ^wid, {:not_watched, _, :too_deep}}, 20_000

    capture_log(fn ->
      old = CNode.os_pid(server)
      System.cmd("kill", ["-9", Integer.to_string(old)])
      # the new program refuses the re-watch: the watch is dropped, not retried
      assert_receive {:sandbox_cnode, ^wid, {:watch_lost, {:too_deep, _}}}, 20_000
      assert CNode.os_pid(server) != old
    end)

    # the other watch came back under its id
    file = Path.join(dir, "again.ex")
    File.write!(file, "x")
    assert_receive {:sandbox_cnode, ^keep, {:changed, [^file]}}, 20_000
    assert {:error, :not_found} = CNode.unwatch(wid, server)
    assert :ok = CNode.unwatch(keep, server)
  end

  test "a directory renamed within the tree is followed; one moved out is dropped" do
    server = private_cnode()
    dir = tmp_dir("rename")
    out = tmp_dir("rename_out")
    File.mkdir_p!(Path.join([dir, "a", "b"]))
    {:ok, wid} = CNode.watch(dir, server: server, debounce: 20)

    File.rename!(Path.join(dir, "a"), Path.join(dir, "c"))
    # a write below the renamed directory must carry the new path
    file = Path.join([dir, "c", "b", "x.ex"])
    File.write!(file, "x")
    changed = settle(wid, dir)
    assert file in changed
    refute Enum.any?(changed, &String.contains?(&1, "/a/")), inspect(changed)

    # the renamed directory renamed again: its files come at the new place
    File.rename!(Path.join(dir, "c"), Path.join(dir, "e"))
    changed = settle(wid, dir)
    assert Path.join([dir, "e", "b", "x.ex"]) in changed
    refute Enum.any?(changed, &String.contains?(&1, ["/a/", "/c/"])), inspect(changed)

    # and a directory below it renamed: never a name it no longer has
    File.rename!(Path.join([dir, "e", "b"]), Path.join([dir, "e", "f"]))
    file2 = Path.join([dir, "e", "f", "y.ex"])
    File.write!(file2, "y")
    changed = settle(wid, dir)
    assert file2 in changed
    refute Enum.any?(changed, &String.contains?(&1, ["/a/", "/c/", "/e/b/"])), inspect(changed)

    # moved out of the tree: later writes there are none of the watch's business
    File.rename!(Path.join(dir, "e"), Path.join(out, "e"))
    File.write!(Path.join([out, "e", "f", "z.ex"]), "z")
    changed = settle(wid, dir)
    refute Enum.any?(changed, &String.contains?(&1, "z.ex")), inspect(changed)
  end

  # Every path reported up to a barrier file written now: whatever was done
  # before is in (its events were queued before the barrier's).
  defp settle(wid, dir, acc \\ []) do
    barrier = Path.join(dir, "barrier_#{System.unique_integer([:positive])}.ex")
    File.write!(barrier, "b")
    settle_until(wid, barrier, acc)
  end

  defp settle_until(wid, barrier, acc) do
    receive do
      {:sandbox_cnode, ^wid, {:changed, paths}} ->
        if barrier in paths,
          do: acc ++ (paths -- [barrier]),
          else: settle_until(wid, barrier, acc ++ paths)
    after
      20_000 -> flunk("no event with #{barrier}")
    end
  end

  test "max_depth is checked" do
    assert_raise ArgumentError, fn -> CNode.watch("/tmp", max_depth: -1) end

    assert {:error, {:bad_option, :max_depth}} =
             CNode.request(CNode, :watch, %{dir: "/tmp", max_depth: 5000})
  end
end
