defmodule Sandbox.CNode do
  @moduledoc """
  Owns the supervising C-node `priv/sandbox_cnode`: the one program through
  which the library does everything at the operating-system level.

  The program runs as a port (`spawn_executable`, `{packet, 4}`, binary,
  `exit_status`) and speaks the external term format. When the VM is
  distributed it is also a hidden C-node that other nodes can reach (see
  "Distribution"). If the program dies, this server restarts it: requests in
  flight get `{:error, :cnode_down}`, every running spawn's subscriber gets
  `{:sandbox_cnode, id, {:exit, :cnode_down}}` (its processes were killed, see
  "Process trees"), and watches are re-established under the same ids.

      iex> {:ok, %{id: id}} = Sandbox.CNode.spawn(["/bin/echo", "hi"], [])
      iex> receive do {:sandbox_cnode, ^id, {:stdout, out}} -> out end
      "hi\\n"
      iex> receive do {:sandbox_cnode, ^id, {:exit, reason}} -> reason end
      {:status, 0}

  ## Process trees

  Every spawn gets a *job leader*: a small process of the C-node between it
  and the command, which is a child subreaper of the command's tree. Whatever
  the command's processes do (`setsid`, double forks, daemonising), they stay
  below their leader, so the job's tree is always known exactly:

    * when the command exits, every process it left behind is killed with
      SIGKILL, and the exit event is sent once they are all gone;
    * `kill/3` signals every process of the tree (not only the command's
      process group) and returns the pids it signalled;
    * when the C-node dies, even by SIGKILL, every job dies with it: each
      leader has a parent-death signal on the C-node and then kills its tree,
      and each command has a parent-death signal (SIGKILL) on its leader; a
      leader killed by its own job leaves its processes to the C-node, which
      kills them.

  The mechanism that holds a job together is reported by `info/1` as
  `:containment`: `:cgroup` when the C-node could create a cgroup v2 per job
  below its own cgroup (then `cgroup.kill` stops a whole job at once, even
  while it forks, and memory and process counts come from the job's cgroup
  instead of a scan of `/proc`), else `:subreaper` (the leaders alone). The
  C-node falls back to `:subreaper` by itself when cgroups are not available
  or not writable (`:containment_reason` says why); option `:containment`,
  `config :sandbox, cnode_containment: :subreaper` or the environment
  variable `SANDBOX_CNODE_CONTAINMENT=subreaper` force it. Directories of a
  run whose C-node was killed together with its leaders are emptied and
  removed by the next C-node started in the same cgroup. A privileged job
  (root) can still leave its cgroup, never its leader's tree.

  ## Events

  Sent to the subscriber of a spawn (default: the caller):

    * `{:sandbox_cnode, id, {:stdout, binary}}` and `{:sandbox_cnode, id, {:stderr, binary}}`
    * `{:sandbox_cnode, id, {:exit, reason}}` — the last event of a spawn, sent after all of
      its output and after every process of its tree is gone. `reason` is `{:status, n}`,
      `{:signal, n}`, `:timeout`, `{:limit, :memory | :processes | :cpu | :file_size}`, or
      `:cnode_down` (the C-node died; its jobs died with it).

  On a timeout or a memory/process limit every process of the tree gets SIGTERM, then
  SIGKILL after the grace period (option `:grace`).

  Sent to the subscriber of a watch:

    * `{:sandbox_cnode, watch_id, {:changed, [path]}}` — the absolute paths changed in one
      debounce window, sorted, each once.
    * `{:sandbox_cnode, watch_id, {:not_watched, path, reason}}` — a directory created
      (or moved in) later could not be watched: `reason` is `:too_deep` (more than
      `:max_depth` levels below the root) or an errno atom (`:enospc` when the inotify
      watch limit is reached). The rest of the tree stays watched.
    * `{:sandbox_cnode, watch_id, {:watch_lost, reason}}` — after a restart of the
      program the watch could not be re-established (`reason` as `watch/2`'s errors),
      or the program died again while re-establishing it (`:cnode_down`); the watch is
      gone.

  ## Error reasons

  Besides the reasons listed with each function, every request can fail with
  `:cnode_down` (the program died while the request was in flight),
  `{:frame_too_large, size, max}` (the encoded request exceeds `:max_frame`),
  `{:bad_option, key}` (the C side refused an argument), `:not_found` (no such id),
  `{:malformed_request, detail}` and `{:unknown_command, command}`.

  ## Wire protocol

  A request is `{from_pid, ref, command, args}` in the external term format, one per
  `{packet, 4}` frame (or one distribution message); the reply `{ref, result}` goes to
  `from_pid`, events to the request's `:subscriber` (default `from_pid`). Over the port
  every outgoing message is framed as `{dest_pid, message}` and this server forwards it;
  notices for the port owner itself are `{:cnode, info}` (logged as warnings: errors such
  as a malformed request, and `{:slow_step, step, ms}` when a step of the program's loop —
  a command, the distribution, the jobs, the audit log's fsync — held it for 2 s or more,
  which none should). Commands and their `args` maps:

  | command | args | result |
  |---|---|---|
  | `:spawn` | `%{argv: [binary], env: [{binary, binary \\| nil}], cd: binary, limits: map, ceiling: map, timeout: ms \\| :infinity, sample_interval: ms, grace: ms, id: pos_integer, subscriber: pid, landlock: map}` | `{:ok, %{id: id, os_pid: n}}` (with `landlock: %{abi: n, missing: [atom]}` when confined) |
  | `:write_stdin` | `%{id: id, data: binary}` | `:ok` \\| `{:error, :closed}` |
  | `:close_stdin` | `%{id: id}` | `:ok` |
  | `:set_limits` | `%{id: id, limits: map}` | `:ok` \\| `{:error, {:prlimit, errno}}` \\| `{:error, {:above_ceiling, key}}` |
  | `:kill` | `%{id: id, signal: atom \\| integer}` | `{:ok, %{signalled: [os_pid]}}` |
  | `:sample` | `%{pids: [os_pid], descendants: boolean}` | `{:ok, %{os_pid => stats}}` |
  | `:watch` | `%{dir: binary, include: [binary], ignore: [binary], debounce: ms, max_depth: n, id: pos_integer, subscriber: pid}` | `{:ok, id}` |
  | `:unwatch` | `%{id: id}` | `:ok` |
  | `:audit` | `%{event: map}` | `:ok` (after fsync) |
  | `:ping` | `%{}` | `{:pong, os_pid}` |
  | `:info` | `%{}` | `{:ok, map}` (see `info/1`) |
  | `:distribute` | `%{node: binary, cookie: binary, name: binary, bind: binary, handshake_timeout: ms}` (port only) | `{:ok, cnode_node}` |

  ## Limits

  Limits maps take `:memory` (resident bytes of the whole tree, sampled), `:processes`
  (processes in the tree, sampled), `:cpu_seconds` (`RLIMIT_CPU` of the command) and
  `:file_size` (`RLIMIT_FSIZE` of the command, bytes). The sampled limits can be changed
  freely with `set_limits/3`; `:infinity` removes one.

  `:cpu_seconds` and `:file_size` are kernel limits with a *soft* value (what is
  enforced) and a *hard* one (the ceiling). A job's hard limits are fixed when it is
  spawned: option `:ceiling` when given, else its spawn-time limits, else unlimited.
  `set_limits/3` moves the soft limits anywhere up to that ceiling: it can lower,
  raise and (with `:infinity`) remove a limit set later, but a value above the ceiling
  is `{:error, {:above_ceiling, key}}`, and `:infinity` on a limit given at spawn puts
  it back at its spawn-time value. A process may raise its own soft limits up to the
  ceiling: a limit that must hold against a hostile process belongs in `:limits` or
  `:ceiling` at spawn. A refused `set_limits/3` changes nothing (limits already
  applied by the same call are put back).

  ## Distribution

  When the host VM is distributed (now or later: this server checks every
  500 ms and on `node_name/1`), the program registers with epmd as the hidden node
  `sandbox_cnode_<host alive name>@<host>` (a server not registered as `Sandbox.CNode`
  appends `_<program os pid>`; option `:cnode_name` sets it), receiving the cookie over
  the port, and connects to the host. Any node of the cluster with the cookie can then send the same
  requests to `{:sandbox_cnode, cnode_node}`; replies and events go to the pids in the
  request (pids of the host travel through the port).

  Its listener binds to the loopback address unless option `:dist_bind` names another
  (`"0.0.0.0"` for every interface: needed for nodes on other machines). Connections
  are accepted without blocking the program, and each handshake runs on its own under
  a deadline (`:handshake_timeout`, default 5,000 ms): a client that connects and then
  stays silent or trickles bytes delays no request and is dropped at its deadline.

  ## Landlock

  A spawn can be confined with Landlock (option `:landlock` of `spawn/2`): the
  C-node builds the ruleset (a path that cannot be opened is an error of the
  spawn), and the command enforces it on itself just before `exec`, after its
  limits are set, so the program and everything it ever starts (every
  thread, every child) run inside it; it also gets `no_new_privs`. The
  ruleset handles every right the kernel's ABI knows, so whatever no rule
  grants is denied: files outside the rules cannot be read, written,
  created, removed or executed, TCP `bind`/`connect` are refused (ABI 4 and
  later), and with `scope` signals to processes outside the ruleset and
  connections to their abstract unix sockets too (ABI 6). Device nodes
  cannot be created or their `ioctl`s used even where writing is allowed.
  Landlock does not cover UDP, raw sockets or connecting to a unix socket by
  its path.

  `info/1` reports `landlock: %{abi: n, kernel_abi: k}` (the ABI used, at
  most the newest this program knows, and the kernel's) or
  `{:unavailable, reason}`: `:not_supported` (the kernel lacks Landlock),
  `:disabled` (built in but not enabled at boot), `:forced_off` (start option
  `landlock: :off`, `config :sandbox, cnode_landlock: :off` or the environment
  variable `SANDBOX_CNODE_LANDLOCK=off`). `landlock: n` (or
  `SANDBOX_CNODE_LANDLOCK=n`) uses at most ABI `n`, to exercise older kernels'
  behaviour.

  ## Audit log

  `audit/2` appends to the file given by option `:audit_log`, else `config :sandbox,
  audit_log: path`, else a file in a private directory of this VM under the system's
  temporary directory: `sandbox-<VM os pid>-<random>` (created 0700 by the C-node; an
  existing one must be ours with no access for others), holding `audit.log` for the
  server registered as `Sandbox.CNode` and `audit-<n>.log` for others. The file is
  opened without following symbolic links; it is created exclusively (0600) when absent,
  and an existing one must be a regular file of ours with a single link. Renames of a
  rotation and new files are made durable by an fsync of the directory. If the file
  cannot be opened (at start or after a rotation), the program keeps running, `audit/2`
  returns `{:error, {:audit_failed, errno}}`, and each later event tries again.

  ## Options of `start_link/1`

    * `:name` — registered name, default `Sandbox.CNode`
    * `:max_frame` — the largest request frame in bytes, default 64 MiB
    * `:audit_log` — the audit log's path (see "Audit log")
    * `:audit_max_bytes` — rotation size, default 64 MiB; `:audit_keep` — rotated files
      kept, default 5
    * `:landlock` — `:auto` (default, or `config :sandbox, cnode_landlock:`), `:off` or
      a maximum ABI (see "Landlock")
    * `:containment` — `:auto` (default, or `config :sandbox, cnode_containment:`) or
      `:subreaper` (see "Process trees")
    * `:cnode_name` — the alive part of the C-node's node name (see "Distribution")
    * `:dist_bind` — the IPv4 address the C-node's distribution listener binds to,
      default `"127.0.0.1"`
    * `:handshake_timeout` — ms a distribution handshake may take, default 5,000
    * `:executable` — the program, default `priv/sandbox_cnode` of this application

  When the program dies it is restarted. When it dies more than 5 times in a row
  within 10 s of being started, the server stops with `{:cnode_exited, status}` and its
  supervisor decides. Watches re-established after a restart must be confirmed by the
  new program: one that fails, or whose re-establishment was in flight when the program
  died again, is dropped and its subscriber told (`{:watch_lost, reason}`), so no watch
  can keep the program in a crash loop.
  """
  use GenServer
  require Logger

  @default_max_frame 64 * 1024 * 1024
  @dist_check_ms 500
  @call_timeout 60_000
  @max_restarts 5
  @stable_ms 10_000
  @default_handshake_ms 5_000

  @type id :: pos_integer
  @type server :: GenServer.server()
  @type limits :: %{
          optional(:memory) => non_neg_integer | :infinity,
          optional(:processes) => pos_integer | :infinity,
          optional(:cpu_seconds) => non_neg_integer | :infinity,
          optional(:file_size) => non_neg_integer | :infinity
        }
  @type info :: %{
          os_pid: pos_integer,
          containment: :cgroup | :subreaper,
          containment_reason: atom,
          cgroup: String.t() | nil,
          jobs: non_neg_integer,
          watches: non_neg_integer,
          dist: map,
          audit: %{path: String.t() | nil, status: :ok | :none | {:error, atom}},
          landlock: %{abi: pos_integer, kernel_abi: pos_integer} | {:unavailable, atom}
        }
  @type exit_reason ::
          {:status, non_neg_integer}
          | {:signal, pos_integer}
          | :timeout
          | {:limit, :memory | :processes | :cpu | :file_size}
          | :cnode_down
  @type reason :: term

  ## Client API

  @doc "Starts the server and its program. See the moduledoc for options."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []) do
    {name, opts} = Keyword.pop(opts, :name, __MODULE__)
    gen_opts = if name, do: [name: name], else: []
    GenServer.start_link(__MODULE__, [{:registered, name} | opts], gen_opts)
  end

  @doc "A child specification; `opts` as for `start_link/1`."
  @spec child_spec(keyword) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      type: :worker,
      shutdown: 10_000
    }
  end

  @doc """
  Spawns an OS process under supervision, below a job leader of its own (see "Process
  trees"). It gets its own process group, no inherited file descriptors beyond
  stdin/stdout/stderr (pipes to the C-node), `PR_SET_PDEATHSIG` on its leader, and its
  limits. `os_pid` in the result is the command's pid.

  ## Options

    * `:env` — `[{name, value}]` added to (or, with `nil` as value, removed from) the
      C-node's environment
    * `:cd` — working directory
    * `:limits` — `%{memory: bytes, processes: n, cpu_seconds: s, file_size: bytes}`
    * `:ceiling` — `%{cpu_seconds: s, file_size: bytes}`: the hard limits, above the
      limits in force, up to which `set_limits/3` may raise them (see "Limits");
      default: the spawn-time `:limits`
    * `:timeout` — wall-clock ms, or `:infinity` (default)
    * `:subscriber` — pid receiving the events, default `self()`
    * `:sample_interval` — ms between `/proc` samples for the memory and process
      limits, default 50
    * `:grace` — ms between SIGTERM and SIGKILL on a timeout or limit, default 500
    * `:landlock` — confine the command with Landlock (see "Landlock"): a map of
      `read`, `exec` and `write` (lists of absolute paths: directories, whose whole
      tree the right covers, or files), `tcp` (`:deny`, the default; `:connect`: connect but never bind or
      listen; or `:allow`)
      `scope` (`true`, the default: no signals to and no abstract unix sockets
      of processes outside the ruleset) and `proc_self` (`false` by default: with
      `true` the command may read its own `/proc/<pid>`, which the ruleset cannot
      name before the command exists)
    * `:server` — the `Sandbox.CNode` server, default `Sandbox.CNode`

  With `:landlock` the result also holds `landlock: %{abi: n, missing: [atom]}`:
  the ABI the ruleset was built for and what that ABI could not enforce
  (`:tcp` below ABI 4, `:truncate` below 3, `:refer` below 2, `:ioctl_dev`
  below 5, `:scope` below 6).

  Errors: `{:spawn_failed, errno}` (for example `{:spawn_failed, :enoent}`;
  `{:spawn_failed, :cgroup}` when the job's cgroup could not be set up),
  `{:bad_option, key}`, `{:bad_limit, key}`, `:unknown_limit`, `{:above_ceiling, key}`,
  `{:landlock_unavailable, reason}` (reason as in `info/1`), `{:landlock, errno}` (a
  path of the ruleset could not be opened, or the ruleset not enforced).
  """
  @spec spawn([String.t()], keyword) ::
          {:ok,
           %{required(:id) => id, required(:os_pid) => pos_integer, optional(:landlock) => map}}
          | {:error, reason}
  def spawn(argv, opts \\ []) do
    unless is_list(argv) and argv != [] and Enum.all?(argv, &is_binary/1) do
      raise ArgumentError, "argv must be a non-empty list of strings, got: #{inspect(argv)}"
    end

    opts = check_keyword!(opts)
    {server, opts} = Keyword.pop(opts, :server, __MODULE__)

    args =
      opts
      |> Enum.reduce(%{argv: argv, subscriber: self()}, fn
        {:env, env}, acc ->
          Map.put(acc, :env, check_env!(env))

        {:cd, cd}, acc ->
          Map.put(acc, :cd, check_path!(cd, :cd))

        {:limits, l}, acc ->
          Map.put(acc, :limits, check_limits!(l))

        {:ceiling, l}, acc ->
          Map.put(acc, :ceiling, check_ceiling!(l))

        {:timeout, t}, acc ->
          Map.put(acc, :timeout, check_timeout!(t))

        {:subscriber, pid}, acc ->
          Map.put(acc, :subscriber, check_pid!(pid))

        {:sample_interval, ms}, acc ->
          Map.put(acc, :sample_interval, check_pos!(ms, :sample_interval))

        {:grace, ms}, acc ->
          Map.put(acc, :grace, check_nonneg!(ms, :grace))

        {:landlock, nil}, acc ->
          acc

        {:landlock, ll}, acc ->
          Map.put(acc, :landlock, check_landlock!(ll))

        {key, _}, _ ->
          raise ArgumentError, "unknown option #{inspect(key)}"
      end)

    GenServer.call(server, {:spawn, args}, @call_timeout)
  end

  @doc "Queues `data` for the process's stdin. Errors: `:closed`, `:not_found`."
  @spec write_stdin(id, iodata, server) :: :ok | {:error, reason}
  def write_stdin(id, data, server \\ __MODULE__) do
    request(server, :write_stdin, %{id: check_id!(id), data: IO.iodata_to_binary(data)})
  end

  @doc "Closes the process's stdin once what was written has gone. Errors: `:not_found`."
  @spec close_stdin(id, server) :: :ok | {:error, reason}
  def close_stdin(id, server \\ __MODULE__) do
    request(server, :close_stdin, %{id: check_id!(id)})
  end

  @doc """
  Changes the limits of a running job, merged into its current ones: sampled limits
  (`:memory`, `:processes`) freely, `:infinity` removing one; `:cpu_seconds` and
  `:file_size` up to the job's ceiling (see "Limits"). `:cpu_seconds` counts from the
  CPU time the command has already used. All or nothing: a refused call changes no
  limit. Errors: `{:above_ceiling, key}`, `{:prlimit, errno}`, `{:bad_limit, key}`,
  `:not_found`.
  """
  @spec set_limits(id, limits, server) :: :ok | {:error, reason}
  def set_limits(id, limits, server \\ __MODULE__) do
    request(server, :set_limits, %{id: check_id!(id), limits: check_limits!(limits)})
  end

  @doc """
  Sends a signal to every process of the job's tree (see "Process trees"), whatever
  process group or session they are in: an atom (`:sigterm`, `:sigkill`, `:sigint`,
  ...) or a signal number. Returns the pids that were signalled, sorted (`[]` when the
  job is already ending). SIGKILL also goes through the job's cgroup when it has one,
  which catches processes forked while the signal was being sent.
  Errors: `:not_found`, `{:bad_option, :signal}`.
  """
  @spec kill(id, atom | pos_integer, server) ::
          {:ok, %{signalled: [pos_integer]}} | {:error, reason}
  def kill(id, signal \\ :sigkill, server \\ __MODULE__) do
    unless is_atom(signal) or (is_integer(signal) and signal > 0) do
      raise ArgumentError, "signal must be an atom or a positive integer"
    end

    request(server, :kill, %{id: check_id!(id), signal: signal})
  end

  @doc """
  Samples OS processes from `/proc`. Each existing pid maps to `%{cpu_user: s,
  cpu_system: s, rss: bytes, vsize: bytes, threads: n, state: atom, ppid: n, pgrp: n}`
  plus `:read_bytes` and `:write_bytes` where `/proc/<pid>/io` is readable. Pids that do
  not exist are left out.

  ## Options

    * `:descendants` — when `true`, each pid maps instead to
      `%{self: stats, descendants: %{os_pid => stats}, total: %{cpu_user:, cpu_system:,
      rss:, threads:, processes:}}`
    * `:host` — when `true`, the result also has the key `:host` with the VM's own
      figures (shaped by `:descendants` in the same way)
    * `:server`
  """
  @spec sample([pos_integer], keyword) :: {:ok, %{optional(term) => map}} | {:error, reason}
  def sample(pids, opts \\ []) do
    unless is_list(pids) and Enum.all?(pids, &(is_integer(&1) and &1 > 0)) do
      raise ArgumentError, "pids must be a list of positive integers"
    end

    opts = check_keyword!(opts)
    desc = Keyword.get(opts, :descendants, false) == true
    host? = Keyword.get(opts, :host, false) == true
    host_pid = String.to_integer(System.pid())
    all = if host?, do: Enum.uniq([host_pid | pids]), else: pids
    server = Keyword.get(opts, :server, __MODULE__)

    case request(server, :sample, %{pids: all, descendants: desc}) do
      {:ok, map} when host? ->
        host = Map.get(map, host_pid)
        map = if host_pid in pids, do: map, else: Map.delete(map, host_pid)
        {:ok, Map.put(map, :host, host)}

      other ->
        other
    end
  end

  @doc """
  Watches a directory tree with inotify, following directories created later. Changes
  arrive as `{:sandbox_cnode, watch_id, {:changed, paths}}`, coalesced per debounce
  window; a write to a temporary file renamed over a watched file counts as one change
  of that file.

  ## Options

    * `:include` — file-name patterns (`fnmatch`), default `["*.ex", "*.exs", "*.erl",
      "*.hrl"]`; `[]` means every file
    * `:ignore` — directory names never entered, default `["_build", "deps", ".git"]`
    * `:debounce` — ms, default 50
    * `:max_depth` — directory levels below `dir` that are watched, default 64 (at
      most 4,096); a deeper directory found now fails the watch, one created later is
      left out with a `{:not_watched, path, :too_deep}` event
    * `:subscriber` — default `self()`
    * `:server`

  The tree is walked without recursion, one directory open at a time. A directory
  renamed within the tree is followed: later changes below it carry the new path.

  Errors: `{:watch_failed, errno}` (`:enametoolong` for paths beyond `PATH_MAX`,
  `:enospc` at the inotify watch limit), `{:too_deep, path}`, `{:bad_option, key}`.
  """
  @spec watch(Path.t(), keyword) :: {:ok, id} | {:error, reason}
  def watch(dir, opts \\ []) do
    dir = check_path!(dir, :dir) |> Path.expand()
    opts = check_keyword!(opts)
    {server, opts} = Keyword.pop(opts, :server, __MODULE__)

    args =
      Enum.reduce(
        opts,
        %{
          dir: dir,
          include: ["*.ex", "*.exs", "*.erl", "*.hrl"],
          ignore: ["_build", "deps", ".git"],
          debounce: 50,
          subscriber: self()
        },
        fn
          {:include, l}, acc -> Map.put(acc, :include, check_strings!(l, :include))
          {:ignore, l}, acc -> Map.put(acc, :ignore, check_strings!(l, :ignore))
          {:debounce, ms}, acc -> Map.put(acc, :debounce, check_nonneg!(ms, :debounce))
          {:max_depth, n}, acc -> Map.put(acc, :max_depth, check_nonneg!(n, :max_depth))
          {:subscriber, pid}, acc -> Map.put(acc, :subscriber, check_pid!(pid))
          {key, _}, _ -> raise ArgumentError, "unknown option #{inspect(key)}"
        end
      )

    GenServer.call(server, {:watch, args}, @call_timeout)
  end

  @doc "Stops a watch. Errors: `:not_found`."
  @spec unwatch(id, server) :: :ok | {:error, reason}
  def unwatch(watch_id, server \\ __MODULE__) do
    GenServer.call(server, {:unwatch, check_id!(watch_id)}, @call_timeout)
  end

  @doc """
  Appends `event` as one JSON line to the audit log and returns once the line is on
  disk (after `fsync`). Keys become strings; atoms other than `true`, `false` and `nil`
  become strings; tuples become arrays; terms JSON cannot hold (pids, references,
  functions, binaries that are not UTF-8) are written as their `inspect/1` text. A
  `"ts"` key with the current UTC time (ISO 8601) is added unless present.
  Errors: `:no_audit_log`, `{:audit_failed, errno}`.
  """
  @spec audit(map, server) :: :ok | {:error, reason}
  def audit(event, server \\ __MODULE__) when is_map(event) do
    event = json_safe(event)
    event = Map.put_new(event, "ts", DateTime.utc_now() |> DateTime.to_iso8601())
    request(server, :audit, %{event: event})
  end

  @doc """
  The node name of the C-node once the VM is distributed (registering it first if
  distribution started after the program), else `{:error, :not_distributed}`.
  """
  @spec node_name(server) :: {:ok, node} | {:error, :not_distributed | reason}
  def node_name(server \\ __MODULE__) do
    GenServer.call(server, :node_name, @call_timeout)
  end

  @doc """
  What the running program works with: `:os_pid`, `:containment` (`:cgroup` or
  `:subreaper`, see "Process trees") and `:containment_reason`, `:cgroup` (the run's
  cgroup directory, or `nil`), `:jobs` and `:watches` (how many), `:dist` (`%{node:,
  bind:, port:, connections:, handshakes_dropped:}`) and `:audit` (`%{path:, status:}`).
  """
  @spec info(server) :: {:ok, info} | {:error, reason}
  def info(server \\ __MODULE__), do: request(server, :info, %{})

  @doc "The OS pid of the running program."
  @spec os_pid(server) :: pos_integer
  def os_pid(server \\ __MODULE__), do: GenServer.call(server, :os_pid)

  @doc "Sends a raw request `{self(), ref, command, args}` and waits for its result."
  @spec request(server, atom, term) :: term
  def request(server, command, args) when is_atom(command) do
    GenServer.call(server, {:request, command, args}, @call_timeout)
  end

  ## Argument checks

  defp check_keyword!(opts) do
    unless Keyword.keyword?(opts), do: raise(ArgumentError, "options must be a keyword list")
    opts
  end

  defp check_id!(id) when is_integer(id) and id > 0, do: id

  defp check_id!(id),
    do: raise(ArgumentError, "id must be a positive integer, got: #{inspect(id)}")

  defp check_pid!(pid) when is_pid(pid), do: pid
  defp check_pid!(x), do: raise(ArgumentError, "expected a pid, got: #{inspect(x)}")

  defp check_pos!(n, _) when is_integer(n) and n > 0, do: n

  defp check_pos!(n, key),
    do: raise(ArgumentError, "#{key} must be a positive integer, got: #{inspect(n)}")

  defp check_nonneg!(n, _) when is_integer(n) and n >= 0, do: n

  defp check_nonneg!(n, key),
    do: raise(ArgumentError, "#{key} must be a non-negative integer, got: #{inspect(n)}")

  defp check_timeout!(:infinity), do: :infinity
  defp check_timeout!(n), do: check_nonneg!(n, :timeout)

  defp check_path!(p, key) do
    cond do
      is_binary(p) -> p
      is_list(p) -> List.to_string(p)
      true -> raise ArgumentError, "#{key} must be a path, got: #{inspect(p)}"
    end
  end

  defp check_strings!(l, key) do
    unless is_list(l) and Enum.all?(l, &is_binary/1),
      do: raise(ArgumentError, "#{key} must be a list of strings")

    l
  end

  defp check_env!(env) do
    unless is_list(env) and
             Enum.all?(env, fn
               {k, v} -> is_binary(k) and (is_binary(v) or is_nil(v))
               _ -> false
             end) do
      raise ArgumentError, "env must be a list of {String.t, String.t | nil}"
    end

    env
  end

  @limit_keys [:memory, :processes, :cpu_seconds, :file_size]
  defp check_limits!(l) when is_map(l) do
    Enum.each(l, fn
      {k, :infinity} when k in @limit_keys -> :ok
      {k, v} when k in @limit_keys and is_integer(v) and v >= 0 -> :ok
      kv -> raise ArgumentError, "bad limit #{inspect(kv)}"
    end)

    l
  end

  defp check_limits!(l), do: raise(ArgumentError, "limits must be a map, got: #{inspect(l)}")

  defp check_ceiling!(l) when is_map(l) do
    Enum.each(l, fn
      {k, v} when k in [:cpu_seconds, :file_size] and is_integer(v) and v >= 0 -> :ok
      kv -> raise ArgumentError, "bad ceiling #{inspect(kv)}"
    end)

    l
  end

  defp check_ceiling!(l),
    do: raise(ArgumentError, "ceiling must be a map, got: #{inspect(l)}")

  defp check_landlock!(ll) when is_map(ll) do
    Enum.each(ll, fn
      {k, paths} when k in [:read, :exec, :write] ->
        unless is_list(paths) and
                 Enum.all?(paths, &(is_binary(&1) and String.starts_with?(&1, "/"))),
               do: raise(ArgumentError, "landlock #{k} must be a list of absolute paths")

      {:tcp, v} when v in [:deny, :connect, :allow] ->
        :ok

      {k, v} when k in [:scope, :proc_self] and is_boolean(v) ->
        :ok

      kv ->
        raise ArgumentError, "bad landlock entry #{inspect(kv)}"
    end)

    ll
  end

  defp check_landlock!(ll),
    do: raise(ArgumentError, "landlock must be a map, got: #{inspect(ll)}")

  defp json_safe(m) when is_map(m) and not is_struct(m) do
    Map.new(m, fn {k, v} -> {json_key(k), json_safe(v)} end)
  end

  defp json_safe(%DateTime{} = d), do: DateTime.to_iso8601(d)
  defp json_safe(x) when is_boolean(x) or is_nil(x) or is_number(x), do: x
  defp json_safe(x) when is_atom(x), do: Atom.to_string(x)

  defp json_safe(l) when is_list(l),
    do: if(proper_list?(l), do: Enum.map(l, &json_safe/1), else: inspect(l))

  defp json_safe(t) when is_tuple(t), do: t |> Tuple.to_list() |> Enum.map(&json_safe/1)
  defp json_safe(b) when is_binary(b), do: if(String.valid?(b), do: b, else: inspect(b))
  defp json_safe(x), do: inspect(x)

  defp proper_list?([]), do: true
  defp proper_list?([_ | t]), do: proper_list?(t)
  defp proper_list?(_), do: false

  defp json_key(k) when is_binary(k), do: if(String.valid?(k), do: k, else: inspect(k))
  defp json_key(k) when is_atom(k), do: Atom.to_string(k)
  defp json_key(k), do: inspect(k)

  ## Server

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)

    state = %{
      opts: opts,
      max_frame: Keyword.get(opts, :max_frame, @default_max_frame),
      audit: nil,
      port: nil,
      os_pid: nil,
      started_at: nil,
      pending: %{},
      spawns: %{},
      watches: %{},
      dist: nil,
      dist_host: nil,
      dist_waiters: [],
      dist_pending: false,
      restarts: 0
    }

    with :ok <- check_max_frame(state.max_frame),
         :ok <- check_opts(opts),
         state = %{state | audit: audit_log(opts)},
         {:ok, state} <- open_port(state) do
      Process.send_after(self(), :check_dist, @dist_check_ms)
      {:ok, state}
    else
      {:error, reason} -> {:stop, reason}
    end
  end

  defp check_max_frame(n) when is_integer(n) and n >= 64 and n < 4_294_967_296, do: :ok
  defp check_max_frame(_), do: {:error, {:bad_option, :max_frame}}

  defp check_opts(opts) do
    cond do
      containment(opts) not in [:auto, :subreaper] ->
        {:error, {:bad_option, :containment}}

      not match?(v when v in [:auto, :off] or (is_integer(v) and v > 0), landlock(opts)) ->
        {:error, {:bad_option, :landlock}}

      not valid_ipv4?(Keyword.get(opts, :dist_bind, "127.0.0.1")) ->
        {:error, {:bad_option, :dist_bind}}

      not match?(n when is_integer(n) and n > 0 and n <= 3_600_000, handshake_ms(opts)) ->
        {:error, {:bad_option, :handshake_timeout}}

      true ->
        :ok
    end
  end

  defp containment(opts) do
    Keyword.get_lazy(opts, :containment, fn ->
      Application.get_env(:sandbox, :cnode_containment, :auto)
    end)
  end

  defp landlock(opts) do
    Keyword.get_lazy(opts, :landlock, fn ->
      Application.get_env(:sandbox, :cnode_landlock, :auto)
    end)
  end

  # :auto leaves the program to SANDBOX_CNODE_LANDLOCK in the environment.
  defp landlock_args(:auto), do: []
  defp landlock_args(:off), do: ["--landlock", "off"]
  defp landlock_args(abi) when is_integer(abi), do: ["--landlock", Integer.to_string(abi)]

  defp handshake_ms(opts), do: Keyword.get(opts, :handshake_timeout, @default_handshake_ms)

  defp dist_bind(opts) do
    case Keyword.get(opts, :dist_bind, "127.0.0.1") do
      t when is_tuple(t) -> t |> :inet.ntoa() |> List.to_string()
      b -> to_string(b)
    end
  end

  defp valid_ipv4?(t) when is_tuple(t), do: match?({_, _, _, _}, t) and :inet.is_ipv4_address(t)

  defp valid_ipv4?(b) when is_binary(b) or is_list(b),
    do: match?({:ok, _}, :inet.parse_ipv4strict_address(to_charlist(b)))

  defp valid_ipv4?(_), do: false

  defp executable(opts) do
    Keyword.get_lazy(opts, :executable, fn ->
      Path.join(:code.priv_dir(:sandbox), "sandbox_cnode")
    end)
  end

  # {path, private_dir?}: a configured path as given; the default in this
  # VM's private directory, which the program creates 0700.
  defp audit_log(opts) do
    case Keyword.get(opts, :audit_log) || Application.get_env(:sandbox, :audit_log) do
      nil ->
        file =
          if opts[:registered] == __MODULE__,
            do: "audit.log",
            else: "audit-#{System.unique_integer([:positive])}.log"

        {Path.join(vm_audit_dir(), file), true}

      path ->
        {to_string(path), false}
    end
  end

  # One directory per VM: its OS pid and a random part (unguessable, so it
  # cannot be created beforehand by someone else).
  defp vm_audit_dir do
    key = {__MODULE__, :audit_dir}

    case :persistent_term.get(key, nil) do
      nil ->
        rand = File.open!("/dev/urandom", [:read, :binary], &IO.binread(&1, 8))
        rand = Base.encode16(rand, case: :lower)
        dir = Path.join(System.tmp_dir!(), "sandbox-#{System.pid()}-#{rand}")
        :persistent_term.put(key, dir)
        dir

      dir ->
        dir
    end
  end

  defp open_port(state) do
    opts = state.opts
    {audit_path, private?} = state.audit

    args =
      ["--max-frame", Integer.to_string(state.max_frame)] ++
        ["--audit-log", audit_path] ++
        if(private?, do: ["--audit-private-dir"], else: []) ++
        [
          "--audit-max-bytes",
          Integer.to_string(Keyword.get(opts, :audit_max_bytes, 64 * 1024 * 1024))
        ] ++
        ["--audit-keep", Integer.to_string(Keyword.get(opts, :audit_keep, 5))] ++
        ["--containment", Atom.to_string(containment(opts))] ++
        landlock_args(landlock(opts))

    exe = executable(opts)

    if File.exists?(exe) do
      port =
        Port.open({:spawn_executable, exe}, [
          :binary,
          {:packet, 4},
          :exit_status,
          :use_stdio,
          args: args
        ])

      {:os_pid, os_pid} = Port.info(port, :os_pid)
      now = System.monotonic_time(:millisecond)

      state = %{
        state
        | port: port,
          os_pid: os_pid,
          started_at: now,
          dist: nil,
          dist_pending: false
      }

      {:ok, maybe_distribute(state)}
    else
      {:error, {:no_executable, exe}}
    end
  end

  defp send_request(state, cmd, args, on_reply) do
    ref = make_ref()
    frame = :erlang.term_to_binary({self(), ref, cmd, args})

    if byte_size(frame) > state.max_frame do
      {:error, {:frame_too_large, byte_size(frame), state.max_frame}}
    else
      try do
        Port.command(state.port, frame)
        {:ok, %{state | pending: Map.put(state.pending, ref_key(ref), on_reply)}}
      rescue
        # the port closed before its exit status arrived
        ArgumentError -> {:error, :cnode_down}
      end
    end
  end

  defp call_request(state, cmd, args, from, post \\ fn result, st -> {result, st} end) do
    case send_request(state, cmd, args, {:call, from, post}) do
      {:ok, state} -> {:noreply, state}
      {:error, _} = err -> {:reply, err, state}
    end
  end

  @impl true
  def handle_call({:request, cmd, args}, from, state), do: call_request(state, cmd, args, from)

  def handle_call({:spawn, args}, from, state) do
    id = System.unique_integer([:positive, :monotonic])
    sub = args.subscriber

    call_request(state, :spawn, Map.put(args, :id, id), from, fn
      {:ok, %{id: ^id}} = ok, st -> {ok, %{st | spawns: Map.put(st.spawns, id, sub)}}
      other, st -> {other, st}
    end)
  end

  def handle_call({:watch, args}, from, state) do
    id = System.unique_integer([:positive, :monotonic])
    args = Map.put(args, :id, id)

    call_request(state, :watch, args, from, fn
      {:ok, ^id} = ok, st -> {ok, %{st | watches: Map.put(st.watches, id, args)}}
      other, st -> {other, st}
    end)
  end

  def handle_call({:unwatch, id}, from, state) do
    call_request(state, :unwatch, %{id: id}, from, fn result, st ->
      {result, %{st | watches: Map.delete(st.watches, id)}}
    end)
  end

  def handle_call(:os_pid, _from, state), do: {:reply, state.os_pid, state}

  def handle_call(:node_name, from, state) do
    # distribution restarted under another name since the program registered:
    # it registers again (as :check_dist would do later)
    state =
      if state.dist != nil and state.dist_host != node(), do: %{state | dist: nil}, else: state

    cond do
      state.dist != nil -> {:reply, {:ok, state.dist}, state}
      not Node.alive?() -> {:reply, {:error, :not_distributed}, state}
      true -> {:noreply, state |> add_dist_waiter(from) |> maybe_distribute()}
    end
  end

  defp add_dist_waiter(state, from), do: %{state | dist_waiters: [from | state.dist_waiters]}

  defp maybe_distribute(%{dist: nil, dist_pending: false} = state) do
    if Node.alive?() do
      [alive, _host] = node() |> Atom.to_string() |> String.split("@", parts: 2)

      name =
        Keyword.get_lazy(state.opts, :cnode_name, fn ->
          if state.opts[:registered] == __MODULE__,
            do: "sandbox_cnode_" <> alive,
            else: "sandbox_cnode_#{alive}_#{state.os_pid}"
        end)

      args = %{
        node: Atom.to_string(node()),
        cookie: Atom.to_string(Node.get_cookie()),
        name: name,
        bind: dist_bind(state.opts),
        handshake_timeout: handshake_ms(state.opts)
      }

      case send_request(state, :distribute, args, :distribute) do
        {:ok, state} -> %{state | dist_pending: true}
        {:error, _} -> state
      end
    else
      state
    end
  end

  defp maybe_distribute(state), do: state

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = state) do
    {:noreply, handle_frame(localize(:erlang.binary_to_term(data)), state)}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    program_down(state, status)
  end

  # A write to a program that just died closes the port with `epipe` and no
  # exit status: the same as its exit.
  def handle_info({:EXIT, port, reason}, %{port: port} = state) do
    program_down(state, reason)
  end

  def handle_info({:EXIT, port, _}, state) when is_port(port), do: {:noreply, state}
  def handle_info({:EXIT, _, reason}, state), do: {:stop, reason, state}

  def handle_info(:check_dist, state) do
    Process.send_after(self(), :check_dist, @dist_check_ms)

    state =
      cond do
        # distribution stopped, or restarted under another name: register again later
        state.dist != nil and not Node.alive?() -> %{state | dist: nil}
        state.dist != nil and state.dist_host != node() -> %{state | dist: nil}
        true -> state
      end

    {:noreply, maybe_distribute(state)}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  # A program that dies within @stable_ms of its start counts towards a crash
  # loop, however long each run takes; one that ran longer starts the count
  # again.
  defp program_down(state, status) do
    now = System.monotonic_time(:millisecond)
    stable? = state.started_at != nil and now - state.started_at >= @stable_ms
    restarts = if stable?, do: 1, else: state.restarts + 1

    if restarts > @max_restarts do
      Logger.error("sandbox_cnode exited (#{inspect(status)}) too often; giving up")
      {:stop, {:cnode_exited, status}, %{fail_in_flight(state) | port: nil}}
    else
      Logger.error("sandbox_cnode exited (#{inspect(status)}); restarting it")
      reopen(%{fail_in_flight(state) | restarts: restarts})
    end
  end

  @impl true
  def terminate(_reason, %{port: port}) do
    if port && Port.info(port), do: Port.close(port)
    :ok
  catch
    _, _ -> :ok
  end

  # The program keeps the pids it is given as they were encoded, and sends
  # over the port only what is for this node. A pid encoded under another
  # name of this node — `nonode@nohost` before distribution started, or the
  # name it had before distribution stopped — decoded as is would be a pid
  # of a node that does not exist, and the message would be lost: it is
  # re-encoded under the current name and creation.
  # The same name with another creation (distribution restarted under the
  # same name) is another node too: the VM drops a message to such a pid.
  defp localize({dest, msg}) when is_pid(dest) do
    bin = :erlang.term_to_binary(dest)
    # NEW_PID_EXT: tag 88, the node atom, then ID, serial and creation (4 bytes each).
    <<id_serial::binary-size(8), creation::32>> = binary_part(bin, byte_size(bin), -12)
    now = :erlang.system_info(:creation)

    if node(dest) == node() and creation == now do
      {dest, msg}
    else
      <<131, node_atom::binary>> = :erlang.term_to_binary(node())
      {:erlang.binary_to_term(<<131, 88, node_atom::binary, id_serial::binary, now::32>>), msg}
    end
  end

  defp localize(frame), do: frame

  # The key of a request's reference in `pending`: its ID words, without the
  # node name and creation it was encoded under. A reply can come back after
  # distribution started, stopped or restarted: the reference it carries
  # then decodes to a reference of another node (or incarnation), equal to
  # no reference of this one. IDs are unique for the life of the VM,
  # whatever its name.
  defp ref_key(ref) do
    # NEWER_REFERENCE_EXT: tag 90, the count of ID words, the node atom, the
    # creation (4 bytes), then the ID words.
    case :erlang.term_to_binary(ref) do
      <<131, 90, words::16, _::binary>> = bin -> binary_part(bin, byte_size(bin), -4 * words)
      _ -> ref
    end
  end

  defp handle_frame({dest, msg}, state) when dest == self() do
    case msg do
      {ref, result} when is_reference(ref) ->
        {entry, pending} = Map.pop(state.pending, ref_key(ref))
        state = %{state | pending: pending}

        case entry do
          {:call, from, post} ->
            {result, state} = post.(result, state)
            GenServer.reply(from, result)
            state

          :distribute ->
            dist_done(result, state)

          {:rewatch, id} ->
            rewatch_done(id, result, state)

          :ignore ->
            state

          nil ->
            state
        end

      _ ->
        state
    end
  end

  defp handle_frame({dest, msg}, state) when is_pid(dest) do
    send(dest, msg)

    case msg do
      {:sandbox_cnode, id, {:exit, _}} -> %{state | spawns: Map.delete(state.spawns, id)}
      _ -> state
    end
  end

  defp handle_frame({:cnode, info}, state) do
    Logger.warning("sandbox_cnode: #{inspect(info)}")
    state
  end

  defp handle_frame(other, state) do
    Logger.warning("sandbox_cnode: unexpected frame #{inspect(other)}")
    state
  end

  defp dist_done(result, state) do
    state = %{state | dist_pending: false}

    case result do
      {:ok, node} ->
        Enum.each(state.dist_waiters, &GenServer.reply(&1, {:ok, node}))
        %{state | dist: node, dist_host: node(), dist_waiters: []}

      {:error, _} = err ->
        Logger.warning("sandbox_cnode could not join the distribution: #{inspect(err)}")
        Enum.each(state.dist_waiters, &GenServer.reply(&1, err))
        %{state | dist_waiters: []}
    end
  end

  defp reopen(state) do
    case open_port(state) do
      {:ok, state} -> {:noreply, rewatch(state)}
      {:error, reason} -> {:stop, reason, state}
    end
  end

  defp fail_in_flight(state) do
    # a watch whose re-establishment was in flight may be what kills the
    # program: it is not tried again
    lost = for {_ref, {:rewatch, id}} <- state.pending, do: id
    state = Enum.reduce(lost, state, &lose_watch(&2, &1, :cnode_down))

    Enum.each(state.pending, fn
      {_ref, {:call, from, _}} -> GenServer.reply(from, {:error, :cnode_down})
      _ -> :ok
    end)

    Enum.each(state.spawns, fn {id, sub} ->
      send(sub, {:sandbox_cnode, id, {:exit, :cnode_down}})
    end)

    Enum.each(state.dist_waiters, &GenServer.reply(&1, {:error, :cnode_down}))
    %{state | pending: %{}, spawns: %{}, dist_waiters: [], dist_pending: false}
  end

  defp rewatch(state) do
    Enum.reduce(state.watches, state, fn {id, args}, st ->
      case send_request(st, :watch, args, {:rewatch, id}) do
        {:ok, st} -> st
        {:error, reason} -> lose_watch(st, id, reason)
      end
    end)
  end

  defp rewatch_done(id, {:ok, id}, state), do: state
  defp rewatch_done(id, {:error, reason}, state), do: lose_watch(state, id, reason)
  defp rewatch_done(id, other, state), do: lose_watch(state, id, other)

  defp lose_watch(state, id, reason) do
    case Map.pop(state.watches, id) do
      {nil, _} ->
        state

      {args, watches} ->
        Logger.warning("sandbox_cnode: watch #{id} lost: #{inspect(reason)}")
        send(args.subscriber, {:sandbox_cnode, id, {:watch_lost, reason}})
        %{state | watches: watches}
    end
  end
end
