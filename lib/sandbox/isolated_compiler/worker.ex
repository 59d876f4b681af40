defmodule Sandbox.IsolatedCompiler.Worker do
  @moduledoc """
  The program a compile worker runs: a separate BEAM OS process, never the host.

  A worker starts in its job directory (its working directory; under
  confinement the only place it can write, see
  `Sandbox.IsolatedCompiler.Confinement`), loads the Elixir and Erlang
  compilers (and Mix, EEx and Logger), compiles a throwaway module once to
  warm up (unless started with `-sandbox_lazy`, for a job already waiting),
  prints `ready` on a line of its own to standard output and blocks
  reading one line from standard input: the path of a job file, written by
  the host with `:erlang.term_to_binary/1`. It runs that one job, writes its
  result next to it (`:result_path`, written to a temporary name and
  renamed, so a result file is always whole), prints the job's done marker
  and halts. A worker never
  serves a second job.

  This module is started with nothing but the Erlang, Elixir and this
  module's own code paths: it depends on no other module of the library and
  on no state of the host. Everything it needs is in the job term:

    * `:kind` — `:project` (a mix project), `:dir` (the given `.ex`/`.erl`
      files), `:files` (an incremental job: the given files, compiled
      against `:preload_dir`) or `:forms` (code a sandbox creates at run
      time, compiled against `:preload_dir`; see `Sandbox.RuntimeCode`)
    * `:forms` — (`:forms` kind) `{:defmodule, module, block, vars, env}`
      (`:elixir_module.compile/4`), `{:module_create, module, quoted,
      opts}`, `{:compile_string, string, file}` or `{:compile_quoted,
      quoted, file}`
    * `:root` — the absolute directory compiled (the job's working directory)
    * `:files` — absolute source paths (`:dir` and `:files` kinds)
    * `:preload_dir` — a directory of `.beam` files put first in the code
      path (`:files` kind): the previous build's unchanged modules
    * `:config` — the application environment to apply (`:files` kind)
    * `:done_marker` — written to standard output once the result file is
      complete
    * `:out_dir` — where `.beam` and `.app` files are written
    * `:result_path` — where the result term is written
    * `:mix_env` — the Mix environment `mix.exs` and the config see
    * `:env` — the complete OS environment of the job (`%{name => value}`)

  The result is `{:ok, map}` or `{:error, reason}` (see
  `Sandbox.IsolatedCompiler` for the reasons). While the job runs, a call
  tracer records every file read through `:file.read_file/1` or opened for
  reading with `:file.open/2`, and every environment variable read through
  `:os.getenv/0,1,2` or `:os.env/0`, and an Elixir compile tracer (this
  module's `trace/2`) records which modules each file depends on at compile
  time.
  """

  @trace_table :sandbox_compile_worker_trace
  @preload_apps [:compiler, :elixir, :eex, :mix, :logger]

  @doc """
  The worker's entry point (`erl -s #{inspect(__MODULE__)} main`): preloads
  the compilers, announces `ready`, runs the one job named on standard input
  and halts.
  """
  @spec main() :: no_return
  def main do
    preload(:init.get_argument(:sandbox_lazy) == :error)
    :ok = :io.put_chars(:standard_io, "ready\n")

    case :io.get_line(:standard_io, ~c"") do
      line when is_list(line) or is_binary(line) ->
        path = line |> IO.chardata_to_string() |> String.trim()
        run_job_file(path)
        System.halt(0)

      _eof_or_error ->
        System.halt(0)
    end
  end

  # A worker started for a job that is already waiting (`-sandbox_lazy`)
  # skips the warm-up: loading every module of the compilers and compiling
  # a throwaway module would only delay the job, which loads what it needs.
  defp preload(warm_up?) do
    {:ok, _} = Application.ensure_all_started(:elixir)
    {:ok, _} = Application.ensure_all_started(:logger)
    :ok = Application.load(:eex) |> ok_or_loaded()
    {:ok, _} = Application.ensure_all_started(:mix)

    for app <- @preload_apps, warm_up?, {:ok, modules} <- [:application.get_key(app, :modules)] do
      :code.ensure_modules_loaded(modules)
    end

    Mix.shell(Mix.Shell.Quiet)

    # Trace patterns are global and slow to set (they wait for every
    # scheduler): set them now; a job only turns tracing on for its processes.
    patterns = [{:os, :getenv, :_}, {:os, :env, 0}, {:file, :read_file, :_}, {:file, :open, 2}]
    for mfa <- patterns, do: :erlang.trace_pattern(mfa, true, [:global])

    if warm_up?, do: warm_up()
    Code.compiler_options(ignore_module_conflict: false)
    :ok
  end

  # Runs the parallel compiler once on a throwaway module (in a directory of
  # its own below the worker's job directory, its working directory: the
  # only place a confined worker can write; removed afterwards) so that the
  # job's compile does not pay for first-use work: lazily created tables,
  # first calls, checker processes.
  defp warm_up do
    module = :"Elixir.Sandbox.IsolatedCompiler.Worker.WarmUp"
    dir = Path.join(File.cwd!(), "warm-up")
    File.mkdir_p!(dir)
    file = Path.join(dir, "warm_up.ex")

    File.write!(file, """
    defmodule #{inspect(module)} do
      @moduledoc "warm-up"
      defstruct a: 1, b: "two"
      defmacro twice(x), do: quote(do: unquote(x) * 2)
      def f(%__MODULE__{a: a} = s, n) when is_integer(n), do: %{s | a: a + n}
      def g(list), do: list |> Enum.map(&(&1 * 2)) |> Enum.filter(&(&1 > 2)) |> Enum.sum()
      def h(x), do: "value: \#{x} \#{inspect(x)}"
    end
    """)

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule Sandbox.IsolatedCompiler.Worker.WarmUpProject do
      use Mix.Project
      def project, do: [app: :sandbox_worker_warm_up, version: "0.0.0"]
    end
    """)

    File.write!(
      Path.join(dir, "config.exs"),
      "import Config\nconfig :sandbox_worker_warm_up, a: 1\n"
    )

    try do
      Mix.Project.in_project(:sandbox_worker_warm_up, dir, fn _ -> Mix.Project.config() end)
      Config.Reader.read!(Path.join(dir, "config.exs"), env: :prod, target: :host)
      Code.put_compiler_option(:tracers, [__MODULE__])
      Kernel.ParallelCompiler.compile_to_path([file], dir)
    after
      Code.put_compiler_option(:tracers, [])

      for m <- [module, Sandbox.IsolatedCompiler.Worker.WarmUpProject] do
        :code.purge(m)
        :code.delete(m)
        :code.purge(m)
      end

      File.rm_rf(dir)
    end

    :ok
  end

  defp ok_or_loaded(:ok), do: :ok
  defp ok_or_loaded({:error, {:already_loaded, _}}), do: :ok
  defp ok_or_loaded(other), do: other

  @doc """
  Runs the job stored (as an external term) in `job_path` and writes its
  result to the job's `:result_path`. Called by `main/0`; exposed so that the
  job logic can be exercised in a test VM of its own.
  """
  @spec run_job_file(Path.t()) :: :ok
  def run_job_file(job_path) do
    job = job_path |> File.read!() |> :erlang.binary_to_term()
    result = run_job(job)
    tmp = job.result_path <> ".tmp"
    File.write!(tmp, :erlang.term_to_binary(result))
    File.rename!(tmp, job.result_path)

    # Tells the host the result is complete, so it need not wait for this
    # VM to halt.
    if marker = job[:done_marker], do: :ok = :io.put_chars(:standard_io, marker)
    :ok
  end

  @doc """
  Runs one job term (see the module documentation) in this VM and returns
  its result. Only ever call this in a worker: it evaluates `mix.exs`, the
  config and every macro of the project.
  """
  @spec run_job(map) :: {:ok, map} | {:error, term}
  def run_job(job) do
    set_env(job.env)
    File.mkdir_p!(job.out_dir)
    :ets.new(@trace_table, [:public, :named_table, :duplicate_bag])
    Code.put_compiler_option(:tracers, [__MODULE__])
    collector = start_call_trace()

    {result, {files_read, env_read}} =
      File.cd!(job.root, fn ->
        result =
          try do
            compile_job(job)
          catch
            kind, reason -> {:error, {:compilation_failed, [crash_diagnostic(kind, reason, job)]}}
          end

        {result, stop_call_trace(collector)}
      end)

    case result do
      {:ok, map} ->
        {:ok, Map.merge(map, %{files_read: files_read, env_read: env_read, os_pid: os_pid()})}

      error ->
        error
    end
  end

  defp os_pid, do: :os.getpid() |> List.to_integer()

  defp set_env(env) when is_map(env) do
    current = System.get_env()

    if current != env do
      for {name, _} <- current, not Map.has_key?(env, name), do: System.delete_env(name)
      for {name, value} <- env, Map.get(current, name) != value, do: System.put_env(name, value)
    end

    :ok
  end

  ## Jobs

  defp compile_job(%{kind: :project} = job) do
    with {:ok, apps} <- load_projects(job),
         {:ok, config} <- read_config(job),
         {:ok, result} <- compile_apps(apps, config, job) do
      if job[:tests], do: compile_tests(result, job), else: {:ok, result}
    end
  end

  defp compile_job(%{kind: :dir, files: files} = job) do
    with {:ok, compiled} <- compile_sources(files, job[:erl_include] || [], job) do
      {:ok, Map.merge(compiled, %{app: nil, config: [], sources: files})}
    end
  end

  defp compile_job(%{kind: :files, files: files} = job) do
    Code.compiler_options(ignore_module_conflict: true)
    Application.put_all_env(job[:config] || [], persistent: true)

    # The unchanged modules of the previous build are loaded on demand.
    if dir = job[:preload_dir] do
      Code.prepend_path(dir)
      Process.put(:sandbox_job_paths, [String.to_charlist(dir)])
    end

    with {:ok, compiled} <- compile_sources(files, job[:erl_include] || [], job) do
      {:ok, Map.merge(compiled, %{app: nil, config: [], sources: files})}
    end
  end

  # Code a sandbox creates at run time (Sandbox.RuntimeCode): each form is
  # compiled here, against the sandbox's own modules (`:preload_dir`, their
  # BEAMs under their original names), never in the host. Every module a
  # form defines, nested ones included, is collected through the compile
  # tracer's `:on_module` event where the compiler emits it, and from what
  # the form returns (nested modules of a `Module.create/3` or a run-time
  # `defmodule` body are not seen by Elixir 1.14's tracer). A form's result is kept only when it is
  # plain data (no pid, port, reference or fun of this VM).
  defp compile_job(%{kind: :forms, forms: forms} = job) do
    Code.compiler_options(ignore_module_conflict: true)

    if dir = job[:preload_dir] do
      Code.prepend_path(dir)
      Process.put(:sandbox_job_paths, [String.to_charlist(dir)])
    end

    results =
      Enum.map(forms, fn form ->
        :ets.delete(@trace_table, :on_module)
        value = run_form(form)

        modules =
          for {:on_module, m, beam} <- :ets.lookup(@trace_table, :on_module), do: {m, beam}

        {modules, value}
      end)

    modules =
      results |> Enum.flat_map(&elem(&1, 0)) |> Enum.reverse() |> Enum.uniq_by(&elem(&1, 0))

    {:ok,
     %{
       modules: modules,
       module_files: %{},
       deps: %{},
       warnings: [],
       app: nil,
       config: [],
       sources: [],
       form_results: Enum.map(results, fn {ms, v} -> {Enum.map(ms, &elem(&1, 0)), v} end)
     }}
  end

  defp run_form({:defmodule, module, block, vars, env}) do
    env = %{env | tracers: [__MODULE__], lexical_tracker: nil}
    {:module, module, beam, result} = :elixir_module.compile(module, block, vars, env)
    defined(module, beam)
    plain(result)
  end

  defp run_form({:module_create, module, quoted, opts}) do
    opts = if is_map(opts), do: %{opts | tracers: [__MODULE__], lexical_tracker: nil}, else: opts
    {:module, module, beam, result} = Module.create(module, quoted, opts)
    defined(module, beam)
    plain(result)
  end

  defp run_form({:compile_string, string, file}) do
    for {module, beam} <- Code.compile_string(string, file), do: defined(module, beam)
    nil
  end

  defp run_form({:compile_quoted, quoted, file}) do
    for {module, beam} <- Code.compile_quoted(quoted, file), do: defined(module, beam)
    nil
  end

  # The module a form returns (the tracer's :on_module does not fire for
  # every way of compiling, such as a module created from a function's env).
  defp defined(module, beam) do
    unless :ets.match_object(@trace_table, {:on_module, module, :_}) != [],
      do: :ets.insert(@trace_table, {:on_module, module, beam})
  end

  defp plain(term) do
    if plain?(term), do: {:value, term}, else: :not_transferable
  end

  defp plain?(t) when is_pid(t) or is_port(t) or is_reference(t) or is_function(t), do: false
  defp plain?([h | t]), do: plain?(h) and plain?(t)
  defp plain?(t) when is_tuple(t), do: plain?(Tuple.to_list(t))
  defp plain?(%{} = t), do: Enum.all?(t, fn {k, v} -> plain?(k) and plain?(v) end)
  defp plain?(_), do: true

  # The project's test files (`test/**/*_test.exs`, after `test_helper.exs`),
  # compiled in memory against the project just compiled, with ExUnit
  # running here so that each test module registers itself: the result
  # gains `test_modules` ([{module, beam}]) and `async_tests` (the modules
  # of `use ExUnit.Case, async: true`).
  defp compile_tests(result, job) do
    test_dir = Path.join(job.root, "test")
    helper = Path.join(test_dir, "test_helper.exs")
    files = Path.wildcard(Path.join(test_dir, "**/*_test.exs"))
    {:ok, _} = Application.ensure_all_started(:ex_unit)
    ExUnit.start(autorun: false)
    Code.prepend_path(job.out_dir)

    me = self()
    each_module = fn _file, module, beam -> send(me, {:test_module, module, beam}) end

    try do
      if File.regular?(helper), do: Code.require_file(helper)

      case Kernel.ParallelCompiler.compile(files, each_module: each_module) do
        {:ok, _modules, warnings} ->
          test_modules = drain_test_modules([])
          ExUnit.Server.modules_loaded()
          async = ExUnit.Server.take_async_modules(length(test_modules) + 1)
          _sync = ExUnit.Server.take_sync_modules()

          {:ok,
           Map.merge(result, %{
             test_modules: test_modules,
             async_tests: async,
             warnings: result.warnings ++ Enum.map(warnings, &ex_diag(&1, :warning, job))
           })}

        {:error, errors, _warnings} ->
          {:error, {:compilation_failed, Enum.map(errors, &ex_diag(&1, :compile, job))}}
      end
    rescue
      e -> {:error, {:compilation_failed, [exception_diagnostic(e, helper, job.root)]}}
    end
  end

  defp drain_test_modules(acc) do
    receive do
      {:test_module, module, beam} -> drain_test_modules([{module, beam} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  ## Mix projects

  # Evaluates mix.exs of the project and of each path dependency inside the
  # root (recursively), returning the apps in compile order (dependencies
  # first).
  defp load_projects(job) do
    Mix.env(job.mix_env)

    case load_project(job.root, job.root, nil, []) do
      {:ok, apps} -> {:ok, Enum.reverse(apps)}
      error -> error
    end
  end

  defp load_project(root, dir, dep_name, acc) do
    if Enum.any?(acc, &(&1.dir == dir)) do
      {:ok, acc}
    else
      with {:ok, app} <- eval_mix_exs(root, dir, dep_name) do
        result =
          Enum.reduce_while(app.path_deps, {:ok, acc}, fn dep, {:ok, acc} ->
            case load_project(root, dep.path, dep.app, acc) do
              {:ok, acc} -> {:cont, {:ok, acc}}
              error -> {:halt, error}
            end
          end)

        with {:ok, acc} <- result, do: {:ok, [app | acc]}
      end
    end
  end

  defp eval_mix_exs(root, dir, dep_name) do
    mix_exs = Path.join(dir, "mix.exs")

    if not File.regular?(mix_exs) do
      {:error, {:no_mix_exs, dir}}
    else
      try do
        Mix.Project.in_project(dep_name || :sandbox_compile_project, dir, fn _config ->
          project_info(root, dir, Mix.Project.get!(), Mix.Project.config())
        end)
      rescue
        e -> {:error, {:compilation_failed, [exception_diagnostic(e, mix_exs, root)]}}
      end
    end
  end

  defp project_info(root, dir, project, config) do
    application =
      if function_exported?(project, :application, 0), do: project.application(), else: []

    with {:ok, path_deps} <- path_deps(root, dir, config[:deps] || []) do
      {:ok,
       %{
         dir: dir,
         name: config[:app],
         version: config[:version],
         application: application,
         elixirc_paths: config[:elixirc_paths] || ["lib"],
         erlc_paths: config[:erlc_paths] || ["src"],
         erlc_include_path: config[:erlc_include_path] || "include",
         path_deps: path_deps
       }}
    end
  end

  defp path_deps(root, dir, deps) do
    Enum.reduce_while(deps, {:ok, []}, fn dep, {:ok, acc} ->
      {name, opts} =
        case dep do
          {name, opts} when is_list(opts) -> {name, opts}
          {name, _req, opts} when is_list(opts) -> {name, opts}
          {name, _req} -> {name, []}
          name -> {name, []}
        end

      cond do
        opts[:path] == nil ->
          {:halt, {:error, {:unsupported_dependency, name}}}

        not inside?(Path.expand(opts[:path], dir), root) ->
          {:halt, {:error, {:dependency_outside_project, name, opts[:path]}}}

        true ->
          {:cont, {:ok, acc ++ [%{app: name, path: Path.expand(opts[:path], dir)}]}}
      end
    end)
  end

  defp inside?(path, root), do: path == root or String.starts_with?(path, root <> "/")

  defp read_config(job) do
    path = Path.join(job.root, "config/config.exs")

    if File.regular?(path) do
      try do
        {:ok, Config.Reader.read!(path, env: job.mix_env, target: :host)}
      rescue
        e -> {:error, {:compilation_failed, [exception_diagnostic(e, path, job.root)]}}
      end
    else
      {:ok, []}
    end
  end

  defp compile_apps(apps, config, job) do
    # The project's config is applied before compiling, as Mix does, so that
    # compile-time Application.compile_env/3 sees it.
    Application.put_all_env(config, persistent: true)

    apps
    |> Enum.reduce_while({:ok, []}, fn app, {:ok, acc} ->
      case compile_app(app, job) do
        {:ok, compiled} -> {:cont, {:ok, [{app, compiled} | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, [{main, _} | _] = reversed} ->
        compiled = Enum.reverse(reversed)
        specs = Enum.map(compiled, fn {app, c} -> app_spec(app, c) end)
        Enum.each(specs, &write_app_file(&1, job.out_dir))
        all = Enum.map(compiled, &elem(&1, 1))

        {:ok,
         %{
           modules: Enum.flat_map(all, & &1.modules),
           module_files: Enum.reduce(all, %{}, &Map.merge(&2, &1.module_files)),
           deps: Enum.reduce(all, %{}, &Map.merge(&2, &1.deps)),
           warnings: Enum.flat_map(all, & &1.warnings),
           app: Map.put(List.last(specs), :path_deps, Enum.drop(specs, -1)),
           config: config,
           sources: Enum.flat_map(all, & &1.sources),
           main_dir: main.dir
         }}

      error ->
        error
    end
  end

  defp compile_app(app, job) do
    erl = app_files(app.dir, app.erlc_paths, "**/*.erl")
    ex = app_files(app.dir, app.elixirc_paths, "**/*.ex")

    include = [
      Path.join(app.dir, app.erlc_include_path)
      | Enum.map(app.erlc_paths, &Path.join(app.dir, &1))
    ]

    if erl == [] and ex == [] and app.dir == job.root and app.path_deps == [] do
      {:error, {:no_sources, job.root}}
    else
      with {:ok, compiled} <- compile_sources(erl ++ ex, include, job) do
        {:ok, Map.put(compiled, :sources, erl ++ ex)}
      end
    end
  end

  defp app_files(dir, paths, pattern) do
    paths
    |> List.wrap()
    |> Enum.flat_map(&Path.wildcard(Path.join([dir, &1, pattern])))
    |> Enum.uniq()
    |> Enum.sort()
  end

  defp app_spec(app, compiled) do
    application = app.application

    %{
      name: app.name,
      version: app.version,
      dir: app.dir,
      mod: application[:mod],
      extra_applications: application[:extra_applications] || [],
      applications: application[:applications],
      included_applications: application[:included_applications] || [],
      registered: application[:registered] || [],
      env: application[:env] || [],
      path_dep_names: Enum.map(app.path_deps, & &1.app),
      modules: Enum.map(compiled.modules, &elem(&1, 0)),
      sources: compiled.sources
    }
  end

  defp write_app_file(%{name: name} = spec, out_dir) when is_atom(name) and name != nil do
    applications =
      Enum.uniq(
        [:kernel, :stdlib, :elixir] ++
          (spec.applications || spec.extra_applications ++ spec.path_dep_names)
      )

    props =
      [
        description: ~c"#{name}",
        vsn: ~c"#{spec.version}",
        modules: spec.modules,
        registered: spec.registered,
        applications: applications,
        included_applications: spec.included_applications,
        env: spec.env
      ] ++ if(spec.mod, do: [mod: spec.mod], else: [])

    File.write!(
      Path.join(out_dir, "#{name}.app"),
      :io_lib.format(~c"~tp.~n", [{:application, name, props}])
    )
  end

  defp write_app_file(_spec, _out_dir), do: :ok

  ## Compiling sources

  # Compiles Erlang files first (loading them), then Elixir files in
  # parallel. Returns the modules with their files and compile-time deps.
  defp compile_sources(files, include, job) do
    {erl, ex} = Enum.split_with(files, &(Path.extname(&1) == ".erl"))

    with :ok <- pre_check(ex, job),
         {:ok, erl_modules, erl_warnings} <- compile_erlang(erl, include, job),
         {:ok, ex_modules, ex_warnings} <- compile_elixir_or_parse(ex, job) do
      modules = erl_modules ++ ex_modules

      with :ok <- check_compiled_duplicates(modules, job.root) do
        module_files = Map.new(modules, fn {m, f, _} -> {m, f} end)

        {:ok,
         %{
           modules: Enum.map(modules, fn {m, _f, b} -> {m, b} end),
           module_files: module_files,
           deps: collect_deps(ex),
           warnings: erl_warnings ++ ex_warnings
         }}
      end
    end
  end

  # A full compile parses every file first: syntax errors reported with
  # their columns, and a module defined in two files found before the
  # parallel compiler trips over it. An incremental job (a file or a few,
  # the everyday edit) skips that second parse: the compiler parses anyway,
  # and only when it fails are the files parsed for precise diagnostics;
  # duplicates are found in what it compiled.
  defp pre_check(_ex, %{kind: :files}), do: :ok

  defp pre_check(ex, job) do
    with {:ok, asts} <- parse(ex, job.root), do: check_duplicates(asts, job.root)
  end

  defp compile_elixir_or_parse(ex, %{kind: :files} = job) do
    case compile_elixir(ex, job) do
      {:error, {:compilation_failed, _}} = error ->
        case parse(ex, job.root) do
          {:error, _} = syntax -> syntax
          {:ok, _} -> error
        end

      other ->
        other
    end
  end

  defp compile_elixir_or_parse(ex, job), do: compile_elixir(ex, job)

  # Parses every Elixir file once: syntax errors are reported as such (file,
  # line, column) before anything is compiled.
  defp parse(files, root) do
    {asts, errors} =
      Enum.reduce(files, {[], []}, fn file, {asts, errors} ->
        case Code.string_to_quoted(File.read!(file), file: file, columns: true) do
          {:ok, ast} ->
            {[{file, ast} | asts], errors}

          {:error, {meta, message, token}} ->
            {line, column} = meta_position(meta)
            text = format_syntax_message(message, token)
            {asts, [diagnostic(file, line, column, text, :syntax, root) | errors]}
        end
      end)

    if errors == [],
      do: {:ok, Enum.reverse(asts)},
      else: {:error, {:compilation_failed, Enum.reverse(errors)}}
  end

  defp meta_position(meta) when is_list(meta), do: {meta[:line], meta[:column]}
  defp meta_position(line) when is_integer(line), do: {line, nil}
  defp meta_position(_), do: {nil, nil}

  defp format_syntax_message({prefix, suffix}, token)
       when is_binary(prefix) and is_binary(suffix),
       do: prefix <> token <> suffix

  defp format_syntax_message(message, token) when is_binary(message),
    do: String.trim(message <> token)

  defp format_syntax_message(message, token), do: "#{inspect(message)} #{token}"

  # Two files defining the same module (by their literal defmodule names).
  defp check_duplicates(asts, root) do
    asts
    |> Enum.flat_map(fn {file, ast} ->
      file |> defined_modules(ast) |> Enum.map(&{&1, file})
    end)
    |> duplicate_error(root)
  end

  defp check_compiled_duplicates(modules, root) do
    modules |> Enum.map(fn {m, f, _} -> {m, f} end) |> Enum.uniq() |> duplicate_error(root)
  end

  defp duplicate_error(pairs, root) do
    pairs
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    |> Enum.find(fn {_m, files} -> length(Enum.uniq(files)) > 1 end)
    |> case do
      nil ->
        :ok

      {module, files} ->
        {:error,
         {:duplicate_module, module, files |> Enum.uniq() |> Enum.map(&relative(&1, root))}}
    end
  end

  defp defined_modules(_file, ast) do
    {_, acc} = walk_modules(ast, nil, [])
    acc
  end

  defp walk_modules({:defmodule, _, [{:__aliases__, _, parts}, body]} = _node, parent, acc)
       when is_list(parts) do
    if Enum.all?(parts, &is_atom/1) do
      name = if parent, do: Module.concat([parent | parts]), else: Module.concat(parts)
      walk_modules(body, name, [name | acc])
    else
      walk_modules(body, parent, acc)
    end
  end

  defp walk_modules({_, _, args}, parent, acc) when is_list(args),
    do: walk_modules(args, parent, acc)

  defp walk_modules(list, parent, acc) when is_list(list) do
    Enum.reduce(list, {nil, acc}, fn item, {_, acc} -> walk_modules(item, parent, acc) end)
  end

  defp walk_modules({a, b}, parent, acc) do
    {_, acc} = walk_modules(a, parent, acc)
    walk_modules(b, parent, acc)
  end

  defp walk_modules(_other, _parent, acc), do: {nil, acc}

  defp compile_erlang(files, include, job) do
    opts =
      [:binary, :return_errors, :return_warnings, :debug_info] ++
        Enum.map(include, &{:i, String.to_charlist(&1)})

    Enum.reduce_while(files, {:ok, [], []}, fn file, {:ok, mods, warns} ->
      case :compile.file(String.to_charlist(file), opts) do
        {:ok, module, beam, warnings} ->
          {:module, ^module} = :code.load_binary(module, String.to_charlist(file), beam)
          File.write!(Path.join(job.out_dir, "#{module}.beam"), beam)

          {:cont,
           {:ok, [{module, file, beam} | mods], warns ++ erl_diags(warnings, :warning, job)}}

        {:error, errors, _warnings} ->
          {:halt, {:error, {:compilation_failed, erl_diags(errors, :compile, job)}}}
      end
    end)
    |> case do
      {:ok, mods, warns} -> {:ok, Enum.reverse(mods), warns}
      error -> error
    end
  end

  defp erl_diags(list, type, job) do
    for {file, entries} <- list, {location, mod, desc} <- entries do
      {line, column} =
        case location do
          {l, c} -> {l, c}
          l when is_integer(l) -> {l, nil}
          _ -> {nil, nil}
        end

      type = if type != :warning and mod in [:erl_parse, :erl_scan, :epp], do: :syntax, else: type
      message = mod.format_error(desc) |> IO.chardata_to_string()
      diagnostic(IO.chardata_to_string(file), line, column, message, type, job.root)
    end
  end

  defp compile_elixir([], _job), do: {:ok, [], []}

  defp compile_elixir(files, job) do
    me = self()

    each_module = fn file, module, beam ->
      send(me, {:compiled_module, module, file, beam})
    end

    result = Kernel.ParallelCompiler.compile_to_path(files, job.out_dir, each_module: each_module)

    compiled = drain_compiled([])

    case result do
      {:ok, _modules, warnings} ->
        {:ok, compiled, Enum.map(warnings, &ex_diag(&1, :warning, job))}

      {:error, errors, _warnings} ->
        {:error, {:compilation_failed, Enum.map(errors, &ex_diag(&1, :compile, job))}}
    end
  end

  defp drain_compiled(acc) do
    receive do
      {:compiled_module, module, file, beam} -> drain_compiled([{module, file, beam} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp ex_diag({file, position, message}, type, job) do
    {line, column} =
      case position do
        {l, c} -> {l, c}
        l when is_integer(l) -> {l, nil}
        _ -> {nil, nil}
      end

    message = clean_message(message)

    type =
      if type != :warning and String.contains?(message, ["SyntaxError", "TokenMissingError"]),
        do: :syntax,
        else: type

    diagnostic(file, line, column, strip_prefix(message), type, job.root)
  end

  defp clean_message(message) do
    message
    |> IO.chardata_to_string()
    |> String.split("\n")
    |> Enum.reject(&String.starts_with?(String.trim_leading(&1), "("))
    |> Enum.join("\n")
    |> String.trim()
  end

  # "** (CompileError) lib/a.ex:3: undefined function ..." -> "undefined function ..."
  defp strip_prefix(message) do
    Regex.replace(~r/^\*\* \((\w|\.)+\) ([^:\s]+:\d+(:\d+)?: )?/, message, "")
  end

  defp diagnostic(file, line, column, message, type, root) do
    %{
      file: relative(file, root),
      line: line,
      column: column,
      message: message,
      type: type
    }
  end

  defp relative(nil, _root), do: nil

  defp relative(file, root) do
    file = Path.expand(file, root)
    if inside?(file, root), do: Path.relative_to(file, root), else: file
  end

  defp crash_diagnostic(kind, reason, job) do
    message = Exception.format_banner(kind, reason) |> clean_message()
    diagnostic(nil, nil, nil, message, :compile, job.root)
  end

  defp exception_diagnostic(exception, file, root) do
    line =
      case exception do
        %{line: line} when is_integer(line) -> line
        _ -> nil
      end

    message = Exception.message(exception) |> clean_message() |> strip_prefix()
    diagnostic(file, line, nil, message, :compile, root)
  end

  ## Compile-time dependencies (Elixir compile tracer)

  @doc false
  @spec trace(tuple, Macro.Env.t()) :: :ok
  # The compile tracer (Code.put_compiler_option(:tracers, [...])). Records,
  # per file, the modules it depends on at compile time: macros, structs,
  # imports, requires, and any reference made outside a function body (such
  # as @behaviour or a call in the module body).
  def trace({kind, _meta, module, _name, _arity}, env)
      when kind in [:remote_macro, :imported_macro],
      do: record(env.file, module)

  def trace({:struct_expansion, _meta, module, _keys}, env), do: record(env.file, module)
  def trace({:import, _meta, module, _opts}, env), do: record(env.file, module)
  def trace({:require, _meta, module, _opts}, env), do: record(env.file, module)

  def trace({kind, _meta, module, _name, _arity}, %{function: nil} = env)
      when kind in [:remote_function, :imported_function],
      do: record(env.file, module)

  def trace({:alias_reference, _meta, module}, %{function: nil} = env),
    do: record(env.file, module)

  # Every module compiled (for the :forms kind, nested modules included).
  def trace({:on_module, bytecode, _}, env) do
    if :ets.whereis(@trace_table) != :undefined,
      do: :ets.insert(@trace_table, {:on_module, env.module, bytecode})

    :ok
  end

  def trace(_event, _env), do: :ok

  defp record(file, module) when is_atom(module) do
    if :ets.whereis(@trace_table) != :undefined do
      :ets.insert(@trace_table, {file, module})
    end

    :ok
  end

  # Only the project's own modules matter: those of Elixir and OTP (loaded
  # from the code path the worker started with) are left out.
  defp collect_deps(files) do
    root = MapSet.new(:code.get_path() -- Process.get(:sandbox_job_paths, []))

    Map.new(files, fn file ->
      deps =
        @trace_table
        |> :ets.lookup(file)
        |> Enum.map(&elem(&1, 1))
        |> Enum.uniq()
        |> Enum.reject(&system_module?(&1, root))

      {file, deps}
    end)
  end

  defp system_module?(module, system_paths) do
    case :code.which(module) do
      :preloaded -> true
      path when is_list(path) -> MapSet.member?(system_paths, :filename.dirname(path))
      _ -> false
    end
  end

  ## Files and environment read during the job (call tracing)

  defp start_call_trace do
    collector = spawn_link(fn -> collect(%{files: MapSet.new(), env: %{}, all_env: false}) end)
    :erlang.trace(self(), true, [:call, :set_on_spawn, {:tracer, collector}])
    collector
  end

  defp stop_call_trace(collector) do
    :erlang.trace(self(), false, [:call, :set_on_spawn])
    ref = :erlang.trace_delivered(:all)

    receive do
      {:trace_delivered, :all, ^ref} -> :ok
    end

    send(collector, {:report, self()})

    receive do
      {:call_trace, state} ->
        files =
          state.files
          |> Enum.map(&Path.expand/1)
          |> Enum.reject(&String.starts_with?(&1, List.to_string(:code.root_dir())))
          |> Enum.sort()

        env = if state.all_env, do: :all, else: Enum.sort(state.env)
        {files, env}
    end
  end

  defp collect(state) do
    receive do
      {:trace, _pid, :call, {m, f, args}} ->
        collect(note_call(m, f, args, state))

      {:report, from} ->
        send(from, {:call_trace, state})
    end
  end

  defp note_call(:os, :getenv, [], state), do: %{state | all_env: true}
  defp note_call(:os, :env, [], state), do: %{state | all_env: true}

  defp note_call(:os, :getenv, [name | _], state) do
    name = to_string(name)
    %{state | env: Map.put(state.env, name, System.get_env(name))}
  end

  defp note_call(:file, :read_file, [path | _], state), do: note_file(path, state)

  defp note_call(:file, :open, [path, modes], state) when is_list(modes) do
    if Enum.any?(modes, &(&1 in [:write, :append, :exclusive])),
      do: state,
      else: note_file(path, state)
  end

  defp note_call(_m, _f, _args, state), do: state

  defp note_file(path, state) do
    case path do
      path when is_binary(path) or is_list(path) ->
        %{state | files: MapSet.put(state.files, IO.chardata_to_string(path))}

      _ ->
        state
    end
  rescue
    _ -> state
  end
end
