defmodule Sandbox.ApplicationsTest do
  # Inside a sandbox the application API acts on its own applications.
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures, only: [project: 2]

  @moduletag :tmp_dir

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    id = "app#{hash}"

    on_exit(fn ->
      for %{id: sid} <- Sandbox.list_sandboxes(),
          String.starts_with?(sid, id),
          do: Sandbox.destroy_sandbox(sid)
    end)

    %{hash: hash, id: id}
  end

  defp elixir_app(dir, ns, app) do
    project(dir, %{
      "mix.exs" => """
      defmodule #{ns}.MixProject do
        use Mix.Project
        def project, do: [app: #{inspect(app)}, version: "1.2.3"]
        def application, do: [mod: {#{ns}.App, []}, env: [answer: 42]]
      end
      """,
      "lib/app.ex" => """
      defmodule #{ns}.App do
        use Application
        def start(_, _), do: Supervisor.start_link([#{ns}.Server], strategy: :one_for_one)
      end
      defmodule #{ns}.Server do
        use Agent
        def start_link(_), do: Agent.start_link(fn -> :started end, name: __MODULE__)
      end
      defmodule #{ns}.Api do
        def spec, do: {Application.spec(#{inspect(app)}, :vsn), Application.spec(#{inspect(app)}, :modules)}
        def which, do: for({a, _, _} <- Application.started_applications(), do: a)
        def stop, do: Application.stop(#{inspect(app)})
        def start, do: Application.ensure_all_started(#{inspect(app)})
        def running?, do: Process.whereis(#{ns}.Server) != nil
        def mine, do: Application.get_application(#{ns}.Server)
        def env, do: Application.fetch_env!(#{inspect(app)}, :answer)
        def stop_host(app), do: Application.stop(app)
      end
      """
    })
  end

  test "an application stops and restarts itself, reads its spec and finds itself listed", ctx do
    ns = "AppE#{ctx.hash}"
    app = :"app_e_#{ctx.hash}"
    dir = elixir_app(Path.join(ctx.tmp_dir, "e"), ns, app)
    {:ok, _} = Sandbox.create_sandbox(ctx.id, app, sandbox_path: dir)
    api = Module.concat(ns, Api)
    call = &Sandbox.call(ctx.id, api, &1, [])

    server = Sandbox.module_name(ctx.id, Module.concat(ns, Server))
    assert {:ok, {~c"1.2.3", modules}} = call.(:spec)
    assert server in modules
    assert {:ok, which} = call.(:which)
    assert app in which and :kernel in which
    assert call.(:mine) == {:ok, app}
    assert call.(:env) == {:ok, 42}

    # The host knows nothing of it: a sandbox's application is its own.
    assert Application.spec(app) == nil
    refute app in Enum.map(Application.started_applications(), &elem(&1, 0))

    assert call.(:stop) == {:ok, :ok}
    assert call.(:running?) == {:ok, false}
    assert {:ok, which} = call.(:which)
    refute app in which
    assert call.(:start) == {:ok, {:ok, [app]}}
    assert call.(:running?) == {:ok, true}
    assert call.(:start) == {:ok, {:ok, []}}
  end

  @tag :capture_log
  test "host applications are read-only: stopping one is refused under :medium, done under :low",
       ctx do
    host_app = :"host_app_#{ctx.hash}"

    :ok =
      :application.load(
        {:application, host_app,
         [
           description: ~c"x",
           vsn: ~c"1",
           modules: [],
           registered: [],
           applications: [:kernel, :stdlib]
         ]}
      )

    :ok = Application.start(host_app)
    on_exit(fn -> Application.stop(host_app) && Application.unload(host_app) end)

    ns = "AppH#{ctx.hash}"
    app = :"app_h_#{ctx.hash}"
    dir = elixir_app(Path.join(ctx.tmp_dir, "h"), ns, app)
    api = Module.concat(ns, Api)
    started? = fn -> host_app in Enum.map(Application.started_applications(), &elem(&1, 0)) end

    {:ok, _} = Sandbox.create_sandbox("#{ctx.id}m", app, sandbox_path: dir)

    assert {:error, {:exception, %Sandbox.SecurityError{target: {Application, :stop, 1}}, _}} =
             Sandbox.call("#{ctx.id}m", api, :stop_host, [host_app])

    assert started?.()

    {:ok, _} =
      Sandbox.create_sandbox("#{ctx.id}l", app, sandbox_path: dir, security_profile: :low)

    assert Sandbox.call("#{ctx.id}l", api, :stop_host, [host_app]) == {:ok, :ok}
    refute started?.()
  end

  test "an Erlang application named like its module reads its env under its own name", ctx do
    app = :"app_erl_#{ctx.hash}"

    dir =
      project(Path.join(ctx.tmp_dir, "erl"), %{
        "mix.exs" => """
        defmodule AppErl#{ctx.hash}.MixProject do
          use Mix.Project
          def project, do: [app: #{inspect(app)}, version: "0.1.0"]
          def application, do: [mod: {#{inspect(app)}, []}, env: [greeting: "hi"]]
        end
        """,
        "src/#{app}.erl" => """
        -module(#{app}).
        -behaviour(application).
        -export([start/2, stop/1, greeting/0, key/0]).
        start(_, _) -> {ok, spawn_link(fun() -> receive stop -> ok end end)}.
        stop(_) -> ok.
        greeting() -> application:get_env(#{app}, greeting).
        key() -> application:get_key(#{app}, vsn).
        """
      })

    {:ok, _} = Sandbox.create_sandbox(ctx.id, app, sandbox_path: dir)
    assert Sandbox.call(ctx.id, app, :greeting, []) == {:ok, {:ok, "hi"}}
    assert Sandbox.call(ctx.id, app, :key, []) == {:ok, {:ok, ~c"0.1.0"}}
  end
end
