defmodule Sandbox.Tools.MixTask do
  @moduledoc false
  # What the mix tasks share: option parsing with --help, the project path,
  # starting the library, output formats, and failing with exit status 1.

  @doc """
  Parses `args` with `switches` (plus `--help`/`-h`): `:help` when help was
  asked for (after printing `doc`), else `{opts, path}`. Raises `Mix.Error`
  for a missing or extra PATH, a missing directory, or a bad `--format`.
  """
  @spec parse([String.t()], keyword, String.t(), String.t(), [String.t()]) ::
          :help | {keyword, String.t()}
  def parse(args, switches, usage, doc, formats) do
    {opts, argv} =
      OptionParser.parse!(args, strict: [help: :boolean] ++ switches, aliases: [h: :help])

    if opts[:help] do
      Mix.shell().info(doc)
      :help
    else
      path =
        case argv do
          [path] -> path
          _ -> Mix.raise("expected one PATH\nusage: #{usage}")
        end

      unless File.dir?(path), do: Mix.raise("no such directory: #{path}")

      format = opts[:format] || "text"

      unless format in formats,
        do: Mix.raise("unknown --format #{format}; expected one of: #{Enum.join(formats, ", ")}")

      {Keyword.put(opts, :format, String.to_atom(format)), path}
    end
  end

  @doc "Starts the library (and the current project's applications) as `mix run` would."
  @spec start() :: :ok
  def start do
    Mix.Task.run("app.start")
    {:ok, _} = Application.ensure_all_started(:sandbox)
    :ok
  end

  @doc "Exits with status 1 (after the caller printed why)."
  @spec fail() :: no_return
  def fail, do: exit({:shutdown, 1})

  @doc "A module as Elixir writes it: `Foo.Bar`, `:foo`."
  @spec label(module) :: String.t()
  def label(module), do: inspect(module)

  @doc "A compiler error reason in words."
  @spec describe(term) :: String.t()
  def describe({:no_sources, path}), do: "no .ex or .erl sources under #{path}"
  def describe({:compile_timeout, ms}), do: "the compile took longer than #{ms} ms"
  def describe({:compile_resource_limit, kind}), do: "the compile went over its #{kind} limit"
  def describe({:worker_crashed, why}), do: "the compile worker crashed: #{inspect(why)}"

  def describe({:duplicate_module, m, files}),
    do: "#{inspect(m)} is defined in #{Enum.join(files, " and ")}"

  def describe({:file_too_large, path}), do: "#{path} is larger than the compile's max_file_size"
  def describe(reason), do: inspect(reason)
end
