defmodule Mix.Tasks.Sandbox.ScanTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO
  import Sandbox.Test.SecurityFixtures

  @moduletag :tmp_dir

  defp project!(ctx, code) do
    ns = "Scan#{:erlang.phash2(ctx.test)}"
    {write(Path.join(ctx.tmp_dir, "p"), ns, code: code), ns}
  end

  test "text: prints refused and guarded sites; exits 1 when something is refused", ctx do
    {dir, ns} = project!(ctx, "def a, do: :os.cmd(~c\"ls\")\ndef b, do: :ets.insert(:t, {1})")

    output =
      capture_io(fn ->
        assert catch_exit(Mix.Tasks.Sandbox.Scan.run([dir, "--profile", "high"])) ==
                 {:shutdown, 1}
      end)

    assert output =~ "refused: #{ns}.Code"
    assert output =~ ":os.cmd/1 [all]"
    assert output =~ "guarded: #{ns}.Code"
    assert output =~ ":ets.insert/2 [basic_otp]"
    assert output =~ "1 refused"

    clean = capture_io(fn -> Mix.Tasks.Sandbox.Scan.run([dir, "--profile", "low"]) end)
    assert clean =~ "0 refused, 0 guarded under :low"
  end

  test "bad arguments raise Mix.Error", ctx do
    assert_raise Mix.Error, ~r/expected one PATH/, fn -> Mix.Tasks.Sandbox.Scan.run([]) end

    assert_raise Mix.Error, ~r/no such directory/, fn ->
      Mix.Tasks.Sandbox.Scan.run(["/no/such"])
    end

    assert_raise Mix.Error, ~r/--profile/, fn ->
      Mix.Tasks.Sandbox.Scan.run([ctx.tmp_dir, "--profile", "extreme"])
    end

    assert_raise Mix.Error, ~r/unknown --format/, fn ->
      Mix.Tasks.Sandbox.Scan.run([ctx.tmp_dir, "--format", "xml"])
    end
  end

  # The caller's function needs the relocator's call-site decoder.
  @tag :slow
  test "json, by mix in a subprocess: the report and exit status 1", ctx do
    {dir, ns} = project!(ctx, "def a, do: System.cmd(\"ls\", [])")

    {out, status} =
      System.cmd(System.find_executable("mix"), ["sandbox.scan", dir, "--format", "json"],
        env: [{"MIX_ENV", "test"}]
      )

    assert status == 1
    json = out |> String.split("\n", trim: true) |> List.last()
    assert {:ok, report} = Sandbox.TestJSON.decode(json)
    assert report["profile"] == "medium"

    assert [
             %{
               "caller" => [caller, "a", 0],
               "target" => ["Elixir.System", "cmd", 2],
               "class" => "all"
             }
           ] = report["violations"]

    assert caller == "Elixir.#{ns}.Code"
  end
end
