defmodule Sandbox.NodeTest do
  # isolation: :node — the same API on a sandbox in a VM of its own. One VM
  # for the whole lifecycle (VMs are slow to start: the rest is :slow, in
  # isolation_test.exs).
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures

  alias Sandbox.CNode

  @moduletag :tmp_dir

  setup ctx do
    id = "node#{:erlang.phash2(ctx.test)}"
    on_exit(fn -> Sandbox.destroy_sandbox(id) end)
    %{id: id}
  end

  test "create, call, run, info, events, reload, versions, rollback, destroy: all in a VM of its own",
       %{id: id} = ctx do
    dir = counter_copy(ctx.tmp_dir)
    :ok = Sandbox.subscribe(id)

    assert {:ok, info} = Sandbox.create_sandbox(id, :counter, sandbox_path: dir, isolation: :node)

    assert %{isolation: :node, status: :running, app_name: :counter} = info
    assert is_integer(info.os_pid) and info.os_pid != String.to_integer(System.pid())
    assert running?(info.os_pid)
    # The sandbox's modules are not in this VM at all.
    assert loaded_modules(id) == []
    # Its events arrive under its id (the VM's create, as the host sees it).
    assert {_, %{app_name: :counter}} = await_event(id, :created)

    # call/5: the same answers as an in-VM sandbox, module names included.
    assert Sandbox.call(id, Counter, :increment, []) == {:ok, 1}
    assert Sandbox.call(id, Counter, :increment, []) == {:ok, 2}
    relocated = Sandbox.module_name(id, Counter)
    assert Sandbox.call(id, Counter, :snapshot, []) == {:ok, %{counter: 2, module: relocated}}

    assert Sandbox.call(id, Counter, :snapshot, [], original_names: true) ==
             {:ok, %{counter: 2, module: Counter}}

    assert {:error, {:exception, %UndefinedFunctionError{}, _}} =
             Sandbox.call(id, Counter, :nope, [])

    assert Sandbox.run(id, {:timer, :sleep, [10_000]}, timeout: 100) == {:error, :timeout}

    # run/3: an MFA, or a fun the VM has; not a closure of host code.
    assert Sandbox.run(id, {:erlang, :node, []}) == {:ok, :nonode@nohost}
    assert Sandbox.run(id, {:os, :getpid, []}) == {:ok, ~c"#{info.os_pid}"}
    closure = fn -> :host_code end
    assert Sandbox.run(id, closure) == {:error, {:not_serialisable, closure}}
    assert Sandbox.run(id, &:erlang.processes/0) |> elem(0) == :ok

    # Pids from the VM name nothing here.
    assert {:ok, pid} = Sandbox.run(id, {Process, :whereis, [Sandbox.Manager]})
    assert is_pid(pid) and node(pid) != node()

    # info: the VM's memory from the OS, the sandbox's processes from the VM.
    assert {:ok, %{resource_usage: usage, os_pid: os_pid}} = Sandbox.get_sandbox_info(id)
    assert os_pid == info.os_pid
    assert usage.current_memory > 10 * 1024 * 1024
    assert usage.current_processes >= 2

    # Hot reload: compiled here, loaded there, state kept; versions and
    # rollback as in-VM.
    edit(Path.join(dir, "lib/counter.ex"), "def version, do: 1", "def version, do: 2")

    assert Sandbox.hot_reload_source(id, {:file, Path.join(dir, "lib/counter.ex")}) ==
             {:ok, :hot_reloaded}

    assert {_, %{modules: modules, trigger: :api}} = await_event(id, :reloaded)
    assert Counter in modules
    assert Sandbox.call(id, Counter, :version, []) == {:ok, 2}
    assert Sandbox.call(id, Counter, :value, []) == {:ok, 2}
    assert Sandbox.get_current_version(id, Counter) == {:ok, 2}
    assert [%{version: 1}, %{version: 2}] = Sandbox.list_module_versions(id, Counter)
    assert {:ok, %{Counter => _}} = Sandbox.get_dependency_graph(id)
    assert Sandbox.rollback_module(id, Counter, 1) == {:ok, :rolled_back}
    assert Sandbox.call(id, Counter, :version, []) == {:ok, 1}

    # restart_sandbox/1: the sandbox's processes start again in the same VM.
    assert {:ok, %{restart_count: 1, os_pid: ^os_pid}} = Sandbox.restart_sandbox(id)
    assert Sandbox.call(id, Counter, :value, []) == {:ok, 0}

    # Destroy kills the VM's whole process tree, and returns once it is gone.
    {:ok, %{^os_pid => %{descendants: descendants}}} = CNode.sample([os_pid], descendants: true)
    tree = [os_pid | Map.keys(descendants)]
    assert length(tree) >= 2
    assert Sandbox.destroy_sandbox(id) == :ok
    assert Enum.filter(tree, &File.exists?("/proc/#{&1}")) == []
    assert {_, _} = await_event(id, :destroyed)
    assert Sandbox.call(id, Counter, :value, []) == {:error, :not_found}
    assert Sandbox.get_sandbox_info(id) == {:error, :not_found}
  end

  test "an in-VM sandbox says so; bad isolation values and host closures are refused",
       %{id: id} = ctx do
    dir = counter_copy(ctx.tmp_dir)

    assert {:ok, %{isolation: :vm, os_pid: nil}} =
             Sandbox.create_sandbox(id, :counter, sandbox_path: dir)

    assert Sandbox.create_sandbox(id <> "b", :counter, sandbox_path: dir, isolation: :bogus) ==
             {:error, {:invalid_option, {:isolation, :bogus}}}

    migrate = fn state -> state end

    assert Sandbox.create_sandbox(id <> "c", :counter,
             sandbox_path: dir,
             isolation: :node,
             state_migration: migrate
           ) == {:error, {:not_serialisable, migrate}}

    assert Sandbox.get_sandbox_info(id <> "c") == {:error, :not_found}
  end

  defp running?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> not String.contains?(stat, ") Z ")
      _ -> false
    end
  end

  defp edit(path, from, to) do
    text = File.read!(path)
    assert String.contains?(text, from)
    File.write!(path, String.replace(text, from, to))
  end
end
