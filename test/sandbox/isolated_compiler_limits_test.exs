defmodule Sandbox.IsolatedCompilerLimitsTest do
  # Synchronous: the host VM's process count and memory are compared before
  # and after each hostile job, which other test modules would disturb.
  use ExUnit.Case, async: false

  import Sandbox.IsolatedCompilerTestHelpers

  alias Sandbox.IsolatedCompiler
  alias Sandbox.IsolatedCompiler.Pool

  @moduletag :slow

  @limits %{max_memory: 400 * 1024 * 1024, max_file_size: 64 * 1024 * 1024, max_processes: 16}

  setup do
    opts = private_compiler!(:limits, 1)
    # Warm the pool before measuring the host.
    benign!(opts)
    # the rlimits alone (Landlock confinement has its own tests)
    {:ok, opts: [compile_timeout: 20_000, compile_limits: @limits, confine: :none] ++ opts}
  end

  defp benign!(opts) do
    assert {:ok, %{modules: [_ | _], cached: false, os_pid: os_pid}} =
             IsolatedCompiler.compile_sandbox(fixture("basic"), [cache: false] ++ opts)

    os_pid
  end

  # Runs `fun` and checks that the host VM has as many processes afterwards
  # and has not grown by anything like what the job allocated.
  defp host_unchanged(fun) do
    :erlang.garbage_collect()
    processes = length(Process.list())
    memory = :erlang.memory(:total)
    result = fun.()
    :erlang.garbage_collect()
    assert length(Process.list()) == processes
    assert :erlang.memory(:total) - memory < 64 * 1024 * 1024
    result
  end

  test "a compile-time infinite loop is {:compile_timeout, ms}", %{opts: opts} do
    opts = Keyword.put(opts, :compile_timeout, 1_500)

    host_unchanged(fn ->
      assert {:error, {:compile_timeout, 1_500}} =
               IsolatedCompiler.compile_sandbox(fixture("infinite_loop"), opts)
    end)

    benign!(opts)
  end

  test "a compile-time loop beyond max_cpu_seconds is {:compile_resource_limit, :cpu}",
       %{opts: opts} do
    opts = Keyword.put(opts, :compile_limits, Map.put(@limits, :max_cpu_seconds, 1))

    host_unchanged(fn ->
      assert {:error, {:compile_resource_limit, :cpu}} =
               IsolatedCompiler.compile_sandbox(fixture("infinite_loop"), opts)
    end)

    benign!(opts)
  end

  test "a compile-time memory bomb is {:compile_resource_limit, :memory}", %{opts: opts} do
    host_unchanged(fn ->
      assert {:error, {:compile_resource_limit, :memory}} =
               IsolatedCompiler.compile_sandbox(fixture("memory_bomb"), opts)
    end)

    benign!(opts)
  end

  test "System.halt/1 at compile time is :worker_crashed and the worker is replaced",
       %{opts: opts} do
    started = Pool.stats(opts[:pool]).workers_started

    host_unchanged(fn ->
      assert {:error, {:worker_crashed, {:status, 0}}} =
               IsolatedCompiler.compile_sandbox(fixture("halt"), opts)
    end)

    benign!(opts)
    assert Pool.stats(opts[:pool]).workers_started > started
  end

  test "a compile-time write beyond max_file_size is {:compile_resource_limit, :file_size}",
       %{opts: opts} do
    target = Path.join(tmp_dir!("big-write"), "big.bin")
    env = [env: %{"SANDBOX_BIG_WRITE_PATH" => target}]

    host_unchanged(fn ->
      assert {:error, {:compile_resource_limit, :file_size}} =
               IsolatedCompiler.compile_sandbox(fixture("big_write"), env ++ opts)
    end)

    assert File.stat!(target).size <= @limits.max_file_size
    benign!(opts)
  end

  test "too many OS processes at compile time is {:compile_resource_limit, :processes}",
       %{opts: opts} do
    dir = tmp_dir!("fork")

    File.write!(Path.join(dir, "fork.ex"), """
    defmodule ForkFixture do
      for _ <- 1..40, do: Port.open({:spawn_executable, "/bin/sleep"}, args: ["30"])
      # Hold the compile (in the worker) until the limit ends it.
      receive do
        :never -> :ok
      end
    end
    """)

    host_unchanged(fn ->
      assert {:error, {:compile_resource_limit, :processes}} =
               IsolatedCompiler.compile_sandbox(dir, opts)
    end)

    benign!(opts)
  end

  test "a job whose macro replaces a module of Elixir's compiler leaves the next job unaffected",
       %{opts: opts} do
    opts = [cache: false] ++ opts

    assert {:ok, tamper} = IsolatedCompiler.compile_sandbox(fixture("tamper"), opts)
    assert TamperFixture in module_names(tamper)

    assert Enum.any?(
             tamper.warnings,
             &(&1.message =~ "redefining module Kernel.ParallelCompiler")
           )

    tamper_pid = tamper.os_pid
    assert {:ok, info} = IsolatedCompiler.compile_sandbox(fixture("basic"), opts)
    assert info.os_pid != tamper_pid

    assert module_names(info) ==
             Enum.sort([Basic, Basic.Application, Basic.Point, Util])

    assert :ok = IsolatedCompiler.validate_beam_files(info.beam_files)
  end
end
