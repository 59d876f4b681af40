defmodule Sandbox.IExTest do
  use Sandbox.Case, async: true

  import ExUnit.CaptureIO

  @helpers Path.expand("../fixtures/helpers_project", __DIR__)

  setup %{tmp_dir: tmp} do
    dir = Path.join(tmp, "helper_app")
    File.mkdir_p!(dir)
    File.cp_r!(@helpers, dir)
    %{dir: dir}
  end

  @moduletag :tmp_dir

  @tag sandbox: false
  test "call, reload, versions, rollback: printed and returned", %{dir: dir, test: test} do
    id = Sandbox.Case.checkout(test, path: dir)
    file = Path.join(dir, "lib/helper_app.ex")

    assert Sandbox.IEx.call(id, HelperApp, :bump) == {:ok, 1}
    assert Sandbox.IEx.call(id, HelperApp, :version, []) == {:ok, 1}

    File.write!(
      file,
      String.replace(File.read!(file), "def version, do: 1", "def version, do: 2")
    )

    out = capture_io(fn -> assert Sandbox.IEx.reload(id, file) == {:ok, :hot_reloaded} end)
    assert out == "reloaded HelperApp (v2) in sandbox #{inspect(id)}\n"
    assert {:ok, 2} = Sandbox.call(id, HelperApp, :version, [])

    out = capture_io(fn -> assert Sandbox.IEx.reload(id, file) == {:ok, :unchanged} end)
    assert out =~ "unchanged"

    out = capture_io(fn -> assert Sandbox.IEx.versions(id, HelperApp) == :ok end)
    assert [title, v1, v2] = String.split(out, "\n", trim: true)
    assert title == ~s(HelperApp in sandbox "#{id}")
    assert v1 =~ ~r/\A   v1  [0-9a-f]{12}  \d{4}-\d\d-\d\dT/
    assert v2 =~ ~r/\A\*  v2  [0-9a-f]{12}  /

    out = capture_io(fn -> assert Sandbox.IEx.rollback(id, HelperApp) == {:ok, :rolled_back} end)
    assert out == ~s(rolled HelperApp back to v1 in sandbox "#{id}"\n)
    out = capture_io(fn -> Sandbox.IEx.versions(id, HelperApp) end)
    assert out =~ ~r/\n\*  v1 /
    assert out =~ ~r/\n   v2  .* rolled back \d{4}-/

    out = capture_io(fn -> Sandbox.IEx.rollback(id, HelperApp) end)
    assert out =~ "rollback failed: {:no_previous_version, HelperApp}"

    File.write!(
      file,
      String.replace(File.read!(file), "def version, do: 2", "def version, do: (")
    )

    out =
      capture_io(fn ->
        assert {:error, {:compilation_failed, _}} = Sandbox.IEx.reload(id, file)
      end)

    assert out =~ ~r/compilation failed:\n  lib\/helper_app.ex:\d+: /

    out = capture_io(fn -> Sandbox.IEx.versions(id, Nope) end)
    assert out =~ "Nope is not a module of sandbox"
  end

  @tag sandbox: [path: @helpers]
  test "sandboxes/0 prints a table of the live sandboxes", %{sandbox: id} do
    {:ok, _} = Sandbox.call(id, HelperApp, :bump, [])
    out = capture_io(fn -> assert Sandbox.IEx.sandboxes() == :ok end)
    [header | rows] = String.split(out, "\n", trim: true)
    assert header =~ ~r/\AID\s+STATUS\s+MEMORY\s+PROCS\s+UPTIME\s+VERSIONS\z/
    row = Enum.find(rows, &String.starts_with?(&1, id <> " "))
    {:ok, info} = Sandbox.get_sandbox_info(id)
    procs = info.resource_usage.current_processes
    {:ok, graph} = Sandbox.get_dependency_graph(id)
    modules = map_size(graph)

    assert row =~
             ~r/\A#{id}\s+running\s+[\d.]+ (B|KB|MB)\s+#{procs}\s+\d+ (ms|s|min)\s+#{modules} modules, all v1\z/
  end
end
