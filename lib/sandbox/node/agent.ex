defmodule Sandbox.Node.Agent do
  @moduledoc """
  The library in a sandbox VM (`isolation: :node`, see `Sandbox.Node`): the
  VM's side of the wire.

  A sandbox VM is started by the supervising C-node as

      erlexec -noshell -noinput <limits> -pa <this library, Elixir, Logger>
          -sandbox agent true -s Elixir.Sandbox.Node.Agent main

  (`erlexec` is what the `erl` script runs; the VM executes no shell.)

  With `agent: true` the `:sandbox` application starts only what a sandbox
  needs (`children/0`): no C-node, no compile pool or cache, no file
  watcher, no cluster scope. Its first child is this server, which owns
  the VM's standard input and output as one `{packet, 4}` port
  (`{:fd, 0, 1}`); `Sandbox.Node.Agent.IO` takes the place of `user`, so
  that every output of every process arrives at the host as a frame and
  nothing else reaches standard output; `Sandbox.Node.Agent.Stub` takes
  the name `Sandbox.CNode`, so that the audit lines of the sandbox go to
  the host's audit log. Once everything is up the server writes the sync
  frame and `{:ready, os_pid, memory}` (`announce/0`).

  ## Requests (host → VM)

  `{:req, ref, request}`, each served in a process of its own, answered
  with `{:reply, ref, result, summary}`:

    * `{:create, id, target, opts}` — `Sandbox.create_sandbox/3` (the host
      gives the compiled project as `:prebuilt`)
    * `{:call, id, module, function, args, opts}` — `Sandbox.call/5`
    * `{:run, id, fun_or_mfa, opts}` — `Sandbox.run/3`
    * `{:instance, id, message}` — a request of `Sandbox.Instance`'s
      protocol to the sandbox's instance (reloads, rollbacks, versions,
      restart): its reply as the instance gives it, `{:error, :not_found}`
      when there is no instance
    * `:ping` — `:pong`

  `{:cancel, ref}` kills the process serving `ref`; `{:audit_ack, n,
  result}` answers an audit line.

  ## Messages (VM → host)

  `{:reply, ref, result, summary}`, `{:event, name, measurements, metadata,
  summary}` (every event of the sandbox, `Sandbox.Telemetry`),
  `{:usage, summary}` (every second once a sandbox exists, with the
  sandbox's `Sandbox.ResourceMonitor` usage), `{:io,
  binary}` (output), `{:audit, n, line}`. `summary` is the sandbox's
  status as the VM sees it: `%{status, error, restart_count, app_name,
  supervisor_module, app_pid, supervisor_pid}` (or `nil` before it is
  created; replies to calls and runs carry none). Funs in anything sent are replaced by their text
  (`Sandbox.Node.Wire.portable/1`).

  ## SIGTERM

  The C-node ends a VM over a limit or a timeout with SIGTERM, then
  SIGKILL. On SIGTERM the VM goes silent before it shuts down in order
  (`Sandbox.Node.Agent.Sigterm`): the shutdown kills the sandbox's
  processes, and a call they were serving must not come back as an
  ordinary error from inside; the host answers it with the VM's end
  (`{:error, {:exit, {:vm_down, reason}}}`).
  """

  use GenServer

  alias Sandbox.Node.Wire

  @usage_ms 1_000

  @doc """
  The sandbox VM's entry point (`-s Elixir.Sandbox.Node.Agent main`):
  starts the `:sandbox` application in agent mode and returns (the VM
  runs on under its supervisor). A VM whose start fails halts with status 3.
  """
  @spec main() :: :ok
  def main do
    Application.put_env(:sandbox, :agent, true)

    case Application.ensure_all_started(:sandbox) do
      {:ok, _} ->
        :ok

      {:error, reason} ->
        :io.format(:standard_error, "sandbox agent: ~p~n", [reason])
        System.halt(3)
    end
  end

  @doc """
  The children of the `:sandbox` application in a sandbox VM
  (`config :sandbox, agent: true`), in start order.
  """
  @spec children() :: [Supervisor.child_spec() | module | {module, term}]
  def children do
    [
      __MODULE__,
      Sandbox.Node.Agent.IO,
      Sandbox.Node.Agent.Stub,
      {Registry, keys: :duplicate, name: Sandbox.Telemetry.registry()},
      Sandbox.SecurityController,
      Sandbox.Manager,
      Sandbox.ResourceMonitor,
      {DynamicSupervisor, name: Sandbox.InstanceSupervisor, strategy: :one_for_one},
      %{id: :announce, start: {__MODULE__, :start_announce, []}, restart: :temporary}
    ]
  end

  @doc false
  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc false
  def child_spec(opts),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}, shutdown: 1_000}

  @doc false
  # The last child: tells the server that everything is up.
  def start_announce do
    :ok = GenServer.call(__MODULE__, :announce, :infinity)
    :ignore
  end

  @doc """
  Stops every frame from here on (the VM is being stopped): `send_frame/1`
  writes nothing.
  """
  @spec silence() :: :ok
  def silence do
    _ = :persistent_term.erase({__MODULE__, :port})
    :ok
  end

  @doc "Writes `term` as one frame to the host (from any process of the VM)."
  @spec send_frame(term) :: :ok
  def send_frame(term) do
    case :persistent_term.get({__MODULE__, :port}, nil) do
      nil ->
        :ok

      port ->
        try do
          Port.command(port, :erlang.term_to_binary(Wire.portable(term)))
          :ok
        rescue
          ArgumentError -> :ok
        end
    end
  end

  ## Server

  @impl true
  def init(:ok) do
    Process.flag(:trap_exit, true)
    port = :erlang.open_port({:fd, 0, 1}, [:binary, {:packet, 4}, :eof])
    :persistent_term.put({__MODULE__, :port}, port)
    :ok = Sandbox.Node.Agent.Sigterm.install()
    {:ok, %{port: port, id: nil, serving: %{}, audits: %{}, next_audit: 1, ready: false}}
  end

  @impl true
  def handle_call(:announce, _from, state) do
    if Application.get_env(:sandbox, :agent_preload, true), do: preload()
    :ok = Sandbox.Telemetry.subscribe(:all)
    # The sync frame: a bare payload (not a term), see Sandbox.Node.Wire.
    Port.command(state.port, Wire.magic())
    send_frame({:ready, System.pid() |> String.to_integer(), :erlang.memory(:total)})
    {:reply, :ok, %{state | ready: true}}
  end

  @impl true
  def handle_info({port, {:data, bin}}, %{port: port} = state) do
    {:noreply, handle_frame(:erlang.binary_to_term(bin), state)}
  end

  # The host closed our standard input: it is gone, and so is this VM.
  def handle_info({port, :eof}, %{port: port} = state) do
    System.halt(0)
    {:noreply, state}
  end

  def handle_info({:sandbox_event, name, measurements, %{sandbox_id: id} = meta}, state) do
    if id != nil and id == state.id,
      do: send_frame({:event, name, measurements, meta, summary(id)})

    {:noreply, state}
  end

  def handle_info({:audit, from, event}, state) do
    n = state.next_audit
    send_frame({:audit, n, event})
    {:noreply, %{state | audits: Map.put(state.audits, n, from), next_audit: n + 1}}
  end

  def handle_info(:usage, state) do
    if state.id, do: send_frame({:usage, summary(state.id, true)})
    Process.send_after(self(), :usage, @usage_ms)
    {:noreply, state}
  end

  def handle_info({:EXIT, pid, _reason}, state) do
    {:noreply, %{state | serving: Map.reject(state.serving, fn {_, p} -> p == pid end)}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp handle_frame({:req, ref, request}, state) do
    state = remember_id(state, request)
    pid = spawn_link(fn -> serve(ref, request) end)
    %{state | serving: Map.put(state.serving, ref, pid)}
  end

  defp handle_frame({:cancel, ref}, state) do
    case Map.pop(state.serving, ref) do
      {nil, _} ->
        state

      {pid, serving} ->
        Process.unlink(pid)
        Process.exit(pid, :kill)
        %{state | serving: serving}
    end
  end

  defp handle_frame({:audit_ack, n, result}, state) do
    case Map.pop(state.audits, n) do
      {nil, _} ->
        state

      {from, audits} ->
        GenServer.reply(from, result)
        %{state | audits: audits}
    end
  end

  defp handle_frame(_other, state), do: state

  # The VM serves one sandbox: the id of its first create.
  defp remember_id(%{id: nil} = state, {:create, id, _target, _opts}) do
    Process.send_after(self(), :usage, @usage_ms)
    %{state | id: id}
  end

  defp remember_id(state, _request), do: state

  defp serve(ref, request) do
    result =
      try do
        handle_request(request)
      catch
        kind, reason -> {:error, {:agent_failed, {kind, reason}}}
      end

    # Calls and runs change no status: they go without one.
    summary =
      try do
        case request do
          {:create, id, _, _} -> summary(id, true)
          {:instance, id, _} -> summary(id)
          _ -> nil
        end
      catch
        _, _ -> nil
      end

    try do
      send_frame({:reply, ref, result, summary})
    catch
      kind, reason ->
        send_frame({:reply, ref, {:error, {:agent_failed, {kind, inspect(reason)}}}, nil})
    end
  end

  defp handle_request({:create, id, target, opts}), do: Sandbox.create_sandbox(id, target, opts)
  defp handle_request({:call, id, m, f, a, opts}), do: Sandbox.call(id, m, f, a, opts)
  defp handle_request({:run, id, fun, opts}), do: Sandbox.run(id, fun, opts)
  defp handle_request(:ping), do: :pong

  defp handle_request({:instance, id, message}) do
    case Sandbox.Manager.lookup(id) do
      {:ok, pid, _} ->
        try do
          GenServer.call(pid, message, :infinity)
        catch
          :exit, _ -> {:error, :not_found}
        end

      error ->
        error
    end
  end

  defp handle_request(other), do: {:error, {:unknown_request, other}}

  # The sandbox's status as this VM sees it; with its usage (which may
  # take a sample) only in the periodic push.
  defp summary(id, usage? \\ false)
  defp summary(nil, _usage?), do: nil

  defp summary(id, usage?) do
    case Sandbox.Manager.lookup(id) do
      {:ok, _pid, info} ->
        info
        |> Map.take([
          :status,
          :error,
          :restart_count,
          :app_name,
          :supervisor_module,
          :app_pid,
          :supervisor_pid
        ])
        |> then(&if usage?, do: Map.put(&1, :usage, Sandbox.ResourceMonitor.usage(id)), else: &1)

      {:error, :not_found} ->
        nil
    end
  end

  # The modules a create, a call and a reload run, loaded before the VM is
  # announced: a warm VM does not load them on the sandbox's first create.
  defp preload do
    {:ok, modules} = :application.get_key(:sandbox, :modules)

    runtime =
      Enum.filter(modules, fn m ->
        name = Atom.to_string(m)

        not String.starts_with?(name, [
          "Elixir.Mix.",
          "Elixir.Sandbox.Test.",
          "Elixir.Sandbox.IsolatedCompiler",
          "Elixir.Sandbox.Cluster",
          "Elixir.Sandbox.IEx",
          "Elixir.Sandbox.Tools",
          "Elixir.Sandbox.FileWatcher",
          "Elixir.Sandbox.CNode",
          "Elixir.Sandbox.Node.Conn",
          "Elixir.Sandbox.Node.Pool",
          "Elixir.Sandbox.Node.Instance"
        ]) and not String.ends_with?(name, ["Test", "Helpers", "Fixtures", "Case"])
      end)

    elixir = [
      Enum,
      Map,
      Keyword,
      List,
      String,
      Access,
      Kernel,
      Registry,
      DynamicSupervisor,
      Supervisor,
      GenServer,
      Task,
      Process,
      Code,
      MapSet,
      DateTime,
      Calendar.ISO,
      Inspect.Algebra,
      Exception
    ]

    :code.ensure_modules_loaded(runtime ++ elixir)
    :ok
  end
end

defmodule Sandbox.Node.Agent.IO do
  @moduledoc """
  The `user` of a sandbox VM: an I/O server whose output goes to the host
  as `{:io, binary}` frames (at most 64 KiB each, the rest cut). At start
  it takes the name `user` and becomes the group leader of every process
  whose group leader was the VM's own `user`, so that nothing else writes
  to standard output, which carries the frames. Input is end of file.
  """
  use GenServer

  @max_chunk 65_536

  @doc false
  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, :ok)

  @doc false
  def child_spec(opts), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

  @impl true
  def init(:ok) do
    old = Process.whereis(:user)

    if old do
      Process.unregister(:user)

      for pid <- Process.list(),
          Process.info(pid, :group_leader) == {:group_leader, old},
          do: :erlang.group_leader(self(), pid)
    end

    Process.register(self(), :user)
    {:ok, %{}}
  end

  @impl true
  def handle_info({:io_request, from, reply_as, request}, state) do
    send(from, {:io_reply, reply_as, io(request)})
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp io({:put_chars, enc, chars}), do: put(enc, chars)
  defp io({:put_chars, chars}), do: put(:latin1, chars)
  defp io({:put_chars, enc, m, f, a}), do: put(enc, apply_safe(m, f, a))
  defp io({:put_chars, m, f, a}), do: put(:latin1, apply_safe(m, f, a))

  defp io({:requests, requests}) do
    Enum.reduce_while(requests, :ok, fn r, _ ->
      case io(r) do
        :ok -> {:cont, :ok}
        other -> {:halt, other}
      end
    end)
  end

  defp io(:getopts), do: [binary: false, encoding: :unicode]
  defp io({:setopts, _}), do: :ok
  defp io({:get_chars, _, _, _}), do: :eof
  defp io({:get_chars, _, _}), do: :eof
  defp io({:get_line, _, _}), do: :eof
  defp io({:get_line, _}), do: :eof
  defp io({:get_until, _, _, _, _, _}), do: :eof
  defp io({:get_until, _, _, _, _}), do: :eof
  defp io({:get_password, _}), do: :eof
  defp io(_other), do: {:error, :enotsup}

  defp apply_safe(m, f, a) do
    apply(m, f, a)
  catch
    _, _ -> []
  end

  defp put(enc, chars) do
    bin =
      try do
        case enc do
          :latin1 -> :unicode.characters_to_binary(chars, :latin1, :utf8)
          _ -> :unicode.characters_to_binary(chars)
        end
      catch
        _, _ -> :error
      end

    case bin do
      b when is_binary(b) ->
        b = if byte_size(b) > @max_chunk, do: binary_part(b, 0, @max_chunk), else: b
        Sandbox.Node.Agent.send_frame({:io, b})
        :ok

      _ ->
        {:error, :put_chars}
    end
  end
end

defmodule Sandbox.Node.Agent.Stub do
  @moduledoc """
  `Sandbox.CNode` in a sandbox VM: the VM has no C-node of its own. Audit
  lines (`Sandbox.CNode.audit/2`) go to the host's audit log through the
  wire (the host writes them under the sandbox's id, see
  `Sandbox.Node.Conn`) and are answered when the host has them on disk;
  every other request is `{:error, :unavailable}`.
  """
  use GenServer

  @doc false
  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, :ok, name: Sandbox.CNode)

  @doc false
  def child_spec(opts), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

  @impl true
  def init(:ok), do: {:ok, %{}}

  @impl true
  def handle_call({:request, :audit, %{event: event}}, from, state) do
    send(Sandbox.Node.Agent, {:audit, from, event})
    {:noreply, state}
  end

  def handle_call(:os_pid, _from, state),
    do: {:reply, String.to_integer(System.pid()), state}

  def handle_call(_other, _from, state), do: {:reply, {:error, :unavailable}, state}
end

defmodule Sandbox.Node.Agent.Sigterm do
  @moduledoc """
  The sandbox VM's SIGTERM handler (in `:erl_signal_server`, in place of
  OTP's): it silences `Sandbox.Node.Agent.send_frame/1`, then stops the VM
  in order (`:init.stop/0`, as OTP's handler does).
  """

  @behaviour :gen_event

  @doc "Puts this handler in the place of OTP's in `:erl_signal_server`."
  @spec install() :: :ok
  def install do
    case :gen_event.swap_handler(
           :erl_signal_server,
           {:erl_signal_handler, :swap},
           {__MODULE__, []}
         ) do
      :ok -> :ok
      # OTP's handler was replaced already: this one is added.
      {:error, _} -> :gen_event.add_handler(:erl_signal_server, __MODULE__, [])
    end
  end

  @impl true
  def init(_args), do: {:ok, nil}

  @impl true
  def handle_event(:sigterm, state) do
    Sandbox.Node.Agent.silence()
    :init.stop()
    {:ok, state}
  end

  def handle_event(_signal, state), do: {:ok, state}

  @impl true
  def handle_call(_request, state), do: {:ok, :ok, state}
end
