# Runs bench/<BENCH_ONLY>_bench.exs, or every bench/*_bench.exs in name order
# when BENCH_ONLY is unset (`make bench` runs each in a VM of its own). Each
# prints BENCH lines in the format of API.md ("Benchmarks") and nothing else
# on those lines.
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
