defmodule Sandbox.ErrorHandlerTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.WatchFixtures

  alias Sandbox.ErrorHandler

  describe "classification and strategies" do
    test "classify_error/1" do
      for {error, category} <- [
            {{:compilation_failed, []}, :compilation_error},
            {{:compile_timeout, 10}, :compilation_error},
            {{:invalid_beam, M, :not_iff}, :compilation_error},
            {{:relocation_failed, M, :x}, :compilation_error},
            {{:limit_exceeded, :max_memory}, :resource_error},
            {{:security_violation, []}, :security_error},
            {:cnode_down, :system_error},
            {{:worker_crashed, :cnode_down}, :system_error},
            {{:load_failed, []}, :system_error},
            {{:root_crashed, :boom}, :runtime_error},
            {{:migration_failed, M, self(), :x}, :runtime_error},
            {{:error, {:compile_timeout, 1}}, :compilation_error}
          ] do
        assert ErrorHandler.classify_error(error) == category, inspect(error)
      end
    end

    test "suggest_recovery/2" do
      ctx = fn op, meta -> Map.put(ErrorHandler.context("x", op, :test, meta), :error, :e) end

      assert ErrorHandler.suggest_recovery(:compilation_error, ctx.(:create, %{})) == :terminate
      assert ErrorHandler.suggest_recovery(:compilation_error, ctx.(:reload, %{})) == :rollback

      cnode = %{ctx.(:compile, %{attempt: 0}) | error: :cnode_down}
      assert ErrorHandler.suggest_recovery(:system_error, cnode) == :retry
      again = %{ctx.(:compile, %{attempt: 1}) | error: {:worker_crashed, :cnode_down}}
      assert ErrorHandler.suggest_recovery(:system_error, again) == :unrecoverable

      assert ErrorHandler.suggest_recovery(:resource_error, ctx.(:run, %{})) == :terminate

      assert ErrorHandler.suggest_recovery(:security_error, ctx.(:run, %{profile: :high})) ==
               :isolate

      assert ErrorHandler.suggest_recovery(:security_error, ctx.(:run, %{profile: :medium})) ==
               :rollback

      run = fn meta -> ErrorHandler.suggest_recovery(:runtime_error, ctx.(:run, meta)) end
      window = %{window: 5_000, restarts: 1, max_restarts: 3}
      assert run.(Map.put(window, :since_reload, 100)) == :rollback
      assert run.(Map.put(window, :since_reload, 9_000)) == :restart
      assert run.(Map.put(window, :since_reload, nil)) == :restart
      assert run.(%{window | restarts: 4}) == :terminate
    end

    test "handle_error/2 emits [:sandbox, :error, :handled]" do
      id = "eh#{System.unique_integer([:positive])}"
      :ok = Sandbox.subscribe(id)

      assert ErrorHandler.handle_error(
               {:compilation_failed, []},
               ErrorHandler.context(id, :reload, :test)
             ) ==
               {:ok, :rollback}

      assert_received {:sandbox_event, [:sandbox, :error, :handled], %{count: 1},
                       %{sandbox_id: ^id, category: :compilation_error, strategy: :rollback}}

      ctx = ErrorHandler.context(id, :compile, :test, %{attempt: 1})
      assert ErrorHandler.handle_error(:cnode_down, ctx) == {:error, :unrecoverable}

      assert_received {:sandbox_event, [:sandbox, :error, :handled], _,
                       %{category: :system_error, strategy: :unrecoverable}}
    end
  end

  describe "in the sandbox's life" do
    @describetag :tmp_dir

    setup ctx do
      hash = :erlang.phash2(ctx.test)
      ns = "E#{hash}"
      app = :"e#{hash}_app"
      id = "e#{hash}"
      dir = write_project(Path.join(ctx.tmp_dir, "project"), ns, app)
      on_exit(fn -> Sandbox.destroy_sandbox(id) end)
      {:ok, _} = Sandbox.create_sandbox(id, app, sandbox_path: dir)
      :ok = Sandbox.subscribe(id)
      %{ns: ns, id: id, dir: dir, server: Module.concat(ns, Server)}
    end

    test "a compile error keeps the running code and is reported", ctx do
      File.write!(Path.join(ctx.dir, "lib/server.ex"), "defmodule #{ctx.ns}.Server do\n")

      assert {:error, {:compilation_failed, _}} =
               Sandbox.hot_reload_source(ctx.id, {:file, Path.join(ctx.dir, "lib/server.ex")})

      assert_received {:sandbox_event, [:sandbox, :error, :handled], _,
                       %{category: :compilation_error, strategy: :rollback, operation: :reload}}

      assert {:ok, {1, 0, _}} = Sandbox.call(ctx.id, ctx.server, :get, [])
      assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(ctx.id)
    end

    @tag :capture_log
    test "a root supervisor crash soon after a reload rolls it back and restarts", ctx do
      {:ok, {1, 0, old_pid}} = Sandbox.call(ctx.id, ctx.server, :get, [])

      # Version 2 crashes on :bump, and cannot start again: its supervisor
      # gives up, and the sandbox's root supervisor dies.
      bad = """
      defmodule #{ctx.ns}.Server do
        use GenServer
        def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
        def version, do: 2
        def bump, do: GenServer.call(__MODULE__, :bump)
        def get, do: GenServer.call(__MODULE__, :get)
        @impl true
        def init(_), do: {:stop, :version_2_cannot_start}
        @impl true
        def handle_call(:bump, _from, _n), do: raise("boom")
        def handle_call(:get, _from, n), do: {:reply, {version(), n, self()}, n}
        @impl true
        def code_change(_old, n, _extra), do: {:ok, n}
      end
      """

      assert Sandbox.hot_reload_source(ctx.id, {:code, bad}) == {:ok, :hot_reloaded}
      assert {:ok, {2, 0, ^old_pid}} = Sandbox.call(ctx.id, ctx.server, :get, [])
      assert {:error, {:exit, _}} = Sandbox.call(ctx.id, ctx.server, :bump, [])

      assert_receive {:sandbox_event, [:sandbox, :error, :handled], _,
                      %{category: :runtime_error, strategy: :rollback, error: {:root_crashed, _}}},
                     10_000

      assert_receive {:sandbox_event, [:sandbox, :reload, :rolled_back], _,
                      %{reason: {:root_crashed, _}, versions: versions}},
                     10_000

      assert versions == %{ctx.server => 1}
      assert_receive {:sandbox_event, [:sandbox, :manager, :restarted], _, _}, 10_000

      assert {:ok, %{status: :running, error: nil}} = Sandbox.get_sandbox_info(ctx.id)
      assert Sandbox.get_current_version(ctx.id, ctx.server) == {:ok, 1}
      assert {:ok, {1, 0, new_pid}} = Sandbox.call(ctx.id, ctx.server, :get, [])
      assert new_pid != old_pid

      assert [_, %{version: 2, rolled_back_at: %DateTime{}}] =
               Sandbox.list_module_versions(ctx.id, ctx.server)
    end
  end
end
