defmodule Sandbox.IsolatedCompilerTestHelpers do
  @moduledoc false
  # Shared by the isolated compiler's test modules: a private pool and cache
  # per test module, fixture paths and scratch directories.

  import ExUnit.Callbacks, only: [start_supervised!: 1, on_exit: 1]

  alias Sandbox.IsolatedCompiler.{Cache, Pool}

  @fixtures Path.expand("../fixtures/compiler", __DIR__)

  def fixture(name), do: Path.join(@fixtures, name)

  @doc "A fresh scratch directory, removed when the test exits."
  def tmp_dir!(label) do
    dir =
      Path.join(
        System.tmp_dir!(),
        "sandbox-ic-test-#{label}-#{System.unique_integer([:positive])}"
      )

    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  @doc "Copies a fixture into a scratch directory (for tests that edit it)."
  def copy_fixture!(name) do
    dir = tmp_dir!(name)
    File.cp_r!(fixture(name), dir)
    dir
  end

  @doc """
  Starts a private pool (one worker) and cache for the calling test and
  returns the options that route compiles through them.
  """
  def private_compiler!(label, size \\ 1) do
    pool = :"#{label}_pool_#{System.unique_integer([:positive])}"
    cache = :"#{label}_cache_#{System.unique_integer([:positive])}"
    start_supervised!({Cache, name: cache, dir: tmp_dir!("#{label}-cache")})
    start_supervised!({Pool, name: pool, size: size})
    [pool: pool, cache_server: cache, artifacts_dir: tmp_dir!("#{label}-artifacts")]
  end

  @doc "Loads compiled modules into this VM, unloading them when the test exits."
  def load_modules!(modules) do
    for {module, beam} <- modules do
      {:module, ^module} = :code.load_binary(module, ~c"#{module}.beam", beam)
    end

    on_exit(fn ->
      for {module, _} <- modules do
        :code.purge(module)
        :code.delete(module)
        :code.purge(module)
      end
    end)

    :ok
  end

  def module_names(info), do: info.modules |> Enum.map(&elem(&1, 0)) |> Enum.sort()

  def jobs(pool), do: Pool.stats(pool).jobs
end
