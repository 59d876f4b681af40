defmodule Sandbox.RuntimeCodeTest do
  # Modules created at run time live in the sandbox's namespace (issue 17,
  # Sandbox.RuntimeCode): a library shaped like NimbleCSV.define/2, and
  # Module.create/3, Code.compile_string/2, Code.compile_quoted/1 and
  # :code.load_binary/3 called from sandbox code.
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures, only: [loaded_modules: 1]
  import Sandbox.Test.AtomFixtures

  alias Sandbox.Test.Peer

  @fixture Path.expand("../fixtures/runtime_code", __DIR__)

  defp create(ctx, suffix, profile) do
    id = "rt#{:erlang.phash2(ctx.test)}#{suffix}"
    on_exit(fn -> Sandbox.destroy_sandbox(id) end)

    {:ok, _} =
      Sandbox.create_sandbox(id, RtApp.Sup, sandbox_path: @fixture, security_profile: profile)

    id
  end

  defp host_has?(module), do: :code.is_loaded(module) != false

  # A call that may compile in a worker (seconds on a loaded machine; the
  # default call timeout is 5 s).
  defp call(id, m, f, args), do: Sandbox.call(id, m, f, args, timeout: 60_000)

  # A BEAM of `module` (exporting value/0 -> value), compiled from Erlang
  # forms and never loaded here.
  defp beam(module, value) do
    forms = [
      {:attribute, 1, :module, module},
      {:attribute, 1, :export, [value: 0]},
      {:function, 1, :value, 0, [{:clause, 1, [], [], [:erl_parse.abstract(value)]}]}
    ]

    {:ok, ^module, bin} = :compile.forms(forms, [:binary])
    bin
  end

  test "without protection a module defined at run time is host-global (the attack, in a peer)" do
    # The library relocated as a sandbox's code was before run-time code
    # was guarded: renames only. Loaded into a peer VM, its run-time
    # defmodule puts RtApp.Parser into that VM's global namespace.
    {:ok, info} = Sandbox.IsolatedCompiler.compile_sandbox(@fixture, write_artifacts: false)
    beams = Enum.map(info.modules, &elem(&1, 1))
    parsed = Enum.map(beams, &elem(Sandbox.Beam.parse(&1), 1))
    {:ok, renames} = Sandbox.Beam.rename_map("plain", parsed)
    peer = Peer.start!(apps: [:elixir])

    for beam <- beams do
      {:ok, bin} = Sandbox.Beam.relocate(beam, renames)
      {:ok, %{module: name}} = Sandbox.Beam.parse(bin)
      {:module, ^name} = Peer.call(peer, :code, :load_binary, [name, ~c"x.beam", bin])
    end

    app = renames[RtApp]
    refute Peer.call(peer, :code, :is_loaded, [RtApp.Parser])
    assert Peer.call(peer, app, :define_and_parse, [",", "a,b"]) == ["a", "b"]
    # The breach: host-global, callable by anyone in that VM.
    assert {:file, _} = Peer.call(peer, :code, :is_loaded, [RtApp.Parser])
    assert Peer.call(peer, RtApp.Parser, :parse, ["x,y"]) == ["x", "y"]
  end

  test "a library's run-time defmodule: each sandbox gets its own module, the host none, destroy leaves nothing",
       ctx do
    before = MapSet.new(:code.all_loaded(), &elem(&1, 0))
    a = create(ctx, "a", :medium)
    b = create(ctx, "b", :low)
    refute host_has?(RtApp.Parser)

    # Before b defines it, b's static call reaches no one's module.
    assert {:error, {:exception, %UndefinedFunctionError{}, _}} = call(b, RtApp, :parse, ["1;2"])

    assert {:ok, ["a", "b"]} = call(a, RtApp, :define_and_parse, [",", "a,b"])
    # Not in the host, not in b.
    refute host_has?(RtApp.Parser)

    assert {:error, {:exception, %UndefinedFunctionError{}, _}} = call(b, RtApp, :parse, ["1;2"])

    assert {:ok, false} = call(b, RtApp, :parser_loaded?, [])
    assert {:ok, ["1", "2"]} = call(b, RtApp, :define_and_parse, [";", "1;2"])

    # Independent modules: static, dynamic, from either sandbox.
    assert {:ok, ["x", "y"]} = call(a, RtApp, :parse, ["x,y"])
    assert {:ok, ["x,y"]} = call(b, RtApp, :parse, ["x,y"])
    assert {:ok, ["p", "q"]} = call(a, RtApp, :dynamic_parse, ["p,q"])
    assert {:ok, ["p", "q"]} = call(b, RtApp, :dynamic_parse, ["p;q"])
    refute host_has?(RtApp.Parser)

    # A module of each sandbox, relocated, versioned, listed.
    for id <- [a, b] do
      assert host_has?(Sandbox.module_name(id, RtApp.Parser))
      assert {:ok, 1} = Sandbox.get_current_version(id, RtApp.Parser)
      assert {:ok, graph} = Sandbox.get_dependency_graph(id)
      assert Map.has_key?(graph, RtApp.Parser)
    end

    # Defined again: the next version, with the new body.
    assert {:ok, ["1", "2"]} = call(a, RtApp, :define_and_parse, ["|", "1|2"])
    assert {:ok, 2} = Sandbox.get_current_version(a, RtApp.Parser)

    for id <- [a, b] do
      assert :ok = Sandbox.destroy_sandbox(id)
      assert loaded_modules(id) == []
    end

    now = MapSet.new(:code.all_loaded(), &elem(&1, 0))

    left =
      for m <- MapSet.difference(now, before), String.contains?(Atom.to_string(m), "Rt"), do: m

    assert left == []
  end

  test "Module.create/3, Code.compile_string/2, Code.compile_quoted/1 and :code.load_binary/3",
       ctx do
    id = create(ctx, "", :medium)
    created = Sandbox.module_name(id, RtApp.Created)

    # Module.create/3: the sandbox's macro expands in the worker.
    assert {:ok, {:module, ^created, beam, _result}} = call(id, RtApp, :create, [:t1])
    assert {:ok, %{module: RtApp.Created}} = Sandbox.Beam.parse(beam)
    assert {:ok, {{:created, ^created}, :t1}} = call(id, RtApp, :call_created, [])
    refute host_has?(RtApp.Created)

    source = "defmodule RtApp.FromString do\n  def value, do: 42\nend\n"
    from_string = Sandbox.module_name(id, RtApp.FromString)
    assert {:ok, [{^from_string, _}]} = call(id, RtApp, :compile_string, [source])
    assert {:ok, 42} = call(id, RtApp, :call_from_string, [])
    refute host_has?(RtApp.FromString)

    from_quoted = Sandbox.module_name(id, RtApp.FromQuoted)
    assert {:ok, [{^from_quoted, _}]} = call(id, RtApp, :compile_quoted, [7])
    assert from_quoted.value() == 7
    refute host_has?(RtApp.FromQuoted)

    loaded = Sandbox.module_name(id, RtApp.Loaded)
    bin = beam(RtApp.Loaded, :loaded)
    assert {:ok, {:module, ^loaded}} = call(id, RtApp, :load_binary, [bin])
    assert {:ok, :loaded} = call(id, RtApp, :call_loaded, [])
    refute host_has?(RtApp.Loaded)

    # A BEAM of another module is refused, as the host's load_binary does.
    assert {:ok, {:error, :badarg}} = call(id, RtApp, :load_binary, [beam(RtApp.Other, :x)])

    # The new modules are classified like any other: a forbidden call inside
    # refuses the module.
    evil = "defmodule RtApp.Evil do\n  def boom, do: System.halt()\nend\n"

    assert {:error, {:exception, %Sandbox.SecurityError{reason: {:refused, [_ | _]}}, _}} =
             call(id, RtApp, :compile_string, [evil])

    refute host_has?(Sandbox.module_name(id, RtApp.Evil))
    refute host_has?(RtApp.Evil)

    # A compile error raises CompileError, as in the host.
    assert {:error, {:exception, %CompileError{}, _}} =
             call(id, RtApp, :compile_string, ["defmodule RtApp.Bad do def x, do: y end"])

    :ok = Sandbox.destroy_sandbox(id)
    assert loaded_modules(id) == []
  end

  test "a name looked up before its module existed reaches the module once created", ctx do
    id = create(ctx, "", :medium)

    assert {:ok, {false, true, ["a", "b"]}} = call(id, RtApp, :check_define_apply, [",", "a,b"])

    refute host_has?(RtApp.Later)
  end

  test ":high loads the library, refuses the call with Sandbox.SecurityError, loads nothing",
       ctx do
    id = create(ctx, "", :high)
    before = MapSet.new(:code.all_loaded(), &elem(&1, 0))

    assert {:error, {:exception, %Sandbox.SecurityError{class: :code_load}, _}} =
             call(id, RtApp, :define_and_parse, [",", "a,b"])

    now = MapSet.new(:code.all_loaded(), &elem(&1, 0))

    assert MapSet.difference(now, before) |> Enum.filter(&String.contains?(inspect(&1), "Rt")) ==
             []

    refute host_has?(RtApp.Parser)
    refute host_has?(Sandbox.module_name(id, RtApp.Parser))
  end

  test "the atoms run-time code brings are spent from the sandbox's atom budget", ctx do
    peer = Peer.start!(apps: [:elixir])
    victim = Peer.start!()
    id = create(ctx, "", :medium)
    key = String.to_atom(id)

    # Unprotected, a BEAM's atoms are all created where it is loaded.
    big = fresh_atoms_beam(peer, RtApp.Loaded, :value, 12_000)
    count = Peer.call(victim, :erlang, :system_info, [:atom_count])
    {:module, RtApp.Loaded} = Peer.call(victim, :code, :load_binary, [RtApp.Loaded, ~c"x", big])
    assert Peer.call(victim, :erlang, :system_info, [:atom_count]) - count >= 12_000

    # In the sandbox: 500 new atoms load, and are spent.
    left = Sandbox.Guard.Runtime.atoms_left(key)

    assert {:ok, {:module, _}} =
             call(id, RtApp, :load_binary, [fresh_atoms_beam(peer, RtApp.Loaded, :value, 500)])

    assert Sandbox.Guard.Runtime.atoms_left(key) <= left - 500

    # More than are left: refused before any is created.
    tag = System.unique_integer([:positive])
    big = fresh_atoms_beam(peer, RtApp.Loaded, :value, 12_000, tag)

    assert {:error, {:exception, %Sandbox.SecurityError{reason: {:atom_budget, _}}, _}} =
             call(id, RtApp, :load_binary, [big])

    assert existing_atoms(fresh_atom_names(tag, 12_000)) == 0
  end

  @tag :tmp_dir
  test "a module body runs confined: under :low it writes the host's files, under :medium it cannot",
       ctx do
    target = Path.join(ctx.tmp_dir, "written")

    source = fn name ->
      "defmodule RtApp.#{name} do\n  File.write!(#{inspect(target)}, \"x\")\n  def ok, do: :ok\nend\n"
    end

    low = create(ctx, "low", :low)
    assert {:ok, [_]} = call(low, RtApp, :compile_string, [source.("WriterLow")])
    assert File.read!(target) == "x"
    File.rm!(target)

    medium = create(ctx, "med", :medium)

    # (Landlock is there: the confinement tests require it.)
    assert {:error, {:exception, _, _}} =
             call(medium, RtApp, :compile_string, [source.("WriterMed")])

    refute File.exists?(target)
  end

  test "a module named like the sandbox's guard or shims is refused", ctx do
    id = create(ctx, "", :medium)
    {:ok, guard} = Sandbox.Beam.relocated_name(id, Sandbox.Guard)
    exports = guard.module_info(:exports)

    for name <- ["Sandbox.Guard", "Sandbox.Shim.Application"] do
      source = "defmodule #{name} do\n  def x, do: :x\nend\n"

      assert {:error, {:exception, %RuntimeError{message: message}, _}} =
               call(id, RtApp, :compile_string, [source])

      assert message =~ "reserved"
    end

    assert guard.module_info(:exports) == exports
  end
end
