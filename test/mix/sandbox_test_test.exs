defmodule Mix.Tasks.Sandbox.TestTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures, only: [project: 2]

  @moduletag :tmp_dir
  @moduletag :slow

  defp lib_project(dir, app, ns, failing?) do
    project(dir, %{
      "mix.exs" => """
      defmodule #{ns}.MixProject do
        use Mix.Project
        def project, do: [app: #{inspect(app)}, version: "0.1.0", elixirc_paths: elixirc_paths(Mix.env())]
        def application, do: [env: [factor: 3]]
        defp elixirc_paths(:test), do: ["lib", "test/support"]
        defp elixirc_paths(_), do: ["lib"]
      end
      """,
      "lib/calc.ex" => """
      defmodule #{ns}.Calc do
        @moduledoc "Arithmetic."

        @doc \"\"\"
        Triples.

            iex> #{ns}.Calc.triple(2)
            6
        \"\"\"
        def triple(x), do: x * Application.fetch_env!(#{inspect(app)}, :factor)
      end
      """,
      "test/support/helper.ex" => """
      defmodule #{ns}.TestHelper do
        def two, do: 2
      end
      """,
      "test/test_helper.exs" => "ExUnit.start()\n",
      "test/calc_test.exs" => """
      defmodule #{ns}.CalcTest do
        use ExUnit.Case, async: true
        doctest #{ns}.Calc
        test "triples", do: assert(#{ns}.Calc.triple(#{ns}.TestHelper.two()) == 6)
        #{if failing?, do: failing_test(ns), else: ""}
      end
      """
    })
  end

  defp failing_test(ns), do: "test \"fails\", do: assert(#{ns}.Calc.triple(1) == 4)"

  defp mix_sandbox_test(dir, extra \\ []) do
    System.cmd(System.find_executable("mix"), ["sandbox.test", dir] ++ extra,
      env: [{"MIX_ENV", "test"}],
      stderr_to_stdout: true
    )
  end

  test "runs a project's suite with its doctests; a failure is exit status 1", ctx do
    ns = "StOk#{:erlang.phash2(ctx.test)}"
    dir = lib_project(Path.join(ctx.tmp_dir, "ok"), :st_ok_app, ns, false)
    {out, status} = mix_sandbox_test(dir, ["--", "--seed", "0"])
    assert status == 0, out
    assert out =~ "1 doctest, 1 test, 0 failures"

    ns = "StBad#{:erlang.phash2(ctx.test)}"
    dir = lib_project(Path.join(ctx.tmp_dir, "bad"), :st_bad_app, ns, true)
    {out, status} = mix_sandbox_test(dir)
    assert status == 1
    assert out =~ "1 doctest, 2 tests, 1 failure"
    assert out =~ "fails"
  end

  test "a project that does not compile: exit status 1 with the diagnostics", ctx do
    dir =
      project(Path.join(ctx.tmp_dir, "broken"), %{
        "mix.exs" =>
          "defmodule StBroken.MixProject do\n use Mix.Project\n def project, do: [app: :st_broken, version: \"0.1.0\"]\nend\n",
        "lib/a.ex" => "defmodule StBroken.A do\n def x, do: \nend\n"
      })

    {out, status} = mix_sandbox_test(dir)
    assert status == 1
    assert out =~ "cannot test"
    assert out =~ "lib/a.ex:"
  end
end
