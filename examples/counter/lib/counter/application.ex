defmodule Counter.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [Counter.Server]
    # Registered names are shared unless they are module names (which each
    # sandbox renames), so the supervisor registers under its own module.
    Supervisor.start_link(children, strategy: :one_for_one, name: __MODULE__)
  end
end
