defmodule Sandbox.FileWatcher do
  @moduledoc """
  Automatic reload: watches the sources of every sandbox that has it on,
  and reloads them when they change.

  One process for the VM, over the supervising C-node's inotify
  (`Sandbox.CNode.watch/2`, one inotify instance for the whole VM). For each
  project directory with at least one sandbox watching, it watches the
  source folders — `lib/`, `src/` and `include/` of a mix project (the
  directory itself for a plain directory of sources), and the folders
  created under them later — for `.ex`, `.erl` and `.hrl` files. Editor
  temporaries and hidden files (`.#x.ex`, `#x.ex#`, `x.ex~`, `.x.ex.swp`),
  and anything under `_build`, `deps` or a hidden directory, are ignored;
  an atomic save (a temporary file renamed over the source) is one edit.

  Changes are debounced (`config :sandbox, watch_debounce: ms`, 50 by
  default) and a burst is one change, with the last content winning: while
  one compile runs, further edits accumulate and are compiled together
  right after it. Each change is one incremental compile of the project
  (`Sandbox.IsolatedCompiler.incremental_compile/3`, in a compile worker),
  shared by every sandbox built from that directory, and then one change
  applied to each of them (`Sandbox.Instance.apply_compile/3`), emitting
  `[:sandbox, :reload, :reloaded]` with `trigger: :file_watcher`. A compile
  error keeps the running code (and status `:running`) and emits
  `[:sandbox, :reload, :failed]` with `reason: {:compilation_failed,
  diagnostics}`; the next good save reloads.

  Sandboxes start watching with `auto_reload: true` at create or
  `Sandbox.enable_auto_reload/1` (which first catches up on edits made
  while the watch was off), and stop with `Sandbox.disable_auto_reload/1`
  or when destroyed.
  """

  use GenServer

  alias Sandbox.{CNode, ErrorHandler, Instance, IsolatedCompiler, Telemetry}

  @source_exts ~w(.ex .erl .hrl)
  @skip_dirs ~w(_build deps)

  @doc "Starts the watcher (one per node, under the library's supervisor)."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []),
    do: GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))

  @doc false
  def child_spec(opts), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

  @doc """
  Makes sandbox `id` (its instance `pid`, built from `root`) reload on
  changes of `root`'s sources. With `catch_up: true` it is first brought to
  the sources as they are now (a compile of the whole project, whose
  modules whose bytes differ from the sandbox's are reloaded).
  Errors: `{:watch_failed, reason}` when no folder can be watched.
  """
  @spec watch(String.t(), pid, Path.t(), keyword) :: :ok | {:error, term}
  def watch(id, pid, root, opts \\ []),
    do: GenServer.call(__MODULE__, {:watch, id, pid, Path.expand(root), opts}, 30_000)

  @doc "Stops automatic reload of sandbox `id` (`:ok` when it was not watching)."
  @spec unwatch(String.t()) :: :ok
  def unwatch(id), do: GenServer.call(__MODULE__, {:unwatch, id}, 30_000)

  @doc """
  The watched projects: `%{root => %{sandboxes: [id], folders: [path],
  compiling: boolean, task: pid | nil}}` (`task`: the process compiling
  and applying the current change, to monitor until it is done).
  """
  @spec watched() :: %{Path.t() => map}
  def watched, do: GenServer.call(__MODULE__, :watched)

  @doc """
  Whether `path` is a source file the watcher reacts to (not an editor
  temporary, not hidden, not under `_build`, `deps` or a hidden folder).
  """
  @spec source?(Path.t()) :: boolean
  def source?(path) do
    base = Path.basename(path)

    Path.extname(base) in @source_exts and
      not String.starts_with?(base, [".", "#"]) and
      not String.ends_with?(base, "~") and
      not Enum.any?(Path.split(Path.dirname(path)), fn part ->
        part in @skip_dirs or (String.starts_with?(part, ".") and part not in [".", ".."])
      end)
  end

  ## Server

  @impl true
  def init(_opts) do
    debounce = Application.get_env(:sandbox, :watch_debounce, 50)
    {:ok, %{roots: %{}, watches: %{}, sandboxes: %{}, debounce: debounce}}
  end

  @impl true
  def handle_call({:watch, id, pid, root, opts}, _from, state) do
    state = drop_sandbox(state, id)

    case ensure_root(state, root) do
      {:ok, state} ->
        ref = Process.monitor(pid)
        state = put_in(state.sandboxes[id], %{pid: pid, root: root, monitor: ref})
        state = update_in(state.roots[root].sandboxes, &MapSet.put(&1, id))

        state =
          if Keyword.get(opts, :catch_up, false),
            do: schedule(state, root, {:catch_up, id}),
            else: state

        {:reply, :ok, state}

      {:error, reason} ->
        {:reply, {:error, reason}, state}
    end
  end

  def handle_call({:unwatch, id}, _from, state), do: {:reply, :ok, drop_sandbox(state, id)}

  def handle_call(:watched, _from, state) do
    reply =
      Map.new(state.roots, fn {root, r} ->
        {root,
         %{
           sandboxes: Enum.sort(r.sandboxes),
           folders: Enum.sort(Map.values(r.folders)),
           compiling: r.task != nil,
           task: with({pid, _ref} <- r.task, do: pid)
         }}
      end)

    {:reply, reply, state}
  end

  @impl true
  def handle_info({:sandbox_cnode, wid, {:changed, paths}}, state) do
    with root when is_binary(root) <- state.watches[wid],
         [_ | _] = sources <- Enum.filter(paths, &source?/1) do
      {:noreply, schedule(state, root, {:files, sources})}
    else
      _ -> {:noreply, state}
    end
  end

  def handle_info({:compiled, root}, state) do
    case state.roots[root] do
      %{task: {_pid, ref}} = r ->
        Process.demonitor(ref, [:flush])

        {:noreply,
         start_next(%{state | roots: Map.put(state.roots, root, %{r | task: nil})}, root)}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _pid, _reason}, state) do
    case Enum.find(state.sandboxes, fn {_id, s} -> s.monitor == ref end) do
      {id, _} -> {:noreply, drop_sandbox(state, id)}
      nil -> {:noreply, task_down(state, ref)}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  ## Roots

  defp ensure_root(state, root) do
    if Map.has_key?(state.roots, root) do
      {:ok, state}
    else
      folders = folders(root)

      watched =
        Enum.reduce_while(folders, {:ok, %{}}, fn dir, {:ok, acc} ->
          case CNode.watch(dir, include: ["*.ex", "*.erl", "*.hrl"], debounce: state.debounce) do
            {:ok, wid} -> {:cont, {:ok, Map.put(acc, wid, dir)}}
            {:error, reason} -> {:halt, {:error, {:watch_failed, reason}, acc}}
          end
        end)

      case watched do
        {:ok, wids} when map_size(wids) > 0 ->
          r = %{sandboxes: MapSet.new(), folders: wids, pending: nil, task: nil}
          watches = Map.merge(state.watches, Map.new(wids, fn {wid, _} -> {wid, root} end))
          {:ok, %{state | roots: Map.put(state.roots, root, r), watches: watches}}

        {:ok, _none} ->
          {:error, {:watch_failed, :no_source_folders}}

        {:error, reason, wids} ->
          for {wid, _} <- wids, do: CNode.unwatch(wid)
          {:error, reason}
      end
    end
  end

  # The source folders of a project: lib/, src/ and include/ of a mix
  # project, the directory itself otherwise.
  defp folders(root) do
    if File.regular?(Path.join(root, "mix.exs")) do
      for dir <- ~w(lib src include), path = Path.join(root, dir), File.dir?(path), do: path
    else
      [root]
    end
  end

  defp drop_sandbox(state, id) do
    case Map.pop(state.sandboxes, id) do
      {nil, _} ->
        state

      {%{root: root, monitor: ref}, sandboxes} ->
        Process.demonitor(ref, [:flush])
        state = %{state | sandboxes: sandboxes}
        r = state.roots[root]
        left = MapSet.delete(r.sandboxes, id)

        if MapSet.size(left) == 0 do
          for {wid, _} <- r.folders, do: CNode.unwatch(wid)

          %{
            state
            | roots: Map.delete(state.roots, root),
              watches: Map.drop(state.watches, Map.keys(r.folders))
          }
        else
          %{state | roots: Map.put(state.roots, root, %{r | sandboxes: left})}
        end
    end
  end

  ## Compiles

  # Work for `root` accumulates in `pending` (changed files, and sandboxes
  # to catch up) and runs as one compile when none is running.
  defp schedule(state, root, work) do
    r = state.roots[root]
    pending = r.pending || %{files: MapSet.new(), catch_up: MapSet.new()}

    pending =
      case work do
        {:files, files} -> %{pending | files: MapSet.union(pending.files, MapSet.new(files))}
        {:catch_up, id} -> %{pending | catch_up: MapSet.put(pending.catch_up, id)}
      end

    start_next(%{state | roots: Map.put(state.roots, root, %{r | pending: pending})}, root)
  end

  defp start_next(state, root) do
    case state.roots[root] do
      %{task: nil, pending: %{} = pending} = r ->
        targets = for id <- r.sandboxes, s = state.sandboxes[id], do: {id, s.pid}

        watcher = self()

        {pid, ref} =
          spawn_monitor(fn ->
            run(root, pending, targets)
            send(watcher, {:compiled, root})
          end)

        r = %{r | pending: nil, task: {pid, ref}}
        %{state | roots: Map.put(state.roots, root, r)}

      _ ->
        state
    end
  end

  defp task_down(state, ref) do
    case Enum.find(state.roots, fn {_root, r} -> match?({_, ^ref}, r.task) end) do
      {root, r} ->
        start_next(%{state | roots: Map.put(state.roots, root, %{r | task: nil})}, root)

      nil ->
        state
    end
  end

  # Runs in a process of its own: one compile for the files, one apply per
  # sandbox; a catch-up compiles the whole project (usually a cache hit).
  defp run(root, pending, targets) do
    opts = compile_opts(targets)
    files = MapSet.to_list(pending.files)

    if files != [] do
      t0 = System.monotonic_time()
      result = IsolatedCompiler.incremental_compile(root, files, opts)
      others = for {id, pid} <- targets, id not in pending.catch_up, do: {id, pid}
      deliver(result, others, [trigger: :file_watcher, files: files], t0)
    end

    if MapSet.size(pending.catch_up) > 0 do
      t0 = System.monotonic_time()
      result = IsolatedCompiler.compile_sandbox(root, opts)
      catching_up = for {id, pid} <- targets, id in pending.catch_up, do: {id, pid}
      deliver(result, catching_up, [trigger: :file_watcher, sync: true], t0)
    end
  end

  defp compile_opts([{_id, pid} | _]) do
    case safe(fn -> Instance.versions(pid, :project) end) do
      {:ok, {_root, opts}} -> opts
      _ -> [write_artifacts: false]
    end
  end

  defp compile_opts([]), do: [write_artifacts: false]

  defp deliver({:ok, info}, targets, opts, _t0) do
    for {_id, pid} <- targets, do: safe(fn -> Instance.apply_compile(pid, info, opts) end)
  end

  defp deliver({:error, reason}, targets, opts, t0) do
    for {id, _pid} <- targets do
      # The running code stays (Sandbox.ErrorHandler's :rollback).
      ErrorHandler.handle_error(reason, ErrorHandler.context(id, :reload, :file_watcher))

      Telemetry.emit(:reload, :failed, %{duration: System.monotonic_time() - t0}, %{
        sandbox_id: id,
        reason: reason,
        trigger: opts[:trigger],
        modules: []
      })
    end
  end

  # A sandbox destroyed meanwhile is not an error.
  defp safe(fun) do
    fun.()
  catch
    :exit, _ -> {:error, :not_found}
  end
end
