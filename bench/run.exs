# `make bench` entry point: runs every bench/*_bench.exs in name order. Each
# prints BENCH lines in the format of API.md ("Benchmarks") and nothing else
# on those lines. BENCH_ONLY=name runs only bench/<name>_bench.exs.
only = System.get_env("BENCH_ONLY")

files =
  case only do
    nil -> Path.wildcard(Path.join(__DIR__, "*_bench.exs"))
    name -> [Path.join(__DIR__, "#{name}_bench.exs")]
  end

Code.require_file(Path.join(__DIR__, "bench_helper.exs"))

for file <- Enum.sort(files) do
  IO.puts("# #{Path.basename(file)}")
  Code.require_file(file)
end
