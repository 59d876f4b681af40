defmodule Sandbox.Test.Peer do
  @moduledoc false
  # A :peer node with this VM's code paths and the :sandbox application
  # started: where an attack that could stop a VM is shown to work.

  import ExUnit.Callbacks, only: [on_exit: 1]

  @doc "Starts a peer with :sandbox running; stopped when the test exits."
  def start! do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, peer, node} =
      :peer.start_link(%{
        connection: :standard_io,
        args: paths ++ [~c"-kernel", ~c"logger_level", ~c"error"]
      })

    # The peer may already be gone (that is what some tests show).
    on_exit(fn ->
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end
    end)

    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:sandbox], 60_000)
    {peer, node}
  end

  @doc "Calls `m.f(a)` in the peer: `{:ok, result}`, or `{:down, reason}` when the peer died."
  def call(peer, m, f, a, timeout \\ 60_000) do
    ref = Process.monitor(peer)

    try do
      {:ok, :peer.call(peer, m, f, a, timeout)}
    catch
      :exit, _ ->
        receive do
          {:DOWN, ^ref, :process, ^peer, reason} -> {:down, reason}
        after
          timeout -> {:down, :no_answer}
        end
    after
      Process.demonitor(ref, [:flush])
    end
  end
end
