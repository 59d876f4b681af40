defmodule PdMain.App do
  use Application
  def start(_, _) do
    # The dependency's server is already up: its application started first.
    seen = PdDep.Store.get()
    Agent.start_link(fn -> seen end, name: PdMain.Seen)
  end
end

defmodule PdMain do
  def seen, do: Agent.get(PdMain.Seen, & &1)
end
