defmodule Sandbox.Node.Pool do
  @moduledoc """
  A pool of warm sandbox VMs (`Sandbox.Node`), so that creating a sandbox
  with `isolation: :node` does not wait for a VM to boot.

  Each VM is a `Sandbox.Node.Conn` whose agent has announced itself
  ready. `checkout/4` hands one to a sandbox (applying its limits) and
  starts a replacement in the background; when none is idle the caller
  waits for the next one ready (one VM is started per waiting caller).
  A VM serves one sandbox and dies with it: nothing a sandbox did can
  reach the next one.

  The pool stays empty until it is first used (or `warm/1` is called), so a
  host that never creates a `:node` sandbox pays nothing for it; from then
  on it keeps `size` VMs idle.

  A sandbox whose `max_memory` does not fit the pool's VMs (their super
  carrier, `config :sandbox, node_memory_ceiling:`, 512 MiB, less 64 MiB
  for the VM itself) gets a VM started for it alone, with a ceiling to
  match.

  The pool's VMs are confined by the kernel as `:high` sandboxes' are
  (`Sandbox.Node.Confinement.pool_class/0`: Landlock rules are fixed when a
  VM starts, before it knows its sandbox), or not at all where the C-node
  has no Landlock. A sandbox whose VM must be confined otherwise (`:medium`
  and `:low`, or a profile allowing file reads) gets a VM started for it
  alone, of its class; such a checkout does not start the pool.

  Application environment: `:node_pool_size` (1), `:node_pool_prestart`
  (`false`: fill at first use), `:node_boot_timeout` (ms a VM may take to
  become ready, 30,000), `:node_refill_delay` (ms after a VM is taken
  before its replacement starts booting, 250).
  """

  use GenServer

  alias Sandbox.Node.{Confinement, Conn}

  @overhead 64 * 1024 * 1024
  @max_backoff 5_000

  ## Client

  @doc false
  def child_spec(opts), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

  @doc "Starts the pool (options: `:size`, `:prestart`, `:name`)."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []),
    do: GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))

  @doc """
  A ready VM for sandbox `id`, given to `owner` with `limits` applied (see
  `Sandbox.Node.Conn.checkout/4`): `{:ok, conn, %{os_pid: n, baseline:
  bytes, landlock: map | nil}}` or `{:error, reason}`
  (`{:vm_start_failed, reason}` when no VM could be started within
  `:node_boot_timeout`).

  ## Options

    * `:confinement` — the VM's confinement class
      (`Sandbox.Node.Confinement.resolve/3`; default: the pool's own)
    * `:pool` — the pool server (default `Sandbox.Node.Pool`)
  """
  @spec checkout(pid, String.t(), map, keyword) :: {:ok, pid, map} | {:error, term}
  def checkout(owner, id, limits, opts \\ []) do
    pool = Keyword.get(opts, :pool, __MODULE__)
    class = Keyword.get(opts, :confinement, :pool)
    needed = Map.get(limits, :max_memory, 0) + @overhead
    deadline = System.monotonic_time(:millisecond) + boot_timeout()

    take =
      if needed > Sandbox.Node.memory_ceiling() do
        fn -> dedicated(memory_ceiling: needed, confinement: dedicated_class(pool, class)) end
      else
        fn ->
          case GenServer.call(pool, {:take, class}, boot_timeout() + 1_000) do
            {:other, class} -> dedicated(confinement: class)
            taken -> taken
          end
        end
      end

    take_and_check(take, owner, id, limits, deadline)
  end

  defp take_and_check(take, owner, id, limits, deadline) do
    case take.() do
      {:ok, conn} ->
        case safe_checkout(conn, owner, id, limits) do
          {:ok, meta} ->
            {:ok, conn, meta}

          {:error, {:not_idle, _}} ->
            # It died between the pool and us: another one.
            if System.monotonic_time(:millisecond) < deadline,
              do: take_and_check(take, owner, id, limits, deadline),
              else: {:error, {:vm_start_failed, :timeout}}

          {:error, reason} ->
            Conn.stop(conn)
            {:error, reason}
        end

      {:error, reason} ->
        {:error, {:vm_start_failed, reason}}
    end
  end

  defp safe_checkout(conn, owner, id, limits) do
    Conn.checkout(conn, owner, id, limits)
  catch
    :exit, _ -> {:error, {:not_idle, :gone}}
  end

  defp dedicated_class(pool, :pool), do: GenServer.call(pool, :class)
  defp dedicated_class(_pool, class), do: class

  # A VM of its own for a sandbox too big for the pool's, or of another
  # confinement class.
  defp dedicated(opts) do
    case Conn.start([notify: self()] ++ opts) do
      {:ok, conn} ->
        ref = Process.monitor(conn)

        receive do
          {:conn_ready, ^conn, _os_pid} ->
            Process.demonitor(ref, [:flush])
            {:ok, conn}

          {:node_down, ^conn, reason} ->
            Process.demonitor(ref, [:flush])
            {:error, reason}

          {:DOWN, ^ref, :process, _, reason} ->
            {:error, reason}
        after
          boot_timeout() ->
            Conn.stop(conn)
            {:error, :timeout}
        end

      {:error, reason} ->
        {:error, reason}
    end
  end

  @doc """
  Starts filling the pool (if it has not started yet) and returns once
  `size` VMs are idle, or after `timeout` ms: `:ok` or `{:error,
  :timeout}`.
  """
  @spec warm(timeout, GenServer.server()) :: :ok | {:error, :timeout}
  def warm(timeout \\ 60_000, pool \\ __MODULE__) do
    GenServer.call(pool, :warm, timeout)
  catch
    :exit, {:timeout, _} -> {:error, :timeout}
  end

  @doc """
  The pool's counters: `size`, `idle`, `booting`, `waiting`, `started`,
  `failed`, and the `class` of its VMs (`nil` until first used).
  """
  @spec stats(GenServer.server()) :: map
  def stats(pool \\ __MODULE__), do: GenServer.call(pool, :stats)

  defp boot_timeout, do: Application.get_env(:sandbox, :node_boot_timeout, 30_000)

  ## Server

  @impl true
  def init(opts) do
    state = %{
      size:
        Keyword.get_lazy(opts, :size, fn -> Application.get_env(:sandbox, :node_pool_size, 1) end),
      active:
        Keyword.get_lazy(opts, :prestart, fn ->
          Application.get_env(:sandbox, :node_pool_prestart, false)
        end),
      idle: :queue.new(),
      booting: %{},
      waiting: :queue.new(),
      warmers: [],
      refill: nil,
      started: 0,
      failed: 0,
      backoff: 0,
      class: nil
    }

    {:ok, fill(state)}
  end

  @impl true
  def handle_call({:take, class}, from, state) do
    state = ensure_class(state)

    if class in [:pool, state.class],
      do: take(from, %{state | active: true}),
      else: {:reply, {:other, class}, state}
  end

  def handle_call(:class, _from, state) do
    state = ensure_class(state)
    {:reply, state.class, state}
  end

  def handle_call(:warm, from, state) do
    state = fill(%{state | active: true})

    if :queue.len(state.idle) >= state.size,
      do: {:reply, :ok, state},
      else: {:noreply, %{state | warmers: [from | state.warmers]}}
  end

  def handle_call(:stats, _from, state) do
    {:reply,
     %{
       size: state.size,
       idle: :queue.len(state.idle),
       booting: map_size(state.booting),
       waiting: :queue.len(state.waiting),
       started: state.started,
       failed: state.failed,
       class: state.class
     }, state}
  end

  defp take(from, state) do
    case :queue.out(state.idle) do
      {{:value, conn}, idle} ->
        Process.demonitor(elem(conn, 1), [:flush])
        {:reply, {:ok, elem(conn, 0)}, refill_later(%{state | idle: idle})}

      {:empty, _} ->
        state = %{state | waiting: :queue.in(from, state.waiting)}
        {:noreply, fill(state)}
    end
  end

  # The class of the pool's VMs, decided once from the C-node's Landlock
  # status (asked again while the C-node cannot answer): `:high`'s where
  # Landlock can refuse TCP; where it cannot, no VM is confined as
  # `:high` (Sandbox.Node.Confinement.resolve/3 refuses those sandboxes)
  # and the pool's VMs serve unconfined `:medium` ones.
  defp ensure_class(%{class: nil} = state) do
    case Sandbox.IsolatedCompiler.Confinement.status() do
      {:unavailable, :cnode_down} -> state
      {:ok, %{abi: abi}} when abi >= 4 -> %{state | class: Confinement.pool_class()}
      _ -> %{state | class: :none}
    end
  end

  defp ensure_class(state), do: state

  @impl true
  def handle_info({:conn_ready, conn, _os_pid}, state) do
    case Map.pop(state.booting, conn) do
      {nil, _} ->
        {:noreply, state}

      {ref, booting} ->
        state = %{state | booting: booting, backoff: 0}

        case :queue.out(state.waiting) do
          {{:value, from}, waiting} ->
            Process.demonitor(ref, [:flush])
            GenServer.reply(from, {:ok, conn})
            {:noreply, fill(%{state | waiting: waiting})}

          {:empty, _} ->
            state = %{state | idle: :queue.in({conn, ref}, state.idle)}
            {:noreply, reply_warmers(state)}
        end
    end
  end

  def handle_info({:node_down, conn, _reason}, state), do: {:noreply, lost(state, conn)}

  def handle_info({:DOWN, _ref, :process, conn, _reason}, state),
    do: {:noreply, lost(state, conn)}

  def handle_info(:fill, state), do: {:noreply, fill(%{state | refill: nil})}
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    for {conn, _} <- :queue.to_list(state.idle), do: Conn.stop(conn)
    for {conn, _} <- state.booting, do: Conn.stop(conn)
    :ok
  end

  # A VM that died idle or booting.
  defp lost(state, conn) do
    cond do
      Map.has_key?(state.booting, conn) ->
        Process.demonitor(state.booting[conn], [:flush])
        backoff(%{state | booting: Map.delete(state.booting, conn), failed: state.failed + 1})

      true ->
        idle = :queue.filter(fn {c, _} -> c != conn end, state.idle)
        fill(%{state | idle: idle})
    end
  end

  # The replacement of a VM just taken boots a moment later: booting takes
  # CPU (and the C-node's attention) that the sandbox being created needs
  # right now. A caller that finds no VM idle does not wait for it.
  defp refill_later(%{refill: nil} = state) do
    delay = Application.get_env(:sandbox, :node_refill_delay, 250)
    %{state | refill: Process.send_after(self(), :fill, delay)}
  end

  defp refill_later(state), do: state

  defp backoff(state) do
    backoff = min(max(state.backoff * 2, 50), @max_backoff)
    Process.send_after(self(), :fill, backoff)
    %{state | backoff: backoff}
  end

  # Keeps `size` VMs idle or booting, plus one booting for each waiting
  # caller beyond them.
  defp fill(%{active: false} = state), do: state

  defp fill(state) do
    want = state.size + :queue.len(state.waiting)
    have = :queue.len(state.idle) + map_size(state.booting)

    state = ensure_class(state)

    cond do
      have >= want ->
        state

      state.class == nil ->
        state = %{state | failed: state.failed + 1}
        fail_waiting(state, :cnode_down) |> backoff()

      true ->
        start_one(state)
    end
  end

  defp start_one(state) do
    case Conn.start(notify: self(), confinement: state.class) do
      {:ok, conn} ->
        ref = Process.monitor(conn)
        fill(%{state | booting: Map.put(state.booting, conn, ref), started: state.started + 1})

      {:error, reason} ->
        state = %{state | failed: state.failed + 1}
        fail_waiting(state, reason) |> backoff()
    end
  end

  # No VM can be started at all (the C-node refused): the waiting callers
  # get the reason rather than a timeout.
  defp fail_waiting(state, reason) do
    for from <- :queue.to_list(state.waiting), do: GenServer.reply(from, {:error, reason})
    %{state | waiting: :queue.new()}
  end

  defp reply_warmers(state) do
    if :queue.len(state.idle) >= state.size do
      for from <- state.warmers, do: GenServer.reply(from, :ok)
      %{state | warmers: []}
    else
      state
    end
  end
end
