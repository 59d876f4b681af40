defmodule Sandbox.KeepAtomsTest do
  # The create option keep_atoms: an Erlang application named like its
  # module (as telemetry is) builds data from its own name; relocation
  # renames that atom with the module unless it is kept.
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures, only: [project: 2, loaded_modules: 1]

  @moduletag :tmp_dir

  setup ctx do
    hash = :erlang.phash2({__MODULE__, ctx.test})
    app = :"keep_app_#{hash}"
    id = "keep#{hash}"
    on_exit(fn -> for s <- [id, id <> "b"], do: Sandbox.destroy_sandbox(s) end)
    %{app: app, id: id, hash: hash, dir: app_project(Path.join(ctx.tmp_dir, "a"), app, "hi")}
  end

  # Application `app` whose one module is `app` too.
  defp app_project(dir, app, greeting) do
    project(dir, %{
      "mix.exs" => """
      defmodule KeepApp#{:erlang.phash2({app, dir})}.MixProject do
        use Mix.Project
        def project, do: [app: #{inspect(app)}, version: "0.1.0"]
        def application, do: [mod: {#{inspect(app)}, []}, env: [greeting: #{inspect(greeting)}]]
        end
      """,
      "src/#{app}.erl" => source(app, :failure)
    })
  end

  defp source(app, kind) do
    """
    -module(#{app}).
    -behaviour(application).
    -export([start/2, stop/1, greeting/0, event/0, event/1, emit/1, loaded/0, name/0]).
    %% (A process that runs none of this module's code: rollback purges it.)
    start(_, _) -> {ok, spawn_link(timer, sleep, [infinity])}.
    stop(_) -> ok.
    greeting() -> application:get_env(#{app}, greeting).
    %% An event as telemetry documents its own: a literal, and one built at run time.
    event() -> [#{app}, handler, #{kind}].
    event(Kind) -> [#{app}, Kind].
    emit(To) -> To ! {event, [#{app}, handler, #{kind}]}, ok.
    %% Its own entry among the loaded applications.
    loaded() -> lists:keymember(#{app}, 1, application:loaded_applications()).
    name() -> ?MODULE.
    """
  end

  defp call(id, app, f, args \\ []) do
    {:ok, result} = Sandbox.call(id, app, f, args)
    result
  end

  test "without keep_atoms the data carries the relocated name", %{app: app, id: id} = ctx do
    {:ok, _} = Sandbox.create_sandbox(id, app, sandbox_path: ctx.dir)
    relocated = Sandbox.module_name(id, app)

    assert call(id, app, :event) == [relocated, :handler, :failure]
    assert call(id, app, :event, [:stop]) == [relocated, :stop]
    assert call(id, app, :emit, [self()]) == :ok
    assert_receive {:event, [^relocated, :handler, :failure]}
    assert call(id, app, :loaded) == false
    # (The Application shims map the relocated name back for the env.)
    assert call(id, app, :greeting) == {:ok, "hi"}
  end

  test "with keep_atoms the data keeps the name, the module is still relocated",
       %{app: app, id: id} = ctx do
    other = app_project(Path.join(ctx.tmp_dir, "b"), app, "ho")
    {:ok, _} = Sandbox.create_sandbox(id, app, sandbox_path: ctx.dir, keep_atoms: [app])
    {:ok, _} = Sandbox.create_sandbox(id <> "b", app, sandbox_path: other, keep_atoms: [app])
    relocated = Sandbox.module_name(id, app)

    assert call(id, app, :event) == [app, :handler, :failure]
    assert call(id, app, :event, [:stop]) == [app, :stop]
    assert call(id, app, :emit, [self()]) == :ok
    assert_receive {:event, [^app, :handler, :failure]}
    assert call(id, app, :loaded) == true
    # The documented trade-off: ?MODULE is data too.
    assert call(id, app, :name) == app

    # Each sandbox reads its own application's env.
    assert call(id, app, :greeting) == {:ok, "hi"}
    assert call(id <> "b", app, :greeting) == {:ok, "ho"}

    # The module itself is relocated: the host has no module of that name,
    # each sandbox its own copy, which knows its relocated name.
    refute :code.is_loaded(app)
    assert relocated in loaded_modules(id)
    assert Sandbox.module_name(id <> "b", app) in loaded_modules(id <> "b")
    assert relocated != Sandbox.module_name(id <> "b", app)
    assert call(id, app, :module_info, [:module]) == relocated
    assert {:event, 0} in call(id, app, :module_info, [:exports])
  end

  test "keep_atoms holds through hot reload and rollback", %{app: app, id: id} = ctx do
    {:ok, _} = Sandbox.create_sandbox(id, app, sandbox_path: ctx.dir, keep_atoms: [app])
    path = Path.join(ctx.tmp_dir, "#{app}.erl")
    File.write!(path, source(app, :reloaded))
    {:ok, ^app, beam} = :compile.file(String.to_charlist(path), [:binary, :return_errors])

    assert Sandbox.hot_reload_sandbox(id, beam) == {:ok, :hot_reloaded}
    assert call(id, app, :event) == [app, :handler, :reloaded]
    assert call(id, app, :event, [:stop]) == [app, :stop]

    assert Sandbox.rollback_module(id, app, 1) == {:ok, :rolled_back}
    assert call(id, app, :event) == [app, :handler, :failure]
    assert call(id, app, :event, [:stop]) == [app, :stop]
  end

  test "keep_atoms must be a list of atoms", ctx do
    for bad <- [:app, [~c"x"], [:a | :b], "app"] do
      assert Sandbox.create_sandbox(ctx.id, ctx.app, sandbox_path: ctx.dir, keep_atoms: bad) ==
               {:error, {:invalid_option, {:keep_atoms, bad}}}
    end
  end
end
