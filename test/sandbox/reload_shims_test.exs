defmodule Sandbox.ReloadShimsTest do
  # A module reloaded into a sandbox calls the sandbox's Application shims as
  # the created one did: its application calls act on the sandbox's own
  # applications, not the host's (the store keeps the shims' redirects).
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures, only: [project: 2]

  @moduletag :tmp_dir

  defp source(app, kind) do
    """
    -module(#{app}).
    -behaviour(application).
    -export([start/2, stop/1, greeting/0, kind/0]).
    start(_, _) -> {ok, spawn_link(timer, sleep, [infinity])}.
    stop(_) -> ok.
    greeting() -> {application:get_env(#{app}, greeting), 'Elixir.Application':get_env(#{app}, greeting)}.
    kind() -> #{kind}.
    """
  end

  test "after a hot reload and a rollback, the application API still acts on the sandbox's own application",
       ctx do
    app = :"reload_shims_#{:erlang.phash2(ctx.test)}"
    id = "rshims#{:erlang.phash2(ctx.test)}"
    on_exit(fn -> Sandbox.destroy_sandbox(id) end)

    dir =
      project(Path.join(ctx.tmp_dir, "a"), %{
        "mix.exs" => """
        defmodule ReloadShims#{:erlang.phash2(app)}.MixProject do
          use Mix.Project
          def project, do: [app: #{inspect(app)}, version: "0.1.0"]
          def application, do: [mod: {#{inspect(app)}, []}, env: [greeting: "hi"]]
        end
        """,
        "src/#{app}.erl" => source(app, :one)
      })

    {:ok, _} = Sandbox.create_sandbox(id, app, sandbox_path: dir)
    # The host has no such application: only the shims can answer.
    assert Application.get_env(app, :greeting) == nil
    assert {:ok, {{:ok, "hi"}, "hi"}} = Sandbox.call(id, app, :greeting, [])

    path = Path.join(ctx.tmp_dir, "#{app}.erl")
    File.write!(path, source(app, :two))
    {:ok, ^app, beam} = :compile.file(String.to_charlist(path), [:binary, :return_errors])
    assert {:ok, :hot_reloaded} = Sandbox.hot_reload_sandbox(id, beam)
    assert {:ok, :two} = Sandbox.call(id, app, :kind, [])
    assert {:ok, {{:ok, "hi"}, "hi"}} = Sandbox.call(id, app, :greeting, [])

    assert {:ok, :rolled_back} = Sandbox.rollback_module(id, app, 1)
    assert {:ok, :one} = Sandbox.call(id, app, :kind, [])
    assert {:ok, {{:ok, "hi"}, "hi"}} = Sandbox.call(id, app, :greeting, [])
  end
end
