defmodule Sandbox.Test.Fixtures do
  @moduledoc false
  # Sandbox projects for the lifecycle tests: copies of examples/counter,
  # edited, and small projects written on the fly.

  @counter Path.expand("../../examples/counter", __DIR__)

  def counter_path, do: @counter

  @doc """
  A copy of examples/counter under `dir`, with `version/0` returning
  `version`, and the given `step` and `greeting` in its config.
  """
  def counter_copy(dir, opts \\ []) do
    dest = Path.join(dir, Keyword.get(opts, :name, "counter"))
    File.mkdir_p!(dest)
    File.cp_r!(@counter, dest)

    if version = opts[:version] do
      edit(Path.join(dest, "lib/counter.ex"), "def version, do: 1", "def version, do: #{version}")
    end

    if greeting = opts[:greeting] do
      edit(
        Path.join(dest, "config/config.exs"),
        ~s(greeting: "hello from counter"),
        ~s(greeting: #{inspect(greeting)})
      )
    end

    if step = opts[:step] do
      edit(Path.join(dest, "config/config.exs"), "step: 1", "step: #{step}")
    end

    dest
  end

  @doc "Writes `files` (`%{relative_path => contents}`) under `dir`; returns `dir`."
  def project(dir, files) do
    for {path, contents} <- files do
      full = Path.join(dir, path)
      File.mkdir_p!(Path.dirname(full))
      File.write!(full, contents)
    end

    dir
  end

  defp edit(path, from, to) do
    text = File.read!(path)
    unless String.contains?(text, from), do: raise("#{path} does not contain #{from}")
    File.write!(path, String.replace(text, from, to))
  end

  @doc "Loaded modules whose name starts with sandbox `id`'s prefixes."
  def loaded_modules(id) do
    prefixes = ["Elixir.Sandbox@#{id}.", "sandbox@#{id}@"]

    for {m, _} <- :code.all_loaded(),
        name = Atom.to_string(m),
        Enum.any?(prefixes, &String.starts_with?(name, &1)),
        do: m
  end

  @doc "Waits for the event `name` of sandbox `id` (the caller must be subscribed)."
  def await_event(id, name, timeout \\ 10_000) do
    receive do
      {:sandbox_event, [:sandbox, _, ^name], measurements, %{sandbox_id: ^id} = meta} ->
        {measurements, meta}
    after
      timeout -> raise "no #{name} event for #{id} within #{timeout} ms"
    end
  end
end
