defmodule Sandbox.Application do
  @moduledoc """
  The library's supervision tree. Started automatically as the `:sandbox`
  application's callback module.

  Children, in start order: the supervising C-node (`Sandbox.CNode`), the
  compile cache (`Sandbox.IsolatedCompiler.Cache`), the pool of warm
  compile workers (`Sandbox.IsolatedCompiler.Pool`, whose workers the C-node
  starts), the event registry (`Sandbox.Telemetry`), the file watcher of
  automatic reload (`Sandbox.FileWatcher`), the security controller's audit
  batcher (`Sandbox.SecurityController`), the sandboxes' manager
  (`Sandbox.Manager`), the resource monitor (`Sandbox.ResourceMonitor`),
  the supervisor of their instances (`Sandbox.InstanceSupervisor`, one
  `Sandbox.Instance` per sandbox), and the `:pg` scope `Sandbox.Cluster`
  (which copies of a sandbox the nodes of a cluster can reach, see
  `Sandbox.Cluster`), and for sandboxes with `isolation: :node` the
  supervisor of their VMs' connections and the pool of warm sandbox VMs
  (`Sandbox.Node`). In a sandbox VM itself (`agent: true`, see
  `Sandbox.Node.Agent`) only what a sandbox needs is started. Application
  environment read at start: `:compiler_pool_size`
  (default: the number of schedulers), `:compiler_cache_dir`,
  `:compiler_cache_max_bytes`, `:watch_debounce`. It also installs the
  primary `:logger` filter that tags sandbox log events
  (`Sandbox.LoggerFilter`).
  """
  use Application

  @impl true
  def start(_type, _args) do
    # Owned by this (the application's) process, so they outlive any server.
    :ok = Sandbox.Manager.create_tables()
    :ok = Sandbox.ResourceMonitor.create_tables()
    env = Application.get_all_env(:sandbox)

    # In a sandbox VM (isolation: :node) only what a sandbox needs.
    children =
      if Keyword.get(env, :agent, false),
        do: Sandbox.Node.Agent.children(),
        else: host_children(env)

    # Log events from sandbox processes carry sandbox_id (Sandbox.LoggerFilter).
    :ok = Sandbox.LoggerFilter.install()
    Supervisor.start_link(children, strategy: :one_for_one, name: Sandbox.Supervisor)
  end

  defp host_children(env) do
    :ok = Sandbox.Node.create_tables()

    [
      Sandbox.CNode,
      Sandbox.IsolatedCompiler.Cache,
      {Sandbox.IsolatedCompiler.Pool,
       size: Keyword.get(env, :compiler_pool_size, System.schedulers_online())},
      {Registry, keys: :duplicate, name: Sandbox.Telemetry.registry()},
      Sandbox.FileWatcher,
      Sandbox.SecurityController,
      Sandbox.Manager,
      # Before the instances: it stops after them (they detach from it).
      Sandbox.ResourceMonitor,
      # Sandbox VMs (isolation: :node): their connections and the pool of
      # warm ones, before the instances (they stop after them).
      {DynamicSupervisor, name: Sandbox.Node.ConnSupervisor, strategy: :one_for_one},
      Sandbox.Node.Pool,
      {DynamicSupervisor, name: Sandbox.InstanceSupervisor, strategy: :one_for_one},
      # The cluster's view (Sandbox.Cluster): a :pg scope of its own.
      %{id: Sandbox.Cluster, start: {:pg, :start_link, [Sandbox.Cluster]}}
    ]
  end

  @impl true
  def stop(_state), do: Sandbox.LoggerFilter.uninstall()
end
