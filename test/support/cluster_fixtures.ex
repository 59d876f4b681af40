defmodule Sandbox.Test.ClusterFixtures do
  @moduledoc false
  # Code the cluster tests run on peer nodes (funs of a module every node
  # has, so that they can travel): state migrations, and the late
  # distribution check of the C-node.

  alias Sandbox.CNode

  @doc """
  A `:state_migration` function (the Store's integer state to `%{count:
  n}`, as its `code_change/3` does) that halts the VM it runs on when that
  is `target`: a node killed during the commit of a cluster reload.
  """
  def migrate_or_halt(target) do
    fn
      n when is_integer(n) ->
        if node() == target, do: :erlang.halt(0, flush: false)
        %{count: n}

      other ->
        other
    end
  end

  @doc "The Store's migration (integer state to `%{count: n}`) as a function."
  def migrate(n) when is_integer(n), do: %{count: n}
  def migrate(other), do: other

  @doc """
  Run in a VM that is not distributed yet, with :sandbox running: spawns a
  program through the C-node, makes the VM distributed, then talks to the
  program. Every pid the C-node knows was encoded before distribution
  started (this process, the C-node server). `{:ok, output}` or
  `{:error, reason}`.
  """
  def cnode_after_distribution(name) do
    false = Node.alive?()
    {:ok, %{id: id}} = CNode.spawn(["sh", "-c", "read x; echo got $x"], [])
    {:ok, _} = Node.start(name, :longnames)

    try do
      :ok = CNode.write_stdin(id, "hi\n")

      receive do
        {:sandbox_cnode, ^id, {:stdout, out}} -> {:ok, out}
      after
        10_000 -> {:error, :no_output}
      end
    catch
      :exit, reason -> {:error, {:exit, reason}}
    end
  end
end
