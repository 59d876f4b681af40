# Sandbox.Case (issue 16):
#
#   * case_sandbox_per_test: median, over 41 runs, of what Sandbox.Case does
#     for one test from a warm compile cache: create the sandbox of
#     examples/counter, then at the test's end destroy it and check for
#     leaks (Sandbox.Case.checkin/2), against the 10 ms target;
#   * case_200_async_tests: 200 tests in 20 `use Sandbox.Case, async: true`
#     modules, each test calling its own sandbox once, run by ExUnit in this
#     VM (max_cases: twice the schedulers), wall time in ms;
#   * case_200_async_vs_serial: the same 200 tests in `async: false`
#     modules (one test at a time) in the same run: the ratio is serial
#     time / async time.
alias Sandbox.Bench

path = Path.expand("../examples/counter", __DIR__)
app = Sandbox.Case.warm(path, [])

per_test = fn i ->
  id = "case-bench-#{i}"
  {:ok, _} = Sandbox.create_sandbox(id, app, sandbox_path: path)
  :ok = Sandbox.Case.checkin(id)
end

us = Bench.median_us(fn -> per_test.(System.unique_integer([:positive])) end, 41, 5)
Bench.value("case_sandbox_per_test", us / 1000, "ms", 10)

suite = fn prefix, async ->
  for m <- 1..20 do
    tests =
      for t <- 1..10 do
        """
          test "call #{t}", %{sandbox: id} do
            {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
          end
        """
      end

    """
    defmodule #{prefix}#{m}Test do
      use Sandbox.Case, async: #{async}
      @moduletag sandbox: [path: #{inspect(path)}]
    #{tests}
    end
    """
  end
  |> Enum.join("\n")
end

ExUnit.start(autorun: false, formatters: [], max_cases: System.schedulers_online() * 2)

run = fn source ->
  Code.compile_string(source)
  t0 = System.monotonic_time()
  %{failures: 0, total: 200} = ExUnit.run()
  System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond)
end

async_us = run.(suite.("CaseBenchAsync", true))
serial_us = run.(suite.("CaseBenchSerial", false))

Bench.value("case_200_async_tests", async_us / 1000, "ms", 2000)
Bench.compare("case_200_async_vs_serial", async_us, serial_us)
