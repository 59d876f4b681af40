defmodule Sandbox.Test.Peer do
  @moduledoc false
  # A peer VM with this VM's code path, for tests that need a VM of their
  # own: a stand-in :telemetry module, cover-compiled modules, a nested
  # ExUnit run. Stopped when the test exits.

  @doc """
  Starts a peer (`apps:` applications to start in it, `args:` extra VM
  arguments, `env:` environment variables); returns the peer.
  """
  def start!(opts \\ []) do
    args = Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++ Keyword.get(opts, :args, [])
    env = for {k, v} <- Keyword.get(opts, :env, []), do: {to_charlist(k), to_charlist(v)}
    {:ok, peer, _node} = :peer.start(%{connection: :standard_io, args: args, env: env})

    ExUnit.Callbacks.on_exit(fn ->
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end
    end)

    for app <- Keyword.get(opts, :apps, []) do
      {:ok, _} = call(peer, Application, :ensure_all_started, [app])
    end

    peer
  end

  @doc "Calls `m.f(a)` in the peer."
  def call(peer, m, f, a, timeout \\ 120_000), do: :peer.call(peer, m, f, a, timeout)

  @doc "Evaluates Elixir `code` in the peer (binding: `binding`); returns its value."
  def eval(peer, code, binding \\ [], timeout \\ 120_000) do
    {value, _binding} = call(peer, Code, :eval_string, [code, binding], timeout)
    value
  end

  @doc """
  Calls `m.f(a)` in the peer: `{:ok, result}`, or `{:down, reason}` when the
  peer died (what an attack that stops a VM shows).
  """
  def call_or_down(peer, m, f, a, timeout \\ 60_000) do
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
