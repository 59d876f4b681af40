defmodule Mix.Tasks.Sandbox.GraphTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO

  @project Path.expand("../fixtures/graph_project", __DIR__)
  @root Path.expand("../..", __DIR__)

  defp run_task(args) do
    capture_io(fn -> Mix.Task.rerun("sandbox.graph", args) end)
  end

  test "text: the reload order, a cycle as one step, and each module's dependencies" do
    out = run_task([@project])

    assert out =~ "#{@project} (:shop): 5 modules, 5 dependencies"

    assert out =~ """
           Reload order (dependencies first):
             1. Shop.Application
             2. Shop.Pricing, Shop.Stock  (a cycle: reloaded together)
             3. Shop.Orders
             4. Shop.Api
           """

    assert out =~ "  Shop.Orders -> Shop.Pricing, Shop.Stock\n"
    assert out =~ "  Shop.Application -> (none)\n"
  end

  test "json: modules, dependencies and reload order, as the facade reports them for a sandbox",
       %{test: test} do
    out = run_task([@project, "--format", "json"])
    assert {:ok, json} = Sandbox.TestJSON.decode(String.trim(out))

    assert json["app"] == "shop"
    assert json["modules"] == ~w(Shop.Api Shop.Application Shop.Orders Shop.Pricing Shop.Stock)
    assert json["dependencies"]["Shop.Api"] == ["Shop.Orders"]

    # The same graph and order as a sandbox of the project has.
    {:ok, info} = Sandbox.Test.Helpers.setup_test_sandbox(test, :shop, sandbox_path: @project)
    {:ok, graph} = Sandbox.get_dependency_graph(info.id)

    assert json["dependencies"] ==
             Map.new(graph, fn {m, ds} -> {inspect(m), Enum.map(ds, &inspect/1)} end)

    {:ok, order} = Sandbox.calculate_reload_order(info.id, Map.keys(graph))
    assert List.flatten(json["reload_order"]) == Enum.map(order, &inspect/1)
  end

  test "dot: renders with Graphviz" do
    out = run_task([@project, "--format", "dot"])
    assert out =~ ~s(digraph "shop" {)
    assert out =~ ~s("Shop.Orders" -> "Shop.Stock";)
    assert out =~ ~s|subgraph "cluster_2" { label="cycle (step 2)"|

    dot =
      System.find_executable("dot") ||
        flunk("Graphviz's dot is missing: `make setup` installs it")

    png = Path.join(System.tmp_dir!(), "graph-#{System.unique_integer([:positive])}.png")
    on_exit(fn -> File.rm(png) end)
    dot_file = png <> ".dot"
    File.write!(dot_file, out)
    on_exit(fn -> File.rm(dot_file) end)
    assert {_, 0} = System.cmd(dot, ["-Tpng", dot_file, "-o", png], stderr_to_stdout: true)
    assert <<0x89, "PNG", _::binary>> = File.read!(png)
  end

  test "--help prints the documentation; bad arguments are Mix errors" do
    out = run_task(["--help"])
    assert out =~ "mix sandbox.graph PATH [--format text|dot|json]"
    assert Mix.Task.shortdoc(Mix.Tasks.Sandbox.Graph) =~ "dependency graph"

    assert_raise Mix.Error, ~r/expected one PATH/, fn -> run_task([]) end
    assert_raise Mix.Error, ~r/no such directory/, fn -> run_task(["/nonexistent/x"]) end

    assert_raise Mix.Error, ~r/unknown --format svg/, fn ->
      run_task([@project, "--format", "svg"])
    end

    assert_raise Mix.Error, ~r/--bogus : Unknown option/, fn ->
      run_task([@project, "--bogus"])
    end
  end

  @tag :tmp_dir
  test "a project that does not compile: its diagnostics on stderr, exit status 1", %{
    tmp_dir: tmp
  } do
    File.write!(Path.join(tmp, "broken.ex"), "defmodule Broken do\n  def x, do: (\nend\n")

    err =
      capture_io(:stderr, fn ->
        assert catch_exit(run_task([tmp])) == {:shutdown, 1}
      end)

    assert err =~ "#{tmp} does not compile:"
    assert err =~ ~r/broken.ex:3:\d+: error: /
  end

  @tag :slow
  test "by mix in a subprocess: output and exit status" do
    {out, 0} = mix(["sandbox.graph", "test/fixtures/graph_project", "--format", "json"])

    assert {:ok, %{"app" => "shop"}} =
             out |> String.split("\n", trim: true) |> List.last() |> Sandbox.TestJSON.decode()

    {out, 1} = mix(["sandbox.graph", "test/fixtures/compiler/no_sources"])
    assert out =~ "cannot graph test/fixtures/compiler/no_sources: no .ex or .erl sources"

    {out, 1} = mix(["sandbox.graph"])
    assert out =~ "expected one PATH"

    {out, 0} = mix(["help", "sandbox.graph"])
    assert out =~ "--format dot"
  end

  defp mix(args) do
    System.cmd("mix", args, env: [{"MIX_ENV", "test"}], stderr_to_stdout: true, cd: @root)
  end
end
