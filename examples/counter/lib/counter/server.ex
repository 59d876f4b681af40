defmodule Counter.Server do
  @moduledoc "Holds the count."
  use GenServer

  def start_link(_arg), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)

  @impl true
  def init(start), do: {:ok, start}

  @impl true
  def handle_call(:increment, _from, n) do
    n = n + Application.get_env(:counter, :step, 1)
    {:reply, n, n}
  end

  def handle_call(:value, _from, n), do: {:reply, n, n}
end
