defmodule Mix.Tasks.Sandbox.Run do
  @shortdoc "Runs a project in a sandbox of this VM, reloading it as its sources change"

  @moduledoc """
  Starts a sandbox from the project at `PATH` in the current VM and keeps
  it running until interrupted, like `mix run --no-halt`.

      mix sandbox.run PATH [--target APP_OR_MODULE] [--id ID] [--watch]

  ## Options

    * `--target` — the project's OTP application (`my_app`) or the name of
      its supervisor module (`MyApp.Supervisor`); default: the project's
      application (a plain directory of sources needs `--target`)
    * `--id` — the sandbox id (default: made from the directory's name)
    * `--watch` — reload automatically when the sources change
      (`Sandbox.FileWatcher`)
    * `--help` — this text

  Each reload is printed as it happens (`reloaded: Mod1, Mod2`), and each
  compile error as `file:line: message`. The exit status is 1 when the
  sandbox cannot be created.
  """

  use Mix.Task

  @switches [target: :string, id: :string, watch: :boolean, help: :boolean]

  @impl Mix.Task
  def run(args) do
    {opts, argv} = OptionParser.parse!(args, strict: @switches, aliases: [h: :help])
    if opts[:help], do: Mix.shell().info(@moduledoc), else: start(opts, argv)
  end

  defp start(opts, argv) do
    path =
      case argv do
        [path] -> Path.expand(path)
        _ -> Mix.raise("expected one PATH: mix sandbox.run PATH [--target T] [--id ID] [--watch]")
      end

    unless File.dir?(path), do: Mix.raise("no such directory: #{path}")

    Mix.Task.run("app.start")
    id = opts[:id] || default_id(path)
    target = target(opts[:target], path)
    :ok = Sandbox.subscribe(id)

    case Sandbox.create_sandbox(id, target,
           sandbox_path: path,
           auto_reload: Keyword.get(opts, :watch, false)
         ) do
      {:ok, info} ->
        Mix.shell().info(
          "sandbox #{id} running #{inspect(info.app_name || info.supervisor_module)}" <>
            if(opts[:watch], do: ", watching #{path}", else: "")
        )

        loop(id)

      {:error, reason} ->
        Mix.shell().error("sandbox #{id} could not start: #{format_reason(reason)}")
        exit({:shutdown, 1})
    end
  end

  defp loop(id) do
    receive do
      {:sandbox_event, [:sandbox, :reload, :reloaded], _m, %{sandbox_id: ^id} = meta} ->
        Mix.shell().info("reloaded: #{Enum.map_join(meta.modules, ", ", &inspect/1)}")

      {:sandbox_event, [:sandbox, :reload, :failed], _m, %{sandbox_id: ^id, reason: reason}} ->
        Mix.shell().error("reload failed: #{format_reason(reason)}")

      {:sandbox_event, [:sandbox, :manager, :failed], _m, %{sandbox_id: ^id, reason: reason}} ->
        Mix.shell().error("sandbox #{id} failed: #{inspect(reason)}")

      _other ->
        :ok
    end

    loop(id)
  end

  @doc false
  def format_reason({:compilation_failed, diagnostics}) do
    lines =
      for d <- diagnostics do
        where = Enum.join(Enum.reject([d[:file], d[:line]], &is_nil/1), ":")
        if where == "", do: d.message, else: "#{where}: #{d.message}"
      end

    "compilation failed\n" <> Enum.join(lines, "\n")
  end

  def format_reason(reason), do: inspect(reason)

  defp default_id(path) do
    base = path |> Path.basename() |> String.replace(~r/[^A-Za-z0-9_-]/, "_")
    base = if base =~ ~r/\A[A-Za-z0-9]/, do: base, else: "s" <> base
    String.slice(base, 0, 64)
  end

  defp target(nil, path) do
    case Sandbox.IsolatedCompiler.compile_sandbox(path, write_artifacts: false) do
      {:ok, %{app: %{name: name}}} -> name
      {:ok, _} -> Mix.raise("#{path} is not a mix project: give --target")
      {:error, reason} -> Mix.raise("cannot compile #{path}: #{format_reason(reason)}")
    end
  end

  defp target(name, _path) do
    if name =~ ~r/\A[A-Z]/,
      do: Module.concat([name]),
      else: String.to_atom(name)
  end
end
