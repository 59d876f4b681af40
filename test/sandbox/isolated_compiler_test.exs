defmodule Sandbox.IsolatedCompilerTest do
  use ExUnit.Case, async: true

  import Sandbox.IsolatedCompilerTestHelpers

  alias Sandbox.IsolatedCompiler
  alias Sandbox.IsolatedCompiler.Cache

  # One private pool (two workers) and cache for the whole module: tests in a
  # module run one after another, and a warm second worker keeps them quick.
  setup_all do
    {:ok, opts: private_compiler!(:ic, 2)}
  end

  # A benign project, compiled by a worker (never from the cache).
  defp benign!(opts) do
    assert {:ok, %{modules: [_ | _], cached: false}} =
             IsolatedCompiler.compile_sandbox(fixture("basic"), [cache: false] ++ opts)
  end

  describe "compile_sandbox/2 on a mix project" do
    test "compiles the project, its path dependency and its Erlang sources in another OS process",
         %{opts: opts} do
      assert {:ok, info} =
               IsolatedCompiler.compile_sandbox(fixture("basic"), [cache: false] ++ opts)

      assert module_names(info) ==
               Enum.sort([Basic, Basic.Application, Basic.Point, Util, :basic_erl])

      assert info.cached == false
      assert info.errors == [] and info.warnings == []

      # The application spec, from mix.exs evaluated in the worker.
      assert %{name: :basic, version: "1.2.3", mod: {Basic.Application, []}} = info.app
      assert info.app.extra_applications == [:logger]
      assert [%{name: :util, version: "0.1.0", modules: [Util]}] = info.app.path_deps

      # The environment: application/0's env overridden by config/config.exs.
      assert info.config == [basic: [greeting: "hello", answer: 42]]
      assert info.app_env[:default_key] == 1
      assert info.app_env[:greeting] == "hello"

      # Artifacts on disk: one .beam per module and the .app file.
      assert Enum.all?(info.beam_files, &File.regular?/1)
      assert length(info.beam_files) == 5
      assert {:ok, [{:application, :basic, props}]} = :file.consult(info.app_file)
      assert :logger in props[:applications] and :util in props[:applications]
      assert :ok = IsolatedCompiler.validate_beam_files(info.beam_files)

      # The macro recorded System.pid() of the VM that compiled it.
      load_modules!(info.modules)
      assert apply(Basic, :compiled_in, []) == Integer.to_string(info.os_pid)
      assert apply(Basic, :compiled_in, []) != System.pid()
      assert apply(Basic, :render, ["Ada"]) == "Hello, Ada!\n"
      assert apply(Basic, :util, []) == "HI!"
      assert apply(Basic, :erl, []) == 42

      assert :ok = IsolatedCompiler.cleanup_artifacts(info.temp_dir)
      refute File.exists?(info.temp_dir)
    end

    test "a project with nothing to compile is {:no_sources, path}; a benign one compiles",
         %{opts: opts} do
      dir = tmp_dir!("empty-project")
      File.write!(Path.join(dir, "mix.exs"), File.read!(fixture("incremental/mix.exs")))
      File.mkdir_p!(Path.join(dir, "lib"))

      assert {:error, {:no_sources, ^dir}} = IsolatedCompiler.compile_sandbox(dir, opts)
      benign!(opts)
    end

    test "honours elixirc_paths, evaluating mix.exs in the worker", %{opts: opts} do
      dir = tmp_dir!("paths")
      File.mkdir_p!(Path.join(dir, "code"))
      File.mkdir_p!(Path.join(dir, "lib"))

      File.write!(Path.join(dir, "mix.exs"), """
      defmodule Paths.MixProject do
        use Mix.Project
        def project, do: [app: :paths, version: "0.0.1", elixirc_paths: ["code"]]
      end
      """)

      File.write!(Path.join(dir, "code/in.ex"), "defmodule PathsIn do\nend\n")
      File.write!(Path.join(dir, "lib/out.ex"), "defmodule PathsOut do\nend\n")

      assert {:ok, info} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert module_names(info) == [PathsIn]
    end
  end

  describe "bad inputs get their reason, and a benign project still compiles" do
    test "a missing directory", %{opts: opts} do
      missing = Path.join(System.tmp_dir!(), "sandbox-ic-missing-#{System.unique_integer()}")

      assert {:error, {:no_such_directory, ^missing}} =
               IsolatedCompiler.compile_sandbox(missing, opts)

      assert {:error, {:no_such_directory, _}} =
               IsolatedCompiler.incremental_compile(missing, [], opts)

      benign!(opts)
    end

    test "a directory without sources", %{opts: opts} do
      dir = fixture("no_sources")
      jobs = jobs(opts[:pool])
      assert {:error, {:no_sources, ^dir}} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert jobs(opts[:pool]) == jobs
      benign!(opts)
    end

    test "a syntax error reports its file and line", %{opts: opts} do
      dir = tmp_dir!("syntax")
      File.write!(Path.join(dir, "good.ex"), "defmodule SyntaxGood do\n  def ok, do: :ok\nend\n")

      File.write!(Path.join(dir, "broken.ex"), """
      defmodule SyntaxBroken do
        def f(x) do
          x +
        end
      end
      """)

      assert {:error, {:compilation_failed, [diag]}} = IsolatedCompiler.compile_sandbox(dir, opts)

      assert %{file: "broken.ex", line: 4, type: :syntax, message: message} = diag
      assert message =~ "syntax error"
      benign!(opts)
    end

    test "an undefined function reports its file and line", %{opts: opts} do
      assert {:error, {:compilation_failed, [diag]}} =
               IsolatedCompiler.compile_sandbox(fixture("undefined_function"), opts)

      assert %{file: "caller.ex", line: 5, type: :compile, message: message} = diag
      assert message =~ "undefined function missing_helper/1"
      benign!(opts)
    end

    test "the same module in two files", %{opts: opts} do
      assert {:error, {:duplicate_module, DuplicateFixture.Twice, ["lib/one.ex", "lib/two.ex"]}} =
               IsolatedCompiler.compile_sandbox(fixture("duplicate_module"), opts)

      benign!(opts)
    end

    test "a source larger than max_file_size is refused before any worker runs", %{opts: opts} do
      limits = %{max_file_size: 8 * 1024 * 1024}
      dir = tmp_dir!("oversize")
      big = Path.join(dir, "big.ex")
      padding = String.duplicate("# padding padding padding padding padding padding\n", 180_000)
      File.write!(big, "defmodule Big do\n" <> padding <> "end\n")
      assert File.stat!(big).size > limits.max_file_size

      opts = [compile_limits: limits] ++ opts
      jobs = jobs(opts[:pool])
      assert {:error, {:file_too_large, ^big}} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert {:error, {:file_too_large, ^big}} = IsolatedCompiler.compile_file(big, opts)
      assert jobs(opts[:pool]) == jobs
      benign!(opts)
    end

    test "wrong argument types raise ArgumentError", %{opts: opts} do
      assert_raise ArgumentError, fn -> IsolatedCompiler.compile_sandbox(:basic, opts) end
      assert_raise ArgumentError, fn -> IsolatedCompiler.compile_sandbox("x", :opts) end

      assert_raise ArgumentError, fn ->
        IsolatedCompiler.compile_sandbox("x", compile_limits: %{max_memory: -1})
      end

      assert_raise ArgumentError, fn -> IsolatedCompiler.compile_sandbox("x", env: [{"A", 1}]) end
      assert_raise ArgumentError, fn -> IsolatedCompiler.incremental_compile("x", :all) end
      assert_raise ArgumentError, fn -> IsolatedCompiler.validate_beam_files("x.beam") end
      assert_raise ArgumentError, fn -> IsolatedCompiler.cleanup_artifacts(nil) end
    end
  end

  describe "compile_file/2" do
    test "compiles one Elixir or Erlang file", %{opts: opts} do
      assert {:ok, info} =
               IsolatedCompiler.compile_file(fixture("basic/lib/basic/point.ex"), opts)

      assert module_names(info) == [Basic.Point]
      assert info.app == nil

      assert {:ok, info} = IsolatedCompiler.compile_file(fixture("basic/src/basic_erl.erl"), opts)
      assert module_names(info) == [:basic_erl]

      dir = tmp_dir!("erl-error")
      bad = Path.join(dir, "bad_erl.erl")
      File.write!(bad, "-module(bad_erl).\n-export([f/0]).\nf() -> g().\n")

      assert {:error, {:compilation_failed, [diag]}} = IsolatedCompiler.compile_file(bad, opts)
      assert %{file: "bad_erl.erl", line: 3, type: :compile, message: message} = diag
      assert message =~ "function g/0 undefined"

      assert {:error, {:no_such_file, "nope.ex"}} = IsolatedCompiler.compile_file("nope.ex", opts)
      mix_exs = fixture("basic/mix.exs")

      assert {:error, {:unsupported_file, ^mix_exs}} =
               IsolatedCompiler.compile_file(mix_exs, opts)
    end
  end

  describe "the compile cache" do
    test "a repeated compile is a hit that runs no worker job", %{opts: opts} do
      dir = copy_fixture!("basic")
      jobs = jobs(opts[:pool])
      assert {:ok, %{cached: false} = first} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert jobs(opts[:pool]) == jobs + 1
      assert {:ok, %{cached: true} = second} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert jobs(opts[:pool]) == jobs + 1
      assert second.modules == first.modules
      assert second.app == first.app and second.app_env == first.app_env
      assert second.temp_dir != first.temp_dir
      assert :ok = IsolatedCompiler.validate_beam_files(second.beam_files)
      assert {:ok, _} = :file.consult(second.app_file)

      # Options that change the output are part of the key.
      assert {:ok, %{cached: false}} =
               IsolatedCompiler.compile_sandbox(dir, [mix_env: :dev] ++ opts)

      assert {:ok, %{cached: false}} =
               IsolatedCompiler.compile_sandbox(dir, [cache: false] ++ opts)

      assert jobs(opts[:pool]) == jobs + 3
    end

    test "changing an @external_resource template, a config file or a source is a miss",
         %{opts: opts} do
      dir = copy_fixture!("basic")
      jobs = jobs(opts[:pool])
      assert {:ok, %{cached: false}} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert {:ok, %{cached: true}} = IsolatedCompiler.compile_sandbox(dir, opts)

      File.write!(Path.join(dir, "priv/greeting.eex"), "Bonjour, <%= name %>!\n")
      assert {:ok, %{cached: false} = info} = IsolatedCompiler.compile_sandbox(dir, opts)
      load_modules!(Enum.filter(info.modules, &(elem(&1, 0) == Basic)))
      assert apply(Basic, :render, ["Ada"]) == "Bonjour, Ada!\n"
      assert {:ok, %{cached: true}} = IsolatedCompiler.compile_sandbox(dir, opts)

      File.write!(Path.join(dir, "config/config.exs"), """
      import Config
      config :basic, greeting: "hey", answer: 42
      """)

      assert {:ok, %{cached: false} = info} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert info.app_env[:greeting] == "hey"

      File.write!(Path.join(dir, "config/extra.exs"), "import Config\n")
      assert {:ok, %{cached: false}} = IsolatedCompiler.compile_sandbox(dir, opts)

      File.write!(Path.join(dir, "lib/basic/point.ex"), """
      defmodule Basic.Point do
        defstruct x: 0, y: 0, z: 0
      end
      """)

      assert {:ok, %{cached: false}} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert jobs(opts[:pool]) == jobs + 5
    end

    test "environment variables read by the config are part of the key", %{opts: opts} do
      dir = copy_fixture!("basic")

      File.write!(Path.join(dir, "config/config.exs"), """
      import Config
      config :basic, greeting: System.get_env("SANDBOX_IC_GREETING", "hello")
      """)

      env_a = [env: %{"SANDBOX_IC_GREETING" => "a"}]
      env_b = [env: %{"SANDBOX_IC_GREETING" => "b"}]
      assert {:ok, %{cached: false} = a} = IsolatedCompiler.compile_sandbox(dir, env_a ++ opts)
      assert a.app_env[:greeting] == "a"
      assert {:ok, %{cached: true}} = IsolatedCompiler.compile_sandbox(dir, env_a ++ opts)
      assert {:ok, %{cached: false} = b} = IsolatedCompiler.compile_sandbox(dir, env_b ++ opts)
      assert b.app_env[:greeting] == "b"

      # A variable nobody reads does not matter.
      other = [env: %{"SANDBOX_IC_GREETING" => "a", "SANDBOX_IC_UNREAD" => "x"}]
      assert {:ok, %{cached: true} = again} = IsolatedCompiler.compile_sandbox(dir, other ++ opts)
      assert again.app_env[:greeting] == "a"
    end
  end

  describe "Cache" do
    test "the cache is bounded in size, least recently used out" do
      cache = :"bounded_cache_#{System.unique_integer([:positive])}"
      dir = tmp_dir!("bounded")
      start_supervised!({Cache, name: cache, dir: dir, max_bytes: 10_000})
      blob = :binary.copy("x", 4_000)

      for key <- ["a", "b", "c"] do
        :ok = Cache.put(cache, key, %{files: [], env: []}, blob)
      end

      # Two entries fit: "a", the least recently used, went.
      assert %{entries: 2} = Cache.info(cache)
      assert :miss = Cache.fetch(cache, "a", fn _ -> true end)
      assert {:ok, ^blob} = Cache.fetch(cache, "b", fn _ -> true end)
      # A manifest that no longer holds is a miss.
      assert :miss = Cache.fetch(cache, "c", fn _ -> false end)

      # "b" was used last, so "c" goes next.
      :sys.get_state(cache)
      :ok = Cache.put(cache, "d", %{files: [], env: []}, blob)
      assert {:ok, ^blob} = Cache.fetch(cache, "b", fn _ -> true end)
      assert :miss = Cache.fetch(cache, "c", fn _ -> true end)
      assert length(File.ls!(dir)) == 2
    end
  end

  describe "incremental_compile/3" do
    setup %{opts: opts} do
      dir = copy_fixture!("incremental")
      assert {:ok, full} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert length(full.recompiled_files) == 8
      assert length(full.modules) == 8
      {:ok, dir: dir}
    end

    test "recompiles changed files and their compile-time dependents, returning changed modules",
         %{dir: dir, opts: opts} do
      # A runtime-only dependent (Inc.Caller) is not recompiled.
      edit!(dir, "lib/plain.ex", "def value, do: 1", "def value, do: 2")
      assert {:ok, info} = IsolatedCompiler.incremental_compile(dir, ["lib/plain.ex"], opts)
      assert info.incremental and not info.cached
      assert relative(info.recompiled_files, dir) == ["lib/plain.ex"]
      assert module_names(info) == [Inc.Plain]

      # A macro's users are recompiled; only modules whose BEAM changed return.
      edit!(dir, "lib/macros.ex", "defmacro answer, do: 42", "defmacro answer, do: 43")
      changed = [Path.join(dir, "lib/macros.ex")]
      assert {:ok, info} = IsolatedCompiler.incremental_compile(dir, changed, opts)
      assert relative(info.recompiled_files, dir) == ["lib/macros.ex", "lib/user.ex"]
      assert module_names(info) == [Inc.Macros, Inc.User]
      load_modules!(info.modules)
      assert apply(Inc.User, :answer, []) == 43

      # Structs and behaviours.
      edit!(dir, "lib/shape.ex", "defstruct sides: 3", "defstruct sides: 4")

      edit!(
        dir,
        "lib/greeter.ex",
        "@callback greet",
        "@callback other(term) :: term\n  @callback greet"
      )

      changed = ["lib/shape.ex", "lib/greeter.ex"]
      assert {:ok, info} = IsolatedCompiler.incremental_compile(dir, changed, opts)

      assert relative(info.recompiled_files, dir) ==
               ["lib/builder.ex", "lib/greeter.ex", "lib/hello.ex", "lib/shape.ex"]

      assert Inc.Builder in module_names(info)
      assert [%{file: "lib/hello.ex", type: :warning, message: message}] = info.warnings
      assert message =~ "other/1"

      # A recompiled file whose output does not change returns nothing.
      edit!(dir, "lib/plain.ex", "def value, do: 2", "def value, do: 2 # same")
      assert {:ok, info} = IsolatedCompiler.incremental_compile(dir, ["lib/plain.ex"], opts)
      assert info.recompiled_files != []
      assert info.modules == [] and info.removed_modules == []
    end

    test "new and deleted files, compile errors, and config changes", %{dir: dir, opts: opts} do
      File.rm!(Path.join(dir, "lib/caller.ex"))
      File.write!(Path.join(dir, "lib/fresh.ex"), "defmodule Inc.Fresh do\nend\n")
      changed = ["lib/caller.ex", "lib/fresh.ex"]
      assert {:ok, info} = IsolatedCompiler.incremental_compile(dir, changed, opts)
      assert module_names(info) == [Inc.Fresh]
      assert info.removed_modules == [Inc.Caller]

      # A deletion alone needs no worker.
      jobs = jobs(opts[:pool])
      File.rm!(Path.join(dir, "lib/fresh.ex"))
      assert {:ok, info} = IsolatedCompiler.incremental_compile(dir, ["lib/fresh.ex"], opts)
      assert info.modules == [] and info.removed_modules == [Inc.Fresh]
      assert info.os_pid == nil and jobs(opts[:pool]) == jobs

      edit!(dir, "lib/plain.ex", "def value, do: 1", "def value, do: nope()")

      assert {:error, {:compilation_failed, [%{file: "lib/plain.ex", line: 2, type: :compile}]}} =
               IsolatedCompiler.incremental_compile(dir, ["lib/plain.ex"], opts)

      edit!(dir, "lib/plain.ex", "def value, do: nope()", "def value, do: 1")
      File.mkdir_p!(Path.join(dir, "config"))
      File.write!(Path.join(dir, "config/config.exs"), "import Config\nconfig :inc, a: 1\n")

      assert {:ok, info} = IsolatedCompiler.incremental_compile(dir, ["config/config.exs"], opts)
      assert Enum.sort(info.recompiled_files) == Path.wildcard(Path.join(dir, "lib/*.ex"))
      assert info.modules == [] and info.removed_modules == []
      assert info.config == [inc: [a: 1]]
    end
  end

  describe "validate_beam_files/1 and cleanup_artifacts/1" do
    test "validates files with the native toolkit's reasons", %{opts: opts} do
      assert {:ok, info} =
               IsolatedCompiler.compile_file(fixture("basic/lib/basic/point.ex"), opts)

      [beam] = info.beam_files
      assert :ok = IsolatedCompiler.validate_beam_files([beam])

      bad = Path.join(info.temp_dir, "bad.beam")
      File.write!(bad, "FOR1")

      assert {:error, {^bad, {:truncated, :header}}} =
               IsolatedCompiler.validate_beam_files([beam, bad])

      missing = Path.join(info.temp_dir, "missing.beam")
      assert {:error, {^missing, :enoent}} = IsolatedCompiler.validate_beam_files([missing])

      assert {:error, {:not_an_artifact_dir, "/tmp"}} = IsolatedCompiler.cleanup_artifacts("/tmp")
      assert :ok = IsolatedCompiler.cleanup_artifacts(info.temp_dir)
      refute File.exists?(beam)
      assert :ok = IsolatedCompiler.cleanup_artifacts(info.temp_dir)
    end
  end

  defp edit!(dir, file, from, to) do
    path = Path.join(dir, file)
    content = File.read!(path)
    assert content =~ from
    File.write!(path, String.replace(content, from, to))
  end

  defp relative(files, dir), do: files |> Enum.map(&Path.relative_to(&1, dir)) |> Enum.sort()
end
