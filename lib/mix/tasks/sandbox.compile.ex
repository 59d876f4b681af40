defmodule Mix.Tasks.Sandbox.Compile do
  @shortdoc "Compiles a project in an isolated worker and prints diagnostics for editors and CI"

  @moduledoc """
  Compiles the project (or directory of `.ex`/`.erl` files) at `PATH` in an
  isolated compile worker — a separate VM under limits, as
  `Sandbox.create_sandbox/3` compiles — and prints its diagnostics the way
  editors and CI tools read them.

      mix sandbox.compile PATH [--format text|json] [--warnings-as-errors]

  Nothing of the project runs in this VM, and nothing is written to the
  project (the compile cache is used and filled).

  ## Options

    * `--format text` (the default) — one line per diagnostic,
      `file:line:column: severity: message` (`:column` or `:line:column`
      left out when unknown; continuation lines of a message indented),
      which `compilation-mode`, Vim's `errorformat` and CI problem
      matchers understand; then a summary line
    * `--format json` — one object: `{"status": "ok" | "error", "modules":
      [module], "diagnostics": [{"file", "line", "column", "severity",
      "message"}], "compilation_time_ms", "error"}` (`error`: why, when the
      compile failed other than with diagnostics; else `null`); `severity`
      is `"error"` or `"warning"`, `line` and `column` may be `null`
    * `--warnings-as-errors` — a compile with warnings fails
    * `--help` — this text

  File names are relative to the current directory (or absolute when the
  compiler named a file outside `PATH`). The exit status is 1 when the
  compile fails (or warns, with `--warnings-as-errors`), 0 otherwise.
  """

  use Mix.Task

  alias Sandbox.Tools.{JSON, MixTask}

  @usage "mix sandbox.compile PATH [--format text|json] [--warnings-as-errors]"

  @impl Mix.Task
  def run(args) do
    switches = [format: :string, warnings_as_errors: :boolean]

    case MixTask.parse(args, switches, @usage, @moduledoc, ~w(text json)) do
      :help -> :ok
      {opts, path} -> compile(path, opts)
    end
  end

  defp compile(path, opts) do
    MixTask.start()
    started = System.monotonic_time(:millisecond)
    result = Sandbox.IsolatedCompiler.compile_sandbox(path, write_artifacts: false)
    ms = System.monotonic_time(:millisecond) - started

    {status, modules, diagnostics, error} =
      case result do
        {:ok, info} ->
          status =
            if opts[:warnings_as_errors] == true and info.warnings != [], do: :error, else: :ok

          {status, Enum.map(info.modules, &elem(&1, 0)), info.warnings, nil}

        {:error, {:compilation_failed, diagnostics}} ->
          {:error, [], diagnostics, nil}

        {:error, reason} ->
          {:error, [], [], reason}
      end

    diagnostics = Enum.map(diagnostics, &diagnostic(path, &1))

    case opts[:format] do
      :json ->
        Mix.shell().info(
          JSON.encode!(%{
            status: status,
            modules: modules |> Enum.sort() |> Enum.map(&MixTask.label/1),
            diagnostics: diagnostics,
            compilation_time_ms: ms,
            error: error && MixTask.describe(error)
          })
        )

      :text ->
        for d <- diagnostics, do: Mix.shell().info(format(d))
        Mix.shell().info(summary(status, path, modules, diagnostics, error, ms))
    end

    if status == :error, do: MixTask.fail(), else: :ok
  end

  defp summary(:ok, path, modules, diagnostics, nil, ms),
    do:
      "#{path}: compiled #{length(modules)} modules in #{ms} ms, #{count(diagnostics, "warning")}"

  defp summary(:error, path, _modules, _diagnostics, error, _ms) when error != nil,
    do: "#{path}: compile failed: #{MixTask.describe(error)}"

  defp summary(:error, path, _modules, diagnostics, nil, _ms) do
    errors = Enum.count(diagnostics, &(&1.severity == "error"))
    warnings = length(diagnostics) - errors

    "#{path}: compile failed: #{count(errors, "error")}, #{count(warnings, "warning")}"
  end

  defp count(list, word) when is_list(list), do: count(length(list), word)
  defp count(1, word), do: "1 #{word}"
  defp count(n, word), do: "#{n} #{word}s"

  # A compiler diagnostic (Sandbox.IsolatedCompiler) as editors want it.
  defp diagnostic(path, d) do
    %{
      file: file(path, d.file),
      line: d.line,
      column: d.column,
      severity: if(d.type == :warning, do: "warning", else: "error"),
      message: d.message
    }
  end

  defp file(_path, nil), do: nil

  defp file(path, file) do
    if Path.type(file) == :absolute,
      do: file,
      else: Path.relative_to_cwd(Path.join(Path.expand(path), file))
  end

  defp format(d) do
    where =
      Enum.map_join(
        Enum.reject([d.file || "nofile", d.line, d.column], &is_nil/1),
        ":",
        &to_string/1
      )

    [first | rest] = String.split(d.message, "\n")
    Enum.join(["#{where}: #{d.severity}: #{first}" | Enum.map(rest, &("    " <> &1))], "\n")
  end

  @doc false
  # A compiler diagnostic of the project at `path` as one text line (or
  # more, for a message of several lines).
  def format_diagnostic(path, d), do: format(diagnostic(path, d))
end
