defmodule Sandbox.ErrorHandlerCNodeTest do
  # Synchronous: kills the supervising C-node, which every test shares.
  use ExUnit.Case, async: false

  import Sandbox.IsolatedCompilerTestHelpers

  alias Sandbox.IsolatedCompiler

  @moduletag :slow
  @moduletag :capture_log

  test "a compile whose C-node dies under it runs again on the restarted C-node" do
    dir = tmp_dir!("cnode-retry")
    once = Path.join(dir, "once")
    started = Path.join(dir, "started")

    # The first compile parks in the module body (after saying so, in a file
    # of the test's: unconfined); the
    # retry finds `once` and compiles.
    File.write!(Path.join(dir, "park.ex"), """
    defmodule ParkOnce do
      unless File.exists?(#{inspect(once)}) do
        File.write!(#{inspect(once)}, "")
        File.write!(#{inspect(started)}, "")
        receive do
          :never -> :ok
        end
      end

      def x, do: 1
    end
    """)

    {:ok, watch} = Sandbox.CNode.watch(dir, include: ["started"], debounce: 0)
    :ok = Sandbox.subscribe(:all)

    task =
      Task.async(fn -> IsolatedCompiler.compile_sandbox(dir, cache: false, confine: :none) end)

    assert_receive {:sandbox_cnode, ^watch, {:changed, [^started]}}, 60_000
    old = Sandbox.CNode.os_pid()
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(old)])

    assert {:ok, info} = Task.await(task, 60_000)
    assert [{ParkOnce, _}] = info.modules
    assert Sandbox.CNode.os_pid() != old

    assert_received {:sandbox_event, [:sandbox, :error, :handled], _,
                     %{category: :system_error, strategy: :retry, operation: :compile}}
  end
end
