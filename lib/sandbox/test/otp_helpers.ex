defmodule Sandbox.Test.OTPHelpers do
  @moduledoc """
  Starting, watching and stopping OTP processes in tests — Supertester's
  `OTPHelpers`, under our name, without its dependency.

      import Sandbox.Test.OTPHelpers

      test "the worker is restarted", %{test: test} do
        {:ok, sup} = setup_isolated_supervisor(MyApp.WorkerSup, test)
        [{_, worker, _, _}] = Supervisor.which_children(sup)
        Process.exit(worker, :kill)
        {:ok, _} = wait_for_supervisor_restart(sup)
      end

  Every wait is built on monitors, messages and calls that synchronise with
  the process or its supervisor (`:sys.get_state/2`, `which_children`),
  never on sleeping: a wait returns as soon as what it waits for has
  happened, and fails fast when it cannot happen any more (a child its
  supervisor will not restart).

  Each helper works on a sandbox's processes as on host processes: pass a
  pid, or `{sandbox_id, module}` for the process of sandbox `sandbox_id`
  registered under `module`'s name (the original name; see
  `Sandbox.module_name/2`), wherever a server or name is taken.
  """

  import ExUnit.Callbacks, only: [on_exit: 1]

  alias Sandbox.Test.Processes

  @typedoc "A process: a pid, a name, or `{sandbox_id, module}` (see the module doc)."
  @type server :: Processes.server_ref()

  @doc """
  Starts the GenServer `module` under a name unique to the test, linked to
  the caller, and stops it when the test exits. Call it from a test or a
  `setup` callback.

  ## Options

    * `:init_args` — the argument of `init/1` (`[]`)
    * `:name` — `true` (a unique name made from `module` and `test_name`;
      the default), `false` (none), or a name of your own
    * `:sandbox` — a sandbox id: `module` (its original name) is started
      inside that sandbox, as a process of the sandbox (its group leader,
      its code, its application environment), not linked to the caller
    * any other option goes to `GenServer.start_link/3` (`:timeout`,
      `:debug`, `:hibernate_after`, `:spawn_opt`)

  Returns `{:ok, pid}` or `{:error, reason}`.
  """
  @spec setup_isolated_genserver(module, String.t() | atom, keyword) ::
          {:ok, pid} | {:error, term}
  def setup_isolated_genserver(module, test_name \\ "", opts \\ []) do
    start_isolated(GenServer, module, test_name, opts)
  end

  @doc """
  Starts the supervisor `module` (its `init/1` gets `opts[:init_args]`)
  under a name unique to the test, and stops it when the test exits; same
  options as `setup_isolated_genserver/3`.
  """
  @spec setup_isolated_supervisor(module, String.t() | atom, keyword) ::
          {:ok, pid} | {:error, term}
  def setup_isolated_supervisor(module, test_name \\ "", opts \\ []) do
    start_isolated(Supervisor, module, test_name, opts)
  end

  defp start_isolated(kind, module, test_name, opts) do
    unless is_atom(module), do: raise(ArgumentError, "expected a module, got: #{inspect(module)}")
    {init_args, opts} = Keyword.pop(opts, :init_args, [])
    {name, opts} = Keyword.pop(opts, :name, true)
    {sandbox, opts} = Keyword.pop(opts, :sandbox)

    opts =
      case name do
        true -> [{:name, unique_name(module, test_name)} | opts]
        false -> opts
        name -> [{:name, name} | opts]
      end

    result =
      if sandbox do
        start_in_sandbox(kind, sandbox, module, init_args, opts)
      else
        start_link(kind, module, init_args, opts)
      end

    case result do
      {:ok, pid} ->
        on_exit(fn -> cleanup_processes([pid]) end)
        {:ok, pid}

      {:error, _} = error ->
        error
    end
  end

  defp start_link(GenServer, module, args, opts), do: GenServer.start_link(module, args, opts)
  defp start_link(Supervisor, module, args, opts), do: Supervisor.start_link(module, args, opts)

  # Started from a process of the sandbox, unlinked (that process ends when
  # the start returns); the new process stays in the sandbox.
  defp start_in_sandbox(kind, id, module, args, opts) do
    target = Sandbox.module_name(id, module)

    start =
      case kind do
        GenServer -> fn -> GenServer.start(target, args, opts) end
        Supervisor -> fn -> start_unlinked_supervisor(target, args, opts) end
      end

    case Sandbox.run(id, start) do
      {:ok, {:ok, pid}} -> {:ok, pid}
      {:ok, {:error, reason}} -> {:error, reason}
      {:ok, other} -> {:error, {:bad_return, other}}
      {:error, reason} -> {:error, reason}
    end
  end

  defp start_unlinked_supervisor(module, args, opts) do
    # A supervisor has no unlinked start: start it linked from a process
    # that then unlinks and hands it over.
    case Supervisor.start_link(module, args, opts) do
      {:ok, pid} ->
        Process.unlink(pid)
        {:ok, pid}

      other ->
        other
    end
  end

  defp unique_name(module, test_name) do
    slug =
      test_name
      |> to_string()
      |> String.replace(~r/[^A-Za-z0-9_]+/, "_")
      |> String.slice(0, 60)

    :"#{inspect(module)}.#{slug}.#{System.unique_integer([:positive])}"
  end

  @doc """
  Waits until `server` has handled every message sent to it before the
  call (a `:sys.get_state/2` round trip): `:ok`, or `{:error, :noproc |
  :timeout | reason}`.
  """
  @spec wait_for_genserver_sync(server, timeout) :: :ok | {:error, term}
  def wait_for_genserver_sync(server, timeout \\ 1000) do
    _ = :sys.get_state(Processes.name(server), timeout)
    :ok
  catch
    :exit, reason -> {:error, exit_reason(reason)}
  end

  @doc """
  Waits until the process registered as `name`, `original_pid` until now,
  has died and been restarted under the same name: `{:ok, new_pid}`;
  `{:error, :not_restarted}` once its supervisor has handled the death
  without restarting it (or no supervisor restarted it); `{:error,
  :timeout}`.

  Works whether `original_pid` is still alive (it is then awaited) or has
  died already.
  """
  @spec wait_for_process_restart(server, pid, timeout) ::
          {:ok, pid} | {:error, :not_restarted | :timeout}
  def wait_for_process_restart(name, original_pid, timeout \\ 1000) when is_pid(original_pid) do
    deadline = Processes.deadline(timeout)
    sup = Processes.supervisor_of(original_pid)
    ref = Process.monitor(original_pid)

    case Processes.await_down(ref, deadline) do
      {:ok, _reason} -> Processes.await_registered(name, original_pid, sup, deadline)
      :timeout -> Process.demonitor(ref, [:flush]) && {:error, :timeout}
    end
  end

  @doc """
  Waits until `supervisor` runs all its children (none of them waiting for
  a restart) and returns `{:ok, pid}`. When `supervisor` is a name under
  which nothing is registered (the supervisor itself is being restarted),
  it first waits for the restart. Errors: `{:error, :noproc | :timeout |
  :not_restarted}`.
  """
  @spec wait_for_supervisor_restart(server, timeout) :: {:ok, pid} | {:error, term}
  def wait_for_supervisor_restart(supervisor, timeout \\ 1000) do
    deadline = Processes.deadline(timeout)

    case Processes.alive(supervisor) do
      nil when is_pid(supervisor) -> {:error, :noproc}
      nil -> restarted(supervisor, nil, deadline)
      pid -> await_children(supervisor, pid, deadline)
    end
  end

  defp restarted(name, old, deadline) do
    with {:ok, pid} <- Processes.await_registered(name, old, nil, deadline),
         do: await_children(name, pid, deadline)
  end

  defp await_children(supervisor, sup, deadline) do
    case Processes.sync_children(sup, deadline) do
      children when is_list(children) ->
        cond do
          not Enum.any?(children, &Processes.unsettled?/1) -> {:ok, sup}
          Processes.left(deadline) == 0 -> {:error, :timeout}
          true -> await_children(supervisor, sup, deadline)
        end

      # A named supervisor that died just now: wait for its restart.
      :noproc when not is_pid(supervisor) ->
        restarted(supervisor, sup, deadline)

      error ->
        {:error, error}
    end
  end

  @doc """
  Waits for `pid` to exit: `{:ok, exit_reason}` (`:noproc` when it was
  dead already) or `{:error, :timeout}`.
  """
  @spec wait_for_process_death(server, timeout) :: {:ok, term} | {:error, :timeout}
  def wait_for_process_death(pid, timeout \\ 1000) do
    case Processes.whereis(pid) do
      nil ->
        {:ok, :noproc}

      pid ->
        ref = Process.monitor(pid)

        case Processes.await_down(ref, Processes.deadline(timeout)) do
          {:ok, reason} ->
            {:ok, reason}

          :timeout ->
            Process.demonitor(ref, [:flush])
            {:error, :timeout}
        end
    end
  end

  @doc """
  Monitors `pid`: `{monitor_ref, pid}`; its end arrives as
  `{:DOWN, monitor_ref, :process, pid, reason}`.
  """
  @spec monitor_process_lifecycle(server) :: {reference, pid}
  def monitor_process_lifecycle(server) do
    case Processes.whereis(server) do
      nil -> raise ArgumentError, "no process #{inspect(server)}"
      pid -> {Process.monitor(pid), pid}
    end
  end

  @doc """
  Stops `pids`, all at once: an OTP process (`proc_lib`: GenServer,
  Supervisor, Task, ...) is asked to terminate with reason `:shutdown`
  (`:sys.terminate/3`, which runs its `terminate/2` whoever its parent is),
  any other process gets a `:shutdown` exit signal; those still running
  1 s after the call are killed. Returns once all of them are dead.
  """
  @spec cleanup_processes([server]) :: :ok
  def cleanup_processes(pids) when is_list(pids) do
    pids = pids |> Enum.map(&Processes.whereis/1) |> Enum.filter(&is_pid/1) |> Enum.uniq()
    deadline = Processes.deadline(1000)

    for pid <- pids do
      if otp_process?(pid) do
        spawn(fn ->
          try do
            :sys.terminate(pid, :shutdown, Processes.left(deadline))
          catch
            :exit, _ -> :ok
          end
        end)
      else
        Process.exit(pid, :shutdown)
      end
    end

    pids |> Processes.survivors(deadline) |> Processes.kill_all()
  end

  defp otp_process?(pid) do
    match?({:initial_call, {:proc_lib, _, _}}, Process.info(pid, :initial_call))
  end

  defp exit_reason({:noproc, _}), do: :noproc
  defp exit_reason({:timeout, _}), do: :timeout
  defp exit_reason({reason, {:sys, _, _}}), do: reason
  defp exit_reason(reason), do: reason
end
