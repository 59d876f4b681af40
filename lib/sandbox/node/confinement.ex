defmodule Sandbox.Node.Confinement do
  @moduledoc """
  What the kernel lets a sandbox VM touch (`Sandbox.Node`): Landlock rules
  the supervising C-node enforces on the VM's process just before it
  `exec`s the emulator (`Sandbox.CNode.spawn/2`, option `:landlock`), so
  that every thread of the VM and everything it starts is inside them.

  | profile | reads | writes | TCP (`bind`, `connect`) |
  |---|---|---|---|
  | `:high` | the installation | nothing | refused |
  | `:medium` | the installation, the sandbox's project | the VM's own directory | `connect` with `:network_client` (never `bind`), else refused |
  | `:low` | not confined | | |

  *The installation* is what the VM is made of: the Erlang root
  (`:code.root_dir/0`), Elixir's libraries, this library (its `ebin` and
  its `priv`), the shared libraries the emulator is linked with, and a few
  harmless system files (`/etc/ld.so.cache`, `/dev/urandom`, the CPU
  topology under `/sys/devices/system`); the VM may also read its own
  `/proc/<pid>` and its own directory (its `HOME`, empty), write
  `/dev/null`, and execute only the emulator's binaries and the dynamic
  loader (it is started as `erlexec`, without the `erl` shell script). It
  may not signal processes outside it (Landlock's scope, ABI 6).

  The project is readable only when the profile allows file reads at all
  (`:file_read` or `:all` among `allowed_operations`): `:high`'s code
  cannot read files, so its VM is not given the project — which lets every
  `:high` sandbox use the pool's warm VMs, started before they know their
  sandbox. A map profile is confined as its `isolation_level`: under
  `:high` no TCP and no writes whatever its `allowed_operations`; under
  `:medium` TCP connections are allowed when they include `:network_client`
  or `:all`, and binding a port (so listening) never is: the C-node's
  `tcp: :connect`, which handles Landlock's `bind` right alone.

  ## Classes

  Rules are fixed when a VM starts: what they depend on is the VM's
  *class* (`class/2`). The pool's VMs are of `pool_class/0` (`:high`'s);
  a sandbox of another class gets a VM started for it
  (`Sandbox.Node.Pool.checkout/4`).

  ## Without Landlock

  As for compile workers (`Sandbox.IsolatedCompiler.Confinement`), from
  the C-node's Landlock status (`Sandbox.CNode.info/1`, `:landlock`):

    * `:high` — a create is refused with `{:error,
      {:confinement_unavailable, reason}}` when Landlock is unavailable
      (`reason` as the C-node reports it: `:not_supported`, `:disabled`,
      `:forced_off`, or `:cnode_down`), or when the kernel's ABI is below 4,
      which cannot refuse TCP (`{:landlock_abi, n}`);
    * `:medium` — the VM runs unconfined by the kernel (or, below ABI 4,
      confined for files only), logged once;
    * `:low` — never confined.

  The sandbox's `created` audit line says `confined: true | false` (the
  C-node's report of the VM's spawn, not the request).

  ## What it does not cover

  Landlock (up to ABI 7) does not restrict UDP or raw sockets, nor
  connecting to a unix socket by its path; `stat(2)` of any path still
  works. The VM runs as the host VM's user.
  """

  require Logger

  @typedoc """
  A confinement class, what a VM's rules depend on: `:none` (not
  confined), or `{project | nil, tcp?, writes?}` (the project readable or
  not, TCP allowed or not, the VM's own directory writable or not).
  """
  @type class :: :none | {Path.t() | nil, boolean, boolean}

  # The ABI from which Landlock refuses TCP (`:high` requires it).
  @required_abi 4

  @doc "The class of the pool's warm VMs: `:high`'s (nothing of any project)."
  @spec pool_class() :: class
  def pool_class, do: {nil, false, false}

  @doc """
  The class of a sandbox with the resolved security `profile`, whose
  project is `project` (see the module documentation).
  """
  @spec class(map, Path.t()) :: class
  def class(%{isolation_level: :low}, _project), do: :none

  def class(%{isolation_level: level} = profile, project) when level in [:high, :medium] do
    ops = Map.get(profile, :allowed_operations, [])
    reads? = :file_read in ops or :all in ops
    tcp? = level == :medium and (:network_client in ops or :all in ops)
    {if(reads?, do: Path.expand(project)), tcp?, level == :medium}
  end

  @doc """
  The class a sandbox's VM gets given the C-node's Landlock `status`
  (`Sandbox.IsolatedCompiler.Confinement.status/1`; default: asked now):
  `{:ok, class}` or `{:error, {:confinement_unavailable, reason}}` (under
  `:high` only, see "Without Landlock"). Under `:medium`, a VM that cannot
  be confined (fully) is logged once.
  """
  @spec resolve(map, Path.t(), {:ok, map} | {:unavailable, term} | nil) ::
          {:ok, class} | {:error, {:confinement_unavailable, term}}
  def resolve(profile, project, status \\ nil) do
    case class(profile, project) do
      :none ->
        {:ok, :none}

      class ->
        status = status || Sandbox.IsolatedCompiler.Confinement.status()
        decide(profile.isolation_level, class, status)
    end
  end

  defp decide(:high, _class, {:unavailable, reason}),
    do: {:error, {:confinement_unavailable, reason}}

  defp decide(:high, _class, {:ok, %{abi: abi}}) when abi < @required_abi,
    do: {:error, {:confinement_unavailable, {:landlock_abi, abi}}}

  defp decide(:medium, _class, {:unavailable, reason}) do
    log_once({:unavailable, reason})
    {:ok, :none}
  end

  defp decide(:medium, class, {:ok, %{abi: abi}}) when abi < @required_abi do
    log_once({:landlock_abi, abi})
    {:ok, class}
  end

  defp decide(_level, class, {:ok, _}), do: {:ok, class}

  defp log_once(why) do
    key = {__MODULE__, :logged, why}

    unless :persistent_term.get(key, false) do
      :persistent_term.put(key, true)

      Logger.warning(
        "Sandbox.Node: :medium sandbox VMs are not fully confined by the kernel: #{inspect(why)}"
      )
    end

    :ok
  end

  @doc """
  The `:landlock` option of `Sandbox.CNode.spawn/2` for a VM of `class`
  whose own directory is `vm_dir` (`nil` for `:none`: no confinement).
  """
  @spec spec(class, Path.t()) :: map | nil
  def spec(:none, _vm_dir), do: nil

  def spec({project, tcp?, writes?}, vm_dir) do
    runtime = runtime()

    %{
      read: Enum.uniq(runtime.read ++ [vm_dir] ++ existing(List.wrap(project))),
      exec: runtime.exec,
      write: if(writes?, do: [vm_dir], else: []) ++ runtime.write,
      tcp: if(tcp?, do: :connect, else: :deny),
      scope: true,
      proc_self: true
    }
  end

  @doc """
  The installation a confined VM may read (`read`) or also execute
  (`exec`), and the files it may write whatever its class (`write`):
  the compile workers' (`Sandbox.IsolatedCompiler.Confinement.runtime/0`)
  and the VM's code path, this library's directory and its `priv`, with
  symbolic links resolved (rules name file hierarchies, not links).
  """
  @spec runtime() :: %{exec: [String.t()], read: [String.t()], write: [String.t()]}
  def runtime do
    base = Sandbox.IsolatedCompiler.Confinement.runtime()
    lib = :code.lib_dir(:sandbox) |> List.to_string() |> Path.expand()

    own =
      [lib, Path.join(lib, "priv") | Sandbox.Node.code_dirs()]
      |> existing()
      |> Enum.map(&real_path/1)

    %{base | read: Enum.uniq(base.read ++ own)}
  end

  defp existing(paths), do: Enum.filter(paths, &File.exists?/1)

  # A path with every symbolic link along it resolved.
  defp real_path(path), do: real_path(Path.split(path), "/", 0)

  defp real_path(_parts, acc, 40), do: acc
  defp real_path([], acc, _n), do: acc

  defp real_path([part | rest], acc, n) do
    next = Path.join(acc, part)

    case File.read_link(next) do
      {:ok, target} -> real_path(Path.split(Path.expand(target, acc)) ++ rest, "/", n + 1)
      {:error, _} -> real_path(rest, next, n)
    end
  end
end
