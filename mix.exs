defmodule Mix.Tasks.Compile.SandboxNative do
  @moduledoc """
  Builds the project's native code (the NIF library and the supervising C-node)
  by running `make native` with the Erlang include and library paths of the
  running VM. Raises `Mix.Error` when the build fails.
  """
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    env = [
      {"ERTS_INCLUDE_DIR", erts_include_dir()},
      {"ERL_EI_INCLUDE_DIR", List.to_string(:code.lib_dir(:erl_interface, :include))},
      {"ERL_EI_LIBDIR", List.to_string(:code.lib_dir(:erl_interface, :lib))},
      {"MIX_APP_PATH", Mix.Project.app_path()}
    ]

    make = System.get_env("MAKE", "make")

    case System.cmd(make, ["--no-print-directory", "native"],
           env: env,
           stderr_to_stdout: true,
           into: IO.stream(:stdio, :line)
         ) do
      {_, 0} -> {:ok, []}
      {_, status} -> Mix.raise("`#{make} native` failed with exit status #{status}")
    end
  end

  defp erts_include_dir do
    Path.join([
      List.to_string(:code.root_dir()),
      "erts-#{:erlang.system_info(:version)}",
      "include"
    ])
  end
end

defmodule Sandbox.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :sandbox,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:sandbox_native] ++ Mix.compilers(),
      erlc_paths: ["src"],
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      # A sandbox's implementation of a host protocol can only be dispatched to
      # by an unconsolidated protocol (see DESIGN "Protocols"): the test,
      # bench and demo environments do not consolidate.
      consolidate_protocols: Mix.env() not in [:test, :bench, :demo],
      deps: [],
      docs: [main: "Sandbox"],
      test_coverage: test_coverage()
    ]
  end

  # `make cover` (mix test --cover): per-module figures of the library.
  # Left out: the test suite's own support modules, and the modules that
  # never run in this VM's cover-compiled form — the compile worker (it runs
  # in worker VMs) and the shims (each sandbox loads its own relocated copy
  # of the plain .beam) — whose tests exercise them all the same.
  defp test_coverage do
    [
      summary: [threshold: 70],
      ignore_modules: [
        Sandbox.IsolatedCompiler.Worker,
        Sandbox.Shim.Application,
        Sandbox.Shim.ErlApplication,
        Sandbox.Test.BeamHelpers,
        Sandbox.CNodeHelpers,
        Sandbox.Test.CollectFormatter,
        Sandbox.IsolatedCompilerTestHelpers,
        Sandbox.Test.Peer,
        Sandbox.Test.ReloadFixtures,
        Sandbox.Test.Fixtures,
        Sandbox.Test.TelemetrySink,
        Sandbox.TestJSON,
        Sandbox.Test.WatchFixtures
      ]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {Sandbox.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
