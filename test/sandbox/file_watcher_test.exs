defmodule Sandbox.FileWatcherTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.WatchFixtures
  import Sandbox.Test.Fixtures, only: [loaded_modules: 1]

  alias Sandbox.FileWatcher

  @moduletag :tmp_dir

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    ns = "W#{hash}"
    app = :"w#{hash}_app"
    dir = write_project(Path.join(ctx.tmp_dir, "project"), ns, app)
    id = "w#{hash}"

    on_exit(fn ->
      for %{id: sid} <- Sandbox.list_sandboxes(),
          String.starts_with?(sid, id),
          do: Sandbox.destroy_sandbox(sid)
    end)

    m = fn name -> Module.concat(ns, name) end
    %{ns: ns, app: app, id: id, dir: dir, server: m.(Server), calc: m.(Calc), m: m}
  end

  defp start!(ctx, opts, id \\ nil) do
    id = id || ctx.id
    {:ok, _} = Sandbox.create_sandbox(id, ctx.app, [sandbox_path: ctx.dir] ++ opts)
    :ok = Sandbox.subscribe(id)
    id
  end

  defp edit(ctx, file, contents), do: File.write!(Path.join(ctx.dir, file), contents)

  # Atomic save, as editors do: a temporary file renamed over the source.
  defp save(ctx, file, contents) do
    path = Path.join(ctx.dir, file)

    tmp =
      Path.join(
        Path.dirname(path),
        ".#{Path.basename(path)}.tmp#{System.unique_integer([:positive])}"
      )

    File.write!(tmp, contents)
    File.rename!(tmp, path)
  end

  defp version(id, ctx) do
    {:ok, {v, _n, _pid}} = Sandbox.call(id, ctx.server, :get, [])
    v
  end

  # Reload events until the server answers `version`.
  defp until_version(id, ctx, version, events \\ []) do
    if version(id, ctx) == version do
      Enum.reverse(events)
    else
      until_version(id, ctx, version, [await_reload(id) | events])
    end
  end

  test "a save reloads the sandbox: state and pid kept", ctx do
    id = start!(ctx, auto_reload: true)
    assert {:ok, info} = Sandbox.get_sandbox_info(id)
    assert info.auto_reload_enabled
    assert {:ok, 1} = Sandbox.call(id, ctx.server, :bump, [])
    {:ok, {1, 1, pid}} = Sandbox.call(id, ctx.server, :get, [])

    save(ctx, "lib/server.ex", server(ctx.ns, 2))
    assert {:reloaded, meta} = await_reload(id)
    assert meta.trigger == :file_watcher
    assert meta.modules == [ctx.server]

    assert {:ok, {2, 1, ^pid}} = Sandbox.call(id, ctx.server, :get, [])
    assert Sandbox.get_current_version(id, ctx.server) == {:ok, 2}
  end

  test "a syntax error keeps the running code; the fix reloads", ctx do
    id = start!(ctx, auto_reload: true)

    edit(ctx, "lib/server.ex", "defmodule #{ctx.ns}.Server do\n  def version, do: \n")
    assert {:failed, meta} = await_reload(id)
    assert meta.trigger == :file_watcher
    assert {:compilation_failed, [%{file: "lib/server.ex", line: line} | _]} = meta.reason
    assert is_integer(line)
    assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(id)
    assert version(id, ctx) == 1

    edit(ctx, "lib/server.ex", server(ctx.ns, 3))
    assert {:reloaded, _} = await_reload(id)
    assert version(id, ctx) == 3
  end

  test "a burst of 20 saves is a few reloads, and the last content wins", ctx do
    id = start!(ctx, auto_reload: true)

    for v <- 2..21, do: edit(ctx, "lib/server.ex", server(ctx.ns, v))

    events = until_version(id, ctx, 21)
    assert Enum.all?(events, &match?({:reloaded, _}, &1))
    assert length(events) in 1..4
  end

  test "a new file (in a new folder) is added, and deleting it removes the module", ctx do
    id = start!(ctx, auto_reload: true)
    extra = ctx.m.(Deep.Extra)
    File.mkdir_p!(Path.join(ctx.dir, "lib/deep"))
    # A folder created after the watch started is watched too: wait until
    # its first file is seen.
    edit(ctx, "lib/deep/extra.ex", "defmodule #{ctx.ns}.Deep.Extra do def x, do: 42 end")

    assert {:reloaded, meta} = await_reload(id)
    assert meta.added == [extra]
    assert Sandbox.call(id, extra, :x, []) == {:ok, 42}
    refute Code.ensure_loaded?(extra)

    File.rm!(Path.join(ctx.dir, "lib/deep/extra.ex"))
    assert {:reloaded, meta} = await_reload(id)
    assert meta.removed == [extra]
    refute Sandbox.module_name(id, extra) in loaded_modules(id)
  end

  test "non-source files, editor temporaries and hidden files are ignored", ctx do
    id = start!(ctx, auto_reload: true)
    garbage = "this is not elixir ((("

    # If any of these were compiled, the compile would fail.
    for file <- ~w(README.md lib/notes.txt lib/.#server.ex lib/server.ex~ lib/#server.ex#) do
      edit(ctx, file, garbage)
    end

    File.mkdir_p!(Path.join(ctx.dir, "lib/.hidden"))
    edit(ctx, "lib/.hidden/x.ex", garbage)

    edit(ctx, "lib/server.ex", server(ctx.ns, 2))
    assert {:reloaded, meta} = await_reload(id)
    assert meta.modules == [ctx.server]
    assert version(id, ctx) == 2

    assert FileWatcher.source?("/p/lib/a.ex") and FileWatcher.source?("/p/src/a.erl")
    assert FileWatcher.source?("/p/include/a.hrl")

    for path <- ~w(/p/lib/.#a.ex /p/lib/a.ex~ /p/lib/#a.ex# /p/lib/.a.ex.swp /p/README.md
                   /p/_build/dev/a.ex /p/deps/x/lib/a.ex /p/lib/.git/a.ex /p/lib/a.exs) do
      refute FileWatcher.source?(path), path
    end
  end

  test "disable stops reloads; enable catches up on the edits made meanwhile", ctx do
    id = start!(ctx, auto_reload: true)
    assert :ok = Sandbox.disable_auto_reload(id)
    assert {:ok, %{auto_reload_enabled: false}} = Sandbox.get_sandbox_info(id)
    refute Map.has_key?(FileWatcher.watched(), ctx.dir)

    edit(ctx, "lib/server.ex", server(ctx.ns, 2))
    edit(ctx, "lib/extra.ex", "defmodule #{ctx.ns}.Extra do def x, do: 1 end")
    assert version(id, ctx) == 1

    assert :ok = Sandbox.enable_auto_reload(id)
    assert :ok = Sandbox.enable_auto_reload(id)
    assert {:reloaded, meta} = await_reload(id)
    assert Enum.sort(meta.modules) == Enum.sort([ctx.server, ctx.m.(Extra)])
    assert version(id, ctx) == 2
    assert Sandbox.call(id, ctx.m.(Extra), :x, []) == {:ok, 1}

    # And it watches again.
    edit(ctx, "lib/server.ex", server(ctx.ns, 3))
    assert {:reloaded, _} = await_reload(id)
    assert version(id, ctx) == 3
  end

  test "two sandboxes of one directory share one watch and both reload", ctx do
    a = start!(ctx, [auto_reload: true], "#{ctx.id}a")
    b = start!(ctx, [auto_reload: true], "#{ctx.id}b")
    assert %{sandboxes: [^a, ^b], folders: [_lib]} = FileWatcher.watched()[ctx.dir]

    edit(ctx, "lib/server.ex", server(ctx.ns, 2))
    assert {:reloaded, _} = await_reload(a)
    assert {:reloaded, _} = await_reload(b)
    assert version(a, ctx) == 2 and version(b, ctx) == 2

    :ok = Sandbox.destroy_sandbox(a)
    assert %{sandboxes: [^b]} = FileWatcher.watched()[ctx.dir]
  end

  test "destroy stops the watch", ctx do
    id = start!(ctx, auto_reload: true)
    assert Map.has_key?(FileWatcher.watched(), ctx.dir)
    :ok = Sandbox.destroy_sandbox(id)
    refute Map.has_key?(FileWatcher.watched(), ctx.dir)
  end

  test "enable and disable on unknown or invalid sandboxes", ctx do
    assert Sandbox.enable_auto_reload("#{ctx.id}none") == {:error, :not_found}
    assert Sandbox.disable_auto_reload("#{ctx.id}none") == {:error, :not_found}
    assert Sandbox.enable_auto_reload("a.b") == {:error, {:invalid_id, "a.b"}}
    assert Sandbox.disable_auto_reload(:x) == {:error, {:invalid_id, :x}}
  end
end
