defmodule Sandbox.Shim.Apps do
  @moduledoc """
  The application API as a sandbox sees it, behind its `Application` and
  `:application` shims (`Sandbox.Shim.Application`,
  `Sandbox.Shim.ErlApplication`).

  A sandbox's own applications — its project's and its path
  dependencies' — shadow host applications of the same name: starting,
  stopping, `spec`, `get_key`, `which_applications`, `get_application`
  and the environment act on the sandbox's copies (its instance starts and
  stops their `mod` callbacks). Host applications are read-only to a
  sandbox: starting, stopping or unloading one is a
  `Sandbox.SecurityError` unless the profile allows everything (`:low`).

  An application named like one of its modules (the Erlang convention:
  application `telemetry`, module `telemetry`) reaches the shims with the
  module's relocated name when the atom is data (`sandbox@<id>@telemetry`):
  `app/2` maps it back.
  """

  alias Sandbox.{Env, Manager}
  alias Sandbox.Guard.Runtime

  @doc "The application `app` names in sandbox `id` (a relocated module-named atom mapped back)."
  @spec app(atom, term) :: term
  def app(id, app) when is_atom(app) do
    prefix = "sandbox@" <> Atom.to_string(id) <> "@"
    name = Atom.to_string(app)

    if String.starts_with?(name, prefix) do
      original = binary_part(name, byte_size(prefix), byte_size(name) - byte_size(prefix))
      candidate = String.to_atom(original)
      if own?(id, candidate), do: candidate, else: app
    else
      app
    end
  end

  def app(_id, other), do: other

  @doc "Whether `app` is one of sandbox `id`'s own applications."
  @spec own?(atom, atom) :: boolean
  def own?(id, app), do: Env.spec(id, app) != :error

  @doc "The spec (keyword list) of an own application, or `:error`."
  @spec spec(atom, atom) :: {:ok, keyword} | :error
  def spec(id, app), do: Env.spec(id, app)

  @doc "The own applications of sandbox `id` that are started."
  @spec started(atom) :: [atom]
  def started(id) do
    case instance(id) do
      {:ok, pid} -> GenServer.call(pid, {:app, :started}, :infinity)
      :error -> []
    end
  end

  @doc "Starts own application `app` (its `mod` callback, by the sandbox's instance)."
  @spec start(atom, atom) :: :ok | {:error, term}
  def start(id, app) do
    with {:ok, pid} <- instance(id) do
      Sandbox.Instance.app(pid, :start, app)
    else
      :error -> {:error, {:not_started, app}}
    end
  end

  @doc "Stops own application `app`."
  @spec stop(atom, atom) :: :ok | {:error, term}
  def stop(id, app) do
    with {:ok, pid} <- instance(id) do
      Sandbox.Instance.app(pid, :stop, app)
    else
      :error -> {:error, {:not_started, app}}
    end
  end

  @doc """
  Starts own application `app` after the own applications it depends on:
  `{:ok, started}` (the ones this call started, dependencies first).
  """
  @spec ensure_all_started(atom, atom) :: {:ok, [atom]} | {:error, term}
  def ensure_all_started(id, app) do
    {:ok, spec} = spec(id, app)
    deps = for dep <- Keyword.get(spec, :applications, []), own?(id, dep), do: dep

    Enum.reduce_while(deps ++ [app], {:ok, []}, fn a, {:ok, acc} ->
      case start(id, a) do
        :ok -> {:cont, {:ok, acc ++ [a]}}
        {:error, {:already_started, ^a}} -> {:cont, {:ok, acc}}
        {:error, reason} -> {:halt, {:error, {a, reason}}}
      end
    end)
  end

  @doc """
  `host` (a list of `{app, description, vsn}`, as the host's
  `which_applications` gives it) with sandbox `id`'s own applications in
  place of host applications of the same name: the started ones, or every
  one with `loaded: true`.
  """
  @spec merge_list(atom, [tuple], boolean) :: [tuple]
  def merge_list(id, host, loaded? \\ false) do
    own = Env.specs(id)
    names = Enum.map(own, &elem(&1, 0))
    started = if loaded?, do: names, else: started(id)

    mine =
      for {app, spec} <- own, app in started do
        {app, Keyword.get(spec, :description, ~c""), Keyword.get(spec, :vsn, ~c"")}
      end

    mine ++ Enum.reject(host, fn entry -> elem(entry, 0) in names end)
  end

  @doc "The own application a module (original or relocated name) belongs to, or `nil`."
  @spec application_of(atom, module) :: atom | nil
  def application_of(id, module) do
    mapped = Runtime.map_module(id, module)

    Enum.find_value(Env.specs(id), fn {app, spec} ->
      if mapped in Keyword.get(spec, :modules, []), do: app
    end)
  end

  @doc """
  A change to host application `app` (`mfa` names the call): allowed under
  a profile with `:all`, a violation otherwise.
  """
  @spec host!(atom, mfa, atom) :: :ok
  def host!(id, mfa, app) do
    profile = Runtime.profile(id)

    if :all in profile.allowed_operations,
      do: :ok,
      else: Runtime.violation!(id, mfa, :all, {:host_application, app})
  end

  defp instance(id) do
    case Manager.lookup(Atom.to_string(id)) do
      {:ok, pid, _info} -> {:ok, pid}
      _ -> :error
    end
  end
end
