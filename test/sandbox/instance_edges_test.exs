defmodule Sandbox.InstanceEdgesTest do
  # What a sandbox's root start may return, a restart that cannot start it
  # again, and edge cases of the facade.
  use Sandbox.Case, async: true

  @moduletag :tmp_dir

  @counter Path.expand("../../examples/counter", __DIR__)

  setup %{tmp_dir: tmp} do
    dir = Path.join(tmp, "roots")
    File.mkdir_p!(dir)

    File.write!(Path.join(dir, "sup.ex"), """
    defmodule Roots.Sup do
      use Supervisor

      def start_link(:ignore), do: :ignore
      def start_link(:bogus), do: :bogus
      def start_link(:raise), do: raise("no start")

      def start_link(:extra) do
        {:ok, pid} = Supervisor.start_link(__MODULE__, [], name: __MODULE__)
        {:ok, pid, :extra}
      end

      # Fails to start while the file `flag` exists.
      def start_link({:flag, flag}) do
        if File.exists?(flag),
          do: {:error, :flagged},
          else: Supervisor.start_link(__MODULE__, [], name: __MODULE__)
      end

      @impl true
      def init(_), do: Supervisor.init([], strategy: :one_for_one)
    end
    """)

    %{dir: dir}
  end

  defp create(ctx, args) do
    id = test_sandbox_id(ctx.test)
    on_exit(fn -> Sandbox.destroy_sandbox(id) end)
    {id, Sandbox.create_sandbox(id, Roots.Sup, sandbox_path: ctx.dir, supervisor_args: args)}
  end

  test "a root start that returns :ignore: running, without a root", ctx do
    {id, result} = create(ctx, :ignore)
    assert {:ok, %{status: :running, supervisor_pid: nil}} = result
    assert_sandbox_running(id)
  end

  test "{:ok, pid, extra} is a start", ctx do
    {id, result} = create(ctx, :extra)
    assert {:ok, %{supervisor_pid: pid}} = result
    assert Process.whereis(Sandbox.module_name(id, Roots.Sup)) == pid
  end

  test "a bad return or an exception is {:start_failed, module, why}, leaving nothing", ctx do
    {id, result} = create(ctx, :bogus)
    assert result == {:error, {:start_failed, Roots.Sup, {:bad_return, :bogus}}}
    assert Sandbox.get_sandbox_info(id) == {:error, :not_found}

    {_id, result} = create(%{ctx | test: :"#{ctx.test} raise"}, :raise)

    assert {:error,
            {:start_failed, Roots.Sup, {:error, %RuntimeError{message: "no start"}, [_ | _]}}} =
             result
  end

  test "a restart that cannot start the root again: status :error with the reason", ctx do
    flag = Path.join(ctx.tmp_dir, "flag")
    {id, {:ok, _}} = create(ctx, {:flag, flag})
    File.write!(flag, "")

    assert Sandbox.restart_sandbox(id) == {:error, {:start_failed, Roots.Sup, :flagged}}

    assert_raise ExUnit.AssertionError, ~r/status is :error \(error: \{:start_failed/, fn ->
      assert_sandbox_running(id)
    end

    # Once it can start, a restart brings it back.
    File.rm!(flag)
    assert {:ok, %{status: :running, error: nil}} = Sandbox.restart_sandbox(id)
  end

  describe "the facade" do
    @describetag sandbox: [path: @counter]

    test "a target that is not an atom", %{test: test} do
      assert Sandbox.create_sandbox(test_sandbox_id(test), "counter", sandbox_path: @counter) ==
               {:error, {:unknown_module_or_app, "counter"}}
    end

    test "hot_reload_source/3 with neither a file nor code", %{sandbox: id} do
      assert_raise ArgumentError, ~r/expected \{:file, path\} or \{:code, string\}/, fn ->
        Sandbox.hot_reload_source(id, {:beam, "x"})
      end
    end

    test "a run whose process is killed is {:exit, :killed}", %{sandbox: id} do
      assert Sandbox.run(id, fn -> Process.exit(self(), :kill) end) == {:error, {:exit, :killed}}
      assert_sandbox_running(id)
    end
  end
end
