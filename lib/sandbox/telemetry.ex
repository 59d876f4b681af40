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
  | `[:sandbox, :reload, :reloaded]` | `duration`, `processes` (migrated) | `sandbox_id`, `modules` (original names), `versions` (`%{module => new version}`) |
  | `[:sandbox, :reload, :rolled_back]` | `duration`, `processes` (migrated) | `sandbox_id`, `modules`, `versions` (`%{module => restored version}`), `reason` (`:requested`, or `{:crash, pid, exit_reason}` within a rollback window) |
  | `[:sandbox, :reload, :failed]` | `duration` | `sandbox_id`, `reason` (as returned; `{:rollback_failed, reason}` for an automatic rollback) |
  | `[:sandbox, :limit, :warning]` | `usage`, `limit` | `sandbox_id`, `limit` (`:max_memory`, `:max_processes` or `:max_cpu_percentage`): a sample found the sandbox at 80 % of the limit or more, after one that found it below |
  | `[:sandbox, :limit, :exceeded]` | `usage`, `limit` | `sandbox_id`, `limit` (`:max_memory` or `:max_processes`): the sandbox was stopped (`Sandbox.ResourceMonitor`) |
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
