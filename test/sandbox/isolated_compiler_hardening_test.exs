defmodule Sandbox.IsolatedCompilerHardeningTest do
  # The compile worker runs the project's code: what it hands back, and what
  # it can see of the host, is hostile territory.
  use ExUnit.Case, async: true

  import Sandbox.IsolatedCompilerTestHelpers
  import Sandbox.Test.AtomFixtures, only: [existing_atoms: 1]

  alias Sandbox.IsolatedCompiler
  alias Sandbox.IsolatedCompiler.{Cache, Pool}

  setup_all do
    {:ok, opts: private_compiler!(:ich, 2)}
  end

  defp project!(label, files) do
    dir = tmp_dir!(label)

    for {path, contents} <- files do
      File.mkdir_p!(Path.dirname(Path.join(dir, path)))
      File.write!(Path.join(dir, path), contents)
    end

    dir
  end

  defp mix_project(app, extra) do
    Map.merge(
      %{
        "mix.exs" => """
        defmodule #{Macro.camelize(Atom.to_string(app))}.MixProject do
          use Mix.Project
          def project, do: [app: #{inspect(app)}, version: "0.1.0"]
        end
        """
      },
      extra
    )
  end

  describe "options" do
    test "unknown options and wrong types raise; the seed's memory_limit is honoured",
         %{opts: opts} do
      dir = project!("opts", %{"a.ex" => "defmodule OptsA do end"})

      for bad <- [
            [bogus_option: 42],
            [incremental: :yes],
            [validate_beams: 1],
            [max_new_atoms: -1],
            [memory_limit: 0],
            [:not_a_pair]
          ] do
        assert_raise ArgumentError, fn -> IsolatedCompiler.compile_sandbox(dir, bad ++ opts) end
      end

      # One byte of memory: the worker is over its limit at once.
      assert {:error, {:compile_resource_limit, :memory}} =
               IsolatedCompiler.compile_sandbox(dir, [memory_limit: 1, cache: false] ++ opts)
    end
  end

  describe "the worker's environment" do
    test "holds the minimal set, not the host's variables", %{opts: opts} do
      # Read at compile time, both through the VM and from the kernel's copy.
      dir =
        project!("env", %{
          "env.ex" => """
          defmodule EnvProbe do
            @vm System.get_env() |> Map.keys() |> Enum.sort()
            @os "/proc/self/environ" |> File.read!() |> String.split(<<0>>, trim: true)
                |> Enum.map(&hd(String.split(&1, "=", parts: 2))) |> Enum.sort()
            def vm, do: @vm
            def os, do: @os
          end
          """
        })

      System.put_env("SANDBOX_TEST_SECRET", "s3cret")
      on_exit(fn -> System.delete_env("SANDBOX_TEST_SECRET") end)

      assert {:ok, info} =
               IsolatedCompiler.compile_sandbox(
                 dir,
                 [cache: false, env: %{"JOB_VAR" => "1"}] ++ opts
               )

      load_modules!(info.modules)
      allowed = Map.keys(Pool.base_env()) ++ ["JOB_VAR"]
      # erl's start script (a shell script) exports these before the VM boots.
      erl_own = ~w(BINDIR ROOTDIR EMU PROGNAME PWD)

      assert apply(EnvProbe, :vm, []) -- allowed == []
      assert "JOB_VAR" in apply(EnvProbe, :vm, [])
      assert apply(EnvProbe, :os, []) -- (allowed ++ erl_own) == []

      # The host has more than that (the variable set above at least).
      assert Map.keys(System.get_env()) -- (allowed ++ erl_own) != []
    end
  end

  describe "the worker's limits" do
    test "its hard file-size limit is the pool's ceiling, its soft one the job's", %{opts: opts} do
      dir =
        project!("limits", %{
          "l.ex" => """
          defmodule LimitsProbe do
            @limits "/proc/self/limits" |> File.read!() |> String.split("\\n")
                    |> Enum.find(&String.starts_with?(&1, "Max file size"))
                    |> String.split() |> Enum.slice(3, 2)
            def limits, do: @limits
          end
          """
        })

      # above the floor the JIT needs (64 MiB)
      limits = %{max_file_size: 96 * 1024 * 1024}

      assert {:ok, info} =
               IsolatedCompiler.compile_sandbox(
                 dir,
                 [cache: false, compile_limits: limits] ++ opts
               )

      load_modules!(info.modules)
      [soft, hard] = apply(LimitsProbe, :limits, [])
      assert String.to_integer(soft) == 96 * 1024 * 1024
      assert String.to_integer(hard) == Pool.ceiling().file_size

      assert_raise ArgumentError, ~r/ceiling/, fn ->
        IsolatedCompiler.compile_sandbox(dir,
          compile_limits: %{max_file_size: Pool.ceiling().file_size + 1}
        )
      end
    end
  end

  describe "the worker's result" do
    # config/config.exs runs in the worker; what it configures comes back.
    # A project whose config holds `n` atoms named `prefix` and a number.
    defp atom_flood!(prefix, n) do
      project!(
        "flood",
        mix_project(:flood, %{
          "lib/flood.ex" => "defmodule Flood do end",
          "config/config.exs" => """
          import Config
          config :flood, atoms: for(i <- 1..#{n}, do: :"#{prefix}\#{i}")
          """
        })
      )
    end

    defp existing(prefix, n), do: existing_atoms(for(i <- 1..n, do: "#{prefix}#{i}"))

    test "cannot flood the host's atom table", %{opts: opts} do
      n = 60_000

      # Without a budget the attack is real: every atom lands in this VM.
      prefix = "flood_#{System.unique_integer([:positive])}_"
      assert existing(prefix, n) == 0

      assert {:ok, info} =
               IsolatedCompiler.compile_sandbox(
                 atom_flood!(prefix, n),
                 [cache: false, max_new_atoms: :infinity] ++ opts
               )

      assert length(info.config[:flood][:atoms]) == n
      assert existing(prefix, n) == n

      # With the default budget (50,000) it is refused, and creates none.
      prefix = "flood_#{System.unique_integer([:positive])}_"

      assert {:error, {:worker_crashed, {:bad_result, {:too_many_atoms, 50_000}}}} =
               IsolatedCompiler.compile_sandbox(atom_flood!(prefix, n), [cache: false] ++ opts)

      assert existing(prefix, n) == 0
    end
  end

  describe "incremental compiles" do
    test "incremental: true finds what changed since the last build", %{opts: opts} do
      dir =
        project!("inc", %{
          "a.ex" => "defmodule IncA do def v, do: 1 end",
          "b.ex" => "defmodule IncB do def v, do: 1 end"
        })

      opts = [incremental: true] ++ opts
      assert {:ok, first} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert module_names(first) == [IncA, IncB]

      assert {:ok, same} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert same.modules == [] and same.removed_modules == []

      File.write!(Path.join(dir, "a.ex"), "defmodule IncA do def v, do: 2 end")
      File.write!(Path.join(dir, "c.ex"), "defmodule IncC do def v, do: 1 end")
      File.rm!(Path.join(dir, "b.ex"))

      assert {:ok, next} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert module_names(next) == [IncA, IncC]
      assert next.removed_modules == [IncB]
      assert next.incremental

      assert {:ok, again} = IsolatedCompiler.compile_sandbox(dir, opts)
      assert again.modules == [] and again.removed_modules == []
    end

    test "two at once on one directory are serialised: neither loses the other's change",
         %{opts: opts} do
      dir =
        project!("serial", %{
          "a.ex" => "defmodule SerA do def v, do: 1 end",
          "b.ex" => "defmodule SerB do def v, do: 1 end"
        })

      assert {:ok, _} = IsolatedCompiler.compile_sandbox(dir, [cache: false] ++ opts)
      a = Path.join(dir, "a.ex")
      b = Path.join(dir, "b.ex")
      File.write!(a, "defmodule SerA do def v, do: 2 end")
      File.write!(b, "defmodule SerB do def v, do: 2 end")

      [{:ok, ra}, {:ok, rb}] =
        [a, b]
        |> Enum.map(&Task.async(fn -> IsolatedCompiler.incremental_compile(dir, [&1], opts) end))
        |> Enum.map(&Task.await(&1, 60_000))

      assert [{SerA, beam_a}] = ra.modules
      assert [{SerB, beam_b}] = rb.modules

      # (Builds are kept per confinement: confined where Landlock is available.)
      build =
        Cache.get_build(opts[:cache_server], {:dir, dir, :prod, true}) ||
          Cache.get_build(opts[:cache_server], {:dir, dir, :prod, false})

      assert build.modules[SerA] == beam_a
      assert build.modules[SerB] == beam_b
    end
  end
end
