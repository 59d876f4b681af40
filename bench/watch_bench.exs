# Automatic reload (issue 11). A sandbox of a small mix project with
# automatic reload on:
#
#   * watch_save_to_serving: median over 20 edits of lib/server.ex, from the
#     write to the first call that returns the new value, through the file
#     watcher (the 50 ms debounce included);
#   * watch_vs_mix_compile: the same edit followed by what the usual dev
#     reloaders do — `mix compile` of the project in a subprocess, then a
#     reload of its changed BEAMs (hot_reload_sandbox/3) — in the same run;
#   * watch_idle_cpu_100_sandboxes: 100 sandboxes (of 100 projects) watching
#     10,000 files in all, idle for 10 s: the CPU time of the C-node and of
#     the watcher process (its scheduler time is bounded by its reductions,
#     reported beside it).
alias Sandbox.Bench
alias Sandbox.IsolatedCompiler.Pool

defmodule Sandbox.WatchBench do
  @moduledoc false

  def server(version) do
    """
    defmodule BenchWatch.Server do
      use GenServer
      def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
      def version, do: #{version}
      @impl true
      def init(n), do: {:ok, n}
      @impl true
      def handle_call(:version, _from, n), do: {:reply, version(), n}
    end
    """
  end

  def project(dir, app, extra \\ %{}) do
    files =
      Map.merge(
        %{
          "mix.exs" => """
          defmodule #{Macro.camelize(to_string(app))}.MixProject do
            use Mix.Project
            def project, do: [app: #{inspect(app)}, version: "0.1.0", elixir: "~> 1.14"]
            def application, do: [mod: {BenchWatch.App, []}]
          end
          """,
          "lib/app.ex" => """
          defmodule BenchWatch.App do
            use Application
            def start(_, _), do: Supervisor.start_link([BenchWatch.Server], strategy: :one_for_one)
          end
          """,
          "lib/server.ex" => server(1)
        },
        extra
      )

    for {path, text} <- files do
      File.mkdir_p!(Path.dirname(Path.join(dir, path)))
      File.write!(Path.join(dir, path), text)
    end

    dir
  end

  def wait_idle do
    stats = Pool.stats()
    if stats.idle == stats.size, do: :ok, else: Process.sleep(5) && wait_idle()
  end

  def serving(id, version) do
    case Sandbox.call(id, BenchWatch.Server, :version, []) do
      {:ok, ^version} -> :ok
      _ -> serving(id, version)
    end
  end

  def await_reloaded(id) do
    receive do
      {:sandbox_event, [:sandbox, :reload, :reloaded], _, %{sandbox_id: ^id}} ->
        :ok

      {:sandbox_event, [:sandbox, :reload, :failed], _, %{sandbox_id: ^id} = m} ->
        raise inspect(m)
    after
      30_000 -> raise "no reload"
    end
  end

  def cpu_ticks(os_pid) do
    [_, rest] = File.read!("/proc/#{os_pid}/stat") |> String.split(") ", parts: 2)
    fields = String.split(rest)
    String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
  end
end

alias Sandbox.WatchBench, as: WB

tmp = Path.join(System.tmp_dir!(), "sandbox-watch-bench-#{System.unique_integer([:positive])}")
dir = WB.project(Path.join(tmp, "project"), :bench_watch)
server = Path.join(dir, "lib/server.ex")

{:ok, _} = Sandbox.create_sandbox("watch", :bench_watch, sandbox_path: dir, auto_reload: true)
:ok = Sandbox.subscribe("watch")

time_us = fn fun ->
  t0 = System.monotonic_time()
  fun.()
  System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
end

# Ours: the write, then the watcher's reload, then one call.
ours =
  for v <- 2..21 do
    WB.wait_idle()

    time_us.(fn ->
      File.write!(server, WB.server(v))
      WB.await_reloaded("watch")
      WB.serving("watch", v)
    end)
  end

:ok = Sandbox.disable_auto_reload("watch")

# The usual loop: mix compile in the project, then a reload of the BEAMs
# that changed (what a dev reloader does), in the same VM as ours.
mix = System.find_executable("mix")
{_, 0} = System.cmd(mix, ["compile"], cd: dir, env: [{"MIX_ENV", "dev"}])
ebin = Path.join(dir, "_build/dev/lib/bench_watch/ebin")

base =
  for v <- 22..31 do
    time_us.(fn ->
      File.write!(server, WB.server(v))
      # Mix compares modification times in seconds: make the edit newer.
      File.touch!(server, System.os_time(:second) + v)
      {_, 0} = System.cmd(mix, ["compile"], cd: dir, env: [{"MIX_ENV", "dev"}])
      beam = File.read!(Path.join(ebin, "Elixir.BenchWatch.Server.beam"))
      {:ok, :hot_reloaded} = Sandbox.hot_reload_sandbox("watch", beam)
      WB.serving("watch", v)
    end)
  end

ours_median = Bench.median(ours)
Bench.value("watch_save_to_serving", ours_median / 1000, "ms", 150)
Bench.compare("watch_vs_mix_compile", ours_median, Bench.median(base))
:ok = Sandbox.destroy_sandbox("watch")

# 100 sandboxes, each of its own project with 1 module and 99 headers in
# include/ (watched, never compiled): 10,000 files watched.
headers = Map.new(1..99, fn i -> {"include/h#{i}.hrl", "-define(H#{i}, #{i}).\n"} end)

ids =
  for i <- 1..100 do
    d = WB.project(Path.join(tmp, "p#{i}"), :bench_watch, headers)
    id = "idle#{i}"
    {:ok, _} = Sandbox.create_sandbox(id, :bench_watch, sandbox_path: d, auto_reload: true)
    id
  end

watched = Sandbox.FileWatcher.watched()
100 = map_size(watched)
cnode = Sandbox.CNode.os_pid()
watcher = Process.whereis(Sandbox.FileWatcher)
{:reductions, r0} = Process.info(watcher, :reductions)
t0 = WB.cpu_ticks(cnode)
w0 = System.monotonic_time(:millisecond)
Process.sleep(10_000)
t1 = WB.cpu_ticks(cnode)
wall = System.monotonic_time(:millisecond) - w0
{:reductions, r1} = Process.info(watcher, :reductions)
ticks_per_s = 100
pct = (t1 - t0) / ticks_per_s * 1000 / wall * 100
IO.puts("# watcher reductions while idle: #{r1 - r0}")
Bench.value("watch_idle_cpu_100_sandboxes", pct, "pct_cpu", 0.1)

for id <- ids, do: :ok = Sandbox.destroy_sandbox(id)
File.rm_rf!(tmp)
