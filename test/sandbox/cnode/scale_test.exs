defmodule Sandbox.CNode.ScaleTest do
  # Many jobs at once: every descriptor of every job is still polled.
  use ExUnit.Case, async: true
  import Sandbox.CNodeHelpers

  alias Sandbox.CNode

  @moduletag :slow
  @moduletag timeout: 300_000
  @jobs 600

  test "with #{@jobs} jobs running, the oldest job's output and a watch's events still arrive" do
    server = private_cnode()
    # the oldest job: it answers on stdout when told to
    {:ok, %{id: first}} =
      CNode.spawn(["sh", "-c", "read x; echo got $x; read y; exit 0"], server: server)

    ids =
      for _ <- 1..@jobs do
        {:ok, %{id: id}} = CNode.spawn(["cat"], server: server)
        id
      end

    dir = Path.join(System.tmp_dir!(), "cnode_scale_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    {:ok, wid} = CNode.watch(dir, server: server, debounce: 20)
    {:ok, %{jobs: jobs}} = CNode.info(server)
    assert jobs == @jobs + 1

    :ok = CNode.write_stdin(first, "x\n", server)
    assert ["got x"] = read_lines(first, 1)
    file = Path.join(dir, "a.ex")
    File.write!(file, "a")
    assert_receive {:sandbox_cnode, ^wid, {:changed, [^file]}}, 20_000
    # and the newest job echoes too
    last = List.last(ids)
    :ok = CNode.write_stdin(last, "last\n", server)
    assert ["last"] = read_lines(last, 1)

    for id <- [first | ids], do: :ok = CNode.close_stdin(id, server)
    for id <- [first | ids], do: assert(%{exit: {:status, 0}} = collect(id))
  end
end
