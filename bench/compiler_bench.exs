# The isolated compiler on a 20-module fixture project
# (test/fixtures/compiler/bench_project): a cold compile on a warm worker, a
# one-module change on a warm worker (incremental_compile/3), and a cache hit,
# against one-shot `elixirc` and in-VM Kernel.ParallelCompiler.compile/1 of
# the same files. Every timed compile of ours waits (untimed) for an idle
# worker pool first (every worker ready, none booting beside the timed job).
alias Sandbox.Bench
alias Sandbox.IsolatedCompiler
alias Sandbox.IsolatedCompiler.{Cache, Pool}

defmodule Sandbox.CompilerBench do
  @moduledoc false

  # Every worker warm: no replacement is booting beside the timed job.
  def wait_idle(pool) do
    stats = Pool.stats(pool)

    if stats.idle == stats.size do
      :ok
    else
      Process.sleep(5)
      wait_idle(pool)
    end
  end

  # Median µs of `fun` over `n` runs; `before` runs untimed before each.
  def median_us(n, before, fun) do
    times =
      for i <- 1..n do
        before.(i)
        t0 = System.monotonic_time()
        fun.(i)
        System.monotonic_time() - t0
      end

    times
    |> Bench.median()
    |> System.convert_time_unit(:native, :nanosecond)
    |> Kernel./(1000)
  end

  def ok!({:ok, info}), do: info
  def ok!(other), do: raise("compile failed: #{inspect(other, limit: 20)}")

  def set_variant(file, i) do
    content = File.read!(file)
    File.write!(file, Regex.replace(~r/acc \+ x \* \d+/, content, "acc + x * #{100 + i}"))
  end

  def in_vm_compile(files) do
    {:ok, modules, _} = Kernel.ParallelCompiler.compile(files)
    modules
  end
end

alias Sandbox.CompilerBench, as: CB

tmp = Path.join(System.tmp_dir!(), "sandbox-compiler-bench-#{System.unique_integer([:positive])}")
project = Path.join(tmp, "project")
File.mkdir_p!(project)
File.cp_r!(Path.expand("../test/fixtures/compiler/bench_project", __DIR__), project)
files = Path.wildcard(Path.join(project, "lib/**/*.ex")) |> Enum.sort()
changed = Path.join(project, "lib/bench/mod01.ex")

{:ok, _} = Cache.start_link(name: :bench_compiler_cache, dir: Path.join(tmp, "cache"))
{:ok, _} = Pool.start_link(name: :bench_compiler_pool, size: System.schedulers_online())
opts = [pool: :bench_compiler_pool, cache_server: :bench_compiler_cache]
cleanup = fn info -> IsolatedCompiler.cleanup_artifacts(info.temp_dir) end

# Cold: everything compiled on a warm worker, no cache.
cold_us =
  CB.median_us(9, fn _ -> CB.wait_idle(:bench_compiler_pool) end, fn _ ->
    IsolatedCompiler.compile_sandbox(project, [cache: false] ++ opts) |> CB.ok!() |> cleanup.()
  end)

elixirc = System.find_executable("elixirc")
out = Path.join(tmp, "elixirc_out")
File.mkdir_p!(out)

elixirc_all_us =
  CB.median_us(5, fn _ -> File.rm_rf!(out) end, fn _ ->
    {_, 0} = System.cmd(elixirc, ["--ignore-module-conflict", "-o", out | files])
  end)

Code.compiler_options(ignore_module_conflict: true)

in_vm_all_us = CB.median_us(9, fn _ -> :ok end, fn _ -> CB.in_vm_compile(files) end)

Bench.compare("compiler_cold_vs_elixirc", cold_us, elixirc_all_us)
Bench.compare("compiler_cold_vs_parallel_compiler", cold_us, in_vm_all_us)

# One module changed: incremental compile on a warm worker.
IsolatedCompiler.compile_sandbox(project, opts) |> CB.ok!() |> cleanup.()

one_change_us =
  CB.median_us(
    9,
    fn i ->
      CB.set_variant(changed, i)
      CB.wait_idle(:bench_compiler_pool)
    end,
    fn _ ->
      info = IsolatedCompiler.incremental_compile(project, [changed], opts) |> CB.ok!()
      [{BenchProject.Mod01, _}] = info.modules
      cleanup.(info)
    end
  )

# Baselines for the same change: elixirc of the changed file (the rest on
# the code path), and the in-VM compile of the changed file.
{_, 0} = System.cmd(elixirc, ["--ignore-module-conflict", "-o", out | files])

elixirc_one_us =
  CB.median_us(5, fn i -> CB.set_variant(changed, 100 + i) end, fn _ ->
    {_, 0} = System.cmd(elixirc, ["--ignore-module-conflict", "-pa", out, "-o", out, changed])
  end)

in_vm_one_us =
  CB.median_us(9, fn i -> CB.set_variant(changed, 200 + i) end, fn _ ->
    CB.in_vm_compile([changed])
  end)

Bench.compare("compiler_one_change_vs_elixirc", one_change_us, elixirc_one_us)
Bench.compare("compiler_one_change_vs_parallel_compiler", one_change_us, in_vm_one_us)

# Cache hit: the same project again (hashing every input, checking the
# manifest, reading the entry and writing the .beam files).
IsolatedCompiler.compile_sandbox(project, opts) |> CB.ok!() |> cleanup.()
jobs = Pool.stats(:bench_compiler_pool).jobs
infos = :ets.new(:bench_infos, [:public])

hit_us =
  CB.median_us(31, fn _ -> CB.wait_idle(:bench_compiler_pool) end, fn i ->
    %{cached: true} = info = IsolatedCompiler.compile_sandbox(project, opts) |> CB.ok!()
    :ets.insert(infos, {i, info.temp_dir})
  end)

^jobs = Pool.stats(:bench_compiler_pool).jobs
for {_, dir} <- :ets.tab2list(infos), do: IsolatedCompiler.cleanup_artifacts(dir)
Bench.value("compiler_cache_hit", hit_us / 1000, "ms", 5)

File.rm_rf!(tmp)
