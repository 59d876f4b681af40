# Capability guards: a benign workload (GenServer calls, Enum, ETS, spawns,
# dynamic dispatch) in a sandbox under :high against the same sandbox under
# :low, and a create from the compile cache under :high.
alias Sandbox.Bench

dir = Path.join(System.tmp_dir!(), "sandbox_security_bench_#{System.unique_integer([:positive])}")
File.mkdir_p!(Path.join(dir, "lib"))

File.write!(Path.join(dir, "lib/sup.ex"), """
defmodule SecBench.Sup do
  use Supervisor
  def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, name: __MODULE__)
  @impl true
  def init(_), do: Supervisor.init([], strategy: :one_for_one)
end
""")

File.write!(Path.join(dir, "lib/work.ex"), """
defmodule SecBench.Helper do
  def sq(x), do: x * x
end

defmodule SecBench.Work do
  def run(n) do
    {:ok, agent} = Agent.start_link(fn -> 0 end)
    table = :ets.new(:work, [:set, :private])
    helper = Module.concat([SecBench, Helper])
    double = fn x -> x * 2 end

    for i <- 1..n do
      Agent.update(agent, &(&1 + i))
      :ets.insert(table, {i, i})
      helper.sq(i)
      apply(SecBench.Helper, :sq, [i])
      double.(i)
      parent = self()
      pid = spawn(fn -> send(parent, {:done, self()}) end)
      receive do
        {:done, ^pid} -> :ok
      end
      Enum.sum(Enum.map(1..10, &(&1 * i)))
    end

    total = Agent.get(agent, & &1)
    Agent.stop(agent)
    :ets.delete(table)
    total
  end
end
""")

create = fn id, profile ->
  {:ok, _} =
    Sandbox.create_sandbox(id, SecBench.Sup, sandbox_path: dir, security_profile: profile)
end

# Warm the compile cache and code paths.
create.("secbench-warm", :high)
:ok = Sandbox.destroy_sandbox("secbench-warm")

create.("secbench-high", :high)
create.("secbench-low", :low)
expected = div(200 * 201, 2)
work = fn id -> {:ok, ^expected} = Sandbox.call(id, SecBench.Work, :run, [200]) end

# Alternate the two so that both see the same machine.
{highs, lows} =
  Enum.unzip(
    for _ <- 1..31 do
      {Bench.median_us(fn -> work.("secbench-high") end, 1, 0),
       Bench.median_us(fn -> work.("secbench-low") end, 1, 0)}
    end
  )

# ratio = :low / :high (target >= 0.8: at most 25 % overhead)
Bench.compare("guarded_high_vs_low", Bench.median(highs), Bench.median(lows))
:ok = Sandbox.destroy_sandbox("secbench-high")
:ok = Sandbox.destroy_sandbox("secbench-low")

creates =
  for i <- 1..21 do
    id = "secbench-c#{i}"
    t0 = System.monotonic_time(:microsecond)
    create.(id, :high)
    us = System.monotonic_time(:microsecond) - t0
    :ok = Sandbox.destroy_sandbox(id)
    us
  end

Bench.value("create_cache_hit_high", Bench.median(creates) / 1000, "ms", 10)
File.rm_rf!(dir)
