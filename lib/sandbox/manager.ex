defmodule Sandbox.Manager do
  @moduledoc """
  Keeps the sandboxes' lookup table and their id reservations.

  Each live sandbox is one `Sandbox.Instance` process under
  `Sandbox.InstanceSupervisor`; the manager does none of their work, so
  creates, destroys and calls on different sandboxes run in parallel. It
  keeps the `Sandbox.Manager` ETS table:

    * `{id, instance_pid, info}` — one row per sandbox, written by its
      instance at every status change (readers never call a process);
    * the row is inserted with `insert_new/2` when a create starts, which
      makes ids unique, and deleted when the sandbox is destroyed or its
      instance dies (the manager monitors every instance).

  A sandbox is listed by `Sandbox.list_sandboxes/0` from the moment its
  create has succeeded until its destroy begins.
  """

  use GenServer

  @table __MODULE__

  @doc "Starts the manager (one per node)."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc """
  Reserves `id` for the calling process: `:ok`, or
  `{:error, {:already_exists, id}}`.
  """
  @spec reserve(String.t()) :: :ok | {:error, {:already_exists, String.t()}}
  def reserve(id) do
    if :ets.insert_new(@table, {id, self(), %{status: :initializing, listed: false}}) do
      GenServer.cast(__MODULE__, {:watch, id, self()})
      :ok
    else
      {:error, {:already_exists, id}}
    end
  end

  @doc "Hands the reservation of `id` over to the sandbox's instance process."
  @spec assign(String.t(), pid) :: :ok
  def assign(id, pid) do
    :ets.update_element(@table, id, {2, pid})
    GenServer.cast(__MODULE__, {:watch, id, pid})
  end

  @doc "Writes the sandbox's info (the instance calls this)."
  @spec put_info(String.t(), map) :: true
  def put_info(id, info), do: :ets.update_element(@table, id, {3, info})

  @doc "Removes `id` if it still belongs to `pid`."
  @spec release(String.t(), pid) :: :ok
  def release(id, pid) do
    :ets.match_delete(@table, {id, pid, :_})
    :ok
  end

  @doc "The instance and info of `id`."
  @spec lookup(String.t()) :: {:ok, pid, map} | {:error, :not_found}
  def lookup(id) do
    case :ets.lookup(@table, id) do
      [{^id, pid, info}] -> {:ok, pid, info}
      [] -> {:error, :not_found}
    end
  end

  @doc "The info of every listed sandbox."
  @spec list() :: [map]
  def list do
    for {_id, _pid, %{listed: true} = info} <- :ets.tab2list(@table), do: info
  end

  @doc """
  Creates the tables sandboxes live in: this one, `Sandbox.Env`'s,
  `Sandbox.GroupLeader`'s and `Sandbox.Guard.Runtime`'s. Called once by `Sandbox.Application.start/2`, so
  that the application's own process owns them and they outlive a crash of
  the manager (or of any other server).
  """
  @spec create_tables() :: :ok
  def create_tables do
    :ets.new(@table, [
      :set,
      :public,
      :named_table,
      read_concurrency: true,
      write_concurrency: true
    ])

    Sandbox.Env.create_table()
    Sandbox.GroupLeader.create_table()
    Sandbox.Guard.Runtime.create_table()
    Sandbox.ExportTable.create_table()
    :ok
  end

  @impl true
  def init(:ok) do
    # After a restart, watch the instances that are already there.
    monitors =
      for {id, pid, _info} <- :ets.tab2list(@table), into: %{} do
        {Process.monitor(pid), id}
      end

    {:ok, monitors}
  end

  @impl true
  def handle_cast({:watch, id, pid}, monitors) do
    ref = Process.monitor(pid)
    {:noreply, Map.put(monitors, ref, id)}
  end

  @impl true
  def handle_info({:DOWN, ref, :process, pid, _reason}, monitors) do
    {id, monitors} = Map.pop(monitors, ref)
    # The row goes only if the dead process still owned it (a create that
    # handed the id to its instance must not lose it when it returns).
    if id, do: release(id, pid)
    {:noreply, monitors}
  end
end
