defmodule Sandbox.SourceReloadTest do
  # hot_reload_source/3 compiles in the context of the sandbox's project.
  use ExUnit.Case, async: true

  import Sandbox.Test.WatchFixtures
  import Sandbox.Test.Fixtures, only: [loaded_modules: 1]
  import Sandbox.Test.Helpers, only: [setup_test_sandbox: 3]

  @moduletag :tmp_dir

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    ns = "S#{hash}"
    dir = write_project(Path.join(ctx.tmp_dir, "project"), ns, :"s#{hash}_app")
    # A sandbox of the test's own, destroyed when it exits.
    {:ok, %{id: id}} = setup_test_sandbox(ctx.test, :"s#{hash}_app", sandbox_path: dir)
    m = fn name -> Module.concat(ns, name) end
    %{ns: ns, id: id, dir: dir, shape: m.(Shape), calc: m.(Calc), server: m.(Server), m: m}
  end

  defp edit(ctx, file, contents), do: File.write!(Path.join(ctx.dir, file), contents)
  defp reload(ctx, file), do: Sandbox.hot_reload_source(ctx.id, {:file, Path.join(ctx.dir, file)})

  test "a file using another file's struct and macro compiles with its project", ctx do
    edit(ctx, "lib/calc.ex", """
    defmodule #{ctx.ns}.Calc do
      require #{ctx.ns}.Shape
      def area(w, h), do: #{ctx.ns}.Shape.area(%#{ctx.ns}.Shape{w: w, h: h}) + 1
    end
    """)

    assert reload(ctx, "lib/calc.ex") == {:ok, :hot_reloaded}
    assert Sandbox.call(ctx.id, ctx.calc, :area, [2, 3]) == {:ok, 7}
    assert Sandbox.get_current_version(ctx.id, ctx.calc) == {:ok, 2}
    assert Sandbox.get_current_version(ctx.id, ctx.shape) == {:ok, 1}
  end

  test "a macro edit recompiles and reloads its users in the same change", ctx do
    :ok = Sandbox.subscribe(ctx.id)
    assert Sandbox.call(ctx.id, ctx.calc, :area, [2, 3]) == {:ok, 6}
    edit(ctx, "lib/shape.ex", shape(ctx.ns, "s.w * s.h * 10"))

    assert reload(ctx, "lib/shape.ex") == {:ok, :hot_reloaded}
    assert Sandbox.call(ctx.id, ctx.calc, :area, [2, 3]) == {:ok, 60}
    assert Sandbox.get_current_version(ctx.id, ctx.calc) == {:ok, 2}
    assert Sandbox.get_current_version(ctx.id, ctx.shape) == {:ok, 2}

    assert {:reloaded, meta} = await_reload(ctx.id)
    assert Enum.sort(meta.modules) == Enum.sort([ctx.calc, ctx.shape])
    assert meta.trigger == :api
  end

  test "an unmodified file is unchanged and makes no version", ctx do
    for file <- ~w(lib/server.ex lib/calc.ex lib/shape.ex) do
      assert reload(ctx, file) == {:ok, :unchanged}
    end

    for m <- [ctx.server, ctx.calc, ctx.shape] do
      assert Sandbox.get_current_version(ctx.id, m) == {:ok, 1}
    end
  end

  test "a GenServer's edit keeps its pid and state", ctx do
    assert {:ok, 1} = Sandbox.call(ctx.id, ctx.server, :bump, [])
    assert {:ok, {1, 1, pid}} = Sandbox.call(ctx.id, ctx.server, :get, [])

    edit(ctx, "lib/server.ex", server(ctx.ns, 2))
    assert reload(ctx, "lib/server.ex") == {:ok, :hot_reloaded}
    assert {:ok, {2, 1, ^pid}} = Sandbox.call(ctx.id, ctx.server, :get, [])
  end

  test "a new file's module is added to the sandbox only, and removed with the file", ctx do
    extra = ctx.m.(Extra)

    edit(ctx, "lib/extra.ex", """
    defmodule #{ctx.ns}.Extra do
      def area, do: #{ctx.ns}.Calc.area(4, 5)
    end
    """)

    assert reload(ctx, "lib/extra.ex") == {:ok, :hot_reloaded}
    assert Sandbox.call(ctx.id, extra, :area, []) == {:ok, 20}
    assert Sandbox.get_current_version(ctx.id, extra) == {:ok, 1}
    refute Code.ensure_loaded?(extra)
    assert Sandbox.module_name(ctx.id, extra) in loaded_modules(ctx.id)

    File.rm!(Path.join(ctx.dir, "lib/extra.ex"))
    assert reload(ctx, "lib/extra.ex") == {:ok, :hot_reloaded}
    assert Sandbox.get_current_version(ctx.id, extra) == {:error, :not_found}

    assert {:error, {:exception, %UndefinedFunctionError{}, _}} =
             Sandbox.call(ctx.id, extra, :area, [])

    refute Sandbox.module_name(ctx.id, extra) in loaded_modules(ctx.id)
    refute Map.has_key?(elem(Sandbox.get_dependency_graph(ctx.id), 1), extra)
  end

  test "removing a module a process is running fails the change, naming it", ctx do
    parker = ctx.m.(Parker)

    edit(ctx, "lib/parker.ex", """
    defmodule #{ctx.ns}.Parker do
      def start do
        parent = self()
        pid = spawn(fn -> send(parent, :parked); park() end)
        receive do :parked -> pid end
      end
      def park, do: receive(do: (:never -> park()))
    end
    """)

    assert reload(ctx, "lib/parker.ex") == {:ok, :hot_reloaded}
    assert {:ok, pid} = Sandbox.call(ctx.id, parker, :start, [])

    File.rm!(Path.join(ctx.dir, "lib/parker.ex"))
    assert reload(ctx, "lib/parker.ex") == {:error, {:module_in_use, parker, [pid]}}
    assert Process.alive?(pid)
    assert Sandbox.get_current_version(ctx.id, parker) == {:ok, 1}

    ref = Process.monitor(pid)
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}
    assert reload(ctx, "lib/parker.ex") == {:ok, :hot_reloaded}
    assert Sandbox.get_current_version(ctx.id, parker) == {:error, :not_found}
  end

  test "a code string compiles against the project", ctx do
    code = """
    defmodule #{ctx.ns}.Calc do
      require #{ctx.ns}.Shape
      def area(w, h), do: #{ctx.ns}.Shape.area(%#{ctx.ns}.Shape{w: h, h: w}) * 2
    end
    """

    assert Sandbox.hot_reload_source(ctx.id, {:code, code}) == {:ok, :hot_reloaded}
    assert Sandbox.call(ctx.id, ctx.calc, :area, [2, 3]) == {:ok, 12}

    assert {:error, {:compilation_failed, [%{file: _, line: _} | _]}} =
             Sandbox.hot_reload_source(ctx.id, {:code, "defmodule #{ctx.ns}.Calc do"})

    assert Sandbox.call(ctx.id, ctx.calc, :area, [2, 3]) == {:ok, 12}
  end
end
