defmodule Sandbox.ErrorHandler do
  @moduledoc """
  Classification of errors and the choice of what to do about them, for
  every component (the seed's `Sandbox.ErrorHandler`).

  Components do not decide on their own what a failure means: they call
  `handle_error/2` with the error and its context, and carry out the
  strategy it returns. Each decision is emitted as
  `[:sandbox, :error, :handled]` (measurements `%{count: 1}`, metadata
  `sandbox_id`, `category`, `strategy`, `operation`, `component`, `error`).

  ## Categories (`classify_error/1`)

    * `:compilation_error` — the compiler refused the code
      (`{:compilation_failed, diagnostics}`, `{:compile_timeout, ms}`,
      `{:compile_resource_limit, kind}`, invalid or unrelocatable BEAMs)
    * `:runtime_error` — the sandbox's code failed while running: a crash
      of its root supervisor, a failed start, a failed migration
    * `:resource_error` — a limit was exceeded (`{:limit_exceeded, limit}`)
    * `:security_error` — a forbidden operation (`{:security_violation, _}`)
    * `:system_error` — the library's own machinery failed: the supervising
      C-node died (`:cnode_down`, `{:worker_crashed, :cnode_down}`), a
      compile worker crashed, a load failed, or the kernel cannot confine
      compile workers as the profile requires
      (`{:confinement_unavailable, reason}`)

  ## Strategies (`suggest_recovery/2`)

    * `:retry` — do it again: a compile whose C-node died is run once more
      on the restarted C-node (`metadata.attempt` counts; a second failure
      is `{:error, :unrecoverable}`)
    * `:rollback` — keep, or go back to, the last good code: a failed
      reload or compile leaves the running code as it was; a crash of the
      root supervisor within the restart window (`max_seconds`) after a
      reload reverts that reload and restarts the sandbox
    * `:restart` — restart the sandbox's processes (within its restart
      intensity, `max_restarts` in `max_seconds`)
    * `:isolate` — stop the sandbox at once and keep it for inspection
      (security violations under the `:high` profile)
    * `:terminate` — give up: the sandbox stops with status `:error`
      (restart intensity exceeded, a resource limit exceeded, a failed
      create)

  ## Context

  `%{sandbox_id: id | nil, operation: atom, component: atom, timestamp:
  DateTime.t(), metadata: map}` (see `t:error_context/0`). `metadata` may
  carry what a decision needs: `attempt` (retries so far),
  `since_reload` (ms since the last reload, or `nil`), `restarts` (restarts
  within the window), `max_restarts`, `window` (ms), `profile`
  (`:high | :medium | :low`).
  """

  alias Sandbox.Telemetry

  @type error_category ::
          :compilation_error | :runtime_error | :resource_error | :security_error | :system_error

  @type recovery_strategy :: :retry | :rollback | :restart | :isolate | :terminate

  @type error_context :: %{
          sandbox_id: String.t() | nil,
          operation: atom,
          component: atom,
          timestamp: DateTime.t(),
          metadata: map
        }

  @doc "A context for `handle_error/2`; `timestamp` is now."
  @spec context(String.t() | nil, atom, atom, map) :: error_context
  def context(sandbox_id, operation, component, metadata \\ %{}) do
    %{
      sandbox_id: sandbox_id,
      operation: operation,
      component: component,
      timestamp: DateTime.utc_now(),
      metadata: metadata
    }
  end

  @doc """
  Classifies `error`, chooses the strategy for it in `context`, emits
  `[:sandbox, :error, :handled]` and returns `{:ok, strategy}`, or
  `{:error, :unrecoverable}` when nothing more can be done (a retry that
  already happened).
  """
  @spec handle_error(term, error_context) :: {:ok, recovery_strategy} | {:error, :unrecoverable}
  def handle_error(error, context) do
    category = classify_error(error)

    case suggest_recovery(category, Map.put(context, :error, error)) do
      :unrecoverable ->
        emit(error, context, category, :unrecoverable)
        {:error, :unrecoverable}

      strategy ->
        emit(error, context, category, strategy)
        {:ok, strategy}
    end
  end

  @doc "The category of an error term (see the module documentation)."
  @spec classify_error(term) :: error_category
  def classify_error({:error, reason}), do: classify_error(reason)
  def classify_error({:compilation_failed, _}), do: :compilation_error
  def classify_error({:compile_timeout, _}), do: :compilation_error
  def classify_error({:compile_resource_limit, _}), do: :compilation_error
  def classify_error({:invalid_beam, _, _}), do: :compilation_error
  def classify_error({:relocation_failed, _, _}), do: :compilation_error
  def classify_error({:duplicate_module, _, _}), do: :compilation_error
  def classify_error({:consolidated_protocol, _, _}), do: :compilation_error
  def classify_error({:limit_exceeded, _}), do: :resource_error
  def classify_error({:security_violation, _}), do: :security_error

  def classify_error(%{__exception__: true, __struct__: Sandbox.SecurityError}),
    do: :security_error

  def classify_error(:cnode_down), do: :system_error
  def classify_error({:worker_crashed, _}), do: :system_error
  def classify_error({:confinement_unavailable, _}), do: :system_error
  def classify_error({:load_failed, _}), do: :system_error
  def classify_error({:shim_failed, _, _}), do: :system_error
  def classify_error({:system_limit, _}), do: :system_error
  def classify_error({:host_application_failed, _, _}), do: :system_error
  def classify_error(_other), do: :runtime_error

  @doc """
  The strategy for an error of `category` in `context` (see the module
  documentation); `context` may hold the error itself under `:error`.
  Returns `:unrecoverable` when nothing more can be done.
  """
  @spec suggest_recovery(error_category, map) :: recovery_strategy | :unrecoverable
  def suggest_recovery(:compilation_error, %{operation: :create}), do: :terminate
  def suggest_recovery(:compilation_error, _context), do: :rollback

  def suggest_recovery(:system_error, %{error: error} = context) do
    attempt = get_in(context, [:metadata, :attempt]) || 0

    cond do
      cnode_down?(error) and attempt < 1 -> :retry
      cnode_down?(error) -> :unrecoverable
      context.operation in [:reload, :rollback] -> :rollback
      true -> :terminate
    end
  end

  def suggest_recovery(:system_error, context) do
    if context.operation in [:reload, :rollback], do: :rollback, else: :terminate
  end

  def suggest_recovery(:resource_error, _context), do: :terminate

  def suggest_recovery(:security_error, context) do
    if get_in(context, [:metadata, :profile]) == :high, do: :isolate, else: :rollback
  end

  def suggest_recovery(:runtime_error, %{operation: op}) when op in [:reload, :rollback],
    do: :rollback

  def suggest_recovery(:runtime_error, %{operation: :create}), do: :terminate

  def suggest_recovery(:runtime_error, context) do
    meta = Map.get(context, :metadata, %{})
    since = Map.get(meta, :since_reload)
    window = Map.get(meta, :window, 5_000)

    cond do
      is_integer(since) and since <= window -> :rollback
      Map.get(meta, :restarts, 0) <= Map.get(meta, :max_restarts, 3) -> :restart
      true -> :terminate
    end
  end

  defp cnode_down?(:cnode_down), do: true
  defp cnode_down?({:worker_crashed, :cnode_down}), do: true
  defp cnode_down?({:error, reason}), do: cnode_down?(reason)
  defp cnode_down?(_), do: false

  defp emit(error, context, category, strategy) do
    Telemetry.emit(:error, :handled, %{count: 1}, %{
      sandbox_id: context.sandbox_id,
      category: category,
      strategy: strategy,
      operation: context.operation,
      component: context.component,
      error: error
    })
  end
end
