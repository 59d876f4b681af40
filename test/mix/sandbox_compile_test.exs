defmodule Mix.Tasks.Sandbox.CompileTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO

  @root Path.expand("../..", __DIR__)
  @moduletag :tmp_dir

  defp run_task(args), do: capture_io(fn -> Mix.Task.rerun("sandbox.compile", args) end)

  defp project(dir, files) do
    for {name, body} <- files, do: File.write!(Path.join(dir, name), body)
    Path.relative_to_cwd(dir)
  end

  @warning "defmodule Warns#{System.unique_integer([:positive])} do\n  def y(a), do: 1\nend\n"
  @broken "defmodule Broken do\n  def x, do: (\nend\n"

  test "text: file:line:column: severity: message, then a summary", %{tmp_dir: tmp} do
    path = project(tmp, %{"warns.ex" => @warning})
    out = run_task([path])
    file = Path.join(path, "warns.ex")
    assert out =~ ~r/\A#{Regex.escape(file)}:2: warning: variable "a" is unused/
    assert out =~ ~r/#{Regex.escape(path)}: compiled 1 modules in \d+ ms, 1 warning\n\z/
  end

  test "text: errors fail with exit status 1", %{tmp_dir: tmp} do
    path = project(tmp, %{"broken.ex" => @broken, "warns.ex" => @warning})

    out =
      capture_io(fn ->
        assert catch_exit(Mix.Task.rerun("sandbox.compile", [path])) == {:shutdown, 1}
      end)

    assert out =~ ~r/#{Regex.escape(Path.join(path, "broken.ex"))}:3:1: error: /
    assert out =~ "#{path}: compile failed: 1 error, 0 warnings"
  end

  test "json: diagnostics as editors take them", %{tmp_dir: tmp} do
    path = project(tmp, %{"broken.ex" => @broken})

    out =
      capture_io(fn ->
        catch_exit(Mix.Task.rerun("sandbox.compile", [path, "--format", "json"]))
      end)

    assert {:ok, json} = Sandbox.TestJSON.decode(String.trim(out))
    assert %{"status" => "error", "modules" => [], "error" => nil} = json

    assert [
             %{
               "file" => file,
               "line" => 3,
               "column" => 1,
               "severity" => "error",
               "message" => message
             }
           ] = json["diagnostics"]

    assert file == Path.join(path, "broken.ex")
    assert message =~ "missing terminator"
    assert Map.keys(hd(json["diagnostics"])) == ~w(column file line message severity)

    path = project(Path.join(tmp, "ok") |> tap(&File.mkdir_p!/1), %{"warns.ex" => @warning})
    assert {:ok, ok} = Sandbox.TestJSON.decode(String.trim(run_task([path, "--format", "json"])))
    assert %{"status" => "ok", "modules" => [_], "error" => nil} = ok
    assert [%{"severity" => "warning", "line" => 2, "column" => nil}] = ok["diagnostics"]
    assert is_integer(ok["compilation_time_ms"])
  end

  test "--warnings-as-errors; other failures; --help", %{tmp_dir: tmp} do
    path = project(tmp, %{"warns.ex" => @warning})

    capture_io(fn ->
      assert catch_exit(Mix.Task.rerun("sandbox.compile", [path, "--warnings-as-errors"])) ==
               {:shutdown, 1}
    end)

    empty = Path.join(tmp, "empty") |> tap(&File.mkdir_p!/1)

    out =
      capture_io(fn ->
        catch_exit(Mix.Task.rerun("sandbox.compile", [empty, "--format", "json"]))
      end)

    assert {:ok, %{"status" => "error", "error" => "no .ex or .erl sources under " <> _}} =
             Sandbox.TestJSON.decode(String.trim(out))

    assert run_task(["-h"]) =~ "file:line:column: severity: message"

    assert_raise Mix.Error, ~r/unknown --format dot/, fn ->
      run_task([path, "--format", "dot"])
    end
  end

  @tag :slow
  test "by mix in a subprocess: output and exit status", %{tmp_dir: tmp} do
    path = project(tmp, %{"broken.ex" => @broken})
    {out, 1} = mix(["sandbox.compile", path])
    assert out =~ ~r/broken.ex:3:1: error: /

    {out, 0} = mix(["sandbox.compile", "examples/counter", "--format", "json"])
    json = out |> String.split("\n", trim: true) |> List.last()
    assert {:ok, %{"status" => "ok", "diagnostics" => []}} = Sandbox.TestJSON.decode(json)
  end

  defp mix(args) do
    System.cmd("mix", args, env: [{"MIX_ENV", "test"}], stderr_to_stdout: true, cd: @root)
  end
end
