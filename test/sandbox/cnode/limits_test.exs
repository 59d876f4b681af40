defmodule Sandbox.CNode.LimitsTest do
  # set_limits moves soft limits under a ceiling fixed at spawn. The C-node
  # here runs without CAP_SYS_RESOURCE (as it does for any user but root),
  # so nothing below may depend on raising a hard limit.
  use ExUnit.Case, async: true
  import Sandbox.CNodeHelpers

  alias Sandbox.CNode

  setup do
    dir = Path.join(System.tmp_dir!(), "cnode_limits_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    {:ok, dir: dir, server: private_cnode(executable: unprivileged(dir))}
  end

  # As root, a wrapper that drops CAP_SYS_RESOURCE from the program's bounding
  # set; as anyone else, the program itself.
  defp unprivileged(dir) do
    exe = Path.join(:code.priv_dir(:sandbox), "sandbox_cnode")

    if System.cmd("id", ["-u"]) |> elem(0) |> String.trim() == "0" do
      wrapper = Path.join(dir, "cnode_without_sys_resource")

      File.write!(wrapper, """
      #!/bin/sh
      exec setpriv --bounding-set=-sys_resource --inh-caps=-sys_resource #{exe} "$@"
      """)

      File.chmod!(wrapper, 0o755)
      wrapper
    else
      exe
    end
  end

  # {soft, hard} of a limit from /proc/<pid>/limits ("unlimited" or an integer)
  defp rlimit(pid, name) do
    line =
      File.read!("/proc/#{pid}/limits")
      |> String.split("\n")
      |> Enum.find(&String.starts_with?(&1, name))

    [soft, hard | _] = line |> String.replace_prefix(name, "") |> String.split()
    {parse(soft), parse(hard)}
  end

  defp parse("unlimited"), do: :infinity
  defp parse(n), do: String.to_integer(n)

  test "the program really lacks CAP_SYS_RESOURCE", %{server: server} do
    os_pid = CNode.os_pid(server)
    [_, hex] = Regex.run(~r/CapEff:\s+([0-9a-f]+)/, File.read!("/proc/#{os_pid}/status"))
    # CAP_SYS_RESOURCE is bit 24
    assert Bitwise.band(String.to_integer(hex, 16), Bitwise.bsl(1, 24)) == 0
  end

  test "a limit set later can be lowered, raised and removed again", %{dir: dir, server: server} do
    file = Path.join(dir, "out")

    script =
      "read x; dd if=/dev/zero of=#{file} bs=1000 count=50 2>/dev/null; echo done; read y; exit 0"

    {:ok, %{id: id, os_pid: pid}} = CNode.spawn(["sh", "-c", script], server: server)

    assert :ok = CNode.set_limits(id, %{file_size: 1000}, server)
    assert rlimit(pid, "Max file size") == {1000, :infinity}
    # raising needs no privilege: the hard limit never moved
    assert :ok = CNode.set_limits(id, %{file_size: 100_000}, server)
    assert rlimit(pid, "Max file size") == {100_000, :infinity}
    assert :ok = CNode.set_limits(id, %{file_size: :infinity}, server)
    assert rlimit(pid, "Max file size") == {:infinity, :infinity}

    # the same for CPU time
    assert :ok = CNode.set_limits(id, %{cpu_seconds: 100}, server)
    assert {soft, :infinity} = rlimit(pid, "Max cpu time")
    assert soft >= 100
    assert :ok = CNode.set_limits(id, %{cpu_seconds: :infinity}, server)
    assert rlimit(pid, "Max cpu time") == {:infinity, :infinity}

    # and the writer is not stopped by the limit removed
    :ok = CNode.write_stdin(id, "go\n", server)
    assert ["done"] = read_lines(id, 1)
    CNode.close_stdin(id, server)
    assert %{exit: {:status, 0}} = collect(id)
    assert File.stat!(file).size == 50_000
  end

  test "a spawn-time limit is the ceiling; :ceiling sets a higher one", %{server: server} do
    {:ok, %{id: id, os_pid: pid}} =
      CNode.spawn(["sh", "-c", "read x"], server: server, limits: %{file_size: 4096})

    assert rlimit(pid, "Max file size") == {4096, 4096}
    assert :ok = CNode.set_limits(id, %{file_size: 2048}, server)

    assert {:error, {:above_ceiling, :file_size}} =
             CNode.set_limits(id, %{file_size: 8192}, server)

    assert rlimit(pid, "Max file size") == {2048, 4096}
    # :infinity goes back to the spawn-time value
    assert :ok = CNode.set_limits(id, %{file_size: :infinity}, server)
    assert rlimit(pid, "Max file size") == {4096, 4096}
    CNode.close_stdin(id, server)
    collect(id)

    {:ok, %{id: id, os_pid: pid}} =
      CNode.spawn(["sh", "-c", "read x"],
        server: server,
        limits: %{file_size: 4096, cpu_seconds: 5},
        ceiling: %{file_size: 65_536, cpu_seconds: 60}
      )

    assert rlimit(pid, "Max file size") == {4096, 65_536}
    assert rlimit(pid, "Max cpu time") == {5, 61}
    assert :ok = CNode.set_limits(id, %{file_size: 65_536}, server)
    assert rlimit(pid, "Max file size") == {65_536, 65_536}

    assert {:error, {:above_ceiling, :cpu_seconds}} =
             CNode.set_limits(id, %{cpu_seconds: 61}, server)

    CNode.close_stdin(id, server)
    collect(id)

    assert {:error, {:above_ceiling, :file_size}} =
             CNode.spawn(["true"],
               server: server,
               limits: %{file_size: 10},
               ceiling: %{file_size: 5}
             )

    assert_raise ArgumentError, fn -> CNode.spawn(["true"], ceiling: %{memory: 5}) end
  end

  test "a refused set_limits changes no limit", %{server: server} do
    {:ok, %{id: id, os_pid: pid}} =
      CNode.spawn(["sh", "-c", "read x; exit 0"], server: server, limits: %{file_size: 4096})

    assert {:error, {:above_ceiling, :file_size}} =
             CNode.set_limits(id, %{cpu_seconds: 7, file_size: 10_000}, server)

    assert rlimit(pid, "Max cpu time") == {:infinity, :infinity}
    assert rlimit(pid, "Max file size") == {4096, 4096}
    CNode.close_stdin(id, server)
    assert %{exit: {:status, 0}} = collect(id)
  end

  test "a CPU limit lowered later still stops a spinner", %{server: server} do
    {:ok, %{id: id}} = CNode.spawn(["sh", "-c", "while :; do :; done"], server: server)
    assert :ok = CNode.set_limits(id, %{cpu_seconds: 100}, server)
    assert :ok = CNode.set_limits(id, %{cpu_seconds: 1}, server)
    assert %{exit: {:limit, :cpu}} = collect(id)
  end
end
