defmodule Sandbox.CNodeHelpers do
  @moduledoc false
  # Helpers for the C-node's tests: collecting a spawn's events, private
  # servers, and reading /proc the way the tests need it.
  import ExUnit.Assertions
  import ExUnit.Callbacks, only: [start_supervised!: 1]

  alias Sandbox.CNode

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

  @doc "Whether an OS process exists and is not a zombie (or dead)."
  def running?(os_pid) do
    case stat(os_pid) do
      %{state: s} -> s not in ["Z", "X", "x"]
      nil -> false
    end
  end

  @doc "State and parent of a process from /proc/<pid>/stat, or nil."
  def stat(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, text} ->
        # the command name may hold spaces and parentheses: fields follow the last ")"
        [_, rest] = Regex.run(~r/^.*\) (.*)$/s, text)
        [state, ppid, pgrp, session | _] = String.split(rest)

        %{
          state: state,
          ppid: String.to_integer(ppid),
          pgrp: String.to_integer(pgrp),
          session: String.to_integer(session)
        }

      {:error, _} ->
        nil
    end
  end

  @doc """
  A number no other test uses, for `sleep <marker>` command lines, so that
  processes of one test can be found in /proc by their command line.
  """
  def marker do
    "#{3000 + :rand.uniform(999)}.#{System.unique_integer([:positive])}"
  end

  @doc "The pids of running processes whose command line contains marker."
  def marked(marker) do
    for dir <- File.ls!("/proc"),
        match?({_, ""}, Integer.parse(dir)),
        {:ok, cmd} <- [File.read("/proc/#{dir}/cmdline")],
        cmd |> String.replace(<<0>>, " ") |> String.contains?(marker),
        pid = String.to_integer(dir),
        running?(pid),
        do: pid
  end

  @doc """
  Waits until none of pids is running (gone, or a zombie), by a shell loop
  outside this VM; flunks after timeout_s seconds.
  """
  def wait_dead(pids, timeout_s \\ 30) do
    script = """
    end=$(( $(date +%s) + #{timeout_s} ))
    for p in "$@"; do
      while [ -e /proc/$p ]; do
        s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f1)
        case "$s" in Z|X|x|"") break ;; esac
        [ $(date +%s) -ge $end ] && { echo "$p"; exit 1; }
        sleep 0.01
      done
    done
    """

    args = ["-c", script, "wait_dead" | Enum.map(pids, &Integer.to_string/1)]
    port = Port.open({:spawn_executable, "/bin/sh"}, [:exit_status, :binary, args: args])

    receive do
      {^port, {:exit_status, 0}} ->
        :ok

      {^port, {:exit_status, _}} ->
        receive do
          {^port, {:data, p}} -> flunk("process #{String.trim(p)} still running")
        after
          0 -> flunk("a process is still running")
        end
    end
  end

  @doc "A private C-node server for one test, stopped with the test."
  def private_cnode(opts \\ []) do
    spec =
      Supervisor.child_spec({CNode, [name: nil] ++ opts}, id: make_ref(), restart: :temporary)

    start_supervised!(spec)
  end

  @doc "The job leader of a spawned command: its parent."
  def leader_of(os_pid), do: stat(os_pid).ppid
end
