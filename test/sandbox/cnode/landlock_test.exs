defmodule Sandbox.CNode.LandlockTest do
  # Spawns confined with Landlock (option :landlock): the command and every
  # process it starts can read, write and execute only what the ruleset
  # grants, cannot bind or connect TCP sockets, and cannot signal processes
  # outside it. Each restriction is shown to hold with the ruleset and not
  # without it (or with an ABI too old for it).
  use ExUnit.Case, async: true
  import Sandbox.CNodeHelpers

  alias Sandbox.CNode

  # What a shell and the Erlang runtime need to run (binaries, libraries).
  @system ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"]
          |> Enum.filter(&File.exists?/1)

  setup do
    dir = Path.join(System.tmp_dir!(), "sandbox-landlock-#{System.unique_integer([:positive])}")
    File.mkdir_p!(Path.join(dir, "job"))
    File.write!(Path.join(dir, "secret"), "s3cret")
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir, job: Path.join(dir, "job"), secret: Path.join(dir, "secret")}
  end

  defp kernel_abi do
    {:ok, %{landlock: %{kernel_abi: abi}}} = CNode.info()
    abi
  end

  defp sh(server, script, landlock) do
    {:ok, spawned} = CNode.spawn(["/bin/sh", "-c", script], server: server, landlock: landlock)
    {spawned, collect(spawned.id)}
  end

  test "info reports the ABI, or why Landlock is unavailable" do
    assert {:ok, %{landlock: %{abi: abi, kernel_abi: kernel}}} = CNode.info()
    assert kernel >= 1 and abi == min(kernel, 7)

    assert {:ok, %{landlock: {:unavailable, :forced_off}}} =
             CNode.info(private_cnode(landlock: :off))

    assert {:ok, %{landlock: %{abi: 3, kernel_abi: ^kernel}}} =
             CNode.info(private_cnode(landlock: 3))
  end

  test "files: reads, writes and execution outside the rules fail; the job's children too", ctx do
    server = private_cnode()

    script = """
    cat #{ctx.secret}; echo "read=$?"
    echo ok > #{ctx.job}/out && cat #{ctx.job}/out
    echo no > #{ctx.dir}/escaped; echo "write=$?"
    sh -c 'echo child > #{ctx.dir}/child-escaped'; echo "child=$?"
    """

    # Without a ruleset everything works.
    {_, open} = sh(server, script, nil)
    assert open.stdout =~ "s3cret"
    assert File.read!(Path.join(ctx.dir, "escaped")) == "no\n"
    assert File.read!(Path.join(ctx.dir, "child-escaped")) == "child\n"
    File.rm!(Path.join(ctx.dir, "escaped"))
    File.rm!(Path.join(ctx.dir, "child-escaped"))
    File.rm!(Path.join(ctx.job, "out"))

    {spawned, confined} = sh(server, script, %{exec: @system, write: [ctx.job]})
    assert spawned.landlock == %{abi: min(kernel_abi(), 7), missing: []}
    refute confined.stdout =~ "s3cret"
    assert confined.stdout =~ "read=1"
    assert confined.stdout =~ "ok\n"
    assert confined.stdout =~ "write=2"
    assert confined.stdout =~ "child=2"
    assert File.ls!(ctx.dir) |> Enum.sort() == ["job", "secret"]
    assert File.read!(Path.join(ctx.job, "out")) == "ok\n"

    # Nothing outside the exec rules runs, the command itself included.
    assert {:error, {:spawn_failed, :eacces}} =
             CNode.spawn(["/bin/sh", "-c", "true"], server: server, landlock: %{read: @system})
  end

  test "proc_self: the command reads its own /proc/<pid>, never another's", ctx do
    server = private_cnode()
    script = "head -1 /proc/$$/status; echo own=$?; head -c 1 /proc/1/environ; echo other=$?"
    rules = %{exec: @system, write: [ctx.job]}

    {_, r} = sh(server, script, Map.put(rules, :proc_self, true))
    assert r.stdout =~ "own=0"
    assert r.stdout =~ "other=1"

    {_, r} = sh(server, script, rules)
    assert r.stdout =~ "own=1"
    assert r.stdout =~ "other=1"
  end

  test "the job's directory is writable but no device node can be made in it", ctx do
    server = private_cnode()
    script = "mknod #{ctx.job}/null c 1 3; echo mknod=$?; mkdir #{ctx.job}/d; echo mkdir=$?"
    {_, r} = sh(server, script, %{exec: @system, write: [ctx.job]})
    assert r.stdout =~ "mkdir=0"
    refute r.stdout =~ "mknod=0"
    refute File.exists?(Path.join(ctx.job, "null"))
  end

  defp erl_connect(server, port, landlock) do
    code =
      ~s|case gen_tcp:connect({127,0,0,1}, #{port}, [], 5000) of | <>
        ~s|{ok, _} -> io:format("connected~n"); | <>
        ~s|{error, E} -> io:format("~p~n", [E]) end, halt().|

    {:ok, %{id: id}} =
      CNode.spawn(["erl", "-noshell", "-eval", code], server: server, landlock: landlock)

    collect(id).stdout
  end

  test "TCP: connect is refused from ABI 4 on, and open below", ctx do
    {:ok, listener} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(listener)
    rules = %{exec: @system, write: [ctx.job, "/dev/null"]}

    assert erl_connect(private_cnode(), port, nil) =~ "connected"
    assert {:ok, s} = :gen_tcp.accept(listener, 0)
    :gen_tcp.close(s)

    assert erl_connect(private_cnode(), port, rules) =~ "eacces"
    assert {:error, :timeout} = :gen_tcp.accept(listener, 0)

    # An ABI without network rules cannot close it, and says so.
    server = private_cnode(landlock: 3)

    {:ok, %{id: id, landlock: info}} = CNode.spawn(["/bin/true"], server: server, landlock: rules)

    collect(id)
    assert info == %{abi: 3, missing: [:tcp, :ioctl_dev, :scope]}
    assert erl_connect(server, port, rules) =~ "connected"
    assert {:ok, _} = :gen_tcp.accept(listener, 0)
  end

  test "signals to processes outside the ruleset are refused (ABI 6), allowed below", ctx do
    victim = spawn_sleeper()
    script = "kill -0 #{victim}; echo kill=$?"
    rules = %{exec: @system, write: [ctx.job]}

    {_, r} = sh(private_cnode(), script, nil)
    assert r.stdout =~ "kill=0"
    {_, r} = sh(private_cnode(), script, rules)
    assert r.stdout =~ "kill=1"
    {_, r} = sh(private_cnode(landlock: 5), script, rules)
    assert r.stdout =~ "kill=0"
  end

  defp spawn_sleeper do
    port = Port.open({:spawn_executable, "/bin/sleep"}, [:binary, args: ["60"]])
    {:os_pid, os_pid} = Port.info(port, :os_pid)
    on_exit(fn -> System.cmd("kill", ["-9", "#{os_pid}"]) end)
    os_pid
  end

  test "errors: a missing path, Landlock unavailable, a malformed ruleset", ctx do
    assert {:error, {:landlock, :enoent}} =
             CNode.spawn(["/bin/true"], landlock: %{read: [Path.join(ctx.dir, "none")]})

    assert {:error, {:landlock_unavailable, :forced_off}} =
             CNode.spawn(["/bin/true"],
               server: private_cnode(landlock: :off),
               landlock: %{read: @system}
             )

    assert_raise ArgumentError, fn -> CNode.spawn(["/bin/true"], landlock: %{read: ["rel"]}) end
    assert_raise ArgumentError, fn -> CNode.spawn(["/bin/true"], landlock: %{wirte: ["/"]}) end
    assert_raise ArgumentError, fn -> CNode.spawn(["/bin/true"], landlock: [:read]) end

    # The C side refuses what the Elixir side would not send.
    for bad <- [%{read: ["relative"]}, %{tcp: :maybe, read: ["/"]}, %{}, %{bogus: 1}, :yes] do
      assert CNode.request(CNode, :spawn, %{argv: ["/bin/true"], landlock: bad}) ==
               {:error, {:bad_option, :landlock}}
    end

    assert {:ok, _} = CNode.info()
  end
end
