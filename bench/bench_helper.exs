defmodule Sandbox.Bench do
  @moduledoc false
  # Shared helpers for the benchmarks: medians of repeated timings, in µs, and
  # the BENCH line formats of API.md.

  @doc "Runs `fun` `n` times (after `warmup` untimed runs); the median in µs."
  def median_us(fun, n \\ 31, warmup \\ 3) do
    for _ <- 1..warmup, do: fun.()

    times =
      for _ <- 1..n do
        t0 = System.monotonic_time()
        fun.()
        System.monotonic_time() - t0
      end

    median(times) |> System.convert_time_unit(:native, :nanosecond) |> Kernel./(1000)
  end

  @doc "Runs `fun` once; the time it took in µs."
  def time_us(fun) do
    t0 = System.monotonic_time()
    fun.()
    System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
  end

  def median(list) do
    sorted = Enum.sort(list)
    len = length(sorted)

    if rem(len, 2) == 1,
      do: Enum.at(sorted, div(len, 2)),
      else: (Enum.at(sorted, div(len, 2) - 1) + Enum.at(sorted, div(len, 2))) / 2
  end

  def compare(name, ours_us, base_us) do
    IO.puts(
      "BENCH name=#{name} ours_us=#{fmt(ours_us)} base_us=#{fmt(base_us)} ratio=#{fmt(base_us / max(ours_us, 1.0e-9))}"
    )
  end

  def value(name, value, unit, target) do
    IO.puts("BENCH name=#{name} value=#{fmt(value)} unit=#{unit} target=#{fmt(target)}")
  end

  defp fmt(x) when is_integer(x), do: Integer.to_string(x)
  defp fmt(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 3)
end
