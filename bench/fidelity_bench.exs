# Fidelity (issue 17): mapping a large result back to original names, and
# destroying a sandbox whose modules logged (OTP's logger left a
# persistent_term key per module; destroy erases them, and each erase scans
# process heaps).
alias Sandbox.Bench

require Logger
Logger.configure(level: :info)
# Log calls are made (and cached by OTP's logger); nothing on the console.
Logger.configure_backend(:console, level: :error)

dir = Path.join(System.tmp_dir!(), "fidelity_bench_#{System.unique_integer([:positive])}")
File.mkdir_p!(Path.join(dir, "lib"))

File.write!(Path.join(dir, "lib/sup.ex"), """
defmodule FidBench.Sup do
  use Supervisor
  def start_link(a), do: Supervisor.start_link(__MODULE__, a, name: __MODULE__)
  @impl true
  def init(_), do: Supervisor.init([], strategy: :one_for_one)
end
""")

File.write!(Path.join(dir, "lib/big.ex"), """
defmodule FidBench.Point do
  defstruct [:x, :y]
end
defmodule FidBench.Big do
  # 10,000 structs of ~100 bytes: about 1 MB.
  def many(n), do: for(i <- 1..n, do: %FidBench.Point{x: i, y: String.duplicate("y", 90)})
end
""")

File.write!(Path.join(dir, "lib/rt.ex"), """
defmodule FidBench.Rt do
  def compile(source), do: Code.compile_string(source)
end
""")

# 20 modules that log.
for i <- 1..20 do
  File.write!(Path.join(dir, "lib/log#{i}.ex"), """
  defmodule FidBench.Log#{i} do
    require Logger
    def log, do: Logger.info("log #{i}")
  end
  """)
end

create = fn id -> {:ok, _} = Sandbox.create_sandbox(id, FidBench.Sup, sandbox_path: dir) end
create.("fid-warm")

# --- original_names: true on ~1 MB with 10,000 structs -----------------------
call = fn opts -> {:ok, _} = Sandbox.call("fid-warm", FidBench.Big, :many, [10_000], opts) end
plain_us = Bench.median_us(fn -> call.([]) end, 21)

# Long schedules (a process on a scheduler over 1 ms without being switched
# out) that began or ended in the mapping: a NIF or BIF holding the
# scheduler there would show; plain Elixir is preempted by reductions. (The
# 1 MB result's copy between processes is one operation, in plain calls
# too; a loaded machine's own preemptions are wall-clock time and may show.)
:erlang.system_monitor(self(), [{:long_schedule, 1}])
mapped_us = Bench.median_us(fn -> call.(original_names: true) end, 21)
:erlang.system_monitor(:undefined)

in_mapping? = fn
  {_, {Sandbox.OriginalNames, _, _}} -> true
  _ -> false
end

long =
  Stream.repeatedly(fn ->
    receive do
      {:monitor, _, :long_schedule, info} -> Enum.count(info, in_mapping?)
    after
      0 -> nil
    end
  end)
  |> Enum.take_while(& &1)
  |> Enum.count(&(&1 > 0))

# Target: the mapping costs no more than the call itself (2× a plain call).
Bench.value("original_names_1mb", mapped_us / 1000, "ms", 2 * plain_us / 1000)
Bench.compare("original_names_1mb_vs_plain_call", mapped_us, plain_us)
Bench.value("original_names_1mb_long_schedules", long, "count", 0)
:ok = Sandbox.destroy_sandbox("fid-warm")

# --- destroy after 20 modules logged -----------------------------------------
destroy = fn id, log? ->
  create.(id)

  if log? do
    for i <- 1..20,
        do: {:ok, :ok} = Sandbox.call(id, Module.concat(FidBench, "Log#{i}"), :log, [])
  end

  Bench.time_us(fn -> :ok = Sandbox.destroy_sandbox(id) end)
end

samples =
  for i <- 1..21 do
    {destroy.("fid-plain-#{i}", false), destroy.("fid-logged-#{i}", true)}
  end

{plain, logged} = Enum.unzip(samples)
base = Bench.median(plain)
ours = Bench.median(logged)
Bench.value("destroy_after_logging", ours / 1000, "ms", 2 * base / 1000)
Bench.compare("destroy_after_logging_vs_plain", ours, base)

# --- a module created at run time (Sandbox.RuntimeCode) ------------------------
# Code.compile_string/1 from sandbox code: compiled in a worker, added to the
# sandbox as a reload. Base: the same call made by the host in its own VM.
create.("fid-rt")
source = fn tag, i -> "defmodule FidBench.Made#{tag}#{i} do\n  def v, do: #{i}\nend\n" end
counter = :counters.new(1, [])

next = fn ->
  :counters.add(counter, 1, 1)
  :counters.get(counter, 1)
end

in_sandbox_us =
  Bench.median_us(
    fn -> {:ok, [_]} = Sandbox.call("fid-rt", FidBench.Rt, :compile, [source.("S", next.())]) end,
    11
  )

in_host_us =
  Bench.median_us(
    fn ->
      [{m, _}] = Code.compile_string(source.("H", next.()))
      :code.purge(m)
      :code.delete(m)
    end,
    11
  )

Bench.compare("runtime_compile_string_vs_host", in_sandbox_us, in_host_us)
:ok = Sandbox.destroy_sandbox("fid-rt")

File.rm_rf!(dir)
