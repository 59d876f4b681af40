defmodule Mix.Tasks.Sandbox.Scan do
  @shortdoc "Reports the calls a security profile would refuse or guard"

  @moduledoc """
  Compiles a project in a compile worker (as `Sandbox.create_sandbox/3`
  would) and reports every call its security profile would refuse, and
  every call it would guard (see `Sandbox.SecurityController.scan/2`).

      mix sandbox.scan PATH [--profile high|medium|low] [--format text|json]

  ## Options

    * `--profile` — the security profile (default `medium`)
    * `--help` — this text
    * `--format` — `text` (default; one line per call site,
      `caller (file line): target [class]`) or `json`
      (`{"profile":..., "violations":[...], "guarded":[...]}`, each
      `{"caller":[m,f,a], "line":n, "target":[m,f,a], "class":c}`)

  The exit status is 1 when something would be refused (or the project
  cannot be compiled), 0 otherwise: for CI and editors.
  """

  use Mix.Task

  alias Sandbox.Tools.{JSON, MixTask}

  @usage "mix sandbox.scan PATH [--profile high|medium|low] [--format text|json]"

  @impl Mix.Task
  def run(args) do
    case MixTask.parse(
           args,
           [profile: :string, format: :string],
           @usage,
           @moduledoc,
           ~w(text json)
         ) do
      :help ->
        :ok

      {opts, path} ->
        scan(Path.expand(path), profile(Keyword.get(opts, :profile, "medium")), opts[:format])
    end
  end

  defp scan(path, profile, format) do
    MixTask.start()

    case Sandbox.SecurityController.scan(path, profile) do
      {:ok, result} ->
        print(format, profile, result)
        if result.violations != [], do: MixTask.fail()

      {:error, reason} ->
        Mix.shell().error("cannot scan #{path}: #{inspect(reason)}")
        MixTask.fail()
    end
  end

  defp profile(name) when name in ["high", "medium", "low"], do: String.to_atom(name)
  defp profile(other), do: Mix.raise("--profile must be high, medium or low, got: #{other}")

  defp print(:json, profile, result) do
    entry = fn v ->
      %{
        caller: Tuple.to_list(v.caller),
        line: v.line,
        target: Tuple.to_list(v.target),
        class: v.class
      }
    end

    Mix.shell().info(
      JSON.encode!(%{
        profile: profile,
        violations: Enum.map(result.violations, entry),
        guarded: Enum.map(result.guarded, entry)
      })
    )
  end

  defp print(:text, profile, result) do
    for v <- result.violations, do: Mix.shell().info("refused: " <> line(v))
    for v <- result.guarded, do: Mix.shell().info("guarded: " <> line(v))

    Mix.shell().info(
      "#{length(result.violations)} refused, #{length(result.guarded)} guarded under :#{profile}"
    )
  end

  defp line(%{caller: {m, f, a}, line: line, target: {tm, tf, ta}, class: class}) do
    caller = if f, do: "#{inspect(m)}.#{f}/#{a}", else: inspect(m)
    at = if line, do: " line #{line}", else: ""
    "#{caller}#{at}: #{inspect(tm)}.#{tf}/#{ta} [#{class}]"
  end
end
