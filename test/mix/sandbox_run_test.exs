defmodule Mix.Tasks.Sandbox.RunTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.WatchFixtures

  @moduletag :tmp_dir

  test "refuses a bad path or arguments (Mix.Error)", ctx do
    assert_raise Mix.Error, ~r/no such directory/, fn ->
      Mix.Tasks.Sandbox.Run.run([Path.join(ctx.tmp_dir, "none")])
    end

    assert_raise Mix.Error, ~r/expected one PATH/, fn -> Mix.Tasks.Sandbox.Run.run([]) end
    assert_raise OptionParser.ParseError, fn -> Mix.Tasks.Sandbox.Run.run(["x", "--bogus"]) end
  end

  test "--help prints the documentation" do
    out = ExUnit.CaptureIO.capture_io(fn -> Mix.Tasks.Sandbox.Run.run(["--help"]) end)
    assert out =~ "mix sandbox.run PATH [--target APP_OR_MODULE] [--id ID] [--watch]"
  end

  test "formats compile errors as file:line: message" do
    reason = {:compilation_failed, [%{file: "lib/a.ex", line: 3, message: "boom"}]}
    assert Mix.Tasks.Sandbox.Run.format_reason(reason) == "compilation failed\nlib/a.ex:3: boom"
  end

  @tag :slow
  test "mix sandbox.run --watch in a subprocess: runs, prints reloads and errors", ctx do
    ns = "MixRun#{System.unique_integer([:positive])}"
    dir = write_project(Path.join(ctx.tmp_dir, "proj"), ns, :mix_run_app)
    mix = System.find_executable("mix")

    port =
      Port.open({:spawn_executable, mix}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["sandbox.run", dir, "--watch", "--id", "mixrun"],
        cd: File.cwd!(),
        env: [{~c"MIX_ENV", ~c"test"}]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    on_exit(fn -> System.cmd("kill", ["-9", Integer.to_string(os_pid)]) end)

    assert read_until(port, "sandbox mixrun running :mix_run_app, watching") =~ "running"

    File.write!(Path.join(dir, "lib/server.ex"), server(ns, 2))
    assert read_until(port, "reloaded: #{ns}.Server") =~ "reloaded"

    File.write!(Path.join(dir, "lib/server.ex"), "defmodule #{ns}.Server do\n  def x, do:\n")
    out = read_until(port, "lib/server.ex:")
    assert out =~ "reload failed: compilation failed"
  end

  @tag :slow
  test "exits with status 1 when the sandbox cannot start (subprocess)", ctx do
    dir = Path.join(ctx.tmp_dir, "plain")
    File.mkdir_p!(dir)
    File.write!(Path.join(dir, "a.ex"), "defmodule MixRunPlain do end")
    mix = System.find_executable("mix")

    {out, status} =
      System.cmd(mix, ["sandbox.run", dir, "--target", "Nope.Sup"],
        env: [{"MIX_ENV", "test"}],
        stderr_to_stdout: true
      )

    assert status == 1
    assert out =~ "could not start: {:unknown_module_or_app, Nope.Sup}"
  end

  defp read_until(port, text, acc \\ "") do
    if String.contains?(acc, text) do
      acc
    else
      receive do
        {^port, {:data, data}} -> read_until(port, text, acc <> data)
        {^port, {:exit_status, status}} -> flunk("mix exited (#{status}):\n#{acc}")
      after
        60_000 -> flunk("no #{inspect(text)} within 60 s:\n#{acc}")
      end
    end
  end
end
