defmodule SomeHostLibrary do
  # A host library no operation class names. It must exist in the host: a
  # call to a module that exists nowhere is a phantom, relocated into the
  # sandbox's namespace (Sandbox.RuntimeCode), not a call into the host.
  @moduledoc false
  def call(_arg \\ nil), do: :ok
end

defmodule Sandbox.Security.StaticTest do
  # Calls a profile forbids are refused when the code is loaded.
  use ExUnit.Case, async: true

  import Sandbox.Test.SecurityFixtures

  @moduletag :tmp_dir
  # Dozens of creates of fresh projects, each compiled (confined and not) by
  # the shared worker pool, which the whole suite contends for.
  @moduletag timeout: 300_000

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    id = "sec#{hash}"

    on_exit(fn ->
      for %{id: sid} <- Sandbox.list_sandboxes(),
          String.starts_with?(sid, id),
          do: Sandbox.destroy_sandbox(sid)
    end)

    %{ns: "Sec#{hash}", id: id}
  end

  defp project!(ctx, name, opts),
    do: write(Path.join(ctx.tmp_dir, name), "#{ctx.ns}#{Macro.camelize(name)}", opts)

  defp create(ctx, name, dir, profile) do
    ns = "#{ctx.ns}#{Macro.camelize(name)}"

    Sandbox.create_sandbox("#{ctx.id}#{name}", sup(ns),
      sandbox_path: dir,
      security_profile: profile
    )
  end

  @tag :slow
  test ":erlang.halt/0 stops a VM under :low, and is refused under :medium and :high", ctx do
    dir = project!(ctx, "halt", init: ":erlang.halt()")

    # The attack is real: in a peer node, under :low, the sandbox stops the VM.
    peer =
      Sandbox.Test.Peer.start!(apps: [:sandbox], args: [~c"-kernel", ~c"logger_level", ~c"error"])

    assert {:down, _} =
             Sandbox.Test.Peer.call_or_down(peer, Sandbox, :create_sandbox, [
               "halt",
               sup("#{ctx.ns}Halt"),
               [sandbox_path: dir, security_profile: :low]
             ])

    # Here it is refused, naming the call, and nothing is left behind.
    for profile <- [:medium, :high] do
      assert {:error, {:security_violation, [violation]}} = create(ctx, "halt", dir, profile)

      assert %{target: {:erlang, :halt, 0}, class: :all, caller: {caller, _, _}} = violation
      assert caller == Module.concat("#{ctx.ns}Halt", Worker)
    end

    assert Sandbox.Test.Fixtures.loaded_modules("#{ctx.id}halt") == []
  end

  test "each profile refuses what its classes lack", ctx do
    cases = [
      {"cmd", "def run, do: :os.cmd(~c\"true\")", [:low], [:medium, :high]},
      {"write", "def run, do: File.write(\"/tmp/x\", \"y\")", [:low], [:medium, :high]},
      {"read", "def run, do: File.read(\"/etc/hostname\")", [:low, :medium], [:high]},
      {"tcp", "def run, do: :gen_tcp.connect(~c\"localhost\", 1, [])", [:low, :medium], [:high]},
      {"listen", "def run, do: :gen_tcp.listen(0, [])", [:low], [:medium, :high]},
      {"pterm", "def run, do: :persistent_term.put(:x, 1)", [:low], [:medium, :high]},
      {"logger", "def run, do: Logger.configure(level: :none)", [:low], [:medium, :high]},
      {"flag", "def run, do: :erlang.system_flag(:schedulers_online, 1)", [:low],
       [:medium, :high]},
      {"host", "def run, do: SomeHostLibrary.call()", [:low], [:medium, :high]}
    ]

    for {name, code, allowed, refused} <- cases do
      dir = project!(ctx, name, code: code)

      for profile <- allowed do
        assert {:ok, _} = create(ctx, name, dir, profile), "#{name} under #{profile}"
        :ok = Sandbox.destroy_sandbox("#{ctx.id}#{name}")
      end

      for profile <- refused do
        assert {:error, {:security_violation, [%{target: {m, f, _}}]}} =
                 create(ctx, name, dir, profile),
               "#{name} under #{profile}"

        assert is_atom(m) and is_atom(f)
      end
    end
  end

  test "a restricted module is refused, an allowed one admitted, whatever their class", ctx do
    dir = project!(ctx, "maps", code: "def run, do: SomeHostLibrary.call(Enum.sum([1]))")

    assert {:error,
            {:security_violation, [%{target: {SomeHostLibrary, :call, 1}, class: :unclassified}]}} =
             create(ctx, "maps", dir, :medium)

    assert {:ok, _} = create(ctx, "maps", dir, %{allowed_modules: [SomeHostLibrary]})
    :ok = Sandbox.destroy_sandbox("#{ctx.id}maps")

    assert {:error, {:security_violation, [%{target: {Enum, :sum, 1}, class: :restricted}]}} =
             create(ctx, "maps", dir, %{
               allowed_modules: [SomeHostLibrary],
               restricted_modules: [Enum]
             })
  end

  test "a reload that adds a forbidden call is refused; the old code keeps running", ctx do
    dir = project!(ctx, "reload", code: "def run, do: :ok")
    assert {:ok, _} = create(ctx, "reload", dir, :medium)
    id = "#{ctx.id}reload"
    code = Module.concat("#{ctx.ns}Reload", Code)

    evil = "defmodule #{inspect(code)} do\n def run, do: :init.stop()\nend\n"

    assert {:error, {:security_violation, [%{target: {:init, :stop, 0}}]}} =
             Sandbox.hot_reload_source(id, {:code, evil})

    assert Sandbox.call(id, code, :run, []) == {:ok, :ok}
    assert Sandbox.get_current_version(id, code) == {:ok, 1}
  end

  test "scan/2 reports what a create would refuse and what it guards", ctx do
    dir =
      project!(ctx, "scan",
        code: """
        def a, do: :os.cmd(~c"ls")
        def b, do: :ets.insert(:t, {1})
        def c, do: Enum.map([1], & &1)
        """
      )

    assert {:ok, %{violations: [violation], guarded: guarded}} =
             Sandbox.SecurityController.scan(dir, :high)

    code = Module.concat("#{ctx.ns}Scan", Code)
    assert %{target: {:os, :cmd, 1}, class: :all, caller: {^code, _, _}} = violation
    assert Enum.any?(guarded, &match?(%{target: {:ets, :insert, 2}, class: :basic_otp}, &1))

    assert {:ok, %{violations: [], guarded: []}} = Sandbox.SecurityController.scan(dir, :low)
    assert {:error, {:invalid_option, _}} = Sandbox.SecurityController.scan(dir, :bogus)
  end

  # The guard takes dynamic calls of up to Sandbox.Guard.max_dynamic_arity()
  # arguments: wider ones are refused at load, in every profile, naming
  # the site; as wide as the guard takes, they run.
  test "a dynamic call wider than the guard takes is refused at load", ctx do
    max = Sandbox.Guard.max_dynamic_arity()
    xs = fn n -> Enum.map_join(1..n, ", ", fn _ -> "x" end) end

    wide = """
    def a(m, x), do: m.f(#{xs.(max + 1)})
    def b(fun, x), do: fun.(#{xs.(max + 1)})
    """

    dir = project!(ctx, "wide", code: wide)
    code = Module.concat("#{ctx.ns}Wide", Code)

    for profile <- [:low, :medium, :high] do
      assert {:error, {:dynamic_call_too_wide, sites}} = create(ctx, "wide", dir, profile)

      assert [
               %{caller: {^code, :a, 2}, kind: :apply, arity: arity, line: line},
               %{caller: {^code, :b, 2}, kind: :call_fun, arity: arity}
             ] = Enum.sort_by(sites, & &1.caller)

      assert arity == max + 1 and is_integer(line)
    end

    assert Sandbox.Test.Fixtures.loaded_modules("#{ctx.id}wide") == []

    fits = """
    def a(m, x), do: m.f(#{xs.(max)})
    def b(fun, x), do: fun.(#{xs.(max)})
    def f(#{xs.(max) |> String.replace("x", "_")}), do: :apply
    def run, do: {a(__MODULE__, 1), b(fn #{xs.(max) |> String.replace("x", "_")} -> :fun end, 1)}
    """

    dir = project!(ctx, "fits", code: fits)
    assert {:ok, _} = create(ctx, "fits", dir, :high)

    assert Sandbox.call("#{ctx.id}fits", Module.concat("#{ctx.ns}Fits", Code), :run, []) ==
             {:ok, {:apply, :fun}}
  end
end
