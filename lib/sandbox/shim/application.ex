defmodule Sandbox.Shim.Application do
  @moduledoc """
  The template of each sandbox's `Application` shim.

  Relocation redirects every call a sandbox's code makes to `Application`
  here (`Sandbox.Beam.relocate/4`'s redirects), in a copy relocated into
  the sandbox: `Elixir.Sandbox@<id>.Sandbox.Shim.Application`. The atom
  `:__sandbox_shim_id__` is renamed to the sandbox's id in that copy, so the
  shim knows its sandbox without any lookup.

  The environment functions answer from the sandbox's own environments
  (`Sandbox.Env`) for the applications the sandbox owns and from the host
  for the others; every other function of `Application` is delegated
  unchanged. This module itself is never called directly.
  """

  @env_functions [
    get_env: 2,
    get_env: 3,
    fetch_env: 2,
    fetch_env!: 2,
    get_all_env: 1,
    put_env: 3,
    put_env: 4,
    put_all_env: 1,
    put_all_env: 2,
    delete_env: 2,
    delete_env: 3
  ]

  defp id, do: :__sandbox_shim_id__

  @doc false
  def get_env(app, key, default \\ nil) do
    case fetch_env(app, key) do
      {:ok, value} -> value
      :error -> default
    end
  end

  @doc false
  def fetch_env(app, key) do
    id = id()

    if Sandbox.Env.owns?(id, app),
      do: Sandbox.Env.fetch(id, app, key),
      else: Application.fetch_env(app, key)
  end

  @doc false
  def fetch_env!(app, key) do
    case fetch_env(app, key) do
      {:ok, value} ->
        value

      :error ->
        raise ArgumentError,
              "could not fetch application environment #{inspect(key)} for application " <>
                "#{inspect(app)} in sandbox #{id()}"
    end
  end

  @doc false
  def get_all_env(app) do
    id = id()

    if Sandbox.Env.owns?(id, app),
      do: Sandbox.Env.all(id, app),
      else: Application.get_all_env(app)
  end

  @doc false
  def put_env(app, key, value, _opts \\ []), do: Sandbox.Env.put(id(), app, key, value)

  @doc false
  def put_all_env(config, _opts \\ []) do
    for {app, env} <- config, {key, value} <- env, do: put_env(app, key, value)
    :ok
  end

  @doc false
  def delete_env(app, key, _opts \\ []), do: Sandbox.Env.remove(id(), app, key)

  for {name, arity} <- Application.__info__(:functions), {name, arity} not in @env_functions do
    args = Macro.generate_arguments(arity, __MODULE__)
    @doc false
    def unquote(name)(unquote_splicing(args)),
      do: Application.unquote(name)(unquote_splicing(args))
  end
end

defmodule Sandbox.Shim.ErlApplication do
  @moduledoc """
  The template of each sandbox's `:application` shim: as
  `Sandbox.Shim.Application`, for Erlang code (and Elixir code calling
  `:application` directly). `get_env/1` and `get_all_env/0` answer for the
  sandbox's own application.
  """

  @env_functions [
    get_env: 1,
    get_env: 2,
    get_env: 3,
    get_all_env: 0,
    get_all_env: 1,
    set_env: 3,
    set_env: 4,
    unset_env: 2,
    unset_env: 3
  ]

  defp id, do: :__sandbox_shim_id__

  @doc false
  def get_env(key), do: get_env(Sandbox.Env.own_app(id()), key)

  @doc false
  def get_env(app, key) do
    id = id()

    cond do
      not Sandbox.Env.owns?(id, app) ->
        :application.get_env(app, key)

      true ->
        case Sandbox.Env.fetch(id, app, key) do
          {:ok, value} -> {:ok, value}
          :error -> :undefined
        end
    end
  end

  @doc false
  def get_env(app, key, default) do
    case get_env(app, key) do
      {:ok, value} -> value
      :undefined -> default
    end
  end

  @doc false
  def get_all_env, do: get_all_env(Sandbox.Env.own_app(id()))

  @doc false
  def get_all_env(app) do
    id = id()

    if Sandbox.Env.owns?(id, app),
      do: Sandbox.Env.all(id, app),
      else: :application.get_all_env(app)
  end

  @doc false
  def set_env(app, key, value, _opts \\ []), do: Sandbox.Env.put(id(), app, key, value)

  @doc false
  def unset_env(app, key, _opts \\ []), do: Sandbox.Env.remove(id(), app, key)

  for {name, arity} <- :application.module_info(:exports),
      {name, arity} not in @env_functions,
      name != :module_info do
    args = Macro.generate_arguments(arity, __MODULE__)
    @doc false
    def unquote(name)(unquote_splicing(args)),
      do: :application.unquote(name)(unquote_splicing(args))
  end
end
