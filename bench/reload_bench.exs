# Hot reload (issue 7). A sandbox whose supervisor runs one GenServer
# (BenchReload.Store):
#
#   * reload_one_genserver: `Sandbox.hot_reload_sandbox/3` of the Store's
#     BEAM (compiled here, original name) with a state migration function,
#     two versions alternating so that every reload is a change (validate,
#     relocate, soft purge, suspend, load, migrate through
#     :sys.replace_state, resume), against a bare `:code.load_binary/3` of
#     the same BEAM under a host name (no validation, no relocation, no
#     processes);
#   * reload_one_genserver_us: our median against the 5 ms target;
#   * reload_source_edit: `hot_reload_source/3` of an edited source string
#     (a new version each run, so never a compile cache hit) on a warm
#     compile worker, until the server answers with the new code.
alias Sandbox.Bench
alias Sandbox.IsolatedCompiler.Pool

defmodule Sandbox.ReloadBench do
  @moduledoc false

  def store_source(version) do
    """
    defmodule BenchReload.Store do
      use GenServer
      def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
      @impl true
      def init(n), do: {:ok, n}
      @impl true
      def handle_call(:version, _from, n), do: {:reply, #{version}, n}
      def handle_call(:bump, _from, n), do: {:reply, n + 1, n + 1}
    end
    """
  end

  def sup_source do
    """
    defmodule BenchReload.Sup do
      use Supervisor
      def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, name: __MODULE__)
      @impl true
      def init(_), do: Supervisor.init([BenchReload.Store], strategy: :one_for_one)
    end
    """
  end

  # The BEAM of `source`, compiled here and unloaded again.
  def beam(source) do
    [{module, beam}] = Code.compile_string(source)
    :code.purge(module)
    :code.delete(module)
    :code.purge(module)
    beam
  end

  # Every worker warm: no replacement is booting beside the timed job.
  def wait_idle do
    stats = Pool.stats()

    if stats.idle == stats.size do
      :ok
    else
      Process.sleep(5)
      wait_idle()
    end
  end
end

alias Sandbox.ReloadBench, as: RB

Code.compiler_options(ignore_module_conflict: true)
tmp = Path.join(System.tmp_dir!(), "sandbox-reload-bench-#{System.unique_integer([:positive])}")
File.mkdir_p!(tmp)
File.write!(Path.join(tmp, "store.ex"), RB.store_source(1))
File.write!(Path.join(tmp, "sup.ex"), RB.sup_source())

id = "reloadbench"

{:ok, _} =
  Sandbox.create_sandbox(id, BenchReload.Sup,
    sandbox_path: tmp,
    state_migration: fn n -> n + 0 end
  )

server = Sandbox.module_name(id, BenchReload.Store)
beams = {RB.beam(RB.store_source(2)), RB.beam(RB.store_source(3))}
counter = :counters.new(1, [])

reload = fn ->
  :counters.add(counter, 1, 1)
  beam = elem(beams, rem(:counters.get(counter, 1), 2))
  {:ok, :hot_reloaded} = Sandbox.hot_reload_sandbox(id, beam)
end

ours_us = Bench.median_us(reload, 101, 5)
# The server kept its pid and its state through every reload.
1 = GenServer.call(server, :bump)

# The same BEAMs under their own (host) name: only the load.
host_counter = :counters.new(1, [])

bare = fn ->
  :counters.add(host_counter, 1, 1)
  beam = elem(beams, rem(:counters.get(host_counter, 1), 2))
  {:module, BenchReload.Store} = :code.load_binary(BenchReload.Store, ~c"bench", beam)
end

base_us = Bench.median_us(bare, 101, 5)
:code.purge(BenchReload.Store)
:code.delete(BenchReload.Store)
:code.purge(BenchReload.Store)

Bench.compare("reload_one_genserver", ours_us, base_us)
Bench.value("reload_one_genserver_us", ours_us, "us", 5000)

# Source edit to new code serving calls, on a warm compile worker.
times =
  for v <- 100..110 do
    RB.wait_idle()
    t0 = System.monotonic_time()
    {:ok, :hot_reloaded} = Sandbox.hot_reload_source(id, {:code, RB.store_source(v)})
    ^v = GenServer.call(server, :version)
    System.monotonic_time() - t0
  end

edit_ms =
  times |> Bench.median() |> System.convert_time_unit(:native, :microsecond) |> Kernel./(1000)

Bench.value("reload_source_edit", edit_ms, "ms", 150)

:ok = Sandbox.destroy_sandbox(id)
File.rm_rf!(tmp)
