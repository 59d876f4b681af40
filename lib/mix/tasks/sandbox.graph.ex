defmodule Mix.Tasks.Sandbox.Graph do
  @shortdoc "Prints a project's module dependency graph and reload order"

  @moduledoc """
  Compiles the project at `PATH` in an isolated compile worker and prints
  its module dependency graph and the order a reload of all its modules
  would follow — what `Sandbox.get_dependency_graph/1` and
  `Sandbox.calculate_reload_order/2` answer for a sandbox of it.

      mix sandbox.graph PATH [--format text|dot|json]

  A module depends on the project's modules it calls (remote calls and
  external funs in its BEAM); compile-time dependencies (macros, structs)
  are not edges. The reload order lists dependencies first; the modules
  of a dependency cycle form one step.

  ## Options

    * `--format text` (the default) — the reload order, then each module's
      dependencies
    * `--format dot` — a Graphviz graph, an edge from each module to each
      module it depends on, each node labelled with its reload step and the
      members of a cycle boxed together:

          mix sandbox.graph examples/counter --format dot | dot -Tpng -o graph.png

    * `--format json` — `{"path", "app", "modules", "dependencies":
      {module: [module]}, "reload_order": [[module]]}`, modules written as
      Elixir writes them (`Counter.Server`, `:an_erlang_module`)
    * `--help` — this text

  The exit status is 1 when the project cannot be compiled (the reason
  goes to standard error).
  """

  use Mix.Task

  alias Sandbox.Tools.{JSON, MixTask}

  @usage "mix sandbox.graph PATH [--format text|dot|json]"

  @impl Mix.Task
  def run(args) do
    case MixTask.parse(args, [format: :string], @usage, @moduledoc, ~w(text dot json)) do
      :help -> :ok
      {opts, path} -> graph(path, opts[:format])
    end
  end

  defp graph(path, format) do
    MixTask.start()

    with {:ok, info} <-
           Sandbox.IsolatedCompiler.compile_sandbox(path, write_artifacts: false),
         {:ok, parsed} <- parse_all(info.modules),
         {:ok, graph} <- Sandbox.Beam.dependency_graph(parsed),
         {:ok, groups} <- Sandbox.Beam.reload_order(graph) do
      app = info.app && info.app.name
      Mix.shell().info(render(format, path, app, graph, groups))
    else
      {:error, {:compilation_failed, diagnostics}} ->
        Mix.shell().error("#{path} does not compile:")

        for d <- diagnostics,
            do: Mix.shell().error(Mix.Tasks.Sandbox.Compile.format_diagnostic(path, d))

        MixTask.fail()

      {:error, reason} ->
        Mix.shell().error("cannot graph #{path}: #{MixTask.describe(reason)}")
        MixTask.fail()
    end
  end

  defp parse_all(modules) do
    Enum.reduce_while(modules, {:ok, []}, fn {m, beam}, {:ok, acc} ->
      case Sandbox.Beam.parse(beam) do
        {:ok, parsed} -> {:cont, {:ok, [parsed | acc]}}
        {:error, reason} -> {:halt, {:error, {:invalid_beam, m, reason}}}
      end
    end)
  end

  @doc false
  def render(:text, path, app, graph, groups) do
    edges = graph |> Map.values() |> Enum.map(&length/1) |> Enum.sum()
    name = if app, do: " (#{inspect(app)})", else: ""

    steps =
      for {group, i} <- Enum.with_index(groups, 1) do
        cycle = if length(group) > 1, do: "  (a cycle: reloaded together)", else: ""
        "  #{i}. #{Enum.map_join(group, ", ", &MixTask.label/1)}#{cycle}"
      end

    deps =
      for {m, ds} <- Enum.sort(graph) do
        targets = if ds == [], do: "(none)", else: Enum.map_join(ds, ", ", &MixTask.label/1)
        "  #{MixTask.label(m)} -> #{targets}"
      end

    Enum.join(
      [
        "#{path}#{name}: #{map_size(graph)} modules, #{edges} dependencies",
        "",
        "Reload order (dependencies first):" | steps
      ] ++ ["", "Dependencies (module -> modules it calls):" | deps],
      "\n"
    )
  end

  def render(:dot, path, app, graph, groups) do
    step = for {g, i} <- Enum.with_index(groups, 1), m <- g, into: %{}, do: {m, i}
    q = fn m -> inspect(MixTask.label(m)) end

    nodes =
      for {m, _} <- Enum.sort(graph),
          do: "  #{q.(m)} [label=#{inspect("#{MixTask.label(m)}\n(reload step #{step[m]})")}];"

    edges = for {m, ds} <- Enum.sort(graph), d <- ds, do: "  #{q.(m)} -> #{q.(d)};"

    cycles =
      for {g, i} <- Enum.with_index(groups, 1), length(g) > 1 do
        members = Enum.map_join(g, " ", q)
        ~s|  subgraph "cluster_#{i}" { label="cycle (step #{i})"; style=dashed; #{members} }|
      end

    title = inspect(to_string(app || Path.basename(Path.expand(path))))

    Enum.join(
      [
        "digraph #{title} {",
        "  rankdir=RL;",
        ~s(  graph [fontname="Helvetica"];),
        ~s(  node [shape=box, style=rounded, fontname="Helvetica"];)
      ] ++ nodes ++ edges ++ cycles ++ ["}"],
      "\n"
    )
  end

  def render(:json, path, app, graph, groups) do
    JSON.encode!(%{
      path: path,
      app: app && Atom.to_string(app),
      modules: graph |> Map.keys() |> Enum.sort() |> Enum.map(&MixTask.label/1),
      dependencies:
        Map.new(graph, fn {m, ds} -> {MixTask.label(m), Enum.map(ds, &MixTask.label/1)} end),
      reload_order: Enum.map(groups, fn g -> Enum.map(g, &MixTask.label/1) end)
    })
  end
end
