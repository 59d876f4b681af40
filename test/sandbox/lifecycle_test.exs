defmodule Sandbox.LifecycleTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures

  # Every test owns the ids it creates (prefixed with its own name) and
  # destroys them on exit.
  setup context do
    prefix = "t#{:erlang.phash2(context.test)}"

    on_exit(fn ->
      for %{id: id} <- Sandbox.list_sandboxes(),
          String.starts_with?(id, prefix),
          do: Sandbox.destroy_sandbox(id)
    end)

    %{prefix: prefix}
  end

  # Blocks forever (until killed).
  defp park do
    receive do
      :never -> :ok
    end
  end

  defp create!(id, dir_or_opts, target \\ :counter) do
    opts = if is_binary(dir_or_opts), do: [sandbox_path: dir_or_opts], else: dir_or_opts
    {:ok, info} = Sandbox.create_sandbox(id, target, opts)
    info
  end

  describe "isolation" do
    @tag :tmp_dir
    test "same module names, different code, side by side; the host's module untouched", ctx do
      [{host_counter, _}] =
        Code.compile_string("defmodule Counter do def version, do: :host end", "host_counter.ex")

      on_exit(fn -> :code.purge(host_counter) && :code.delete(host_counter) end)

      a = "#{ctx.prefix}a"
      b = "#{ctx.prefix}b"
      v2 = "#{ctx.prefix}v2"
      create!(a, counter_path())
      create!(b, counter_path())
      create!(v2, counter_copy(ctx.tmp_dir, version: 2))

      assert Sandbox.call(a, Counter, :version, []) == {:ok, 1}
      assert Sandbox.call(v2, Counter, :version, []) == {:ok, 2}
      assert host_counter.version() == :host

      # Counter.Server registers under its module name: one per sandbox.
      assert {:ok, 1} = Sandbox.call(a, Counter, :increment, [])
      assert {:ok, 2} = Sandbox.call(a, Counter, :increment, [])
      assert {:ok, 1} = Sandbox.call(b, Counter, :increment, [])

      assert Process.whereis(Sandbox.module_name(a, Counter.Server)) !=
               Process.whereis(Sandbox.module_name(b, Counter.Server))

      assert Process.whereis(Counter.Server) == nil
    end

    @tag :tmp_dir
    test "each sandbox reads its own config; data atoms reach the host unchanged", ctx do
      a = "#{ctx.prefix}a"
      b = "#{ctx.prefix}b"
      create!(a, counter_path())
      create!(b, counter_copy(ctx.tmp_dir, greeting: "hello from b", step: 10))

      assert Sandbox.call(a, Counter, :greeting, []) == {:ok, "hello from counter"}
      assert Sandbox.call(b, Counter, :greeting, []) == {:ok, "hello from b"}
      assert Sandbox.call(b, Counter, :increment, []) == {:ok, 10}
      assert Application.get_env(:counter, :greeting) == nil

      {:ok, snapshot} = Sandbox.call(a, Counter, :snapshot, [])
      assert snapshot == %{counter: 0, module: Sandbox.module_name(a, Counter)}
      assert Map.has_key?(snapshot, :counter)
    end

    test "run/3 runs host code in a sandbox process; call/5 sees the sandbox's env", ctx do
      a = "#{ctx.prefix}a"
      create!(a, counter_path())
      {:ok, info} = Sandbox.get_sandbox_info(a)
      counter = Sandbox.module_name(a, Counter)

      assert {:ok, {host_view, sandbox_view, gl}} =
               Sandbox.run(a, fn ->
                 {Application.get_env(:counter, :greeting), counter.greeting(),
                  Process.group_leader()}
               end)

      assert host_view == nil
      assert sandbox_view == "hello from counter"
      refute gl == Process.group_leader()
      assert info.status == :running
    end

    test "host protocols dispatch to sandbox types (unconsolidated protocols)", ctx do
      a = "#{ctx.prefix}a"
      create!(a, counter_path())
      {:ok, point} = Sandbox.call(a, Counter, :point, [3, 4])
      assert point.__struct__ == Sandbox.module_name(a, Counter.Point)
      assert to_string(point) == "3,4"
    end
  end

  describe "path dependencies" do
    @tag :tmp_dir
    test "are relocated and started first, inside the sandbox, with their own config", ctx do
      dir =
        project(ctx.tmp_dir, %{
          "mix.exs" => """
          defmodule PdMain.MixProject do
            use Mix.Project
            def project, do: [app: :pd_main, version: "0.1.0", deps: [{:pd_dep, path: "libs/pd_dep"}]]
            def application, do: [mod: {PdMain.App, []}]
          end
          """,
          "config/config.exs" => """
          import Config
          config :pd_dep, label: "configured by main"
          """,
          "lib/pd_main.ex" => """
          defmodule PdMain.App do
            use Application
            def start(_, _) do
              # The dependency's server is already up: its application started first.
              seen = PdDep.Store.get()
              Agent.start_link(fn -> seen end, name: PdMain.Seen)
            end
          end

          defmodule PdMain do
            def seen, do: Agent.get(PdMain.Seen, & &1)
          end
          """,
          "libs/pd_dep/mix.exs" => """
          defmodule PdDep.MixProject do
            use Mix.Project
            def project, do: [app: :pd_dep, version: "0.1.0"]
            def application, do: [mod: {PdDep.App, []}, env: [label: "default"]]
          end
          """,
          "libs/pd_dep/lib/pd_dep.ex" => """
          defmodule PdDep.App do
            use Application
            def start(_, _), do: PdDep.Store.start_link()
          end

          defmodule PdDep.Store do
            def start_link, do: Agent.start_link(fn -> Application.get_env(:pd_dep, :label) end, name: __MODULE__)
            def get, do: Agent.get(__MODULE__, & &1)
          end
          """
        })

      a = "#{ctx.prefix}pd"
      create!(a, dir, :pd_main)
      assert Sandbox.call(a, PdMain, :seen, []) == {:ok, "configured by main"}
      store = Sandbox.module_name(a, PdDep.Store)
      assert is_pid(Process.whereis(store))
      {:ok, %{resource_usage: usage}} = Sandbox.get_sandbox_info(a)
      assert usage.current_processes == 2
      assert :ok = Sandbox.destroy_sandbox(a)
      assert Process.whereis(store) == nil
      assert loaded_modules(a) == []
    end
  end

  describe "processes" do
    test "processes spawned inside belong to the sandbox and die with it", ctx do
      a = "#{ctx.prefix}a"
      create!(a, counter_path())
      {:ok, %{resource_usage: before}} = Sandbox.get_sandbox_info(a)
      assert before.current_processes >= 2

      {:ok, spawned} = Sandbox.run(a, fn -> spawn(fn -> park() end) end)
      ref = Process.monitor(spawned)
      # resource_usage is the latest sample: take one.
      Sandbox.ResourceMonitor.sweep()
      {:ok, %{resource_usage: usage}} = Sandbox.get_sandbox_info(a)
      assert usage.current_processes == before.current_processes + 1
      assert usage.current_memory > 0

      assert :ok = Sandbox.destroy_sandbox(a)
      assert_receive {:DOWN, ^ref, :process, ^spawned, :killed}
    end

    test "a process that changes its own group leader leaves the sandbox", ctx do
      a = "#{ctx.prefix}a"
      create!(a, counter_path())
      host_gl = Process.group_leader()
      test_pid = self()

      {:ok, escaped} =
        Sandbox.run(a, fn ->
          spawn(fn ->
            Process.group_leader(self(), host_gl)
            send(test_pid, :escaped)
            park()
          end)
        end)

      assert_receive :escaped
      {:ok, %{resource_usage: usage}} = Sandbox.get_sandbox_info(a)
      {:ok, info_members} = Sandbox.run(a, fn -> :ok end)
      assert info_members == :ok
      assert :ok = Sandbox.destroy_sandbox(a)
      # Not linked to the sandbox's tree and not its member: it survives.
      assert Process.alive?(escaped)
      Process.exit(escaped, :kill)
      assert usage.current_processes >= 2
    end

    test "destroy kills through links too", ctx do
      a = "#{ctx.prefix}a"
      create!(a, counter_path())
      test_pid = self()
      server = Sandbox.module_name(a, Counter.Server)

      # Linked to the sandbox's server, but with the host's group leader.
      linked =
        spawn(fn ->
          Process.link(Process.whereis(server))
          send(test_pid, :linked)
          park()
        end)

      assert_receive :linked
      ref = Process.monitor(linked)
      assert :ok = Sandbox.destroy_sandbox(a)
      assert_receive {:DOWN, ^ref, :process, ^linked, _}
    end

    test "call/5 results: exceptions, exits, throws, timeouts", ctx do
      a = "#{ctx.prefix}a"
      create!(a, counter_path())
      test_pid = self()

      assert {:error, {:exception, %UndefinedFunctionError{}, [_ | _]}} =
               Sandbox.call(a, Counter, :nope, [])

      assert {:error, {:exit, :bye}} = Sandbox.run(a, fn -> exit(:bye) end)
      assert {:error, {:exit, {:nocatch, :ball}}} = Sandbox.run(a, fn -> throw(:ball) end)

      assert {:error, :timeout} =
               Sandbox.run(
                 a,
                 fn ->
                   child = spawn(fn -> park() end)
                   send(test_pid, {:child, self(), child})
                   park()
                 end,
                 timeout: 200
               )

      assert_receive {:child, runner, child}
      refute Process.alive?(runner)
      refute Process.alive?(child)
    end
  end

  describe "restarts" do
    test "a dead root supervisor is restarted, then the sandbox fails", ctx do
      a = "#{ctx.prefix}a"
      b = "#{ctx.prefix}b"
      :ok = Sandbox.subscribe(a)
      create!(a, sandbox_path: counter_path(), max_restarts: 2, max_seconds: 60)
      create!(b, counter_path())
      {:ok, %{supervisor_pid: sup_b}} = Sandbox.get_sandbox_info(b)

      for n <- 1..2 do
        {:ok, %{supervisor_pid: sup}} = Sandbox.get_sandbox_info(a)
        Process.exit(sup, :kill)
        {%{restart_count: ^n}, %{reason: :killed}} = await_event(a, :restarted)
        {:ok, info} = Sandbox.get_sandbox_info(a)
        assert info.status == :running
        assert info.restart_count == n
        assert info.supervisor_pid != sup
        assert {:ok, 1} = Sandbox.call(a, Counter, :increment, [])
      end

      {:ok, %{supervisor_pid: sup}} = Sandbox.get_sandbox_info(a)
      Process.exit(sup, :kill)
      await_event(a, :failed)
      {:ok, info} = Sandbox.get_sandbox_info(a)
      assert info.status == :error
      assert info.error == {:max_restarts_exceeded, :killed}

      # Nobody else noticed.
      assert {:ok, %{supervisor_pid: ^sup_b, status: :running}} = Sandbox.get_sandbox_info(b)
    end

    test "restart_sandbox/1 starts fresh processes with the same code", ctx do
      a = "#{ctx.prefix}a"
      create!(a, counter_path())
      {:ok, 1} = Sandbox.call(a, Counter, :increment, [])
      {:ok, %{supervisor_pid: before}} = Sandbox.get_sandbox_info(a)
      assert {:ok, info} = Sandbox.restart_sandbox(a)
      assert info.restart_count == 1
      assert info.supervisor_pid != before
      refute Process.alive?(before)
      assert {:ok, 1} = Sandbox.call(a, Counter, :increment, [])
    end
  end

  describe "events" do
    test "created and destroyed reach subscribers of the id and of :all", ctx do
      a = "#{ctx.prefix}a"
      :ok = Sandbox.subscribe(a)
      :ok = Sandbox.subscribe(:all)
      create!(a, counter_path())

      assert_receive {:sandbox_event, [:sandbox, :manager, :created], %{duration: d},
                      %{sandbox_id: ^a}}

      assert_receive {:sandbox_event, [:sandbox, :manager, :created], _, %{sandbox_id: ^a}}
      assert d > 0
      :ok = Sandbox.destroy_sandbox(a)
      assert_receive {:sandbox_event, [:sandbox, :manager, :destroyed], _, %{sandbox_id: ^a}}
    end
  end

  describe "failed creates leave nothing behind" do
    @tag :tmp_dir
    test "a compile error", ctx do
      a = "#{ctx.prefix}a"
      dir = counter_copy(ctx.tmp_dir)
      File.write!(Path.join(dir, "lib/broken.ex"), "defmodule Broken do def f( end")

      assert {:error, {:compilation_failed, [%{file: "lib/broken.ex"} | _]}} =
               Sandbox.create_sandbox(a, :counter, sandbox_path: dir)

      assert_nothing_left(a)
    end

    test "a start failure: a registered name taken in the host", ctx do
      a = "#{ctx.prefix}a"
      name = Sandbox.module_name(a, Counter.Server)
      squatter = spawn(fn -> park() end)
      Process.register(squatter, name)

      assert {:error, {:start_failed, :counter, _}} =
               Sandbox.create_sandbox(a, :counter, sandbox_path: counter_path())

      assert_nothing_left(a)
      Process.exit(squatter, :kill)
    end

    test "an unknown module or application", ctx do
      a = "#{ctx.prefix}a"

      assert {:error, {:unknown_module_or_app, :nope}} =
               Sandbox.create_sandbox(a, :nope, sandbox_path: counter_path())

      assert_nothing_left(a)
    end

    defp assert_nothing_left(id) do
      assert Sandbox.get_sandbox_info(id) == {:error, :not_found}
      assert loaded_modules(id) == []
      assert :ets.match(Sandbox.Env, {{String.to_atom(id), :_}, :_}) == []
      assert :ets.match(Sandbox.GroupLeader, {:_, id, :_}) == []
      refute Enum.any?(Sandbox.list_sandboxes(), &(&1.id == id))
    end
  end

  describe "arguments" do
    test "invalid ids", %{prefix: prefix} do
      for bad <- ["", "a.b", "a@b", "-a", String.duplicate("a", 65), :atom, 42, nil] do
        assert Sandbox.create_sandbox(bad, :counter, sandbox_path: counter_path()) ==
                 {:error, {:invalid_id, bad}}

        assert Sandbox.destroy_sandbox(bad) == {:error, {:invalid_id, bad}}
        assert Sandbox.get_sandbox_info(bad) == {:error, {:invalid_id, bad}}
        assert Sandbox.restart_sandbox(bad) == {:error, {:invalid_id, bad}}
        assert Sandbox.call(bad, Counter, :value, []) == {:error, {:invalid_id, bad}}
        assert Sandbox.run(bad, fn -> :ok end) == {:error, {:invalid_id, bad}}
        assert_raise ArgumentError, fn -> Sandbox.module_name(bad, Counter) end
      end

      assert Sandbox.get_sandbox_info("#{prefix}none") == {:error, :not_found}
      assert Sandbox.destroy_sandbox("#{prefix}none") == {:error, :not_found}
      assert Sandbox.call("#{prefix}none", Counter, :value, []) == {:error, :not_found}
    end

    test "wrong argument types raise ArgumentError; the id is checked first", %{prefix: prefix} do
      # Types are checked before the sandbox is looked up: no sandbox needed.
      id = "#{prefix}none"

      for fun <- [
            fn -> Sandbox.call(id, "Counter", :value, []) end,
            fn -> Sandbox.call(id, Counter, "value", []) end,
            fn -> Sandbox.call(id, Counter, :value, :not_a_list) end,
            fn -> Sandbox.call(id, Counter, :value, [], :not_a_list) end,
            fn -> Sandbox.call(id, Counter, :value, [], timeout: -1) end,
            fn -> Sandbox.run(id, fn _ -> :ok end) end,
            fn -> Sandbox.run(id, :not_a_fun) end,
            fn -> Sandbox.rollback_module(id, Counter, "1") end,
            fn -> Sandbox.rollback_module(id, Counter, 0) end,
            fn -> Sandbox.rollback_module(id, "Counter", 1) end,
            fn -> Sandbox.get_current_version(id, "Counter") end,
            fn -> Sandbox.list_module_versions(id, 42) end,
            fn -> Sandbox.calculate_reload_order(id, Counter) end,
            fn -> Sandbox.calculate_reload_order(id, [Counter, "Other"]) end,
            fn -> Sandbox.module_name(id, "Counter") end
          ] do
        assert_raise ArgumentError, fun
      end

      # An invalid id answers {:error, {:invalid_id, id}} even with wrong types.
      assert Sandbox.call("a.b", "Counter", :value, []) == {:error, {:invalid_id, "a.b"}}
      assert Sandbox.rollback_module(:x, Counter, "1") == {:error, {:invalid_id, :x}}
      assert Sandbox.calculate_reload_order(nil, :x) == {:error, {:invalid_id, nil}}
    end

    test "options", %{prefix: prefix} do
      id = "#{prefix}o"
      path = counter_path()
      create = &Sandbox.create_sandbox(id, :counter, &1)

      assert create.([]) == {:error, {:missing_option, :sandbox_path}}
      assert create.(sandbox_path: path, bogus: 1) == {:error, {:unknown_option, :bogus}}
      assert create.(sandbox_path: 42) == {:error, {:invalid_option, {:sandbox_path, 42}}}

      assert create.(sandbox_path: path, compile_timeout: 0) ==
               {:error, {:invalid_option, {:compile_timeout, 0}}}

      assert create.(sandbox_path: path, resource_limits: %{max_memory: -1}) ==
               {:error, {:invalid_option, {:resource_limits, {:max_memory, -1}}}}

      assert create.(sandbox_path: path, security_profile: :extreme) ==
               {:error, {:invalid_option, {:security_profile, :extreme}}}

      assert create.(sandbox_path: path, security_profile: %{allowed_operations: [:nope]}) ==
               {:error, {:invalid_option, {:security_profile, %{allowed_operations: [:nope]}}}}

      assert create.(sandbox_path: path, auto_reload: :yes) ==
               {:error, {:invalid_option, {:auto_reload, :yes}}}

      assert create.(sandbox_path: path, state_migration: fn -> :ok end) |> elem(1) |> elem(0) ==
               :invalid_option

      assert_raise ArgumentError, fn -> create.(:not_a_list) end
      assert Sandbox.get_sandbox_info(id) == {:error, :not_found}

      assert {:ok, _} = create.(sandbox_path: path, auto_reload: false, security_profile: :medium)
      assert create.(sandbox_path: path) == {:error, {:already_exists, id}}
    end
  end
end
