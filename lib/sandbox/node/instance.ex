defmodule Sandbox.Node.Instance do
  @moduledoc """
  The host's side of a sandbox with `isolation: :node` (`Sandbox.Node`):
  what `Sandbox.Instance` is for an in-VM sandbox, and answering the same
  requests, so that every function of `Sandbox` works on it.

  It compiles the project in the host (a compile worker, cached), takes a
  VM from `Sandbox.Node.Pool` and has the VM's agent create the sandbox
  from those BEAMs. Then it forwards the instance's requests (reloads,
  rollbacks, versions, restart) to the sandbox's instance in the VM,
  mirrors the sandbox's status into the `Sandbox.Manager` table, forwards
  its events to `Sandbox.Telemetry` (under the same id), watches the
  sources itself for automatic reload (the compile happens in the host,
  the reload in the VM), and keeps the sandbox's current code (an export
  after each change) to start it again in a new VM after a crash.

  The VM's death is a crash of the sandbox (see `Sandbox.Node`,
  "Failure"); destroy kills the VM's process tree and returns once it is
  gone.
  """

  use GenServer, restart: :temporary

  alias Sandbox.{ErrorHandler, FileWatcher, IsolatedCompiler, Manager, SecurityController}
  alias Sandbox.{Telemetry}
  alias Sandbox.Models.SandboxState
  alias Sandbox.Node.{Conn, Pool, Wire}

  # Inner events the host emits itself (its create span and lifecycle).
  @dropped [
    [:sandbox, :create, :start],
    [:sandbox, :create, :stop],
    [:sandbox, :create, :exception],
    [:sandbox, :manager, :created],
    [:sandbox, :manager, :destroyed],
    [:sandbox, :manager, :create_failed]
  ]

  @statuses [
    :initializing,
    :compiling,
    :starting,
    :running,
    :reloading,
    :stopping,
    :stopped,
    :error
  ]
  @create_timeout 120_000

  @doc false
  def child_spec(arg),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [arg]}, restart: :temporary}

  @doc "Starts the instance of `:node` sandbox `id` (it does nothing until its setup)."
  @spec start_link({String.t(), atom, Sandbox.Config.t()}) :: GenServer.on_start()
  def start_link({id, target, config}), do: GenServer.start_link(__MODULE__, {id, target, config})

  ## Server

  @impl true
  def init({id, target, config}) do
    Process.flag(:trap_exit, true)
    Manager.assign(id, self())

    state = %{
      id: id,
      target: target,
      config: config,
      info: %SandboxState{
        id: id,
        created_at: DateTime.utc_now(),
        resource_limits: config.resource_limits,
        security_profile: config.security_profile,
        sandbox_path: config.sandbox_path,
        isolation: :node
      },
      conn: nil,
      os_pid: nil,
      class: nil,
      landlock: nil,
      started_at: nil,
      build: nil,
      restarts: [],
      restart_base: 0,
      inner_restarts: 0,
      inner_usage: nil,
      pending: %{},
      next_tag: 1
    }

    publish(state)
    {:ok, state}
  end

  @impl true
  def handle_call({:setup, build}, _from, state) do
    t0 = System.monotonic_time()

    with {:ok, state} <- confine(state),
         {:ok, state} <- compile(state, build),
         {:ok, state} <- start_vm(state),
         {:ok, state} <- start_watch(state, state.config.auto_reload) do
      publish(state, listed: true)

      Telemetry.emit(:manager, :created, %{duration: System.monotonic_time() - t0}, %{
        sandbox_id: state.id,
        app_name: state.info.app_name,
        supervisor_module: state.info.supervisor_module
      })

      audit(state, :created, %{
        sandbox_path: state.config.sandbox_path,
        profile: state.config.security_profile.isolation_level,
        isolation: :node,
        os_pid: state.os_pid,
        confined: state.landlock != nil
      })

      {:reply, {:ok, public_info(state)}, state}
    else
      {:error, reason, state} ->
        {:ok, _} = ErrorHandler.handle_error(reason, context(state, :create))
        audit(state, :refused, %{operation: :create, reason: reason})
        state = stop_vm(state)
        Manager.release(state.id, self())

        Telemetry.emit(:manager, :create_failed, %{duration: System.monotonic_time() - t0}, %{
          sandbox_id: state.id,
          reason: reason
        })

        {:stop, :normal, {:error, reason}, state}
    end
  end

  def handle_call(:destroy, _from, state) do
    t0 = System.monotonic_time()
    publish(status(state, :stopping), listed: false)
    if state.info.auto_reload_enabled, do: FileWatcher.unwatch(state.id)
    state = stop_vm(state)
    Manager.release(state.id, self())

    Telemetry.emit(:manager, :destroyed, %{duration: System.monotonic_time() - t0}, %{
      sandbox_id: state.id
    })

    audit(state, :destroyed, %{isolation: :node})
    {:stop, :normal, :ok, state}
  end

  # A sandbox whose VM is gone (status :error) starts again in a new one.
  def handle_call(:restart, _from, %{conn: nil} = state) do
    state = %{state | restart_base: state.info.restart_count + 1}

    case start_vm(status(state, :starting)) do
      {:ok, state} ->
        state = clear_error(state)
        publish(state, listed: true)
        emit_restarted(state, :requested)
        {:reply, {:ok, public_info(state)}, state}

      {:error, reason, state} ->
        state = failed(state, reason)
        {:reply, {:error, reason}, state}
    end
  end

  def handle_call({:versions, :project}, _from, state),
    do: {:reply, {:ok, {state.config.sandbox_path, compile_opts(state.config)}}, state}

  def handle_call({:auto_reload, on?}, _from, state) do
    case start_watch(state, on?, true) do
      {:ok, state} ->
        publish(state, listed: true)
        {:reply, :ok, state}

      {:error, reason, state} ->
        {:reply, {:error, reason}, state}
    end
  end

  def handle_call(:group_leader, _from, state), do: {:reply, nil, state}

  def handle_call({:app, _op, _app}, _from, state),
    do: {:reply, {:error, {:not_supported, :node}}, state}

  def handle_call(msg, _from, state)
      when elem(msg, 0) in [:prepare, :commit, :abort, :revert],
      do: {:reply, {:error, {:not_supported, :node}}, state}

  # The rest goes to the sandbox's instance in the VM.
  def handle_call(msg, from, state) do
    cond do
      state.conn == nil ->
        {:reply, {:error, :not_found}, state}

      (error = unsendable(msg, state.id)) != :ok ->
        {:reply, error, state}

      true ->
        {:noreply, forward(state, msg, {:call, from, kind(msg)})}
    end
  end

  @impl true
  def handle_cast(_msg, state), do: {:noreply, state}

  @impl true
  def handle_info({:node_reply, conn, tag, result, summary}, %{conn: conn} = state) do
    {entry, pending} = Map.pop(state.pending, tag)
    state = apply_summary(%{state | pending: pending}, summary)
    publish(state, listed: true)

    case entry do
      {:call, from, kind} ->
        GenServer.reply(from, reply(kind, result, state))
        {:noreply, after_change(state, kind, result)}

      :export ->
        case result do
          {:ok, %{build: build}} when is_map(build) -> {:noreply, %{state | build: build}}
          _ -> {:noreply, state}
        end

      nil ->
        {:noreply, state}
    end
  end

  def handle_info({:node_event, conn, name, meas, meta, summary}, %{conn: conn} = state),
    do: {:noreply, event(state, name, meas, meta, summary)}

  def handle_info({:node_summary, conn, summary}, %{conn: conn} = state) do
    state = apply_summary(state, summary)
    publish(state, listed: true)
    {:noreply, state}
  end

  def handle_info({:node_down, conn, down}, %{conn: conn} = state),
    do: {:noreply, vm_down(state, down)}

  # Replies of a VM that is gone already.
  def handle_info({:node_reply, _conn, tag, result, _summary}, state) do
    case Map.pop(state.pending, tag) do
      {{:call, from, kind}, pending} ->
        GenServer.reply(from, reply(kind, result, state))
        {:noreply, %{state | pending: pending}}

      {_, pending} ->
        {:noreply, %{state | pending: pending}}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    # A crash of the instance itself must not leave the VM behind.
    _ = stop_vm(state)
    Sandbox.Node.delete_usage(state.id)
    :ok
  end

  ## Compile and start

  # The VM's confinement class (Sandbox.Node.Confinement), decided before
  # anything runs: a :high sandbox is refused here where the kernel cannot
  # confine its VM.
  defp confine(state) do
    c = state.config

    case Sandbox.Node.Confinement.resolve(c.security_profile, c.sandbox_path) do
      {:ok, class} -> {:ok, %{state | class: class}}
      {:error, reason} -> {:error, reason, state}
    end
  end

  defp compile(state, %{} = build), do: {:ok, %{state | build: build}}

  defp compile(state, nil) do
    publish(status(state, :compiling))

    case IsolatedCompiler.compile_sandbox(state.config.sandbox_path, compile_opts(state.config)) do
      {:ok, info} ->
        build = %{
          modules: info.modules,
          app: info.app,
          app_env: info.app_env,
          config: info.config
        }

        {:ok, %{state | build: build}}

      {:error, reason} ->
        {:error, reason, state}
    end
  end

  defp compile_opts(config) do
    [
      compile_timeout: config.compile_timeout,
      compile_limits: config.compile_limits,
      write_artifacts: false,
      validate_beams: false,
      confine: Sandbox.Config.compile_confinement(config.security_profile)
    ]
  end

  # The create options of the sandbox in the VM: the host's, with the
  # compiled project as :prebuilt (automatic reload is the host's).
  defp inner_options(state) do
    c = state.config

    opts = [
      sandbox_path: c.sandbox_path,
      supervisor_args: c.supervisor_args,
      resource_limits: c.resource_limits,
      security_profile: c.security_profile,
      state_migration: c.state_migration,
      max_restarts: c.max_restarts,
      max_seconds: c.max_seconds,
      max_versions: c.max_versions,
      capture_output: c.capture_output,
      keep_atoms: c.keep_atoms,
      prebuilt: state.build
    ]

    with :ok <- Wire.check_serialisable(c.supervisor_args, state.id),
         :ok <- Wire.check_serialisable(c.state_migration, state.id),
         do: {:ok, Wire.rehome(opts, :"host@sandbox.invalid")}
  end

  # A VM from the pool, and the sandbox created in it.
  defp start_vm(state) do
    publish(status(state, :starting))

    with {:ok, opts} <- wrap(inner_options(state), state),
         {:ok, conn, meta} <-
           wrap(
             Pool.checkout(self(), state.id, state.config.resource_limits,
               confinement: state.class
             ),
             state
           ) do
      state = %{
        state
        | conn: conn,
          os_pid: meta.os_pid,
          landlock: meta[:landlock],
          started_at: System.monotonic_time(:millisecond),
          info: %{state.info | os_pid: meta.os_pid},
          inner_usage: nil
      }

      case await(state, {:create, state.id, state.target, opts}, @create_timeout) do
        {:ok, {:ok, _inner_info}, state} ->
          {:ok, state}

        {:ok, {:error, reason}, state} ->
          {:error, reason, stop_vm(state)}

        {:ok, other, state} ->
          {:error, {:start_failed, :node, other}, stop_vm(state)}

        {:down, down, state} ->
          {:error, down_reason(down), state}
      end
    end
  end

  defp wrap({:error, reason}, state), do: {:error, reason, state}
  defp wrap(ok, _state), do: ok

  # Sends `request` and waits for its reply, handling the VM's events and
  # summaries in the order they come (they precede the reply on the wire).
  defp await(state, request, timeout) do
    {tag, state} = next_tag(state)
    Conn.send_request(state.conn, request, tag)
    deadline = System.monotonic_time(:millisecond) + timeout
    await_loop(state, tag, deadline)
  end

  defp await_loop(%{conn: conn} = state, tag, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:node_reply, ^conn, ^tag, result, summary} ->
        state = apply_summary(state, summary)
        {:ok, result, state}

      {:node_event, ^conn, name, meas, meta, summary} ->
        await_loop(event(state, name, meas, meta, summary), tag, deadline)

      {:node_summary, ^conn, summary} ->
        await_loop(apply_summary(state, summary), tag, deadline)

      {:node_down, ^conn, down} ->
        {:down, down, %{state | conn: nil, os_pid: nil, info: %{state.info | os_pid: nil}}}
    after
      left ->
        state = stop_vm(state)
        {:down, {:vm_exited, :create_timeout}, state}
    end
  end

  defp down_reason({:limit_exceeded, _} = limit), do: limit
  defp down_reason(other), do: {:start_failed, :node, other}

  defp stop_vm(%{conn: nil} = state), do: state

  defp stop_vm(%{conn: conn} = state) do
    Conn.stop(conn)
    Sandbox.Node.delete_usage(state.id)
    # Requests still waiting for this VM get their answer.
    for {_tag, {:call, from, kind}} <- state.pending,
        do: GenServer.reply(from, reply(kind, {:error, :not_found}, state))

    %{state | conn: nil, os_pid: nil, pending: %{}, info: %{state.info | os_pid: nil}}
  end

  ## Forwarding

  defp forward(state, msg, entry) do
    {tag, state} = next_tag(state)

    Conn.send_request(
      state.conn,
      {:instance, state.id, Wire.rehome(msg, :"host@sandbox.invalid")},
      tag
    )

    %{state | pending: Map.put(state.pending, tag, entry)}
  end

  defp next_tag(state), do: {state.next_tag, %{state | next_tag: state.next_tag + 1}}

  defp kind({:reload, _, _}), do: :change
  defp kind({:rollback, _, _}), do: :change
  defp kind(:restart), do: :restart
  defp kind(_), do: :plain

  # A reload's migration function, or anything else sent, must be code the
  # VM has.
  defp unsendable({:reload, _beams, opts}, id),
    do: Wire.check_serialisable(Keyword.get(opts, :state_migration), id)

  defp unsendable(_msg, _id), do: :ok

  defp reply(:restart, {:ok, _}, state), do: {:ok, public_info(state)}
  defp reply(_kind, {:error, {:vm_down, _}}, _state), do: {:error, :not_found}
  defp reply(_kind, result, _state), do: result

  # After a change, the current code is fetched again (for a restart in a
  # new VM).
  defp after_change(state, :change, {:ok, _}), do: export(state)
  defp after_change(state, _kind, _result), do: state

  defp export(%{conn: nil} = state), do: state

  defp export(state) do
    {tag, state} = next_tag(state)
    Conn.send_request(state.conn, {:instance, state.id, :export}, tag)
    %{state | pending: Map.put(state.pending, tag, :export)}
  end

  ## Events and status

  defp event(state, name, meas, meta, summary) do
    state = apply_summary(state, summary)
    publish(state, listed: true)

    if name not in @dropped do
      meas =
        if Map.has_key?(meas, :restart_count),
          do: %{meas | restart_count: state.info.restart_count},
          else: meas

      Telemetry.emit(
        Enum.at(name, 1),
        Enum.at(name, 2),
        meas,
        Map.put(meta, :sandbox_id, state.id)
      )
    end

    state
  end

  # The sandbox's status as its VM reports it (hostile: checked).
  defp apply_summary(state, %{} = s) do
    inner_restarts =
      case s[:restart_count] do
        n when is_integer(n) and n >= 0 -> n
        _ -> state.inner_restarts
      end

    status = if s[:status] in @statuses, do: s[:status], else: state.info.status

    info = %{
      state.info
      | status: status,
        error: s[:error],
        app_name: atom_or_nil(s[:app_name]),
        supervisor_module: atom_or_nil(s[:supervisor_module]),
        app_pid: pid_or_nil(s[:app_pid]),
        supervisor_pid: pid_or_nil(s[:supervisor_pid]),
        restart_count: state.restart_base + inner_restarts,
        updated_at: DateTime.utc_now()
    }

    usage = if is_map(s[:usage]), do: s[:usage], else: state.inner_usage
    %{state | info: info, inner_restarts: inner_restarts, inner_usage: usage}
  end

  defp apply_summary(state, _nil) do
    %{state | inner_restarts: 0, info: %{state.info | restart_count: state.restart_base}}
  end

  defp atom_or_nil(a) when is_atom(a), do: a
  defp atom_or_nil(_), do: nil
  defp pid_or_nil(p) when is_pid(p), do: p
  defp pid_or_nil(_), do: nil

  defp clear_error(state), do: %{state | info: %{state.info | error: nil}}

  ## The VM's death

  defp vm_down(state, down) do
    state = %{state | conn: nil, os_pid: nil, info: %{state.info | os_pid: nil}}
    Sandbox.Node.delete_usage(state.id)

    for {_tag, {:call, from, kind}} <- state.pending,
        do: GenServer.reply(from, reply(kind, {:error, :not_found}, state))

    state = %{state | pending: %{}}

    case down do
      {:limit_exceeded, limit} -> limit_stop(state, limit)
      {:vm_exited, how} -> restart_or_fail(state, how)
      other -> restart_or_fail(state, other)
    end
  end

  defp limit_stop(state, limit) do
    state = failed(state, {:limit_exceeded, limit})
    context = ErrorHandler.context(state.id, :run, :node, %{})
    ErrorHandler.handle_error({:limit_exceeded, limit}, context)
    limits = state.config.resource_limits
    usage = if limit == :max_memory, do: Map.get(limits, :max_memory), else: 0

    Telemetry.emit(:limit, :exceeded, %{usage: usage, limit: Map.get(limits, limit)}, %{
      sandbox_id: state.id,
      limit: limit,
      isolation: :node
    })

    state
  end

  defp restart_or_fail(state, how) do
    now = System.monotonic_time(:millisecond)
    window = state.config.max_seconds * 1000
    recent = [now | Enum.filter(state.restarts, &(now - &1 < window))]
    state = %{state | restarts: recent}

    meta = %{
      since_reload: nil,
      window: window,
      restarts: length(recent),
      max_restarts: state.config.max_restarts
    }

    reason = {:vm_exited, how}

    case ErrorHandler.handle_error({:root_crashed, reason}, context(state, :run, meta)) do
      {:ok, strategy} when strategy in [:restart, :rollback] ->
        state = %{state | restart_base: state.info.restart_count + 1}

        case start_vm(state) do
          {:ok, state} ->
            state = clear_error(state)
            publish(state, listed: true)
            emit_restarted(state, reason)
            state

          {:error, start_reason, state} ->
            failed(state, start_reason)
        end

      _terminate ->
        state = failed(state, {:max_restarts_exceeded, reason})

        Telemetry.emit(:manager, :failed, %{restart_count: state.info.restart_count}, %{
          sandbox_id: state.id,
          reason: reason
        })

        state
    end
  end

  defp emit_restarted(state, reason) do
    Telemetry.emit(:manager, :restarted, %{restart_count: state.info.restart_count}, %{
      sandbox_id: state.id,
      reason: reason
    })
  end

  defp failed(state, reason) do
    state = status(%{state | info: %{state.info | error: reason}}, :error)
    publish(state, listed: true)
    state
  end

  ## Automatic reload: the host watches and compiles, the VM reloads

  defp start_watch(state, on?, catch_up \\ false) do
    if on? == state.info.auto_reload_enabled do
      {:ok, state}
    else
      result =
        if on?,
          do: FileWatcher.watch(state.id, self(), state.config.sandbox_path, catch_up: catch_up),
          else: FileWatcher.unwatch(state.id)

      case result do
        :ok -> {:ok, %{state | info: %{state.info | auto_reload_enabled: on?}}}
        {:error, reason} -> {:error, reason, state}
      end
    end
  end

  ## Info

  defp status(state, status),
    do: %{state | info: %{state.info | status: status, updated_at: DateTime.utc_now()}}

  defp publish(state, opts \\ []) do
    info =
      state
      |> public_info()
      |> Map.from_struct()
      |> Map.merge(%{
        group_leader: nil,
        started_at: state.started_at,
        listed: Keyword.get(opts, :listed, false),
        node_conn: state.conn,
        node_usage: state.inner_usage
      })

    Manager.put_info(state.id, info)
  end

  defp public_info(state) do
    info = %{state.info | os_pid: state.os_pid}

    usage =
      Sandbox.Node.usage(%{
        id: state.id,
        node_usage: state.inner_usage,
        started_at: state.started_at
      })

    %{info | resource_usage: usage}
  end

  defp context(state, operation, meta \\ %{}),
    do: ErrorHandler.context(state.id, operation, :node_instance, meta)

  defp audit(state, :refused, fields),
    do: SecurityController.audit(state.id, :refused, fields, state.config.security_profile)

  defp audit(state, event, fields),
    do: SecurityController.audit_async(state.id, event, fields, state.config.security_profile)
end
