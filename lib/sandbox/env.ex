defmodule Sandbox.Env do
  @moduledoc """
  The application environments of sandboxes.

  Each sandbox owns the environment of its own applications (its project's
  application, its path dependencies, and every application its
  `config/config.exs` configures). Sandbox code reads and writes them
  through the `Application` and `:application` shims that relocation
  redirects its calls to (`Sandbox.Shim.Application`,
  `Sandbox.Shim.ErlApplication`); applications a sandbox does not own are
  read from the host.

  One `ordered_set` ETS table holds `{{id, app}, true}` for every owned
  application, `{{id, app, key}, value}` for every entry and
  `{{id, :"$own_app"}, app}` for the project's application.
  """

  @table __MODULE__

  @doc false
  def table, do: @table

  @doc false
  def create_table do
    :ets.new(@table, [:ordered_set, :public, :named_table, read_concurrency: true])
  end

  @doc """
  Gives sandbox `id` its applications' environments: `own_app` is the
  project's application (or `nil`), `envs` is `[{app, keyword}]`.
  """
  @spec load(atom, atom | nil, [{atom, keyword}]) :: :ok
  def load(id, own_app, envs) when is_atom(id) do
    rows =
      for {app, env} <- envs,
          row <- [{{id, app}, true} | for({k, v} <- env, do: {{id, app, k}, v})],
          do: row

    own = if own_app, do: [{{id, :"$own_app"}, own_app}, {{id, own_app}, true}], else: []
    :ets.insert(@table, own ++ rows)
    :ok
  end

  @doc """
  Records the specs of sandbox `id`'s own applications (its project and
  path dependencies): `[{app, spec}]`, `spec` a keyword list as
  `:application.get_all_key/1` gives it.
  """
  @spec put_specs(atom, [{atom, keyword}]) :: :ok
  def put_specs(id, specs) when is_atom(id) do
    :ets.insert(@table, for({app, spec} <- specs, do: {{id, :"$spec", app}, spec}))
    :ok
  end

  @doc "The spec of `app` if it is one of sandbox `id`'s own applications."
  @spec spec(atom, atom) :: {:ok, keyword} | :error
  def spec(id, app) do
    case :ets.lookup(@table, {id, :"$spec", app}) do
      [{_, spec}] -> {:ok, spec}
      [] -> :error
    end
  end

  @doc "Every own application of sandbox `id` with its spec."
  @spec specs(atom) :: [{atom, keyword}]
  def specs(id) do
    for [app, spec] <- :ets.match(@table, {{id, :"$spec", :"$1"}, :"$2"}), do: {app, spec}
  end

  @doc "Removes every environment entry of sandbox `id`."
  @spec delete(atom) :: :ok
  def delete(id) when is_atom(id) do
    :ets.match_delete(@table, {{id, :_}, :_})
    :ets.match_delete(@table, {{id, :_, :_}, :_})
    :ok
  end

  @doc "Whether sandbox `id` owns the environment of `app`."
  @spec owns?(atom, atom) :: boolean
  def owns?(id, app), do: :ets.member(@table, {id, app})

  @doc "The project's application of sandbox `id`, or `nil`."
  @spec own_app(atom) :: atom | nil
  def own_app(id) do
    case :ets.lookup(@table, {id, :"$own_app"}) do
      [{_, app}] -> app
      [] -> nil
    end
  end

  @doc "Looks `key` of `app` up in sandbox `id`: `{:ok, value}` or `:error`."
  @spec fetch(atom, atom, term) :: {:ok, term} | :error
  def fetch(id, app, key) do
    case :ets.lookup(@table, {id, app, key}) do
      [{_, value}] -> {:ok, value}
      [] -> :error
    end
  end

  @doc "Every entry of `app` in sandbox `id`."
  @spec all(atom, atom) :: keyword
  def all(id, app) do
    for [k, v] <- :ets.match(@table, {{id, app, :"$1"}, :"$2"}), do: {k, v}
  end

  @doc "Sets `key` of `app` in sandbox `id` (the sandbox then owns `app`)."
  @spec put(atom, atom, term, term) :: :ok
  def put(id, app, key, value) do
    :ets.insert(@table, [{{id, app}, true}, {{id, app, key}, value}])
    :ok
  end

  @doc "Removes `key` of `app` in sandbox `id`."
  @spec remove(atom, atom, term) :: :ok
  def remove(id, app, key) do
    :ets.delete(@table, {id, app, key})
    :ok
  end
end
