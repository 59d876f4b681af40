defmodule Sandbox.CoverTest do
  # `mix test --cover` cover-compiles the project's modules; :code.which/1
  # then answers :cover_compiled, and the compile pool could not build a
  # worker's command line (so the application, and every test, failed to
  # start).
  use ExUnit.Case, async: true

  alias Sandbox.Test.Peer

  test "compile workers can be started when the library is cover-compiled" do
    peer = Peer.start!()
    worker = Sandbox.IsolatedCompiler.Worker
    {:ok, ^worker} = Peer.call(peer, :cover, :compile_beam, [worker])
    assert Peer.call(peer, :code, :which, [worker]) == :cover_compiled

    argv = Peer.call(peer, Sandbox.IsolatedCompiler.Pool, :worker_argv, [])
    # (By file name: this VM may be cover-compiled too, under `make cover`.)
    dir = ~c"#{worker}.beam" |> :code.where_is_file() |> List.to_string() |> Path.dirname()

    assert ["-pa", ^dir, "-s", "Elixir.Sandbox.IsolatedCompiler.Worker", "main"] =
             Enum.take(argv, -5)

    # And the application starts (its pool builds workers with that argv).
    assert {:ok, _} = Peer.call(peer, Application, :ensure_all_started, [:sandbox])
  end

  @tag :slow
  @tag :tmp_dir
  @tag timeout: 600_000
  test "mix test --cover runs a suite that uses sandboxes", %{tmp_dir: tmp} do
    file = Path.join(tmp, "cover_probe_test.exs")

    File.write!(file, """
    defmodule CoverProbeTest do
      use Sandbox.Case, async: true
      @moduletag sandbox: [path: #{inspect(Path.expand("../../examples/counter", __DIR__))}]
      test "a sandbox under cover", %{sandbox: id} do
        assert {:ok, 1} = Sandbox.call(id, Counter, :increment, [])
      end
    end
    """)

    {out, _status} =
      System.cmd("mix", ["test", "--cover", file],
        env: [{"MIX_ENV", "test"}],
        stderr_to_stdout: true,
        cd: Path.expand("../..", __DIR__)
      )

    assert out =~ "1 test, 0 failures"
    assert out =~ ~r/\d+\.\d+% \| Sandbox.IsolatedCompiler\n/
  end
end
