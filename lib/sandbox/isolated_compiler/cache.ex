defmodule Sandbox.IsolatedCompiler.Cache do
  @moduledoc """
  The compile cache: results of successful compiles on disk, with an
  in-memory index, bounded in size (least recently used out), surviving
  restarts of the application.

  An entry is found in two steps. The *base key* is the checksum of the
  inputs known before compiling (the sources, `mix.exs`, every file under
  `config/`, the compiler versions and the options; computed by
  `Sandbox.IsolatedCompiler`). Each entry under a base key carries a
  *manifest* of what the compile turned out to read besides those: files
  (templates, `@external_resource`s, with their checksums) and environment
  variables (with their values). An entry is a hit only when every file in
  its manifest still has the recorded checksum and every variable the
  recorded value.

  Entries are files `<dir>/<hex key>.sbc`: a 4-byte length, the manifest and
  the payload, each in external term format. At start the index is rebuilt
  from the manifests on disk (last use = the file's modification time).

  ## Options

    * `:name` — registered name (default `#{inspect(__MODULE__)}`)
    * `:dir` — directory (default application env `:compiler_cache_dir`,
      else `:filename.basedir(:user_cache, "sandbox")` + `/compiler`)
    * `:max_bytes` — size bound (default application env
      `:compiler_cache_max_bytes`, else 256 MiB)
  """
  use GenServer

  @default_max 256 * 1024 * 1024
  @suffix ".sbc"

  @typedoc "What a compile read besides its base inputs."
  @type manifest :: %{
          files: [{Path.t(), binary | :missing}],
          env: [{String.t(), String.t() | nil}] | {:all, binary}
        }

  @doc "A child spec; see the module documentation for the options."
  @spec child_spec(keyword) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}
  end

  @doc "Starts the cache. See the module documentation for the options."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc """
  Looks up `base_key` (a binary). `valid?` is called with each candidate
  entry's manifest; the payload of the first valid one is returned.
  Runs in the caller; only the last-use update goes through the server.
  """
  @spec fetch(GenServer.server(), binary, (manifest -> boolean)) :: {:ok, term} | :miss
  def fetch(cache \\ __MODULE__, base_key, valid?) when is_binary(base_key) do
    table = table(cache)

    table
    |> :ets.lookup(base_key)
    |> Enum.find(fn {_base, _full, manifest, _size, _path} -> valid?.(manifest) end)
    |> case do
      nil ->
        :miss

      {_base, full, _manifest, _size, path} ->
        with {:ok, bin} <- File.read(path),
             <<len::32, _manifest::binary-size(len), payload::binary>> <- bin do
          GenServer.cast(cache, {:touch, full})
          {:ok, :erlang.binary_to_term(payload)}
        else
          _ -> :miss
        end
    end
  end

  @doc "Stores `payload` under `base_key` with its `manifest`."
  @spec put(GenServer.server(), binary, manifest, term) :: :ok
  def put(cache \\ __MODULE__, base_key, manifest, payload) when is_binary(base_key) do
    manifest_bin = :erlang.term_to_binary({base_key, manifest})
    data = [<<byte_size(manifest_bin)::32>>, manifest_bin, :erlang.term_to_binary(payload)]
    GenServer.call(cache, {:put, base_key, manifest, data})
  end

  @doc "Removes every entry (on disk too)."
  @spec clear(GenServer.server()) :: :ok
  def clear(cache \\ __MODULE__), do: GenServer.call(cache, :clear)

  @doc "`%{entries: n, bytes: n, dir: path, max_bytes: n}`."
  @spec info(GenServer.server()) :: map
  def info(cache \\ __MODULE__), do: GenServer.call(cache, :info)

  @doc """
  The last successful build of `key` (used by incremental compiles), or
  `nil`. Builds are kept in memory only.
  """
  @spec get_build(GenServer.server(), term) :: map | nil
  def get_build(cache \\ __MODULE__, key) do
    case :ets.lookup(builds(cache), key) do
      [{^key, build}] -> build
      [] -> nil
    end
  end

  @doc "Records the last successful build of `key`."
  @spec put_build(GenServer.server(), term, map) :: :ok
  def put_build(cache \\ __MODULE__, key, build) do
    :ets.insert(builds(cache), {key, build})
    :ok
  end

  defp table(cache), do: elem(tables(cache), 0)
  defp builds(cache), do: elem(tables(cache), 1)

  defp tables(cache) do
    name = if is_atom(cache), do: cache, else: GenServer.call(cache, :name)
    :persistent_term.get({__MODULE__, name})
  end

  ## Server

  @impl true
  def init(opts) do
    name = Keyword.get(opts, :name, __MODULE__)
    env = Application.get_all_env(:sandbox)

    dir =
      Keyword.get(opts, :dir) || env[:compiler_cache_dir] ||
        Path.join(List.to_string(:filename.basedir(:user_cache, ~c"sandbox")), "compiler")

    max = Keyword.get(opts, :max_bytes) || env[:compiler_cache_max_bytes] || @default_max
    File.mkdir_p!(dir)
    table = :ets.new(__MODULE__, [:bag, :public, read_concurrency: true])
    builds = :ets.new(__MODULE__.Builds, [:set, :public])
    :persistent_term.put({__MODULE__, name}, {table, builds})
    # last use: full key -> {monotonic-ish stamp, size, base}
    state = %{name: name, dir: dir, max: max, table: table, lru: %{}, bytes: 0}
    {:ok, load_index(state)}
  end

  @impl true
  def handle_call({:put, base, manifest, data}, _from, state) do
    full = Sandbox.Beam.checksum_hex(base <> :erlang.term_to_binary(manifest))
    path = Path.join(state.dir, full <> @suffix)
    tmp = path <> ".tmp#{System.unique_integer([:positive])}"
    size = IO.iodata_length(data)

    state =
      with :ok <- File.write(tmp, data), :ok <- File.rename(tmp, path) do
        state = drop(state, full)
        :ets.insert(state.table, {base, full, manifest, size, path})

        %{state | lru: Map.put(state.lru, full, {stamp(), size, base}), bytes: state.bytes + size}
        |> evict()
      else
        _ ->
          File.rm(tmp)
          state
      end

    {:reply, :ok, state}
  end

  def handle_call(:clear, _from, state) do
    for {full, _} <- state.lru, do: File.rm(Path.join(state.dir, full <> @suffix))
    :ets.delete_all_objects(state.table)
    {:reply, :ok, %{state | lru: %{}, bytes: 0}}
  end

  def handle_call(:info, _from, state) do
    {:reply,
     %{entries: map_size(state.lru), bytes: state.bytes, dir: state.dir, max_bytes: state.max},
     state}
  end

  def handle_call(:name, _from, state), do: {:reply, state.name, state}

  @impl true
  def handle_cast({:touch, full}, state) do
    case state.lru do
      %{^full => {_, size, base}} ->
        File.touch(Path.join(state.dir, full <> @suffix))
        {:noreply, %{state | lru: Map.put(state.lru, full, {stamp(), size, base})}}

      _ ->
        {:noreply, state}
    end
  end

  @impl true
  def terminate(_reason, state) do
    :persistent_term.erase({__MODULE__, state.name})
    :ok
  end

  defp stamp, do: System.os_time(:microsecond)

  defp drop(state, full) do
    case Map.pop(state.lru, full) do
      {nil, _} ->
        state

      {{_, size, base}, lru} ->
        :ets.match_delete(state.table, {base, full, :_, :_, :_})
        %{state | lru: lru, bytes: state.bytes - size}
    end
  end

  defp evict(%{bytes: bytes, max: max} = state) when bytes <= max, do: state

  defp evict(state) do
    {full, _} = Enum.min_by(state.lru, fn {_, {stamp, _, _}} -> stamp end)
    File.rm(Path.join(state.dir, full <> @suffix))
    state |> drop(full) |> evict()
  end

  defp load_index(state) do
    state.dir
    |> File.ls!()
    |> Enum.filter(&String.ends_with?(&1, @suffix))
    |> Enum.reduce(state, fn file, state ->
      path = Path.join(state.dir, file)
      full = String.trim_trailing(file, @suffix)

      with {:ok, %File.Stat{size: size, mtime: mtime}} <- File.stat(path, time: :posix),
           {:ok, {base, manifest}} <- read_header(path) do
        :ets.insert(state.table, {base, full, manifest, size, path})
        lru = Map.put(state.lru, full, {mtime * 1_000_000, size, base})
        %{state | lru: lru, bytes: state.bytes + size}
      else
        _ ->
          File.rm(path)
          state
      end
    end)
    |> evict()
  end

  defp read_header(path) do
    with {:ok, fd} <- :file.open(path, [:read, :binary, :raw]) do
      try do
        with {:ok, <<len::32>>} <- :file.pread(fd, 0, 4),
             {:ok, bin} when byte_size(bin) == len <- :file.pread(fd, 4, len) do
          {:ok, :erlang.binary_to_term(bin)}
        else
          _ -> :error
        end
      rescue
        ArgumentError -> :error
      after
        :file.close(fd)
      end
    end
  end
end
