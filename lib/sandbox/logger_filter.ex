defmodule Sandbox.LoggerFilter do
  @moduledoc """
  Structured logging: every log event from a sandbox's processes carries
  the sandbox's id as `sandbox_id` metadata.

  A primary `:logger` filter (installed by the `:sandbox` application when
  it starts, removed when it stops) maps the event's group leader — the
  `gl` metadata `:logger` adds to every event — to its sandbox: each
  sandbox has a group leader of its own (`Sandbox.GroupLeader`), inherited
  by every process spawned inside it, including the processes that
  `Sandbox.call/5` and `Sandbox.run/3` start. The lookup is one read of an
  ETS table; events from other processes pass through unchanged, and
  metadata the event already has is never overwritten.

  Log formatters and aggregators can then split by sandbox. With Elixir's
  console backend:

      config :logger, :console, metadata: [:sandbox_id]

  JSON formatters write the event's metadata as fields, `sandbox_id` (a
  string) among them.

  The filter is best effort in the same way as sandbox membership: a
  process that changed its own group leader is no longer attributed.
  """

  @filter_id :sandbox_id

  @doc """
  Installs the primary filter (`:ok` when it is installed already).
  `Sandbox.Application` calls it at start.
  """
  @spec install() :: :ok | {:error, term}
  def install do
    case :logger.add_primary_filter(@filter_id, {&__MODULE__.filter/2, :ok}) do
      :ok -> :ok
      {:error, {:already_exist, @filter_id}} -> :ok
      {:error, _} = error -> error
    end
  end

  @doc "Removes the primary filter (`:ok` when it is not installed)."
  @spec uninstall() :: :ok
  def uninstall do
    _ = :logger.remove_primary_filter(@filter_id)
    :ok
  end

  @doc """
  The filter: adds `sandbox_id` to the metadata of an event whose group
  leader is a sandbox's. Never fails (`:logger` removes a filter that
  raises), and never stops an event.
  """
  @spec filter(:logger.log_event(), term) :: :logger.log_event()
  def filter(%{meta: %{gl: gl} = meta} = event, _arg)
      when is_pid(gl) and not is_map_key(meta, :sandbox_id) do
    case sandbox_of(gl) do
      nil -> event
      id -> %{event | meta: Map.put(meta, :sandbox_id, id)}
    end
  end

  def filter(event, _arg), do: event

  @doc "The id of the sandbox whose group leader `gl` is, or `nil`."
  @spec sandbox_of(pid) :: String.t() | nil
  def sandbox_of(gl) when is_pid(gl) do
    case :ets.lookup(Sandbox.GroupLeader, gl) do
      [{^gl, id, _upstream}] when is_binary(id) -> id
      _ -> nil
    end
  rescue
    # The table is gone (the application is stopping).
    ArgumentError -> nil
  end
end
