defmodule Sandbox.IEx do
  @moduledoc """
  Helpers for IEx. Put `import Sandbox.IEx` in your `.iex.exs` (or type it
  at the prompt):

      iex> sandboxes()
      ID  STATUS   MEMORY   PROCS  UPTIME  VERSIONS
      a   running  28.4 KB  4      12 s    5 modules, Counter v2
      b   running  27.9 KB  4      11 s    5 modules, all v1

      iex> call("a", Counter, :increment)
      {:ok, 1}

      iex> reload("a", "examples/counter/lib/counter.ex")
      reloaded Counter (v3) in sandbox "a"
      {:ok, :hot_reloaded}

      iex> versions("a", Counter)
      Counter in sandbox "a"
        v1  1b2c3d4e5f60  2024-05-01 10:00:00Z
        v2  a9b8c7d6e5f4  2024-05-01 10:02:11Z
      * v3  0f1e2d3c4b5a  2024-05-01 10:05:42Z
      :ok

      iex> rollback("a", Counter)
      rolled Counter back to v2 in sandbox "a"
      {:ok, :rolled_back}

  Every helper prints what it did and returns the facade's result
  (`Sandbox.call/5`, `Sandbox.hot_reload_source/3`,
  `Sandbox.rollback_module/3`), so it can be matched on as well.
  """

  @doc """
  Prints a table of the live sandboxes: id, status, memory of their
  processes, process count, uptime and module versions (modules whose
  current version is above 1 are named). Returns `:ok`.
  """
  @spec sandboxes() :: :ok
  def sandboxes do
    rows =
      Sandbox.list_sandboxes()
      |> Enum.sort_by(& &1.id)
      |> Enum.map(fn info ->
        usage = info.resource_usage

        [
          info.id,
          status(info),
          bytes(usage.current_memory),
          Integer.to_string(usage.current_processes),
          duration(usage.uptime),
          versions_summary(info.id)
        ]
      end)

    case rows do
      [] -> IO.puts("no sandboxes")
      rows -> IO.puts(table(["ID", "STATUS", "MEMORY", "PROCS", "UPTIME", "VERSIONS"], rows))
    end
  end

  defp status(%{status: :error, error: error}), do: "error: #{inspect(error)}"
  defp status(%{status: status}), do: Atom.to_string(status)

  defp versions_summary(id) do
    case Sandbox.get_dependency_graph(id) do
      {:ok, graph} ->
        reloaded =
          for m <- graph |> Map.keys() |> Enum.sort(),
              {:ok, v} = Sandbox.get_current_version(id, m),
              v > 1,
              do: "#{inspect(m)} v#{v}"

        detail = if reloaded == [], do: "all v1", else: Enum.join(reloaded, ", ")
        "#{map_size(graph)} modules, #{detail}"

      {:error, _} ->
        "-"
    end
  end

  @doc """
  Calls `module.function(args)` (`module` by its original name) in sandbox
  `id`: `Sandbox.call/5`'s result.
  """
  @spec call(String.t(), module, atom, [term]) :: Sandbox.result()
  def call(id, module, function, args \\ []), do: Sandbox.call(id, module, function, args)

  @doc """
  Compiles `file` (a source of the sandbox's project, or any `.ex` file)
  and hot reloads what changed in sandbox `id`
  (`Sandbox.hot_reload_source/3`); prints the modules reloaded and their
  new versions, or the compile errors.
  """
  @spec reload(String.t(), Path.t()) :: {:ok, :hot_reloaded | :unchanged} | {:error, term}
  def reload(id, file) do
    {result, event} =
      with_reload_event(id, fn ->
        Sandbox.hot_reload_source(id, {:file, file})
      end)

    case {result, event} do
      {{:ok, :hot_reloaded}, %{versions: versions, removed: removed}} ->
        changed =
          Enum.map_join(Enum.sort(versions), ", ", fn {m, v} -> "#{inspect(m)} (v#{v})" end)

        gone =
          if removed == [], do: "", else: "; removed #{Enum.map_join(removed, ", ", &inspect/1)}"

        IO.puts("reloaded #{changed}#{gone} in sandbox #{inspect(id)}")

      {{:ok, :unchanged}, _} ->
        IO.puts("unchanged: #{file} compiles to the code sandbox #{inspect(id)} runs")

      {{:error, {:compilation_failed, diagnostics}}, _} ->
        IO.puts("compilation failed:")

        for d <- diagnostics do
          where = Enum.join(Enum.reject([d.file, d.line], &is_nil/1), ":")
          IO.puts("  #{where}: #{d.message}")
        end

      {{:error, reason}, _} ->
        IO.puts("reload failed: #{inspect(reason)}")
    end

    result
  end

  @doc """
  Rolls `module` of sandbox `id` back to `version` (by default the newest
  kept version older than the current one) with `Sandbox.rollback_module/3`.
  """
  @spec rollback(String.t(), module, pos_integer | nil) :: {:ok, :rolled_back} | {:error, term}
  def rollback(id, module, version \\ nil) do
    version = version || previous_version(id, module)

    result =
      if version,
        do: Sandbox.rollback_module(id, module, version),
        else: {:error, {:no_previous_version, module}}

    case result do
      {:ok, :rolled_back} ->
        IO.puts("rolled #{inspect(module)} back to v#{version} in sandbox #{inspect(id)}")

      {:error, reason} ->
        IO.puts("rollback failed: #{inspect(reason)}")
    end

    result
  end

  defp previous_version(id, module) do
    with {:ok, current} <- Sandbox.get_current_version(id, module) do
      id
      |> Sandbox.list_module_versions(module)
      |> Enum.map(& &1.version)
      |> Enum.filter(&(&1 < current))
      |> Enum.max(fn -> nil end)
    else
      _ -> nil
    end
  end

  @doc """
  Prints the kept versions of `module` (original name) in sandbox `id`,
  oldest first: version, checksum (its first 12 hex digits), when it was
  loaded, and when a rollback left it; `*` marks the current one. Returns
  `:ok`.
  """
  @spec versions(String.t(), module) :: :ok
  def versions(id, module) do
    case Sandbox.list_module_versions(id, module) do
      [] ->
        IO.puts("#{inspect(module)} is not a module of sandbox #{inspect(id)}")

      list ->
        {:ok, current} = Sandbox.get_current_version(id, module)

        rows =
          for v <- list do
            mark = if v.version == current, do: "*", else: " "
            left = if v.rolled_back_at, do: "rolled back #{stamp(v.rolled_back_at)}", else: ""
            [mark, "v#{v.version}", String.slice(v.checksum, 0, 12), stamp(v.loaded_at), left]
          end

        IO.puts("#{inspect(module)} in sandbox #{inspect(id)}")
        IO.puts(table(nil, rows))
    end
  end

  # Runs `fun` while subscribed to the sandbox's events (in a process of
  # its own, so that the caller's own subscriptions stay as they are);
  # returns its result and the metadata of its reload event.
  defp with_reload_event(id, fun) do
    task =
      Task.async(fn ->
        Sandbox.subscribe(id)
        result = fun.()

        receive do
          {:sandbox_event, [:sandbox, :reload, event], _m, %{sandbox_id: ^id} = meta}
          when event in [:reloaded, :failed] ->
            {result, meta}
        after
          0 -> {result, nil}
        end
      end)

    Task.await(task, :infinity)
  end

  ## Formatting

  defp table(header, rows) do
    all = if header, do: [header | rows], else: rows

    widths =
      all
      |> Enum.zip_with(& &1)
      |> Enum.map(fn col -> col |> Enum.map(&String.length/1) |> Enum.max() end)

    all
    |> Enum.map(fn row ->
      row
      |> Enum.zip(widths)
      |> Enum.map_join("  ", fn {cell, w} -> String.pad_trailing(cell, w) end)
      |> String.trim_trailing()
    end)
    |> Enum.join("\n")
  end

  defp bytes(n) when n < 1024, do: "#{n} B"
  defp bytes(n) when n < 1024 * 1024, do: "#{Float.round(n / 1024, 1)} KB"
  defp bytes(n), do: "#{Float.round(n / (1024 * 1024), 1)} MB"

  defp duration(ms) when ms < 1000, do: "#{ms} ms"
  defp duration(ms) when ms < 120_000, do: "#{div(ms, 1000)} s"
  defp duration(ms) when ms < 7_200_000, do: "#{div(ms, 60_000)} min"
  defp duration(ms), do: "#{div(ms, 3_600_000)} h"

  defp stamp(%DateTime{} = t), do: t |> DateTime.truncate(:second) |> DateTime.to_iso8601()
  defp stamp(other), do: inspect(other)
end
