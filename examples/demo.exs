# `make demo`: two sandboxes from the same counter application and a third
# from a changed copy, answering side by side; then all destroyed.
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
  {:ok, _} =
    Demo.timed("create #{id}", fn -> Sandbox.create_sandbox(id, :counter, sandbox_path: path) end)
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

for id <- ["a", "b", "c"],
    do: :ok = Demo.timed("destroy #{id}", fn -> Sandbox.destroy_sandbox(id) end)

File.rm_rf!(changed)
IO.puts("\nsandboxes left: #{length(Sandbox.list_sandboxes())}")
