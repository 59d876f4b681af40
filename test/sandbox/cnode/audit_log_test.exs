defmodule Sandbox.CNode.AuditLogTest do
  # Where the audit log lives by default, and what the C-node refuses to
  # open.
  use ExUnit.Case, async: true
  import Sandbox.CNodeHelpers

  alias Sandbox.CNode
  alias Sandbox.TestJSON

  defp tmp_dir(tag) do
    dir = Path.join(System.tmp_dir!(), "cnode_#{tag}_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  defp mode(path), do: Bitwise.band(File.lstat!(path).mode, 0o777)

  test "by default each VM has a private directory of its own, created 0700" do
    server = private_cnode()
    {:ok, %{audit: %{path: path, status: :ok}}} = CNode.info(server)
    dir = Path.dirname(path)
    assert Path.dirname(dir) == Path.expand(System.tmp_dir!())
    # the VM's OS pid and a random part: nobody can create it beforehand
    assert Path.basename(dir) =~ ~r/^sandbox-#{System.pid()}-[0-9a-f]{16}$/
    assert mode(dir) == 0o700
    assert File.lstat!(dir).type == :directory

    assert :ok = CNode.audit(%{event: :private}, server)
    assert mode(path) == 0o600
    assert [line] = path |> File.read!() |> String.split("\n", trim: true)
    assert {:ok, %{"event" => "private"}} = TestJSON.decode(line)

    # the shared server of this VM writes audit.log beside it; others files of their own
    {:ok, %{audit: %{path: shared}}} = CNode.info()
    assert shared == Path.join(dir, "audit.log")
    other = private_cnode()
    {:ok, %{audit: %{path: other_path}}} = CNode.info(other)
    assert Path.dirname(other_path) == dir and other_path != path
  end

  @tag :slow
  test "two VMs on one machine never share an audit file" do
    # a second VM, talked to over its standard I/O (this one stays undistributed)
    {:ok, peer, _} =
      :peer.start(%{
        connection: :standard_io,
        args: Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
      })

    try do
      # a server on the peer, not linked to the short-lived call process
      {:ok, remote} = :peer.call(peer, GenServer, :start, [CNode, [registered: nil]])
      {:ok, %{audit: %{path: theirs, status: :ok}}} = :peer.call(peer, CNode, :info, [remote])
      {:ok, %{audit: %{path: ours}}} = CNode.info()
      peer_pid = :peer.call(peer, System, :pid, [])
      assert Path.dirname(theirs) != Path.dirname(ours)
      assert Path.basename(Path.dirname(theirs)) =~ ~r/^sandbox-#{peer_pid}-/
      assert :ok = :peer.call(peer, CNode, :audit, [%{from: :peer}, remote])
      assert File.read!(theirs) =~ ~s("from":"peer")
      refute File.exists?(ours) and File.read!(ours) =~ ~s("from":"peer")
    after
      :peer.stop(peer)
    end
  end

  test "a symbolic link planted at the log's path is never followed; the log recovers" do
    dir = tmp_dir("audit_link")
    log = Path.join(dir, "audit.log")
    victim = Path.join(dir, "victim")
    File.write!(victim, "")
    File.ln_s!(victim, log)

    server = private_cnode(audit_log: log)
    assert {:ok, %{audit: %{status: {:error, :eloop}}}} = CNode.info(server)
    assert {:error, {:audit_failed, :eloop}} = CNode.audit(%{event: :one}, server)
    assert File.read!(victim) == ""

    # once the link is gone, the next event creates the log, ours alone
    File.rm!(log)
    assert :ok = CNode.audit(%{event: :two}, server)
    assert File.lstat!(log).type == :regular
    assert mode(log) == 0o600
    assert {:ok, %{"event" => "two"}} = log |> File.read!() |> String.trim() |> TestJSON.decode()
    assert {:ok, %{audit: %{status: :ok}}} = CNode.info(server)
  end

  test "a hard link to another file is refused" do
    dir = tmp_dir("audit_hard")
    log = Path.join(dir, "audit.log")
    victim = Path.join(dir, "victim")
    File.write!(victim, "")
    File.ln!(victim, log)
    server = private_cnode(audit_log: log)
    assert {:error, {:audit_failed, :emlink}} = CNode.audit(%{event: :x}, server)
    assert File.read!(victim) == ""
  end
end
