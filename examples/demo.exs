# `make demo`: two sandboxes from the same counter application and a third
# from a changed copy, answering side by side; an automatic reload after a
# file edit, and the version history with a rollback; then all destroyed.
defmodule Demo do
  def ms(us), do: :erlang.float_to_binary(us / 1000, decimals: 1) <> " ms"

  def timed(label, fun) do
    {us, result} = :timer.tc(fun)
    IO.puts(String.pad_trailing(label, 46) <> ms(us))
    result
  end

  def changed_copy(src) do
    dest =
      Path.join(
        System.tmp_dir!(),
        "sandbox-demo-counter-v2-#{System.unique_integer([:positive])}"
      )

    File.cp_r!(src, dest)
    edit = fn file, from, to -> File.write!(file, String.replace(File.read!(file), from, to)) end
    edit.(Path.join(dest, "lib/counter.ex"), "def version, do: 1", "def version, do: 2")
    edit.(Path.join(dest, "config/config.exs"), "step: 1", "step: 10")

    edit.(
      Path.join(dest, "config/config.exs"),
      "hello from counter",
      "hello from the changed copy"
    )

    dest
  end
end

counter = Path.expand("counter", __DIR__)
changed = Demo.changed_copy(counter)

IO.puts("""
Sandbox demo
  examples/counter      -> sandboxes "a" and "b"
  a changed copy        -> sandbox "c" (version 2, step 10, another greeting)
""")

for {id, path} <- [{"a", counter}, {"b", counter}, {"c", changed}] do
  # "c" reloads itself when its sources change (Sandbox.FileWatcher).
  opts = [sandbox_path: path, auto_reload: id == "c"]
  {:ok, _} = Demo.timed("create #{id}", fn -> Sandbox.create_sandbox(id, :counter, opts) end)
end

IO.puts("")

for id <- ["a", "b", "c"] do
  {:ok, version} = Sandbox.call(id, Counter, :version, [])
  {:ok, greeting} = Sandbox.call(id, Counter, :greeting, [])
  counts = for _ <- 1..3, do: elem(Sandbox.call(id, Counter, :increment, []), 1)
  {:ok, point} = Sandbox.call(id, Counter, :point, [1, 2])

  IO.puts(
    "#{id}: version #{version}, #{inspect(greeting)}, increments #{inspect(counts)}, " <>
      "point #{point}, module #{inspect(Sandbox.module_name(id, Counter))}"
  )
end

IO.puts(
  "\nhost: Counter loaded? #{:code.is_loaded(Counter) != false}; sandboxes: " <>
    inspect(Enum.map(Sandbox.list_sandboxes(), & &1.id) |> Enum.sort())
)

{:ok, info} = Sandbox.get_sandbox_info("a")

IO.puts(
  "a: #{info.resource_usage.current_processes} processes, #{info.resource_usage.current_memory} bytes\n"
)

# Automatic reload: edit the changed copy's source; "c" reloads by itself.
:ok = Sandbox.subscribe("c")
source = Path.join(changed, "lib/counter.ex")
t0 = System.monotonic_time()

File.write!(
  source,
  String.replace(File.read!(source), "def version, do: 2", "def version, do: 3")
)

receive do
  {:sandbox_event, [:sandbox, :reload, :reloaded], _,
   %{sandbox_id: "c", trigger: :file_watcher} = meta} ->
    ms = System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond)
    {:ok, version} = Sandbox.call("c", Counter, :version, [])
    {:ok, count} = Sandbox.call("c", Counter, :value, [])

    IO.puts(
      "edit lib/counter.ex -> c reloaded #{Enum.map_join(meta.modules, ", ", &inspect/1)} " <>
        "automatically in #{Demo.ms(ms)}: version #{version}, count still #{count}"
    )
after
  10_000 -> raise "no automatic reload within 10 s"
end

# The version history, and a rollback to the first version.
history = fn ->
  {:ok, current} = Sandbox.get_current_version("c", Counter)

  Enum.map_join(Sandbox.list_module_versions("c", Counter), ", ", fn v ->
    mark = if v.version == current, do: " (current)", else: ""
    "v#{v.version} #{String.slice(v.checksum, 0, 8)}#{mark}"
  end)
end

IO.puts("c: Counter versions: #{history.()}")
{:ok, :rolled_back} = Sandbox.rollback_module("c", Counter, 1)
{:ok, version} = Sandbox.call("c", Counter, :version, [])
IO.puts("c: rolled back to v1, version #{version}; Counter versions: #{history.()}\n")

# --- [limits] A sandbox stopped at a limit: one or two lines land here with
# --- the resource limits work (Sandbox.ResourceMonitor, max_processes).

# --- [security] A refused escape under the :high profile: one or two lines
# --- land here with the security work (Sandbox.SecurityController).

for id <- ["a", "b", "c"],
    do: :ok = Demo.timed("destroy #{id}", fn -> Sandbox.destroy_sandbox(id) end)

File.rm_rf!(changed)
IO.puts("\nsandboxes left: #{length(Sandbox.list_sandboxes())}")
