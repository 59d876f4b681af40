defmodule PdDep.App do
  use Application
  def start(_, _), do: PdDep.Store.start_link()
end

defmodule PdDep.Store do
  def start_link, do: Agent.start_link(fn -> Application.get_env(:pd_dep, :label) end, name: __MODULE__)
  def get, do: Agent.get(__MODULE__, & &1)
end
