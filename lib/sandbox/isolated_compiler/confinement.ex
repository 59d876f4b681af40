defmodule Sandbox.IsolatedCompiler.Confinement do
  @moduledoc """
  Kernel confinement of compile workers with Landlock.

  A compile runs the project's own code (`mix.exs`, config files, every
  macro). Under confinement the worker that runs it can

    * read only the project, the Erlang/Elixir installation (the runtime the
      worker VM is made of: the Erlang root, Elixir's libraries, the shared
      libraries the VM is linked with, the compile worker's own `.beam`
      file, and a few harmless system files: `/etc/ld.so.cache`,
      `/dev/null`, `/dev/urandom`, the CPU topology under
      `/sys/devices/system`), its own `/proc/<pid>` (its limits, its
      environment: nobody else's) and its job directory;
    * write only to its job directory (and `/dev/null`); it cannot create
      device nodes, and executes only the emulator's own binaries (and
      whatever of the shared library directories is executable);
    * neither bind nor connect a TCP socket (Landlock ABI 4 and later), nor
      signal processes outside it or reach their abstract unix sockets
      (ABI 6 and later).

  ## Design: one worker, one project, confined before it starts

  Landlock restricts the thread that enforces a ruleset and the threads and
  processes it creates *afterwards*; it cannot be applied to a running
  process from outside, and on kernels before Landlock's `TSYNC` flag (ABI
  8) not even to the other threads of one's own process. A worker VM is
  multi-threaded from its first instruction (schedulers, and the dirty I/O
  threads that do its file operations), and while it boots it starts
  `erl_child_setup`, the separate process that forks every port and
  `os:cmd/1`. A ruleset the worker applied to itself when a job arrives (a
  NIF, or a helper) would leave the other threads — and, even with `TSYNC`,
  `erl_child_setup` and every program started through it, such as a second
  VM — outside it.

  So the whole ruleset is enforced *before the VM starts*: the supervising
  C-node builds it and the worker's process applies it to itself just
  before `exec` (`Sandbox.CNode.spawn/2`, option `:landlock`). Everything
  in it must be known then: the job directory (the pool creates one per
  worker when it starts it, and the job is written into it at hand-over)
  and the project. A confined worker is therefore started *for one
  project*: the pool keys its workers by what they are confined to
  (`Sandbox.IsolatedCompiler.Pool`), and a worker that served a job is
  replaced by one for the same project, so that the next compile of it (a
  reload, the file watcher's incremental compiles) finds a warm worker. The
  first compile of a project the pool has no worker for waits for one to
  start, without the warm-up compile (about a second on a two-core
  machine), in the place of the longest-idle worker of another key when the
  pool is full.

  ## What it does not cover

  Landlock (up to ABI 7) does not restrict UDP or raw sockets, nor
  connecting to a unix socket by its path (abstract ones are covered by the
  signal and socket scope from ABI 6): compile-time code can still talk to
  a unix-socket service of the host it has the file permissions for (as
  root, any). Closing that needs a seccomp filter on socket families, which
  is not built. The worker runs as the host VM's user.

  ## Availability

  `status/1` asks the C-node (`Sandbox.CNode.info/1`). Landlock is
  unavailable when the kernel lacks it or has it disabled, or when the
  C-node was started with `landlock: :off` (`config :sandbox,
  cnode_landlock: :off`, or `SANDBOX_CNODE_LANDLOCK=off` in its
  environment). A kernel older than ABI 4 cannot close TCP: a worker is
  then confined for files only, and the compile reports what is missing.
  """

  @typedoc "How a compile was confined: the `confinement` field of a compile's result."
  @type t :: :landlock | {:landlock, [atom]} | {:unavailable, term} | :none

  @typedoc "What a worker is confined to: the pool's key for it."
  @type spec :: %{mode: :landlock | :none, read: [String.t()]}

  # The ABI from which Landlock covers everything a compile must not do
  # (ABI 3 adds truncate(2), ABI 4 TCP).
  @required_abi 4

  @doc """
  The mode a `confine` option and the C-node's Landlock status give:
  `{:landlock, missing}` (confine; `missing` lists what the kernel's ABI
  cannot enforce), `{:none, confinement}` (do not confine, and report
  `confinement`) or `{:error, {:confinement_unavailable, reason}}`
  (`:required` and Landlock unavailable, or its ABI below 4:
  `{:landlock_abi, n}`).
  """
  @spec mode(:required | :preferred | :none, {:ok, map} | {:unavailable, term}) ::
          {:landlock, [atom]} | {:none, t} | {:error, {:confinement_unavailable, term}}
  def mode(:none, _status), do: {:none, :none}

  def mode(:required, {:ok, %{abi: abi}}) when abi < @required_abi,
    do: {:error, {:confinement_unavailable, {:landlock_abi, abi}}}

  def mode(:required, {:unavailable, reason}),
    do: {:error, {:confinement_unavailable, reason}}

  def mode(:preferred, {:unavailable, reason}), do: {:none, {:unavailable, reason}}
  def mode(_, {:ok, %{abi: abi}}), do: {:landlock, missing(abi)}

  # What an ABI cannot enforce of a worker's ruleset (as the C-node reports
  # it for a spawn).
  defp missing(abi) do
    for {name, from} <- [tcp: 4, truncate: 3, refer: 2, ioctl_dev: 5, scope: 6],
        abi < from,
        do: name
  end

  @doc "The `confinement` of a compile's result for a mode of `mode/2`."
  @spec result({:landlock, [atom]} | {:none, t}) :: t
  def result({:landlock, []}), do: :landlock
  def result({:landlock, missing}), do: {:landlock, missing}
  def result({:none, confinement}), do: confinement

  @doc """
  The C-node's Landlock status: `{:ok, %{abi: n}}` or
  `{:unavailable, reason}` (`:cnode_down` when the C-node cannot be asked).
  """
  @spec status(GenServer.server()) :: {:ok, %{abi: pos_integer}} | {:unavailable, term}
  def status(server \\ Sandbox.CNode) do
    case Sandbox.CNode.info(server) do
      {:ok, %{landlock: %{abi: abi}}} -> {:ok, %{abi: abi}}
      {:ok, %{landlock: {:unavailable, reason}}} -> {:unavailable, reason}
      {:ok, _} -> {:unavailable, :not_supported}
      {:error, _} -> {:unavailable, :cnode_down}
    end
  catch
    :exit, _ -> {:unavailable, :cnode_down}
  end

  @doc """
  The `:landlock` option of `Sandbox.CNode.spawn/2` for a worker whose job
  directory is `job_dir` and that may read `read` (the project: directories
  or files, absolute; those that do not exist are left out).
  """
  @spec spawn_option(String.t(), [String.t()]) :: map
  def spawn_option(job_dir, read) do
    runtime = runtime()

    %{
      exec: runtime.exec,
      read: runtime.read ++ existing(read),
      write: [job_dir | runtime.write],
      tcp: :deny,
      scope: true,
      proc_self: true
    }
  end

  @doc """
  The installation a confined worker may read (`read`) or also execute
  (`exec`), and the files it may write besides its job directory (`write`).
  Computed once per VM.
  """
  @spec runtime() :: %{exec: [String.t()], read: [String.t()], write: [String.t()]}
  def runtime do
    key = {__MODULE__, :runtime}

    case :persistent_term.get(key, nil) do
      nil ->
        value = compute_runtime()
        :persistent_term.put(key, value)
        value

      value ->
        value
    end
  end

  defp compute_runtime do
    root = List.to_string(:code.root_dir())

    elixir =
      for app <- [:elixir, :eex, :mix, :logger],
          dir = :code.lib_dir(app),
          is_list(dir),
          do: dir |> List.to_string() |> Path.dirname()

    worker = Sandbox.IsolatedCompiler.Pool.worker_dir()

    # Executable: the emulator's binaries (erlexec, beam.smp,
    # erl_child_setup) and the dynamic loader among the shared libraries;
    # the rest of the Erlang root is only read.
    bin = Path.join([root, "erts-#{:erlang.system_info(:version)}", "bin"])

    %{
      exec: Enum.uniq(existing([bin | shared_library_dirs(root)])),
      read:
        Enum.uniq(
          existing(
            [root | elixir] ++
              [
                worker,
                "/etc/ld.so.cache",
                "/dev/urandom",
                "/sys/devices/system/cpu",
                "/sys/devices/system/node"
              ]
          )
        ),
      write: existing(["/dev/null"])
    }
  end

  # The directories of the shared libraries this VM has mapped (the C
  # library, the dynamic loader, libcrypto, ...): the worker VM is the same
  # program and needs them. Libraries of applications outside the Erlang
  # installation (this library's own NIF, other NIFs of the host) are left
  # out.
  defp shared_library_dirs(root) do
    apps =
      for dir <- :code.get_path(),
          dir = List.to_string(dir),
          not String.starts_with?(dir, root <> "/"),
          do: Path.dirname(dir) <> "/"

    case File.read("/proc/self/maps") do
      {:ok, maps} ->
        maps
        |> String.split("\n")
        |> Enum.flat_map(fn line ->
          case Regex.run(~r{\s(/\S+\.so[.\d]*)$}, line) do
            [_, file] -> [file]
            _ -> []
          end
        end)
        |> Enum.reject(fn file -> Enum.any?(apps, &String.starts_with?(file, &1)) end)
        |> Enum.map(&Path.dirname/1)
        |> Enum.uniq()

      {:error, _} ->
        []
    end
  end

  defp existing(paths), do: Enum.filter(paths, &File.exists?/1)
end
