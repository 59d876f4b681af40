# Sandbox lifecycle: create with a compile-cache hit, destroy, memory per
# idle sandbox beyond its application's own processes and code, and the time
# to bring up 1,000 sandboxes of the demo application.
alias Sandbox.Bench

path = Path.expand("../examples/counter", __DIR__)

# Warm the compile cache and the code paths.
{:ok, _} = Sandbox.create_sandbox("bench-warm", :counter, sandbox_path: path)
:ok = Sandbox.destroy_sandbox("bench-warm")

time = fn fun ->
  t0 = System.monotonic_time()
  fun.()
  System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
end

samples =
  for i <- 1..41 do
    id = "bench-#{i}"
    c = time.(fn -> {:ok, _} = Sandbox.create_sandbox(id, :counter, sandbox_path: path) end)
    d = time.(fn -> :ok = Sandbox.destroy_sandbox(id) end)
    {c, d}
  end

{creates, destroys} = Enum.unzip(samples)
Bench.value("create_cache_hit_median", Bench.median(creates), "us", 10_000)
Bench.value("destroy_median", Bench.median(destroys), "us", 10_000)

# Memory: the application's own code is measured by loading one relocated
# copy of it alone; its own processes are what resource_usage counts.
{:ok, info} = Sandbox.IsolatedCompiler.compile_sandbox(path)
Sandbox.IsolatedCompiler.cleanup_artifacts(info.temp_dir)
parsed = for {_, b} <- info.modules, do: elem(Sandbox.Beam.parse(b), 1)
{:ok, renames} = Sandbox.Beam.rename_map("codesize", parsed)
code0 = :erlang.memory(:code)

for {m, b} <- info.modules do
  {:ok, bin} = Sandbox.Beam.relocate(b, renames, %{}, debug_info: :strip)
  {:module, _} = :code.load_binary(renames[m], ~c"codesize", bin)
end

app_code = :erlang.memory(:code) - code0

for {m, _} <- info.modules,
    do:
      (
        :code.purge(renames[m])
        :code.delete(renames[m])
      )

n = 200
:erlang.garbage_collect()
total0 = :erlang.memory(:total)
ids = for i <- 1..n, do: "idle-#{i}"
for id <- ids, do: {:ok, _} = Sandbox.create_sandbox(id, :counter, sandbox_path: path)
for pid <- Process.list(), do: :erlang.garbage_collect(pid)
total1 = :erlang.memory(:total)

app_processes =
  ids
  |> Enum.map(fn id -> elem(Sandbox.get_sandbox_info(id), 1).resource_usage.current_memory end)
  |> Enum.sum()

overhead = (total1 - total0 - app_processes - n * app_code) / n
Bench.value("memory_per_idle_sandbox", overhead, "bytes", 1_000_000)
for id <- ids, do: :ok = Sandbox.destroy_sandbox(id)

# 1,000 sandboxes of the demo application, created concurrently.
ids = for i <- 1..1000, do: "thousand-#{i}"
exports0 = Sandbox.ExportTable.usage().entries

up =
  time.(fn ->
    ids
    |> Task.async_stream(&Sandbox.create_sandbox(&1, :counter, sandbox_path: path),
      max_concurrency: System.schedulers_online() * 2,
      timeout: :infinity
    )
    |> Enum.each(fn {:ok, {:ok, _}} -> :ok end)
  end)

Bench.value("bring_up_1000_sandboxes", up / 1000, "ms", 10_000)

# Export-table entries (never freed; 524,288 in all) each sandbox of a new
# id takes: the target lets 4,000 such sandboxes fit in the table.
exports1 = Sandbox.ExportTable.usage().entries
Bench.value("export_entries_per_sandbox", (exports1 - exports0) / 1000, "entries", 131)

ids
|> Task.async_stream(&Sandbox.destroy_sandbox/1, max_concurrency: System.schedulers_online() * 2)
|> Stream.run()
