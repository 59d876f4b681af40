defmodule Mix.Tasks.Sandbox.Test do
  @shortdoc "Runs a project's own test suite against a sandbox of it"

  @moduledoc """
  Compiles a project and its tests in a compile worker (with ExUnit there,
  `MIX_ENV=test`: `test/support` and the like are compiled as `mix test`
  would), creates a sandbox of it with its test modules inside, and runs
  its suite with ExUnit against that sandbox, printing ExUnit's usual
  report. Two versions of a library can be tested side by side in one VM.

      mix sandbox.test PATH [--target APP_OR_MODULE] [--profile P] [-- MIX_TEST_OPTIONS]

  ## Options

    * `--target` — the application (`my_app`) or supervisor module to
      start; default the project's application
    * `--profile` — the sandbox's security profile (default `low`: the
      suite is the project's own code, and its tests call ExUnit, which the
      other profiles do not classify)
    * `--help` — this text
    * after `--`, the usual `mix test` options that ExUnit takes: `--seed`,
      `--trace`, `--max-cases`, `--only`, `--exclude`, `--include`,
      `--timeout`

  Doctests work: they are compiled with the tests, against the project's
  documentation. The test modules are the sandbox's (relocated like its
  other modules), so a test calls the sandbox's copy of the project; the
  test processes are ExUnit's, in this VM.

  The exit status is 1 when a test fails or the project cannot be compiled
  or started, like `mix test`.
  """

  use Mix.Task

  alias Sandbox.Tools.MixTask

  @usage "mix sandbox.test PATH [--target APP_OR_MODULE] [--profile P] [-- MIX_TEST_OPTIONS]"
  @test_switches [
    seed: :integer,
    trace: :boolean,
    max_cases: :integer,
    only: :keep,
    exclude: :keep,
    include: :keep,
    timeout: :integer
  ]

  @impl Mix.Task
  def run(args) do
    {ours, test_args} =
      case Enum.split_while(args, &(&1 != "--")) do
        {ours, ["--" | rest]} -> {ours, rest}
        {ours, []} -> {ours, []}
      end

    case MixTask.parse(ours, [target: :string, profile: :string], @usage, @moduledoc, ["text"]) do
      :help -> :ok
      {opts, path} -> test(Path.expand(path), opts, test_args)
    end
  end

  defp test(path, opts, test_args) do
    profile = profile(Keyword.get(opts, :profile, "low"))
    {test_opts, _, _} = OptionParser.parse(test_args, strict: @test_switches)
    MixTask.start()

    with {:ok, info} <- compile(path),
         target = target(opts[:target], info),
         id = "test-" <> Integer.to_string(System.unique_integer([:positive])),
         {:ok, _} <-
           Sandbox.create_sandbox(id, target,
             sandbox_path: path,
             security_profile: profile,
             prebuilt: %{info | modules: info.modules ++ info.test_modules}
           ) do
      try do
        run_suite(id, info, test_opts)
      after
        Sandbox.destroy_sandbox(id)
      end
    else
      {:error, reason} ->
        Mix.shell().error("cannot test #{path}: #{format(reason)}")
        MixTask.fail()
    end
  end

  defp compile(path) do
    Sandbox.IsolatedCompiler.compile_sandbox(path,
      mix_env: :test,
      tests: true,
      write_artifacts: false
    )
  end

  defp profile(name) when name in ["high", "medium", "low"], do: String.to_atom(name)
  defp profile(other), do: Mix.raise("--profile must be high, medium or low, got: #{other}")

  defp target(nil, %{app: %{name: name}}), do: name
  defp target(nil, _info), do: Mix.raise("#{@usage}: --target is needed for a non-mix project")

  defp target(name, _info),
    do: if(name =~ ~r/\A[A-Z]/, do: Module.concat([name]), else: String.to_atom(name))

  defp run_suite(id, info, test_opts) do
    {:ok, _} = Application.ensure_all_started(:ex_unit)
    ExUnit.start(autorun: false)
    ExUnit.configure(exunit_options(test_opts))
    async = MapSet.new(info.async_tests)

    # The test cases among the modules the test files define.
    for {module, _} <- info.test_modules,
        relocated = Sandbox.module_name(id, module),
        Code.ensure_loaded?(relocated),
        function_exported?(relocated, :__ex_unit__, 0) do
      if MapSet.member?(async, module),
        do: ExUnit.Server.add_async_module(relocated),
        else: ExUnit.Server.add_sync_module(relocated)
    end

    ExUnit.Server.modules_loaded()
    %{failures: failures} = ExUnit.run()
    if failures > 0, do: MixTask.fail()
  end

  defp exunit_options(opts) do
    tags = fn key -> opts |> Keyword.get_values(key) |> Enum.map(&tag/1) end
    only = tags.(:only)

    [
      seed: opts[:seed],
      trace: opts[:trace],
      max_cases: opts[:max_cases],
      timeout: opts[:timeout],
      include: tags.(:include) ++ only,
      exclude: tags.(:exclude) ++ if(only != [], do: [:test], else: [])
    ]
    |> Enum.reject(fn {_k, v} -> is_nil(v) end)
  end

  defp tag(text) do
    case String.split(text, ":", parts: 2) do
      [key, value] -> {String.to_atom(key), value}
      [key] -> String.to_atom(key)
    end
  end

  defp format({:compilation_failed, diagnostics}),
    do:
      "compilation failed\n" <>
        Enum.map_join(diagnostics, "\n", &"#{&1.file}:#{&1.line}: #{&1.message}")

  defp format(reason), do: inspect(reason)
end
