defmodule Sandbox.Telemetry do
  @moduledoc """
  Lifecycle and reload events.

  Every event is emitted as `[:sandbox, component, event]` with a map of
  measurements and a map of metadata that always holds `:sandbox_id`. It
  goes to `:telemetry.execute/3` when the `:telemetry` application is
  loaded (there is no dependency on it), and as the message

      {:sandbox_event, [:sandbox, component, event], measurements, metadata}

  to every process that called `Sandbox.subscribe/1` with the sandbox's id
  or with `:all`.

  ## Events

  | event | measurements | metadata |
  |---|---|---|
  | `[:sandbox, :manager, :created]` | `duration` (native units) | `sandbox_id`, `app_name`, `supervisor_module` |
  | `[:sandbox, :manager, :create_failed]` | `duration` | `sandbox_id`, `reason` |
  | `[:sandbox, :manager, :destroyed]` | `duration` | `sandbox_id` |
  | `[:sandbox, :manager, :restarted]` | `restart_count` | `sandbox_id`, `reason` (`:requested` or the root supervisor's exit reason) |
  | `[:sandbox, :manager, :failed]` | `restart_count` | `sandbox_id`, `reason` (restart intensity exceeded) |
  | `[:sandbox, :reload, :reloaded]` | `duration`, `processes` (migrated) | `sandbox_id`, `modules` (original names: added, changed and removed), `added`, `removed`, `versions` (`%{module => new version}`), `trigger` (`:api`, `:file_watcher`, or `:cluster` for the commit of a `Sandbox.Cluster` reload) |
  | `[:sandbox, :reload, :rolled_back]` | `duration`, `processes` (migrated) | `sandbox_id`, `modules`, `versions` (`%{module => restored version}`), `reason` (`:requested`; `{:crash, pid, exit_reason}` within a rollback window; `{:root_crashed, exit_reason}` when the root supervisor died soon after a reload; `:cluster_rollback` when a `Sandbox.Cluster` reload is undone because another node failed its commit) |
  | `[:sandbox, :reload, :failed]` | `duration` | `sandbox_id`, `reason` (as returned; `{:compilation_failed, diagnostics}` for a compile error; `{:rollback_failed, reason}` for an automatic rollback; `{:aborted, why}` for a change prepared by `Sandbox.Cluster` and abandoned), `trigger`, `modules` |
  | `[:sandbox, :error, :handled]` | `count` (1) | `sandbox_id` (`nil` outside a sandbox), `category`, `strategy`, `operation`, `component`, `error` (see `Sandbox.ErrorHandler`) |
  """

  @registry Sandbox.EventRegistry

  @doc false
  def registry, do: @registry

  @doc """
  Subscribes the calling process to the events of sandbox `id`, or of every
  sandbox with `:all`. Subscriptions end when the process exits.
  """
  @spec subscribe(String.t() | :all) :: :ok
  def subscribe(id_or_all) do
    {:ok, _} = Registry.register(@registry, id_or_all, nil)
    :ok
  end

  @doc "Ends a subscription made with `subscribe/1`."
  @spec unsubscribe(String.t() | :all) :: :ok
  def unsubscribe(id_or_all), do: Registry.unregister(@registry, id_or_all)

  @doc """
  Emits `[:sandbox, component, event]`. `metadata` must hold `:sandbox_id`.
  """
  @spec emit(atom, atom, map, map) :: :ok
  def emit(component, event, measurements, %{sandbox_id: id} = metadata) do
    name = [:sandbox, component, event]

    if Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3) do
      apply(:telemetry, :execute, [name, measurements, metadata])
    end

    message = {:sandbox_event, name, measurements, metadata}

    for key <- [id, :all] do
      Registry.dispatch(@registry, key, fn entries ->
        for {pid, _} <- entries, do: send(pid, message)
      end)
    end

    :ok
  end
end
