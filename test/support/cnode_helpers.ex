defmodule Sandbox.CNodeHelpers do
  @moduledoc false
  # Helpers for the C-node's tests: collecting a spawn's events, and reading
  # /proc the way the tests need it.
  import ExUnit.Assertions

  @doc "Collects stdout, stderr and the exit reason of spawn `id`."
  def collect(id, acc \\ %{stdout: "", stderr: ""}) do
    receive do
      {:sandbox_cnode, ^id, {:stdout, d}} -> collect(id, %{acc | stdout: acc.stdout <> d})
      {:sandbox_cnode, ^id, {:stderr, d}} -> collect(id, %{acc | stderr: acc.stderr <> d})
      {:sandbox_cnode, ^id, {:exit, reason}} -> Map.put(acc, :exit, reason)
    after
      60_000 -> flunk("no exit event for spawn #{id}")
    end
  end

  @doc "Reads stdout of spawn `id` until it holds `n` lines; returns them."
  def read_lines(id, n, buf \\ "") do
    lines = String.split(buf, "\n", trim: true)

    if length(lines) >= n and String.ends_with?(buf, "\n") do
      lines
    else
      receive do
        {:sandbox_cnode, ^id, {:stdout, d}} ->
          read_lines(id, n, buf <> d)

        {:sandbox_cnode, ^id, {:exit, r}} ->
          flunk("exited early: #{inspect(r)}, output #{inspect(buf)}")
      after
        60_000 -> flunk("no output from spawn #{id}")
      end
    end
  end

  @doc "Whether an OS process exists (a zombie counts)."
  def alive?(os_pid), do: File.exists?("/proc/#{os_pid}")
end
