defmodule Sandbox.Node do
  @moduledoc """
  Node isolation: a sandbox in an Erlang VM of its own (`isolation: :node`
  at `Sandbox.create_sandbox/3`), behind the same API as an in-VM sandbox.

  In-VM sandboxes share the host's allocators, atom table and schedulers:
  capability guards and sampling make them safe for code that is merely
  buggy. Code written to hurt — a binary allocated faster than any
  sampling interval, an allocation pattern that fragments the host's
  carriers, anything a guard misses — needs an operating-system boundary.

  ## How it is built

    * **The sandbox VM** is a BEAM started by the supervising C-node
      (`Sandbox.CNode.spawn/2`) for one sandbox alone, taken from a pool of
      pre-started VMs (`Sandbox.Node.Pool`) so that a create stays fast
      (`:high` sandboxes; the others get a VM started for them, see
      "Kernel confinement"). It runs this library in agent mode (`Sandbox.Node.Agent`: only what a
      sandbox needs) and nothing of the host's application code: its code
      path is OTP, Elixir, Logger and this library. It is not distributed
      (no node name, no cookie: its `HOME` is a private empty directory,
      and the host's cookie is never given to it).
    * **The wire** is the VM's standard input and output, carried by the
      C-node: `{packet, 4}` frames of the external term format
      (`Sandbox.Node.Wire`). The agent owns both, and every output of the
      VM's processes arrives as a frame, so stray output cannot corrupt the
      stream. Frames from the VM are hostile input: decoded with
      `Sandbox.SafeTerm` (no funs, a budget of new atoms over the sandbox's
      life), their pids rehomed to a node that does not exist.
    * **The sandbox inside** is created by the agent from the host's
      compile (`:prebuilt`): the project is compiled once, in a compile
      worker of the host (`Sandbox.IsolatedCompiler`, cached), and the same
      BEAMs are relocated and loaded in the VM, so module names, results and
      events are those of an in-VM sandbox. Its events are forwarded to the
      host's `Sandbox.Telemetry` under the same id; its audit lines go to the
      host's audit log.
    * **The host's side** is a `Sandbox.Node.Instance` in place of a
      `Sandbox.Instance` (same requests, so every function of `Sandbox`
      works on it), and a `Sandbox.Node.Conn` per VM that holds the wire,
      the OS limits and the CPU throttle.

  ## Limits

  The profile's limits keep their meaning inside the VM (its own
  `Sandbox.ResourceMonitor` enforces them as for an in-VM sandbox), and
  the kernel adds hard ones around it:

    * memory — the C-node samples the resident size of the VM's process
      tree from `/proc` (limit: the idle VM's resident size plus
      `max_memory`), and the VM's allocators are confined at boot to a
      super carrier (`+MMscs`, `+MMsco true`, `+Musac false`): an
      allocation beyond it fails and the VM stops, whatever its speed (an
      address-space rlimit cannot cap a BEAM). Either is
      `{:limit_exceeded, :max_memory}`.
    * processes and ports — `+P` and `+Q` at boot (the VM's hard bound;
      1,024 is the smallest the VM takes), `max_processes` inside; OS
      processes of the tree (ports' programs) by the C-node's sampled
      `processes` limit (`config :sandbox, node_max_os_processes:`, 16):
      `{:limit_exceeded, :max_processes}`.
    * CPU — one scheduler (`+S 1`), and a duty cycle of `SIGSTOP` and
      `SIGCONT` from the host holding the VM's CPU time (from `/proc`) to
      `max_cpu_percentage` of one core; `RLIMIT_CPU`, re-armed every few
      seconds well above the duty cycle's share, is a backstop
      (`{:limit_exceeded, :max_cpu_percentage}` if it ever fires).
    * files — `RLIMIT_FSIZE` from `max_file_size` (at least 64 MiB: the JIT
      needs it), and Landlock (see "Kernel confinement").
    * environment — `PATH`, `LANG`, `HOME` (the VM's own empty directory)
      and nothing else of the host's (besides what `erlexec` needs, see
      `env/1`).

  ## Kernel confinement

  Every sandbox VM but a `:low` one runs under Landlock rules that the
  C-node enforces before the emulator starts (`Sandbox.Node.Confinement`,
  which has the table): files — reads of the installation (and, under
  `:medium`, of the sandbox's project), writes to the VM's own directory
  under `:medium` and nowhere under `:high`; network — no TCP under
  `:high`, and under `:medium` only with `:network_client`. A refusal is
  the kernel's: the sandbox's code gets `{:error, :eacces}`. Where the
  C-node has no Landlock (or its ABI cannot refuse TCP), a `:high` create
  is refused with `{:error, {:confinement_unavailable, reason}}` (as its
  compile would be) and a `:medium` VM runs unconfined (logged once). The
  sandbox's audit lines — its `created` line, and every line its VM
  writes — say `confined: true | false`, from the C-node's report of the
  VM's spawn.

  ## Failure

  The VM dying — halted by its own code, killed by the kernel or a limit —
  is a crash of the sandbox: a limit is `{:limit_exceeded, limit}` (status
  `:error`, `[:sandbox, :limit, :exceeded]`); anything else restarts the
  sandbox in a new VM from its current code, within `max_restarts` in
  `max_seconds` (`[:sandbox, :manager, :restarted]`, `reason: {:vm_exited,
  how}`), and beyond that the status is `:error`. The host never notices
  more than that. Destroy kills the VM's whole process tree and returns
  when it is gone; the C-node kills it too when the host VM dies.

  ## Differences from an in-VM sandbox

    * `run/3` takes `{m, f, a}` or a fun the sandbox VM has the code of
      (`Sandbox.Node.Wire.check_serialisable/2`); a closure of host code is
      `{:error, {:not_serialisable, fun}}`, and so is a `:state_migration`
      or `:supervisor_args` holding one.
    * Pids, ports and references cross the wire as terms of a node that
      does not exist (`Sandbox.Node.Wire.rehome/2`): the sandbox cannot
      reach host processes, nor the host the sandbox's. `info.app_pid` and
      `info.supervisor_pid` are such pids.
    * Funs in results are replaced by their text.
    * `info.resource_usage`: `current_memory` and `cpu_usage` are the
      VM's, from the OS; `current_processes` the sandbox's processes in it.
    * A VM restarted after a crash starts the version history of each
      module again at its current code.
    * `Sandbox.Cluster`'s two-phase reloads are not supported
      (`{:error, {:not_supported, :node}}`).
  """

  alias Sandbox.Node.{Conn, Wire}

  @table __MODULE__

  @doc false
  # The table of the latest OS sample of each :node sandbox (owned by the
  # application's process, see Sandbox.Application).
  @spec create_tables() :: :ok
  def create_tables do
    :ets.new(@table, [:set, :public, :named_table, read_concurrency: true])
    :ok
  end

  @doc false
  @spec put_usage(String.t(), map) :: true
  def put_usage(id, usage), do: :ets.insert(@table, {id, usage})

  @doc false
  @spec delete_usage(String.t()) :: true
  def delete_usage(id), do: :ets.delete(@table, id)

  @doc """
  The resource usage of a `:node` sandbox from its info (see the module
  documentation): the VM's memory and CPU from the OS, the sandbox's
  process count from the VM.
  """
  @spec usage(map) :: map
  def usage(%{id: id} = info) do
    os =
      case :ets.lookup(@table, id) do
        [{^id, u}] -> u
        [] -> %{}
      end

    inner = Map.get(info, :node_usage) || %{}

    uptime =
      case info[:started_at] do
        t when is_integer(t) -> max(System.monotonic_time(:millisecond) - t, 0)
        _ -> 0
      end

    %{
      current_memory: Map.get(os, :memory, 0),
      current_processes: Map.get(inner, :current_processes, 0),
      cpu_usage: Map.get(os, :cpu_usage, 0.0),
      uptime: uptime
    }
  end

  @doc """
  `Sandbox.call/5` on a `:node` sandbox (its info from the manager's
  table): `module.function(args)` in a new process of the sandbox, in its
  VM. `timeout` is already capped by `max_execution_time`.
  """
  @spec call(map, module, atom, [term], timeout, keyword) :: Sandbox.result()
  def call(info, module, function, args, timeout, opts) do
    with :ok <- Wire.check_serialisable(args, info.id) do
      opts = [timeout: timeout, original_names: Keyword.get(opts, :original_names, false)]
      request(info, {:call, info.id, module, function, args, opts}, timeout)
    end
  end

  @doc """
  `Sandbox.run/3` on a `:node` sandbox: `fun` is `{m, f, a}` or a fun the
  sandbox VM has the code of, else `{:error, {:not_serialisable, fun}}`.
  """
  @spec run(map, (() -> term) | mfa_tuple, timeout, keyword) :: Sandbox.result()
        when mfa_tuple: {module, atom, [term]}
  def run(info, fun, timeout, opts) do
    with :ok <- Wire.check_serialisable(fun, info.id) do
      opts = [timeout: timeout, original_names: Keyword.get(opts, :original_names, false)]
      request(info, {:run, info.id, fun, opts}, timeout)
    end
  end

  defp request(%{node_conn: conn}, request, timeout) do
    case Conn.request(conn, request, timeout) do
      {:ok, result} -> result
      {:error, _} = error -> error
    end
  end

  ## The sandbox VM's command line

  @doc """
  The directories of code the sandbox VM shares with this VM: OTP's
  libraries, Elixir's and Logger's, and this library's. Its code path is
  made of them, and a fun of a module loaded from one of them can be sent
  to it.
  """
  @spec code_dirs() :: [String.t()]
  def code_dirs do
    case :persistent_term.get({__MODULE__, :code_dirs}, nil) do
      nil ->
        dirs =
          [List.to_string(:code.lib_dir()) | Enum.map(ebins(), &Path.dirname/1)]
          |> Enum.map(&Path.expand/1)
          |> Enum.uniq()

        :persistent_term.put({__MODULE__, :code_dirs}, dirs)
        dirs

      dirs ->
        dirs
    end
  end

  # The code path of the sandbox VM beyond OTP: Elixir, Logger, this library.
  defp ebins do
    for app <- [:elixir, :logger, :sandbox] do
      app |> :code.lib_dir(:ebin) |> List.to_string() |> Path.expand()
    end
  end

  @doc """
  The argument vector of a sandbox VM (see the module documentation).

  ## Options

    * `:memory_ceiling` — bytes of the VM's super carrier: its allocators'
      hard limit (default: `config :sandbox, node_memory_ceiling:`, 512 MiB)
  """
  @spec argv(keyword) :: [String.t()]
  def argv(opts \\ []) do
    # erlexec, what the `erl` script runs (its variables are in env/1):
    # a confined VM executes nothing but the emulator's own binaries.
    erl = Path.join(bindir(), "erlexec")
    mb = div(Keyword.get_lazy(opts, :memory_ceiling, &memory_ceiling/0), 1024 * 1024)

    [erl, "-noshell", "-noinput"] ++
      ~w(+S 1:1 +SDcpu 1:1 +SDio 1 +A 1 +sbwt none +sbwtdcpu none +sbwtdio none) ++
      ~w(+P 1024 +Q 1024) ++
      ["+MMscs", Integer.to_string(max(mb, 64))] ++
      ~w(+MMsco true +Musac false +MMscrpm false +MMmcs 0) ++
      Enum.flat_map(ebins(), &["-pa", &1]) ++
      ["-sandbox", "agent_preload", to_string(Application.get_env(:sandbox, :node_preload, true))] ++
      ~w(-sandbox agent true -s Elixir.Sandbox.Node.Agent main)
  end

  @doc false
  @spec memory_ceiling() :: pos_integer
  def memory_ceiling, do: Application.get_env(:sandbox, :node_memory_ceiling, 512 * 1024 * 1024)

  defp bindir do
    root = List.to_string(:code.root_dir())
    Path.join([root, "erts-#{:erlang.system_info(:version)}", "bin"])
  end

  @kept_env ~w(PATH LANG LC_ALL LC_CTYPE TZ)
  @default_env %{"PATH" => "/usr/local/bin:/usr/bin:/bin", "LANG" => "C.UTF-8"}

  @doc """
  The OS environment of a sandbox VM whose private directory is `dir`:
  `PATH`, `LANG`, `LC_ALL`, `LC_CTYPE` and `TZ` as the host has them
  (`PATH` and `LANG` defaulting to `/usr/local/bin:/usr/bin:/bin` and
  `C.UTF-8`), `HOME` set to `dir`, no crash dumps, what the `erl` script
  would set for `erlexec` (`ROOTDIR`, `BINDIR`, `EMU`, `PROGNAME`) — and
  nothing else (as `Sandbox.CNode.spawn/2`'s `:env` changes to the
  C-node's environment).
  """
  @spec env(Path.t()) :: [{String.t(), String.t() | nil}]
  def env(dir) do
    base =
      @default_env
      |> Map.merge(Map.take(System.get_env(), @kept_env))
      |> Map.merge(%{"HOME" => dir, "ERL_CRASH_DUMP_SECONDS" => "0"})
      |> Map.merge(%{
        "ROOTDIR" => List.to_string(:code.root_dir()),
        "BINDIR" => bindir(),
        "EMU" => "beam",
        "PROGNAME" => "erl"
      })

    unset = for {name, _} <- System.get_env(), not Map.has_key?(base, name), do: {name, nil}
    unset ++ Enum.to_list(base)
  end
end
