defmodule Sandbox.IsolatedCompiler do
  @moduledoc """
  Compiles sandbox code in compile workers — separate BEAM OS processes
  started through the supervising C-node — never in the host VM.

  Macros, `mix.exs` and config files are code that runs when a project is
  compiled or loaded; none of it runs here. A pool of warm workers
  (`Sandbox.IsolatedCompiler.Pool`) keeps compiles fast; each worker serves
  one job under that job's limits and is then replaced. Results are cached
  on disk (`Sandbox.IsolatedCompiler.Cache`), keyed by the checksum of every
  input.

  Where the kernel allows it, the worker is confined with Landlock (option
  `:confine`, see `Sandbox.IsolatedCompiler.Confinement`): the project's
  code can read only the project, the Erlang/Elixir installation and the
  job's directory, write only to the job's directory, and neither bind nor
  connect TCP sockets. Its OS environment is a fixed minimal set (option
  `:env`; every variable of it is part of the cache key), and its result is
  decoded without creating atoms from it beyond `:max_new_atoms`.

      {:ok, info} = Sandbox.IsolatedCompiler.compile_sandbox("path/to/project")
      info.app.name        #=> :my_app
      info.modules         #=> [{MyApp, <<70, 79, 82, 49, ...>>}, ...]
      :ok = Sandbox.IsolatedCompiler.cleanup_artifacts(info.temp_dir)

  ## What is compiled

    * A mix project (a directory with `mix.exs`): `mix.exs` is evaluated in
      the worker; its `elixirc_paths` (default `lib`) and `erlc_paths`
      (default `src`, with `erlc_include_path`) are compiled, Erlang first;
      path dependencies inside the directory are compiled before it; its
      `config/config.exs` is read (in the worker, for `:mix_env`) and applied
      before compiling. Other dependencies are refused.
    * A plain directory: every `.erl` and `.ex` file under it.
    * One file (`compile_file/2`).

  ## Options

    * `:compile_timeout` — wall-clock limit of the job in ms, counted from
      the moment a worker takes it (default 30,000; `:timeout` is accepted
      as an alias)
    * `:compile_limits` — map of `max_memory` (resident bytes of the worker
      and its descendants, default 1 GiB), `max_file_size` (bytes: every
      source is checked before compiling, and the worker cannot write a
      larger file; default 64 MiB; the rlimit is raised to at least 64 MiB:
      the OTP 25 JIT maps the code it loads through a file that counts), `max_processes` (OS processes, default 64)
      and `max_cpu_seconds` (CPU time, default none)
    * `:mix_env` — the Mix environment `mix.exs` and the config see
      (default `:prod`)
    * `:env` — map of OS environment variables for the job
      (`name => value`, `nil` unsets), over the worker's minimal environment
      (`Sandbox.IsolatedCompiler.Pool.base_env/0`: the host's `PATH`,
      `HOME` and locale, nothing else)
    * `:memory_limit` — the seed's name for `compile_limits.max_memory`
    * `:tests` — (a mix project) also compile its tests, `test/**/*_test.exs`
      after `test/test_helper.exs`, with ExUnit in the worker: the result's
      `test_modules` (`[{module, beam}]`) and `async_tests` (the modules of
      `use ExUnit.Case, async: true`); `:mix_env` is usually `:test` with it
      (default `false`)
    * `:context` — (`compile_file/2`) a project directory: the file is
      compiled against that project's last build (compiled first if there
      is none), with its modules loaded and its config applied, so that it
      can use the project's structs, macros and behaviours; `modules` holds
      the modules the file defines
    * `:incremental` — with `true`, `compile_sandbox/2` recompiles only what
      changed since the last build of the same directory (found by the
      checksums of its sources), as `incremental_compile/3` does, and
      returns only the modules whose BEAM changed (default `false`)
    * `:max_new_atoms` — how many atoms that do not exist yet the worker's
      result may bring into this VM (default 50,000, or the application
      environment's `:max_new_atoms`): the result is written by a VM that
      ran the project's code, and is decoded with `Sandbox.SafeTerm`
    * `:write_artifacts` — keep the compiled `.beam` and `.app` files in
      `temp_dir` (default `true`); with `false` nothing stays on disk and
      `temp_dir`, `app_file` and `beam_files` are `nil`, `nil` and `[]`
      (callers that only need `modules`, such as `Sandbox.create_sandbox/3`)
    * `:validate_beams` — validate every compiled BEAM with
      `Sandbox.Beam.validate/1` (default `true`)
    * `:cache` — use the compile cache (default `true`)
    * `:artifacts_dir` — where this compile's `temp_dir` is created
      (default `artifacts_root/0`); with `write_artifacts: false` the
      compile works in `artifacts_root/0` and nothing is ever created in
      this directory (not even the directory of the worker that is
      started, ready for the next compile, when this one is done)
    * `:confine` — kernel confinement of the worker:
      `:required` (a compile that cannot be confined with Landlock — not
      available, or an ABI below 4, which cannot close TCP — is refused
      with `{:error, {:confinement_unavailable, reason}}` before anything
      runs, even a cache lookup), `:preferred` (confined where possible,
      otherwise unconfined; either way the result's `confinement` says
      which, and a compile less confined than asked is logged once) or
      `:none`. Default: the application environment's
      `:compile_confinement`, else `:preferred`. `Sandbox.create_sandbox/3`
      takes it from the security profile (`Sandbox.Config.compile_confinement/1`:
      `:high` → `:required`, `:medium` → `:preferred`, `:low` → `:none`).
      Confined and unconfined compiles never share cache entries or builds.
    * `:pool`, `:cache_server` — the pool and cache servers (defaults: the
      application's)

  ## Result

  `compile_info` is a `Sandbox.Models.CompilationResult` (the seed's `output`, `beam_files`, `app_file`,
  `compilation_time` in ms, `warnings`, `temp_dir`) plus:

    * `modules` — `[{module, beam_binary}]`
    * `app` — the application spec of a mix project (`nil` otherwise):
      `name`, `version`, `mod`, `extra_applications`, `applications`,
      `included_applications`, `registered`, `env`, `modules`, `dir`, and
      `path_deps` (the same map for each path dependency)
    * `app_env` — the project application's environment: its `env` in
      `application/0`, overridden by its entries in `config/config.exs`
    * `config` — everything `config/config.exs` configured, `[{app, kw}]`
    * `errors` — `[]` on success
    * `cached` — whether the result came from the cache (no worker ran)
    * `incremental` — whether only part of the project was recompiled
    * `removed_modules` — modules gone since the previous build
      (`incremental_compile/3`)
    * `recompiled_modules` — `[{module, beam}]`: every module the worker
      compiled (all of them for a full compile, those of the recompiled
      files for an incremental one, whether their bytes changed or not;
      `modules` on a cache hit)
    * `recompiled_files` — the absolute paths of the sources the worker
      compiled (`[]` on a cache hit)
    * `os_pid` — the worker's OS pid (`nil` on a cache hit)
    * `confinement` — how the worker was confined (for a cache hit: how the
      compile that filled the cache was): `:landlock`; `{:landlock,
      missing}` when the kernel's Landlock ABI could not enforce `missing`
      (`:tcp`, `:truncate`, `:refer`, `:ioctl_dev`, `:scope`, see
      `Sandbox.CNode`'s "Landlock"); `{:unavailable, reason}` (`:preferred`
      without Landlock: `:not_supported`, `:disabled`, `:forced_off`,
      `:cnode_down`); `:none`

  A diagnostic (warning or error) is `%{file, line, column, message, type}`:
  `file` relative to the compiled directory when inside it, `line` and
  `column` `nil` when unknown, `type` `:warning` for warnings and `:syntax`,
  `:compile` or `:dependency` for errors.

  ## Errors

    * `{:no_such_directory, path}`, `{:no_such_file, path}`
    * `{:no_sources, path}` — nothing to compile
    * `{:unsupported_file, path}` — `compile_file/2` of something other
      than `.ex`/`.erl`
    * `{:file_too_large, path}` — a source over `max_file_size`, found
      before any worker runs
    * `{:compilation_failed, [diagnostic]}`
    * `{:duplicate_module, module, [file]}` — one module defined in two files
    * `{:unsupported_dependency, app}`, `{:dependency_outside_project, app, path}`
    * `{:no_mix_exs, dir}` — a path dependency without `mix.exs`
    * `{:compile_timeout, ms}`
    * `{:compile_resource_limit, :memory | :processes | :cpu | :file_size}`
    * `{:confinement_unavailable, reason}` — `confine: :required` and
      Landlock unavailable (`reason` as for `confinement`) or too old
      (`{:landlock_abi, n}`)
    * `{:worker_crashed, reason}` — the worker died without a result (a
      job whose C-node died under it, `:cnode_down`, is run once more on the
      restarted C-node first: `Sandbox.ErrorHandler`'s `:retry`)
      (`reason` is how it exited, such as `{:status, 0}` or `{:signal, 9}`),
      or its result was refused: `{:bad_result, why}` with `why` one of
      `Sandbox.SafeTerm`'s reasons (such as `{:too_many_atoms, max}`)

  Options are validated: an unknown option or a value of the wrong type
  raises `ArgumentError`.
    * `{:invalid_beam, module, reason}` — with `:validate_beams`
  """

  alias Sandbox.IsolatedCompiler.{Cache, Confinement, Pool, Worker}
  alias Sandbox.{ErrorHandler, SafeTerm}

  require Logger

  @default_timeout 30_000
  @default_limits %{
    max_memory: 1024 * 1024 * 1024,
    max_file_size: 64 * 1024 * 1024,
    max_processes: 64,
    max_cpu_seconds: nil
  }
  @default_max_new_atoms 50_000
  @source_exts ~w(.ex .exs .erl .hrl)
  @skip_dirs ~w(_build .git .elixir_ls node_modules cover)

  @type diagnostic :: %{
          file: String.t() | nil,
          line: non_neg_integer | nil,
          column: non_neg_integer | nil,
          message: String.t(),
          type: :warning | :syntax | :compile | :dependency
        }

  @type compile_info :: Sandbox.Models.CompilationResult.t()

  @type compile_opts :: keyword

  @type reason ::
          {:no_such_directory, String.t()}
          | {:no_such_file, String.t()}
          | {:no_sources, String.t()}
          | {:unsupported_file, String.t()}
          | {:file_too_large, String.t()}
          | {:compilation_failed, [diagnostic]}
          | {:duplicate_module, module, [String.t()]}
          | {:compile_timeout, non_neg_integer}
          | {:compile_resource_limit, :memory | :processes | :cpu | :file_size}
          | {:worker_crashed, term}
          | {:invalid_beam, module, term}
          | {:confinement_unavailable, term}
          | term

  @doc """
  The module that starts compile workers: `Sandbox.CNode`, the supervising
  C-node.
  """
  @spec launcher() :: module
  def launcher, do: Sandbox.CNode

  @doc """
  Compiles a mix project or a plain directory of `.ex`/`.erl` files in a
  compile worker. See the module documentation for the options, the result
  and the errors.
  """
  @spec compile_sandbox(String.t(), compile_opts) :: {:ok, compile_info} | {:error, reason}
  def compile_sandbox(sandbox_path, opts \\ []) do
    compile_span(sandbox_path, :compile_sandbox, fn -> do_compile_sandbox(sandbox_path, opts) end)
  end

  defp do_compile_sandbox(sandbox_path, opts) do
    path = expand_path!(sandbox_path)
    opts = normalize_opts!(opts)

    kind = if File.regular?(Path.join(path, "mix.exs")), do: :project, else: :dir

    confined(opts, fn opts ->
      cond do
        not File.dir?(path) -> {:error, {:no_such_directory, sandbox_path}}
        opts.incremental -> since_last_build(kind, path, opts)
        true -> compile(kind, path, nil, opts)
      end
    end)
  end

  # Resolves the :confine option against the C-node's Landlock status once
  # per call (:required refused here when Landlock is unavailable), runs
  # `fun` with it, and reports it in the result.
  defp confined(opts, fun) do
    status = if opts.confine == :none, do: nil, else: Pool.landlock(opts.pool)

    case Confinement.mode(opts.confine, status) do
      {:error, _} = error ->
        error

      mode ->
        confinement = Confinement.result(mode)
        if confinement not in [:landlock, :none], do: log_once(confinement, opts.confine)

        case fun.(%{opts | mode: mode}) do
          {:ok, info} -> {:ok, %{info | confinement: confinement}}
          other -> other
        end
    end
  end

  # Logged once per VM for each way a compile went less confined than
  # asked: Landlock unavailable (:preferred compiles run unconfined), or an
  # ABI that cannot enforce everything.
  defp log_once(confinement, confine) do
    key = {__MODULE__, :logged, confinement}

    unless :persistent_term.get(key, false) do
      :persistent_term.put(key, true)

      Logger.warning(
        "Sandbox.IsolatedCompiler: compile workers are not fully confined " <>
          "(confine: #{inspect(confine)}): #{inspect(confinement)}"
      )
    end

    :ok
  end

  # `incremental: true`: the files changed since the last build of `path`
  # are found by their checksums, then compiled as `incremental_compile/3`
  # does.
  defp since_last_build(kind, path, opts) do
    full_opts = %{opts | incremental: false, raw: Keyword.delete(opts.raw, :incremental)}

    with_build_lock(kind, path, opts, fn build ->
      with true <- is_map(build) || :no_build,
           {:ok, inputs} <- scan_inputs(kind, path, nil, opts.limits.max_file_size) do
        now = Map.new(inputs, fn {abs, _rel, sum} -> {abs, sum} end)

        changed = for {file, sum} <- now, Map.get(build.inputs, file) != sum, do: file

        deleted = for {file, _} <- build.inputs, not Map.has_key?(now, file), do: file
        incremental(kind, path, build, changed ++ deleted, full_opts)
      else
        :no_build -> compile(kind, path, nil, full_opts)
        {:error, _} = error -> error
      end
    end)
  end

  # Incremental compiles of one directory run one at a time: each reads the
  # last build and writes the next, and two at once would lose one's
  # changes.
  defp with_build_lock(kind, path, opts, fun) do
    key = build_key(kind, path, opts)

    :global.trans(
      {{__MODULE__, key}, self()},
      fn -> fun.(Cache.get_build(opts.cache_server, key)) end,
      [node()],
      :infinity
    )
  end

  @doc """
  Compiles one `.ex` or `.erl` file in a compile worker. Same options,
  result and errors as `compile_sandbox/2`.
  """
  @spec compile_file(String.t(), compile_opts) :: {:ok, compile_info} | {:error, reason}
  def compile_file(file_path, opts \\ []) do
    compile_span(file_path, :compile_file, fn -> do_compile_file(file_path, opts) end)
  end

  defp do_compile_file(file_path, opts) do
    path = expand_path!(file_path)
    opts = normalize_opts!(opts)

    confined(opts, fn opts ->
      cond do
        not File.regular?(path) -> {:error, {:no_such_file, file_path}}
        Path.extname(path) not in [".ex", ".erl"] -> {:error, {:unsupported_file, file_path}}
        opts.context -> in_context(path, opts.context, opts)
        true -> compile(:file, Path.dirname(path), [path], opts)
      end
    end)
  end

  # One file compiled against a project's last build (compiled first when
  # there is none): the project's modules are loaded in the worker and its
  # config applied, so the file can use its structs, macros and behaviours.
  defp in_context(path, root, opts) do
    kind = if File.regular?(Path.join(root, "mix.exs")), do: :project, else: :dir
    opts = %{opts | context: nil, raw: Keyword.delete(opts.raw, :context)}

    with {:ok, build} <- last_build(kind, root, opts),
         :ok <- check_sizes([{path, file_size(path)}], opts.limits.max_file_size) do
      started = System.monotonic_time()

      job = %{
        kind: :files,
        root: root,
        files: [path],
        preload: Enum.to_list(build.modules),
        config: build.config,
        mix_env: opts.mix_env,
        env: effective_env(opts.env),
        erl_include: [Path.join(root, "include"), Path.dirname(path)]
      }

      with {:ok, result, info} <- run_job(job, opts) do
        payload = %{
          build
          | modules: result.modules,
            warnings: result.warnings,
            app: nil,
            app_files: []
        }

        {:ok,
         compile_info(payload, info, started,
           cached: false,
           incremental: true,
           recompiled: result.sources,
           os_pid: result.os_pid,
           write_artifacts: opts.write_artifacts
         )}
      end
    end
  end

  defp last_build(kind, root, opts) do
    case Cache.get_build(opts.cache_server, build_key(kind, root, opts)) do
      nil ->
        with {:ok, _} <- compile(kind, root, nil, %{opts | write_artifacts: false}),
             do: last_build(kind, root, opts)

      build ->
        {:ok, build}
    end
  end

  @doc """
  Compiles code a sandbox creates at run time (`Sandbox.RuntimeCode`) in a
  compile worker, never in this VM: each of `forms` (see
  `Sandbox.IsolatedCompiler.Worker`, the `:forms` kind) is compiled with
  `preload` (`[{module, beam}]`, the sandbox's own modules under their
  original names) reachable, so that the code can use their macros,
  structs and behaviours. `root` is the sandbox's project directory (the
  worker's working directory, readable under confinement).

  Returns `{:ok, %{modules: [{module, beam}], form_results: [{[module],
  {:value, term} | :not_transferable | nil}], created_atoms: n}}` (`n`:
  the atoms that decoding the worker's result made here) or the errors of
  `compile_sandbox/2`. Options as `compile_sandbox/2` (`:write_artifacts`
  is ignored: nothing is kept).
  """
  @spec compile_forms(String.t(), [tuple], [{module, binary}], compile_opts) ::
          {:ok,
           %{modules: [{module, binary}], form_results: list, created_atoms: non_neg_integer}}
          | {:error, reason}
  def compile_forms(root, forms, preload, opts \\ []) when is_list(forms) and is_list(preload) do
    compile_span(root, :compile_forms, fn ->
      root = expand_path!(root)
      opts = normalize_opts!(Keyword.put(opts, :write_artifacts, false))

      confined(opts, fn opts ->
        job = %{
          kind: :forms,
          root: root,
          forms: forms,
          preload: preload,
          mix_env: opts.mix_env,
          env: effective_env(opts.env)
        }

        with {:ok, result, info} <- run_job(job, opts) do
          File.rm_rf(info.temp_dir)

          {:ok,
           %{
             modules: result.modules,
             form_results: result.form_results,
             created_atoms: Map.get(result, :created_atoms, 0),
             cached: false,
             confinement: nil
           }}
        end
      end)
    end)
  end

  @doc """
  Recompiles what `changed_files` (paths, absolute or relative to
  `sandbox_path`; new and deleted files included) affect since the last
  successful compile of `sandbox_path` with the same `:mix_env`: the
  changed files and, transitively, every file that depends on a module of
  theirs at compile time (macros, structs, behaviours, imports, code run
  in a module body), as recorded by the compile tracer in the worker. The
  other modules are loaded into the worker from the previous build.

  `modules` in the result holds only the modules whose BEAM changed;
  `removed_modules` those that are gone. A change to `mix.exs`, to a file
  under `config/`, to an `.hrl` file or to another file the last compile
  read recompiles the whole project (still returning only what changed).
  Without a previous build this is `compile_sandbox/2`.
  """
  @spec incremental_compile(String.t(), [String.t()], compile_opts) ::
          {:ok, compile_info} | {:error, reason}
  def incremental_compile(sandbox_path, changed_files, opts \\ []) do
    compile_span(sandbox_path, :incremental_compile, fn ->
      do_incremental_compile(sandbox_path, changed_files, opts)
    end)
  end

  defp do_incremental_compile(sandbox_path, changed_files, opts) do
    path = expand_path!(sandbox_path)
    opts = normalize_opts!(opts)

    unless is_list(changed_files) and Enum.all?(changed_files, &is_binary/1),
      do: raise(ArgumentError, "expected a list of paths, got: #{inspect(changed_files)}")

    changed = Enum.map(changed_files, &Path.expand(&1, path))

    if File.dir?(path) do
      kind = if File.regular?(Path.join(path, "mix.exs")), do: :project, else: :dir

      confined(opts, fn opts ->
        with_build_lock(kind, path, opts, fn
          nil -> compile(kind, path, nil, opts)
          build -> incremental(kind, path, build, changed, opts)
        end)
      end)
    else
      {:error, {:no_such_directory, sandbox_path}}
    end
  end

  # The [:sandbox, :compile, _] span (Sandbox.Telemetry) of each entry point.
  defp compile_span(path, entry, fun) do
    Sandbox.Telemetry.span(:compile, %{sandbox_id: nil, path: path, entry: entry}, fn ->
      result = fun.()

      case result do
        {:ok, info} -> {result, %{result: :ok, cached: info.cached == true}}
        other -> {result, Sandbox.Telemetry.outcome(other)}
      end
    end)
  end

  @doc """
  Validates `.beam` files with `Sandbox.Beam.validate/1`: `:ok`, or
  `{:error, {path, reason}}` for the first invalid one (`reason` is one of
  the toolkit's reasons, or a `File` error such as `:enoent`).
  """
  @spec validate_beam_files([String.t()]) :: :ok | {:error, {String.t(), term}}
  def validate_beam_files(beam_files) when is_list(beam_files) do
    Enum.reduce_while(beam_files, :ok, fn
      path, :ok when is_binary(path) ->
        with {:ok, bin} <- File.read(path), :ok <- Sandbox.Beam.validate(bin) do
          {:cont, :ok}
        else
          {:error, reason} -> {:halt, {:error, {path, reason}}}
        end

      other, :ok ->
        raise ArgumentError, "expected a path, got: #{inspect(other)}"
    end)
  end

  def validate_beam_files(other),
    do: raise(ArgumentError, "expected a list of paths, got: #{inspect(other)}")

  @doc """
  Removes a compile's `temp_dir` (and everything in it). Only directories
  named as this module names them (`job-<n>-<os pid>`) are removed:
  anything else is `{:error, {:not_an_artifact_dir, path}}`. Removing one
  twice is `:ok`.
  """
  @spec cleanup_artifacts(String.t()) :: :ok | {:error, {:not_an_artifact_dir, String.t()}}
  def cleanup_artifacts(temp_dir) when is_binary(temp_dir) do
    dir = Path.expand(temp_dir)

    if Regex.match?(~r/\Ajob-\d+-\d+\z/, Path.basename(dir)) do
      File.rm_rf!(dir)
      :ok
    else
      {:error, {:not_an_artifact_dir, temp_dir}}
    end
  end

  def cleanup_artifacts(other),
    do: raise(ArgumentError, "expected a directory path, got: #{inspect(other)}")

  @doc """
  The directory under which every compile's `temp_dir` is created: the
  application environment's `:compiler_artifacts_dir` when set, else
  `/dev/shm/sandbox-compile-<user>` when `/dev/shm` is a writable directory
  (a memory file system: creating a compile's files there is several times
  faster than on disk), else `sandbox-compile` in `System.tmp_dir!/0`.
  """
  @spec artifacts_root() :: String.t()
  def artifacts_root do
    case Application.fetch_env(:sandbox, :compiler_artifacts_dir) do
      {:ok, dir} when is_binary(dir) ->
        dir

      _ ->
        case :persistent_term.get({__MODULE__, :artifacts_root}, nil) do
          nil ->
            root = default_artifacts_root()
            :persistent_term.put({__MODULE__, :artifacts_root}, root)
            root

          root ->
            root
        end
    end
  end

  defp default_artifacts_root do
    shm = "/dev/shm"
    user = System.get_env("USER") || "uid"
    dir = Path.join(shm, "sandbox-compile-#{user}")

    with {:ok, %File.Stat{type: :directory, access: :read_write}} <- File.stat(shm),
         :ok <- File.mkdir_p(dir) do
      dir
    else
      _ -> Path.join(System.tmp_dir!(), "sandbox-compile")
    end
  end

  ## Options

  defp expand_path!(path) when is_binary(path), do: Path.expand(path)
  defp expand_path!(other), do: raise(ArgumentError, "expected a path, got: #{inspect(other)}")

  defp normalize_opts!(%{raw: _} = opts), do: opts

  @known_opts [
    :compile_timeout,
    :timeout,
    :compile_limits,
    :memory_limit,
    :mix_env,
    :env,
    :write_artifacts,
    :validate_beams,
    :incremental,
    :cache,
    :max_new_atoms,
    :context,
    :tests,
    :artifacts_dir,
    :confine,
    :pool,
    :cache_server
  ]

  defp normalize_opts!(opts) when is_list(opts) do
    unless Keyword.keyword?(opts),
      do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(opts)}")

    case Enum.find(Keyword.keys(opts), &(&1 not in @known_opts)) do
      nil -> :ok
      key -> raise ArgumentError, "unknown option #{inspect(key)}; known: #{inspect(@known_opts)}"
    end

    timeout = Keyword.get(opts, :compile_timeout, Keyword.get(opts, :timeout, @default_timeout))

    unless timeout == :infinity or (is_integer(timeout) and timeout > 0),
      do: raise(ArgumentError, "expected :compile_timeout in ms, got: #{inspect(timeout)}")

    limits = Keyword.get(opts, :compile_limits, %{})

    unless is_map(limits) and Enum.all?(Map.keys(limits), &Map.has_key?(@default_limits, &1)),
      do: raise(ArgumentError, "invalid :compile_limits: #{inspect(limits)}")

    # The seed's name for the worker's memory limit.
    limits =
      case Keyword.fetch(opts, :memory_limit) do
        {:ok, bytes} -> Map.put(limits, :max_memory, bytes)
        :error -> limits
      end

    for {k, v} <- limits,
        not (is_nil(v) or (is_integer(v) and v > 0)),
        do: raise(ArgumentError, "invalid :compile_limits #{k}: #{inspect(v)}")

    # A worker's hard file-size limit is fixed when it starts (Pool.ceiling/0).
    with max when is_integer(max) <- limits[:max_file_size],
         true <- max > Pool.ceiling().file_size do
      raise ArgumentError,
            ":compile_limits max_file_size #{max} is above the workers' ceiling " <>
              "#{Pool.ceiling().file_size} (config :sandbox, :compiler_file_size_ceiling)"
    end

    env = Keyword.get(opts, :env, %{})

    unless is_map(env) and
             Enum.all?(env, fn {k, v} -> is_binary(k) and (is_binary(v) or is_nil(v)) end),
           do: raise(ArgumentError, "expected :env as a map of strings, got: #{inspect(env)}")

    mix_env = Keyword.get(opts, :mix_env, :prod)
    unless is_atom(mix_env), do: raise(ArgumentError, "expected :mix_env as an atom")

    for key <- [:write_artifacts, :validate_beams, :incremental, :cache, :tests],
        value = Keyword.get(opts, key, true),
        not is_boolean(value),
        do: raise(ArgumentError, "expected #{inspect(key)} as a boolean, got: #{inspect(value)}")

    max_atoms = Keyword.get(opts, :max_new_atoms, Application.get_env(:sandbox, :max_new_atoms))

    unless is_nil(max_atoms) or max_atoms == :infinity or
             (is_integer(max_atoms) and max_atoms >= 0),
           do:
             raise(
               ArgumentError,
               "expected :max_new_atoms as a count, got: #{inspect(max_atoms)}"
             )

    confine =
      Keyword.get_lazy(opts, :confine, fn ->
        Application.get_env(:sandbox, :compile_confinement, :preferred)
      end)

    unless confine in [:required, :preferred, :none],
      do:
        raise(
          ArgumentError,
          "expected :confine as :required, :preferred or :none, got: #{inspect(confine)}"
        )

    %{
      raw: opts,
      confine: confine,
      mode: nil,
      timeout: timeout,
      limits: Map.merge(@default_limits, limits),
      env: env,
      mix_env: mix_env,
      validate: Keyword.get(opts, :validate_beams, true),
      write_artifacts: Keyword.get(opts, :write_artifacts, true),
      incremental: Keyword.get(opts, :incremental, false),
      tests: Keyword.get(opts, :tests, false),
      cache: Keyword.get(opts, :cache, true),
      max_new_atoms: max_atoms || @default_max_new_atoms,
      context: context!(Keyword.get(opts, :context)),
      artifacts: artifacts_dir(opts),
      pool: Keyword.get(opts, :pool, Pool),
      cache_server: Keyword.get(opts, :cache_server, Cache)
    }
  end

  defp normalize_opts!(other),
    do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(other)}")

  defp context!(nil), do: nil
  defp context!(dir) when is_binary(dir), do: Path.expand(dir)

  defp context!(other),
    do: raise(ArgumentError, "expected :context as a path, got: #{inspect(other)}")

  ## Full compiles

  defp compile(kind, root, files, opts) do
    started = System.monotonic_time()

    with {:ok, inputs} <- scan_inputs(kind, root, files, opts.limits.max_file_size),
         base = base_key(kind, root, inputs, opts),
         env = effective_env(opts.env) do
      case opts.cache && Cache.fetch(opts.cache_server, base, &manifest_valid?(&1, env)) do
        {:ok, payload} ->
          from_cache(kind, root, payload, inputs, started, opts)

        _miss_or_disabled ->
          job = %{
            kind: if(kind == :file, do: :dir, else: kind),
            root: root,
            files: files || source_files(kind, inputs),
            mix_env: opts.mix_env,
            env: env,
            erl_include: [Path.join(root, "include"), root],
            tests: opts.tests and kind == :project
          }

          with {:ok, result, info} <- run_job(job, opts) do
            finish_full(kind, root, base, inputs, env, result, info, started, opts)
          end
      end
    end
  end

  defp source_files(:dir, inputs) do
    for {abs, _rel, _sum} <- inputs, Path.extname(abs) in [".ex", ".erl"], do: abs
  end

  defp source_files(:project, _inputs), do: nil

  defp finish_full(kind, root, base, inputs, env, result, info, started, opts) do
    payload = payload(result, info.temp_dir)

    if opts.cache do
      Cache.put(opts.cache_server, base, manifest(result, inputs, env, opts.artifacts), payload)
    end

    Cache.put_build(opts.cache_server, build_key(kind, root, opts), build(payload, inputs))

    {:ok,
     compile_info(payload, info, started,
       cached: false,
       incremental: false,
       recompiled: result.sources,
       os_pid: result.os_pid,
       write_artifacts: opts.write_artifacts
     )}
  end

  defp payload(result, out_root) do
    app_files =
      for file <- Path.wildcard(Path.join([out_root, "ebin", "*.app"])),
          do: {Path.basename(file), File.read!(file)}

    %{
      modules: result.modules,
      module_files: result.module_files,
      deps: result.deps,
      warnings: result.warnings,
      app: result.app,
      config: result.config,
      sources: result.sources,
      files_read: result.files_read,
      app_files: app_files,
      test_modules: Map.get(result, :test_modules, []),
      async_tests: Map.get(result, :async_tests, [])
    }
  end

  defp build(payload, inputs) do
    Map.merge(payload, %{
      modules: Map.new(payload.modules),
      inputs: Map.new(inputs, fn {abs, _rel, sum} -> {abs, sum} end)
    })
  end

  # Builds (and cache entries, base_key/4) of confined and unconfined
  # compiles are kept apart: what an unconfined compile produced (reading
  # anything on the host) never serves a confined one.
  defp build_key(kind, root, opts), do: {kind, root, opts.mix_env, confined?(opts)}

  defp confined?(%{mode: {:landlock, _}}), do: true
  defp confined?(_opts), do: false

  defp from_cache(kind, root, payload, inputs, started, opts) do
    dir = if opts.write_artifacts, do: write_cached_artifacts(payload, opts)

    Cache.put_build(opts.cache_server, build_key(kind, root, opts), build(payload, inputs))
    info = %{temp_dir: dir, output: ""}
    {:ok, compile_info(payload, info, started, cached: true, incremental: false, os_pid: nil)}
  end

  defp write_cached_artifacts(payload, opts) do
    dir = new_artifact_dir(opts.artifacts)
    ebin = Path.join(dir, "ebin")
    :ok = :prim_file.make_dir(ebin)

    files =
      Enum.map(payload.modules, fn {m, beam} -> {"#{m}.beam", beam} end) ++ payload.app_files

    write_all!(ebin, files)
    dir
  end

  # With write_artifacts: false nothing stays on disk: a worker's output
  # directory is removed here, and temp_dir, app_file and beam_files are
  # nil, nil and [].
  defp compile_info(payload, info, started, extra) do
    dir =
      if info.temp_dir && not Keyword.get(extra, :write_artifacts, true) do
        cleanup_artifacts(info.temp_dir)
        nil
      else
        info.temp_dir
      end

    ebin = dir && Path.join(dir, "ebin")
    app = payload.app && Map.drop(payload.app, [:sources, :path_dep_names])

    app =
      app &&
        Map.update!(app, :path_deps, fn deps ->
          Enum.map(deps, &Map.drop(&1, [:sources, :path_dep_names]))
        end)

    app_env =
      if app,
        do: Keyword.merge(app.env, Keyword.get(payload.config, app.name, [])),
        else: []

    %Sandbox.Models.CompilationResult{
      output: info.output,
      beam_files:
        if(ebin,
          do: Enum.map(payload.modules, fn {m, _} -> Path.join(ebin, "#{m}.beam") end),
          else: []
        ),
      app_file: ebin && app && Path.join(ebin, "#{app.name}.app"),
      compilation_time:
        System.convert_time_unit(System.monotonic_time() - started, :native, :millisecond),
      warnings: payload.warnings,
      errors: [],
      temp_dir: dir,
      modules: payload.modules,
      app: app,
      app_env: app_env,
      config: payload.config,
      cached: extra[:cached],
      incremental: extra[:incremental],
      removed_modules: Keyword.get(extra, :removed_modules, []),
      recompiled_files: Keyword.get(extra, :recompiled, []),
      recompiled_modules: Keyword.get(extra, :recompiled_modules, payload.modules),
      test_modules: Map.get(payload, :test_modules, []),
      async_tests: Map.get(payload, :async_tests, []),
      os_pid: extra[:os_pid]
    }
  end

  ## Incremental compiles

  defp incremental(kind, root, build, changed, opts) do
    started = System.monotonic_time()
    read_set = MapSet.new(build.files_read)
    build = %{build | inputs: refresh_inputs(build.inputs, changed)}

    full? =
      Enum.any?(changed, fn file ->
        Path.basename(file) == "mix.exs" or
          String.starts_with?(file, Path.join(root, "config") <> "/") or
          Path.extname(file) == ".hrl" or
          (Path.extname(file) not in [".ex", ".erl"] and MapSet.member?(read_set, file))
      end)

    if full? do
      with {:ok, info} <- compile(kind, root, nil, opts) do
        {:ok, diff_info(info, build, started)}
      end
    else
      stale = stale_files(build, changed)
      existing = Enum.filter(stale, &File.regular?/1)

      sizes = Enum.map(existing, &{&1, file_size(&1)})

      with :ok <- check_sizes(sizes, opts.limits.max_file_size) do
        stale_modules = for {m, f} <- build.module_files, f in stale, into: MapSet.new(), do: m

        preload = for {m, b} <- build.modules, not MapSet.member?(stale_modules, m), do: {m, b}

        job = %{
          kind: :files,
          root: root,
          files: existing,
          preload: preload,
          config: build.config,
          mix_env: opts.mix_env,
          env: effective_env(opts.env),
          erl_include: [Path.join(root, "include") | Enum.map(existing, &Path.dirname/1)]
        }

        outcome =
          if existing == [] do
            # Only deletions (or nothing at all): no worker needed.
            result = %{
              modules: [],
              module_files: %{},
              deps: %{},
              warnings: [],
              sources: [],
              files_read: [],
              os_pid: nil
            }

            {:ok, result, %{temp_dir: new_artifact_dir(opts.artifacts), output: ""}}
          else
            run_job(job, opts)
          end

        with {:ok, result, info} <- outcome do
          finish_incremental(kind, root, build, stale, stale_modules, result, info, started, opts)
        end
      end
    end
  end

  # The build's input checksums after `changed` (so that `incremental: true`
  # finds what changed since this build).
  defp refresh_inputs(inputs, changed) do
    Enum.reduce(changed, inputs, fn file, inputs ->
      case file_checksum(file) do
        :missing ->
          Map.delete(inputs, file)

        sum ->
          if Map.has_key?(inputs, file) or source?(file),
            do: Map.put(inputs, file, sum),
            else: inputs
      end
    end)
  end

  defp source?(file), do: Path.extname(file) in @source_exts

  # The changed files and every file depending on them at compile time.
  defp stale_files(build, changed) do
    module_file = build.module_files

    dependents =
      Enum.reduce(build.deps, %{}, fn {file, modules}, acc ->
        Enum.reduce(modules, acc, fn m, acc ->
          case module_file do
            %{^m => dep_file} when dep_file != file ->
              Map.update(acc, dep_file, [file], &[file | &1])

            _ ->
              acc
          end
        end)
      end)

    sources = MapSet.new(build.sources)

    changed =
      Enum.filter(changed, fn f ->
        MapSet.member?(sources, f) or (Path.extname(f) in [".ex", ".erl"] and File.regular?(f))
      end)

    walk(changed, dependents, MapSet.new()) |> MapSet.to_list() |> Enum.sort()
  end

  defp walk([], _dependents, seen), do: seen

  defp walk([file | rest], dependents, seen) do
    if MapSet.member?(seen, file),
      do: walk(rest, dependents, seen),
      else: walk(Map.get(dependents, file, []) ++ rest, dependents, MapSet.put(seen, file))
  end

  defp finish_incremental(kind, root, build, stale, stale_modules, result, info, started, opts) do
    new_modules = Map.new(result.modules)

    removed = for m <- stale_modules, not Map.has_key?(new_modules, m), do: m

    modules = build.modules |> Map.drop(MapSet.to_list(stale_modules)) |> Map.merge(new_modules)

    module_files =
      build.module_files
      |> Map.drop(MapSet.to_list(stale_modules))
      |> Map.merge(result.module_files)

    sources = Enum.uniq(Enum.filter(build.sources, &File.regular?/1) ++ result.sources)

    new_build = %{
      build
      | modules: modules,
        module_files: module_files,
        deps: build.deps |> Map.drop(stale) |> Map.merge(result.deps),
        sources: sources,
        warnings: result.warnings,
        files_read: Enum.uniq(build.files_read ++ result.files_read)
    }

    Cache.put_build(opts.cache_server, build_key(kind, root, opts), new_build)

    changed = for {m, b} <- result.modules, Map.get(build.modules, m) != b, do: {m, b}

    payload = %{new_build | modules: changed, app_files: []}

    info =
      compile_info(payload, info, started,
        cached: false,
        incremental: true,
        removed_modules: Enum.sort(removed),
        recompiled: result.sources,
        recompiled_modules: result.modules,
        os_pid: result.os_pid
      )

    {:ok, %{info | app_file: nil}}
  end

  defp diff_info(info, build, started) do
    changed = for {m, b} <- info.modules, Map.get(build.modules, m) != b, do: {m, b}
    new = MapSet.new(info.modules, &elem(&1, 0))
    removed = for {m, _} <- build.modules, not MapSet.member?(new, m), do: m

    %{
      info
      | modules: changed,
        recompiled_modules: info.modules,
        beam_files:
          Enum.map(changed, fn {m, _} -> Path.join([info.temp_dir, "ebin", "#{m}.beam"]) end),
        removed_modules: Enum.sort(removed),
        compilation_time:
          System.convert_time_unit(System.monotonic_time() - started, :native, :millisecond)
    }
  end

  ## Running a job on a worker

  # A job whose C-node died under it (taking the worker along) is run again
  # once on the restarted C-node, as Sandbox.ErrorHandler decides.
  defp run_job(job, opts, attempt \\ 0) do
    case run_job_once(job, opts) do
      {:error, {:worker_crashed, :cnode_down} = error} = failed ->
        context = ErrorHandler.context(nil, :compile, :isolated_compiler, %{attempt: attempt})

        case ErrorHandler.handle_error(error, context) do
          {:ok, :retry} -> run_job(job, opts, attempt + 1)
          _ -> failed
        end

      other ->
        other
    end
  end

  defp run_job_once(job, opts) do
    case Pool.checkout(opts.pool, pool_key(job, opts)) do
      {:ok, lease} ->
        try do
          run_on(lease, job, opts)
        rescue
          e ->
            Pool.release(lease)
            File.rm_rf(lease.dir)
            reraise e, __STACKTRACE__
        end

      {:error, {:spawn_failed, {:landlock_unavailable, reason}}} ->
        # Landlock went away since the check (a C-node restarted without it).
        {:error, {:confinement_unavailable, reason}}

      {:error, {:spawn_failed, reason}} ->
        {:error, {:worker_crashed, reason}}
    end
  end

  # The worker a job needs: unconfined, or confined to read what the job
  # reads (its root, and the directories of any file or include directory
  # outside it), with its job directory under the artifacts directory.
  defp pool_key(job, %{mode: {:landlock, _}} = opts) do
    paths = [job.root | Enum.map(job[:files] || [], &Path.dirname/1)] ++ (job[:erl_include] || [])

    %{mode: :landlock, read: outermost(paths), artifacts: opts.artifacts}
  end

  defp pool_key(_job, opts), do: %{mode: :none, read: [], artifacts: opts.artifacts}

  # A worker's job directory is made when the worker starts, in the
  # directory of its pool key; the pool starts the next worker of a key
  # when one is done. A compile that keeps nothing works in the default
  # root, so that the caller's directory never holds one.
  defp artifacts_dir(opts) do
    if Keyword.get(opts, :write_artifacts, true),
      do: Keyword.get_lazy(opts, :artifacts_dir, &artifacts_root/0),
      else: artifacts_root()
  end

  # The paths not inside another one of the list (so that a job's key does
  # not depend on which files inside its root it compiles).
  defp outermost(paths) do
    paths = paths |> Enum.map(&Path.expand/1) |> Enum.uniq() |> Enum.sort()

    Enum.reject(paths, fn p ->
      Enum.any?(paths, fn q -> q != p and String.starts_with?(p, q <> "/") end)
    end)
  end

  defp run_on(lease, job, opts) do
    dir = lease.dir
    job_path = Path.join(dir, "job.etf")
    result_path = Path.join(dir, "result.etf")
    marker = "\n<<sandbox-compile-done:#{Base.encode16(:rand.bytes(12))}>>\n"
    {preload, job} = Map.pop(job, :preload, [])

    job =
      Map.merge(job, %{
        out_dir: Path.join(dir, "ebin"),
        result_path: result_path,
        done_marker: marker,
        preload_dir: write_preload(dir, preload)
      })

    raw_write!(job_path, :erlang.term_to_binary(job))

    limits = %{
      memory: opts.limits.max_memory,
      processes: opts.limits.max_processes,
      file_size: opts.limits.max_file_size,
      cpu_seconds: opts.limits.max_cpu_seconds
    }

    outcome = Pool.run(lease, job_path, limits, opts.timeout, marker)
    remove_preload(job.preload_dir, preload)

    case interpret(outcome, result_path, opts) do
      {:ok, result, output} ->
        :prim_file.delete(job_path)
        :prim_file.delete(result_path)

        with :ok <- validate(result.modules, opts) do
          {:ok, result, %{temp_dir: dir, output: output}}
        else
          error ->
            File.rm_rf(dir)
            error
        end

      {:error, _} = error ->
        File.rm_rf(dir)
        error
    end
  end

  defp write_preload(_dir, []), do: nil

  defp write_preload(dir, modules) do
    prev = Path.join(dir, "prev")
    :ok = :prim_file.make_dir(prev)
    write_all!(prev, Enum.map(modules, fn {module, beam} -> {"#{module}.beam", beam} end))
    prev
  end

  defp remove_preload(nil, _modules), do: :ok

  # In the background: the caller need not wait for it.
  defp remove_preload(prev, modules) do
    Task.start(fn ->
      for {module, _} <- modules, do: :prim_file.delete(Path.join(prev, "#{module}.beam"))
      # Anything the job added there goes too.
      with {:error, _} <- :prim_file.del_dir(prev), do: File.rm_rf(prev)
    end)

    :ok
  end

  defp interpret({:done, output, os_pid}, result_path, opts),
    do: interpret({:exited, {:status, 0}, output, os_pid}, result_path, opts)

  defp interpret({:timeout, _output, _os_pid}, _result_path, opts),
    do: {:error, {:compile_timeout, opts.timeout}}

  defp interpret({:exited, :timeout, _output, _os_pid}, _result_path, opts),
    do: {:error, {:compile_timeout, opts.timeout}}

  defp interpret({:exited, {:limit, kind}, _output, _os_pid}, _result_path, _opts),
    do: {:error, {:compile_resource_limit, kind}}

  defp interpret({:exited, {:signal, 24}, _, _}, _, _),
    do: {:error, {:compile_resource_limit, :cpu}}

  defp interpret({:exited, {:signal, 25}, _, _}, _, _),
    do: {:error, {:compile_resource_limit, :file_size}}

  # The worker ran the project's code: its result file is hostile input,
  # decoded without letting it exhaust the atom table (Sandbox.SafeTerm).
  defp interpret({:exited, {:status, 0} = reason, output, _os_pid}, result_path, opts) do
    case :prim_file.read_file(result_path) do
      {:ok, bin} ->
        # (The atoms decoding makes, for a caller's atom budget.)
        created = created_atoms(bin, opts.max_new_atoms)

        case SafeTerm.decode(bin, max_new_atoms: opts.max_new_atoms) do
          {:ok, {:ok, result}} when is_map(result) ->
            {:ok, Map.put(result, :created_atoms, created), output}

          {:ok, {:error, reason}} ->
            {:error, reason}

          {:ok, _other} ->
            {:error, {:worker_crashed, :bad_result}}

          {:error, why} ->
            {:error, {:worker_crashed, {:bad_result, why}}}
        end

      {:error, _} ->
        {:error, {:worker_crashed, reason}}
    end
  end

  defp interpret({:exited, reason, _output, _os_pid}, _result_path, _opts),
    do: {:error, {:worker_crashed, reason}}

  defp validate(_modules, %{validate: false}), do: :ok

  defp validate(modules, _opts) do
    Enum.reduce_while(modules, :ok, fn {m, beam}, :ok ->
      case Sandbox.Beam.validate(beam) do
        :ok -> {:cont, :ok}
        {:error, reason} -> {:halt, {:error, {:invalid_beam, m, reason}}}
      end
    end)
  end

  defp new_artifact_dir(root) do
    dir = Path.join(root, "job-#{System.unique_integer([:positive])}-#{:os.getpid()}")

    case :prim_file.make_dir(dir) do
      :ok ->
        dir

      {:error, :enoent} ->
        File.mkdir_p!(root)
        new_artifact_dir(root)
    end
  end

  ## Inputs, keys and manifests

  # [{absolute path, relative path, checksum}] of the inputs known before
  # compiling. Sizes are checked (from one stat per entry) before anything is
  # read. Raw file operations (no file server round trip) keep a cache hit
  # fast.
  defp scan_inputs(:file, _root, [file], max) do
    with :ok <- check_sizes([{file, file_size(file)}], max),
         do: read_inputs([file], Path.dirname(file))
  end

  defp scan_inputs(kind, root, nil, max) do
    files = walk_dir(root, root, kind)

    cond do
      not Enum.any?(files, fn {path, _} -> Path.extname(path) in [".ex", ".erl"] end) ->
        {:error, {:no_sources, root}}

      (error = check_sizes(files, max)) != :ok ->
        error

      true ->
        read_inputs(Enum.map(files, &elem(&1, 0)), root)
    end
  end

  # [{path, size}] of the candidate inputs under `dir`.
  defp walk_dir(dir, root, kind) do
    case :prim_file.list_dir(dir) do
      {:ok, entries} ->
        entries
        |> Enum.map(&List.to_string/1)
        |> Enum.sort()
        |> Enum.flat_map(fn entry ->
          path = Path.join(dir, entry)

          if String.starts_with?(entry, ".") or entry in @skip_dirs do
            []
          else
            case :file.read_file_info(path, [:raw, {:time, :posix}]) do
              {:ok, info} when elem(info, 2) == :directory ->
                walk_dir(path, root, kind)

              {:ok, info} when elem(info, 2) == :regular ->
                if Path.extname(entry) in @source_exts or
                     (kind == :project and
                        String.starts_with?(path, Path.join(root, "config") <> "/")),
                   do: [{path, elem(info, 1)}],
                   else: []

              _ ->
                []
            end
          end
        end)

      {:error, _} ->
        []
    end
  end

  defp read_inputs(files, root) do
    {:ok,
     for file <- files do
       {file, Path.relative_to(file, root), file_checksum(file)}
     end}
  end

  defp file_size(path) do
    case :file.read_file_info(path, [:raw, {:time, :posix}]) do
      {:ok, info} -> elem(info, 1)
      {:error, _} -> 0
    end
  end

  # How many atoms decoding `bin` will make: those it holds that do not
  # exist yet (0 when the decode will refuse it).
  defp created_atoms(bin, max) do
    case SafeTerm.new_atoms(bin, max) do
      {:ok, new} -> length(new)
      {:error, _} -> 0
    end
  end

  defp raw_write!(path, data), do: :ok = :file.write_file(path, data, [:raw])

  # Writes files from a few processes at once: each raw write waits for a
  # dirty I/O scheduler, and they do not have to wait one after another.
  defp write_all!(dir, files) when length(files) < 8 do
    for {name, data} <- files, do: raw_write!(Path.join(dir, name), data)
    :ok
  end

  defp write_all!(dir, files) do
    files
    |> Enum.chunk_every(div(length(files) + 3, 4))
    |> Enum.map(fn chunk ->
      Task.async(fn -> for {name, data} <- chunk, do: raw_write!(Path.join(dir, name), data) end)
    end)
    |> Enum.each(&Task.await(&1, :infinity))
  end

  defp file_checksum(path) do
    case :prim_file.read_file(path) do
      {:ok, bin} -> Sandbox.Beam.checksum(bin)
      {:error, _} -> :missing
    end
  end

  defp check_sizes(files, max) do
    Enum.find_value(files, :ok, fn {path, size} ->
      if size > max, do: {:error, {:file_too_large, path}}
    end)
  end

  defp base_key(kind, root, inputs, opts) do
    versions = {
      System.version(),
      :erlang.system_info(:otp_release),
      :erlang.system_info(:version),
      Application.spec(:compiler, :vsn),
      Worker.module_info(:md5)
    }

    files = for {_abs, rel, sum} <- inputs, do: {rel, sum}

    Sandbox.Beam.checksum(
      :erlang.term_to_binary(
        {:v2, kind, root, opts.mix_env, opts.tests, versions, files, confined?(opts)}
      )
    )
  end

  # The job's environment: the worker's minimal one with the `:env` option
  # applied. Nothing else of the host's environment reaches the project.
  defp effective_env(overrides) do
    Enum.reduce(overrides, Pool.base_env(), fn
      {name, nil}, env -> Map.delete(env, name)
      {name, value}, env -> Map.put(env, name, value)
    end)
  end

  defp manifest(result, inputs, env, artifacts_dir) do
    known = MapSet.new(inputs, &elem(&1, 0))
    artifacts = artifacts_dir <> "/"

    files =
      for file <- result.files_read,
          not MapSet.member?(known, file),
          not String.starts_with?(file, artifacts),
          do: {file, file_checksum(file)}

    env_read =
      case result.env_read do
        :all -> {:all, env_hash(env)}
        list -> list
      end

    %{files: files, env: env_read}
  end

  defp env_hash(env), do: Sandbox.Beam.checksum(:erlang.term_to_binary(Enum.sort(env)))

  defp manifest_valid?(%{files: files, env: env_read}, env) do
    env_ok? =
      case env_read do
        {:all, hash} -> env_hash(env) == hash
        list -> Enum.all?(list, fn {name, value} -> Map.get(env, name) == value end)
      end

    env_ok? and Enum.all?(files, fn {file, sum} -> file_checksum(file) == sum end)
  end
end
