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
  for the others. Starting, stopping, `spec`, `get_application` and the
  application lists act on the sandbox's own applications, which shadow
  host applications of the same name (`Sandbox.Shim.Apps`); host
  applications are read-only. This module itself is never called directly.
  """

  alias Sandbox.Shim.Apps

  @own_functions [
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
    delete_env: 3,
    spec: 1,
    spec: 2,
    start: 1,
    start: 2,
    stop: 1,
    ensure_started: 1,
    ensure_started: 2,
    ensure_all_started: 1,
    ensure_all_started: 2,
    ensure_loaded: 1,
    load: 1,
    unload: 1,
    started_applications: 0,
    started_applications: 1,
    loaded_applications: 0,
    get_application: 1,
    app_dir: 1,
    app_dir: 2
  ]

  defp id, do: :__sandbox_shim_id__

  ## Environment

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
    app = Apps.app(id, app)

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
    app = Apps.app(id, app)

    if Sandbox.Env.owns?(id, app),
      do: Sandbox.Env.all(id, app),
      else: Application.get_all_env(app)
  end

  @doc false
  def put_env(app, key, value, _opts \\ []),
    do: Sandbox.Env.put(id(), Apps.app(id(), app), key, value)

  @doc false
  def put_all_env(config, _opts \\ []) do
    for {app, env} <- config, {key, value} <- env, do: put_env(app, key, value)
    :ok
  end

  @doc false
  def delete_env(app, key, _opts \\ []), do: Sandbox.Env.remove(id(), Apps.app(id(), app), key)

  ## Applications

  @doc false
  def spec(app) do
    case Apps.spec(id(), Apps.app(id(), app)) do
      {:ok, spec} -> spec
      :error -> Application.spec(app)
    end
  end

  @doc false
  def spec(app, key) do
    case Apps.spec(id(), Apps.app(id(), app)) do
      {:ok, spec} -> Keyword.get(spec, key)
      :error -> Application.spec(app, key)
    end
  end

  @doc false
  def start(app, type \\ :temporary) do
    id = id()
    app = Apps.app(id, app)

    if Apps.own?(id, app) do
      Apps.start(id, app)
    else
      Apps.host!(id, {Application, :start, 2}, app)
      Application.start(app, type)
    end
  end

  @doc false
  def stop(app) do
    id = id()
    app = Apps.app(id, app)

    if Apps.own?(id, app) do
      Apps.stop(id, app)
    else
      Apps.host!(id, {Application, :stop, 1}, app)
      Application.stop(app)
    end
  end

  @doc false
  def ensure_started(app, type \\ :temporary) do
    case start(app, type) do
      {:error, {:already_started, _}} -> :ok
      other -> other
    end
  end

  @doc false
  def ensure_all_started(app, type \\ :temporary) do
    id = id()
    app = Apps.app(id, app)

    cond do
      Apps.own?(id, app) ->
        Apps.ensure_all_started(id, app)

      # A host application that is already started is no change.
      app in Enum.map(Application.started_applications(), &elem(&1, 0)) ->
        {:ok, []}

      true ->
        Apps.host!(id, {Application, :ensure_all_started, 2}, app)
        Application.ensure_all_started(app, type)
    end
  end

  @doc false
  def ensure_loaded(app) do
    if Apps.own?(id(), Apps.app(id(), app)), do: :ok, else: Application.ensure_loaded(app)
  end

  @doc false
  def load(app) do
    app = Apps.app(id(), app)
    if Apps.own?(id(), app), do: {:error, {:already_loaded, app}}, else: Application.load(app)
  end

  @doc false
  def unload(app) do
    id = id()
    app = Apps.app(id, app)

    cond do
      Apps.own?(id, app) and app in Apps.started(id) ->
        {:error, {:running, app}}

      Apps.own?(id, app) ->
        :ok

      true ->
        with :ok <- Apps.host!(id, {Application, :unload, 1}, app), do: Application.unload(app)
    end
  end

  @doc false
  def started_applications(timeout \\ 5000),
    do: Apps.merge_list(id(), Application.started_applications(timeout))

  @doc false
  def loaded_applications, do: Apps.merge_list(id(), Application.loaded_applications(), true)

  @doc false
  def get_application(module) do
    Apps.application_of(id(), module) || Application.get_application(module)
  end

  @doc false
  def app_dir(app) do
    case Apps.spec(id(), Apps.app(id(), app)) do
      {:ok, spec} -> Keyword.fetch!(spec, :dir)
      :error -> Application.app_dir(app)
    end
  end

  @doc false
  def app_dir(app, path), do: Path.join(app_dir(app), path)

  for {name, arity} <- Application.__info__(:functions), {name, arity} not in @own_functions do
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
  `:application` directly). `get_env/1`, `get_all_env/0`, `get_key/1`,
  `get_all_key/0` and `get_application/0` answer for the sandbox's own
  application.
  """

  alias Sandbox.Shim.Apps

  @own_functions [
    get_env: 1,
    get_env: 2,
    get_env: 3,
    get_all_env: 0,
    get_all_env: 1,
    set_env: 3,
    set_env: 4,
    unset_env: 2,
    unset_env: 3,
    get_key: 1,
    get_key: 2,
    get_all_key: 0,
    get_all_key: 1,
    get_application: 0,
    get_application: 1,
    start: 1,
    start: 2,
    stop: 1,
    ensure_started: 1,
    ensure_started: 2,
    ensure_all_started: 1,
    ensure_all_started: 2,
    load: 1,
    load: 2,
    unload: 1,
    which_applications: 0,
    which_applications: 1,
    loaded_applications: 0
  ]

  defp id, do: :__sandbox_shim_id__

  defp own_app, do: Sandbox.Env.own_app(id())

  ## Environment

  @doc false
  def get_env(key), do: get_env(own_app(), key)

  @doc false
  def get_env(app, key) do
    id = id()
    app = Apps.app(id, app)

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
  def get_all_env, do: get_all_env(own_app())

  @doc false
  def get_all_env(app) do
    id = id()
    app = Apps.app(id, app)

    if Sandbox.Env.owns?(id, app),
      do: Sandbox.Env.all(id, app),
      else: :application.get_all_env(app)
  end

  @doc false
  def set_env(app, key, value, _opts \\ []),
    do: Sandbox.Env.put(id(), Apps.app(id(), app), key, value)

  @doc false
  def unset_env(app, key, _opts \\ []), do: Sandbox.Env.remove(id(), Apps.app(id(), app), key)

  ## Applications

  @doc false
  def get_key(key), do: get_key(own_app(), key)

  @doc false
  def get_key(app, key) do
    case Apps.spec(id(), Apps.app(id(), app)) do
      {:ok, spec} -> if Keyword.has_key?(spec, key), do: {:ok, spec[key]}, else: :undefined
      :error -> :application.get_key(app, key)
    end
  end

  @doc false
  def get_all_key, do: get_all_key(own_app())

  @doc false
  def get_all_key(app) do
    case Apps.spec(id(), Apps.app(id(), app)) do
      {:ok, spec} -> {:ok, spec}
      :error -> :application.get_all_key(app)
    end
  end

  @doc false
  def get_application do
    case own_app() do
      nil -> :undefined
      app -> {:ok, app}
    end
  end

  @doc false
  def get_application(pid_or_module) when is_atom(pid_or_module) do
    case Apps.application_of(id(), pid_or_module) do
      nil -> :application.get_application(pid_or_module)
      app -> {:ok, app}
    end
  end

  def get_application(pid) do
    if Sandbox.Guard.Runtime.member?(id(), pid),
      do: get_application(),
      else: :application.get_application(pid)
  end

  @doc false
  def start(app, type \\ :temporary) do
    id = id()
    app = Apps.app(id, app)

    if Apps.own?(id, app) do
      Apps.start(id, app)
    else
      Apps.host!(id, {:application, :start, 2}, app)
      :application.start(app, type)
    end
  end

  @doc false
  def stop(app) do
    id = id()
    app = Apps.app(id, app)

    if Apps.own?(id, app) do
      Apps.stop(id, app)
    else
      Apps.host!(id, {:application, :stop, 1}, app)
      :application.stop(app)
    end
  end

  @doc false
  def ensure_started(app, type \\ :temporary) do
    case start(app, type) do
      {:error, {:already_started, _}} -> :ok
      other -> other
    end
  end

  @doc false
  def ensure_all_started(app, type \\ :temporary) do
    id = id()
    app = Apps.app(id, app)

    cond do
      Apps.own?(id, app) ->
        Apps.ensure_all_started(id, app)

      app in Enum.map(:application.which_applications(), &elem(&1, 0)) ->
        {:ok, []}

      true ->
        Apps.host!(id, {:application, :ensure_all_started, 2}, app)
        :application.ensure_all_started(app, type)
    end
  end

  @doc false
  def load(app), do: load(app, [])

  @doc false
  def load(app, distributed) do
    name = if is_tuple(app), do: elem(app, 1), else: app
    name = Apps.app(id(), name)

    if Apps.own?(id(), name),
      do: {:error, {:already_loaded, name}},
      else: :application.load(app, distributed)
  end

  @doc false
  def unload(app) do
    id = id()
    app = Apps.app(id, app)

    cond do
      Apps.own?(id, app) and app in Apps.started(id) ->
        {:error, {:running, app}}

      Apps.own?(id, app) ->
        :ok

      true ->
        with :ok <- Apps.host!(id, {:application, :unload, 1}, app), do: :application.unload(app)
    end
  end

  @doc false
  def which_applications, do: Apps.merge_list(id(), :application.which_applications())

  @doc false
  def which_applications(timeout),
    do: Apps.merge_list(id(), :application.which_applications(timeout))

  @doc false
  def loaded_applications, do: Apps.merge_list(id(), :application.loaded_applications(), true)

  for {name, arity} <- :application.module_info(:exports),
      {name, arity} not in @own_functions,
      name != :module_info do
    args = Macro.generate_arguments(arity, __MODULE__)
    @doc false
    def unquote(name)(unquote_splicing(args)),
      do: :application.unquote(name)(unquote_splicing(args))
  end
end
