defmodule Sandbox.Telemetry do
  @moduledoc """
  Lifecycle and reload events, and spans.

  Every event is emitted as `[:sandbox, component, event]` with a map of
  measurements and a map of metadata that always holds `:sandbox_id`. It
  goes to `:telemetry.execute/3` when the `:telemetry` module is loaded (as
  it is once the `:telemetry` application has started; there is no
  dependency on it, and nothing is looked up on the code path), and as the
  message

      {:sandbox_event, [:sandbox, component, event], measurements, metadata}

  to every process that called `Sandbox.subscribe/1` with the sandbox's id
  or with `:all`.

  ## Spans

  Creating a sandbox, compiling and reloading are spans, as Phoenix and
  Finch emit them (see `span/3`): `[:sandbox, name, :start]` when the work
  begins, then `[:sandbox, name, :stop]` when it returns or
  `[:sandbox, name, :exception]` when it raises, exits or throws. All three
  carry `monotonic_time`; `:start` carries `system_time` (`System.system_time/0`,
  native units), `:stop` and `:exception` carry `duration` (native units;
  `System.convert_time_unit/3` converts it). The three events of one span
  share their metadata and its `telemetry_span_context` (a reference);
  `:stop` adds `result` (`:ok` or `:error`) and, for an error, `error` (the
  reason); `:exception` adds `kind`, `reason` and `stacktrace`. A span runs
  in the calling process (the caller of `Sandbox.create_sandbox/3`, of the
  compiler, or the sandbox's `Sandbox.Instance` for a reload), so tracing
  tools that keep their context in the process see it.

  ## Events

  Every event, spans included:

  | event | measurements | metadata |
  |---|---|---|
  | `[:sandbox, :create, :start]` | `system_time`, `monotonic_time` | `sandbox_id`, `module_or_app`, `sandbox_path`, `telemetry_span_context` |
  | `[:sandbox, :create, :stop]` | `duration`, `monotonic_time` | as `:start`, plus `result` (`:ok` or `:error`) and `error` (the reason of an error) |
  | `[:sandbox, :create, :exception]` | `duration`, `monotonic_time` | as `:start`, plus `kind`, `reason`, `stacktrace` |
  | `[:sandbox, :compile, :start]` | `system_time`, `monotonic_time` | `sandbox_id` (`nil`: a compile serves a project, not one sandbox), `path`, `entry` (`:compile_sandbox`, `:compile_file` or `:incremental_compile`), `telemetry_span_context` |
  | `[:sandbox, :compile, :stop]` | `duration`, `monotonic_time` | as `:start`, plus `result`, `error`, and `cached` (whether the compile cache served it) on success |
  | `[:sandbox, :compile, :exception]` | `duration`, `monotonic_time` | as `:start`, plus `kind`, `reason`, `stacktrace` (an `ArgumentError` for bad options) |
  | `[:sandbox, :reload, :start]` | `system_time`, `monotonic_time` | `sandbox_id`, `kind` (`:reload` or `:rollback`), `trigger` (`:api` or `:file_watcher`), `telemetry_span_context` |
  | `[:sandbox, :reload, :stop]` | `duration`, `monotonic_time` | as `:start`, plus `result`, `error` |
  | `[:sandbox, :reload, :exception]` | `duration`, `monotonic_time` | as `:start`, plus `kind`, `reason`, `stacktrace` |
  | `[:sandbox, :manager, :created]` | `duration` (native units) | `sandbox_id`, `app_name`, `supervisor_module` |
  | `[:sandbox, :manager, :create_failed]` | `duration` | `sandbox_id`, `reason` |
  | `[:sandbox, :manager, :destroyed]` | `duration` | `sandbox_id` |
  | `[:sandbox, :manager, :restarted]` | `restart_count` | `sandbox_id`, `reason` (`:requested` or the root supervisor's exit reason) |
  | `[:sandbox, :manager, :failed]` | `restart_count` | `sandbox_id`, `reason` (restart intensity exceeded) |
  | `[:sandbox, :reload, :reloaded]` | `duration`, `processes` (migrated) | `sandbox_id`, `modules` (original names: added, changed and removed), `added`, `removed`, `versions` (`%{module => new version}`), `trigger` (`:api`, `:file_watcher`, or `:cluster` for the commit of a `Sandbox.Cluster` reload) |
  | `[:sandbox, :reload, :rolled_back]` | `duration`, `processes` (migrated) | `sandbox_id`, `modules`, `versions` (`%{module => restored version}`), `reason` (`:requested`; `{:crash, pid, exit_reason}` within a rollback window; `{:root_crashed, exit_reason}` when the root supervisor died soon after a reload; `:cluster_rollback` when a `Sandbox.Cluster` reload is undone because another node failed its commit) |
  | `[:sandbox, :reload, :failed]` | `duration` | `sandbox_id`, `reason` (as returned; `{:compilation_failed, diagnostics}` for a compile error; `{:rollback_failed, reason}` for an automatic rollback; `{:aborted, why}` for a change prepared by `Sandbox.Cluster` and abandoned), `trigger`, `modules` |
  | `[:sandbox, :error, :handled]` | `count` (1) | `sandbox_id` (`nil` outside a sandbox), `category`, `strategy`, `operation`, `component`, `error` (see `Sandbox.ErrorHandler`) |
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

    # A BIF: no code-path search when :telemetry is absent (which, through
    # the code server, took milliseconds on every event).
    if function_exported?(:telemetry, :execute, 3) do
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

  @doc """
  Runs `fun` as the span `[:sandbox, name]` (see "Spans" above) and returns
  its result.

  `fun` returns `{result, stop_metadata}`, as with `:telemetry.span/3`:
  `stop_metadata` is merged into the `:stop` event's metadata. `metadata`
  must hold `:sandbox_id`. An exception, exit or throw in `fun` emits
  `:exception` and is raised again with its stacktrace.

      Sandbox.Telemetry.span(:compile, %{sandbox_id: nil, path: p, entry: :mine}, fn ->
        result = do_compile(p)
        {result, Sandbox.Telemetry.outcome(result)}
      end)
  """
  @spec span(atom, map, (() -> {result, map})) :: result when result: term
  def span(name, %{sandbox_id: _} = metadata, fun) when is_atom(name) and is_function(fun, 0) do
    metadata = Map.put_new(metadata, :telemetry_span_context, make_ref())
    start = System.monotonic_time()

    emit(name, :start, %{system_time: System.system_time(), monotonic_time: start}, metadata)

    try do
      fun.()
    catch
      kind, reason ->
        stop = System.monotonic_time()

        emit(
          name,
          :exception,
          %{duration: stop - start, monotonic_time: stop},
          Map.merge(metadata, %{kind: kind, reason: reason, stacktrace: __STACKTRACE__})
        )

        :erlang.raise(kind, reason, __STACKTRACE__)
    else
      {result, stop_metadata} when is_map(stop_metadata) ->
        stop = System.monotonic_time()

        emit(
          name,
          :stop,
          %{duration: stop - start, monotonic_time: stop},
          Map.merge(metadata, stop_metadata)
        )

        result
    end
  end

  @doc """
  The `:stop` metadata that describes a result: `%{result: :ok}` for `:ok`
  and `{:ok, _}`, `%{result: :error, error: reason}` for
  `{:error, reason}`, `%{result: :ok}` for anything else.
  """
  @spec outcome(term) :: %{required(:result) => :ok | :error, optional(:error) => term}
  def outcome({:error, reason}), do: %{result: :error, error: reason}
  def outcome(_ok), do: %{result: :ok}
end
