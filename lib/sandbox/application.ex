defmodule Sandbox.Application do
  @moduledoc """
  The library's supervision tree. Started automatically as the `:sandbox`
  application's callback module.
  """
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      Sandbox.CNode,
      {Registry, keys: :duplicate, name: Sandbox.Telemetry.registry()},
      Sandbox.Manager,
      {DynamicSupervisor, name: Sandbox.InstanceSupervisor, strategy: :one_for_one}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Sandbox.Supervisor)
  end
end
