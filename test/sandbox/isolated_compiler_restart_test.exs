defmodule Sandbox.IsolatedCompilerRestartTest do
  # Synchronous: stops and starts the :sandbox application.
  use ExUnit.Case, async: false

  import Sandbox.IsolatedCompilerTestHelpers

  alias Sandbox.IsolatedCompiler
  alias Sandbox.IsolatedCompiler.{Cache, Pool}

  @moduletag :slow
  @moduletag :capture_log

  setup do
    cache_dir = tmp_dir!("restart-cache")
    env = [compiler_cache_dir: cache_dir, compiler_artifacts_dir: tmp_dir!("restart-artifacts")]
    previous = for {key, _} <- env, do: {key, Application.fetch_env(:sandbox, key)}
    for {key, value} <- env, do: Application.put_env(:sandbox, key, value)
    restart_app!()

    on_exit(fn ->
      for {key, value} <- previous do
        case value do
          {:ok, v} -> Application.put_env(:sandbox, key, v)
          :error -> Application.delete_env(:sandbox, key)
        end
      end

      restart_app!()
    end)

    {:ok, cache_dir: cache_dir}
  end

  defp restart_app! do
    :ok = Application.stop(:sandbox)
    {:ok, _} = Application.ensure_all_started(:sandbox)
  end

  test "the application's cache survives a restart: a repeated compile runs no worker job",
       %{cache_dir: cache_dir} do
    dir = copy_fixture!("basic")
    assert Cache.info().dir == cache_dir
    assert {:ok, %{cached: false} = first} = IsolatedCompiler.compile_sandbox(dir)
    assert Pool.stats().jobs == 1

    restart_app!()
    assert Pool.stats().jobs == 0
    assert %{entries: 1} = Cache.info()

    assert {:ok, %{cached: true, os_pid: nil} = second} = IsolatedCompiler.compile_sandbox(dir)
    assert Pool.stats().jobs == 0
    assert second.modules == first.modules
    assert second.app_env == first.app_env

    # After the restart the manifest still sees the template and the config.
    File.write!(Path.join(dir, "priv/greeting.eex"), "Hi <%= name %>\n")
    assert {:ok, %{cached: false}} = IsolatedCompiler.compile_sandbox(dir)
    assert Pool.stats().jobs == 1

    restart_app!()
    File.write!(Path.join(dir, "config/config.exs"), "import Config\nconfig :basic, a: 1\n")
    assert {:ok, %{cached: false} = info} = IsolatedCompiler.compile_sandbox(dir)
    assert info.app_env[:a] == 1
    assert Pool.stats().jobs == 1
  end
end
