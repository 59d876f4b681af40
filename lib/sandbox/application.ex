defmodule Sandbox.Application do
  @moduledoc """
  The library's supervision tree. Started automatically as the `:sandbox`
  application's callback module.
  """
  use Application

  @impl true
  def start(_type, _args) do
    env = Application.get_all_env(:sandbox)

    launcher =
      if Sandbox.IsolatedCompiler.launcher() == Sandbox.IsolatedCompiler.PortLauncher,
        do: [Sandbox.IsolatedCompiler.PortLauncher],
        else: []

    children =
      launcher ++
        [
          Sandbox.IsolatedCompiler.Cache,
          {Sandbox.IsolatedCompiler.Pool,
           size: Keyword.get(env, :compiler_pool_size, System.schedulers_online())}
        ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Sandbox.Supervisor)
  end
end
