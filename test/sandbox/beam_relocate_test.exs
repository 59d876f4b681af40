defmodule Sandbox.BeamRelocateTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.BeamHelpers

  alias Sandbox.Beam

  # A small application's worth of modules: a GenServer with a struct state,
  # an exception, a behaviour and its implementation, a protocol of its own
  # with an implementation, and an implementation of a host protocol. The
  # originals stay loaded, beside two relocated copies.
  @fixture ~S"""
  defmodule RelocFix.Point do
    defstruct x: 0, y: 0
  end

  defmodule RelocFix.Oops do
    defexception message: "oops"
  end

  defmodule RelocFix.Greeter do
    @callback greet(String.t()) :: String.t()
  end

  defmodule RelocFix.English do
    @behaviour RelocFix.Greeter
    @impl true
    def greet(name), do: "hello " <> name
  end

  defprotocol RelocFix.Shape do
    def area(shape)
  end

  defimpl RelocFix.Shape, for: RelocFix.Point do
    def area(%RelocFix.Point{x: x, y: y}), do: x * y
  end

  defimpl String.Chars, for: RelocFix.Point do
    def to_string(%RelocFix.Point{x: x, y: y}), do: "(#{x}, #{y})"
  end

  defmodule RelocFix.Server do
    use GenServer

    def start_link(start), do: GenServer.start_link(__MODULE__, start, name: __MODULE__)
    def get, do: GenServer.call(__MODULE__, :get)
    def move(dx), do: GenServer.call(__MODULE__, {:move, dx})
    def fail, do: raise(RelocFix.Oops)
    def greeting, do: apply(RelocFix.English, :greet, ["sandbox"])
    def fun_literal, do: &RelocFix.English.greet/1
    def data, do: %{counter: 1, point: :point, module: RelocFix.Point}

    @impl true
    def init(start), do: {:ok, %RelocFix.Point{x: start, y: 2}}
    @impl true
    def handle_call(:get, _from, state), do: {:reply, state, state}
    def handle_call({:move, dx}, _from, state) do
      state = %{state | x: state.x + dx}
      {:reply, {RelocFix.Shape.area(state), to_string(state)}, state}
    end
  end
  """

  setup_all do
    mods = Code.compile_string(@fixture)
    a = relocate_and_load(mods, "ta")
    b = relocate_and_load(mods, "tb")
    %{mods: mods, a: a, b: b}
  end

  test "relocated copies run side by side with the original", %{a: a, b: b} do
    # Fixture modules exist only at run time: call them through variables.
    server = RelocFix.Server
    {:ok, orig} = server.start_link(1)
    {:ok, pa} = a[RelocFix.Server].start_link(10)
    {:ok, pb} = b[RelocFix.Server].start_link(100)
    on_exit(fn -> for p <- [orig, pa, pb], do: Process.exit(p, :kill) end)

    assert Process.whereis(:"Elixir.Sandbox@ta.RelocFix.Server") == pa
    assert Process.whereis(:"Elixir.Sandbox@tb.RelocFix.Server") == pb
    assert Process.whereis(RelocFix.Server) == orig

    point_a = a[RelocFix.Point]
    assert %{__struct__: ^point_a, x: 10, y: 2} = a[RelocFix.Server].get()
    assert a[RelocFix.Server].move(1) == {22, "(11, 2)"}
    assert b[RelocFix.Server].move(1) == {202, "(101, 2)"}
    assert server.move(1) == {4, "(2, 2)"}
    assert %{__struct__: RelocFix.Point, x: 2} = server.get()
  end

  test "module identity, exceptions, apply and fun literals are renamed", %{a: a} do
    server = a[RelocFix.Server]
    assert server.module_info(:module) == :"Elixir.Sandbox@ta.RelocFix.Server"
    oops = a[RelocFix.Oops]
    assert %{__struct__: ^oops, message: "oops"} = catch_error(server.fail())
    assert server.greeting() == "hello sandbox"
    fun = server.fun_literal()
    assert Function.info(fun, :module) == {:module, a[RelocFix.English]}
    assert fun.("x") == "hello x"
  end

  test "data atoms are untouched; own module atoms are renamed wherever they occur", %{a: a} do
    assert a[RelocFix.Server].data() == %{counter: 1, point: :point, module: a[RelocFix.Point]}
  end

  test "attributes: vsn kept, behaviours renamed when they are the sandbox's", ctx do
    %{a: a, mods: mods} = ctx
    server_attrs = a[RelocFix.Server].module_info(:attributes)
    assert server_attrs[:behaviour] == [GenServer]
    assert server_attrs[:vsn] == RelocFix.Server.module_info(:attributes)[:vsn]
    assert a[RelocFix.English].module_info(:attributes)[:behaviour] == [a[RelocFix.Greeter]]
    assert {_, _} = List.keyfind(mods, RelocFix.English, 0)
  end

  test "protocol implementations are named so that dispatch finds them", %{a: a} do
    assert a[String.Chars.RelocFix.Point] == :"Elixir.String.Chars.Sandbox@ta.RelocFix.Point"

    assert a[RelocFix.Shape.RelocFix.Point] ==
             :"Elixir.Sandbox@ta.RelocFix.Shape.Sandbox@ta.RelocFix.Point"

    point = struct(a[RelocFix.Point], x: 3, y: 4)
    assert to_string(point) == "(3, 4)"
    assert a[RelocFix.Shape].area(point) == 12
    # The original protocol does not dispatch to the sandbox's type.
    shape = RelocFix.Shape
    assert_raise Protocol.UndefinedError, fn -> shape.area(point) end
  end

  # Fixtures compiled inside `mix test` have neither Dbgi nor Docs (Mix
  # compiles with debug_info and docs off), so this uses a shipped module.
  test "debug_info: :keep rewrites Dbgi and Docs, :strip drops them" do
    {EEx.Engine, beam, _} = :code.get_object_code(EEx.Engine)
    renames = %{EEx.Engine => :"Elixir.Sandbox@tk.EEx.Engine"}
    {:ok, kept} = Beam.relocate(beam, renames)
    {:ok, stripped} = Beam.relocate(beam, renames, %{}, debug_info: :strip)

    assert {:debug_info_v1, _, {:elixir_v1, info, _}} = term_chunk(kept, "Dbgi")
    assert info.module == :"Elixir.Sandbox@tk.EEx.Engine"
    assert {:debug_info_v1, _, {:elixir_v1, %{module: EEx.Engine}, _}} = term_chunk(beam, "Dbgi")
    assert {:docs_v1, _, :elixir, _, _, _, docs} = term_chunk(kept, "Docs")
    assert docs == elem(term_chunk(beam, "Docs"), 6)

    refute Map.has_key?(chunks(stripped), "Dbgi")
    refute Map.has_key?(chunks(stripped), "Docs")
    assert byte_size(stripped) < byte_size(kept)
    assert :ok = Beam.validate(stripped)
    assert :ok = Beam.validate(kept)
    # Chunks addressed by index are byte for byte the same.
    for id <- ~w(Code ExpT LocT FunT Line StrT) do
      assert chunks(kept)[id] == chunks(beam)[id], id
    end
  end

  test "redirects repoint calls and fun literals, not data atoms" do
    mods =
      compile_unloaded(~S"""
      defmodule RedirFix.User do
        def env, do: Application.get_env(:redir_fix, :key)
        def env_fun, do: &Application.get_env/2
        def data, do: {Application, :get_env}
        def other, do: Application.app_dir(:elixir) |> is_binary()
      end
      """)

    defmodule RedirShim do
      def get_env(app, key), do: {:shimmed, app, key}
    end

    renames = relocate_and_load(mods, "rd", %{Application => RedirShim})
    user = renames[RedirFix.User]

    assert user.env() == {:shimmed, :redir_fix, :key}
    assert user.env_fun().(:a, :b) == {:shimmed, :a, :b}
    assert user.data() == {Application, :get_env}
    # Every import of Application goes to the shim (it has no app_dir/1).
    assert_raise UndefinedFunctionError, fn -> user.other() end

    {:ok, parsed} =
      mods
      |> hd()
      |> elem(1)
      |> Beam.relocate(%{}, %{Application => RedirShim})
      |> elem(1)
      |> Beam.parse()

    assert {RedirShim, :get_env, 2} in parsed.imports
    refute Enum.any?(parsed.imports, &match?({Application, _, _}, &1))
    assert Application in parsed.atoms
    assert List.last(parsed.atoms) == RedirShim
  end

  test "keep_atoms: kept atoms stay as data; calls, exports and identity are relocated" do
    mods =
      compile_unloaded(~S"""
      defmodule KeepFix do
        def me, do: __MODULE__
        def tagged(x), do: {KeepFix, x}
        def lit, do: [KeepFix, :a, %{k: KeepFix}]
        def fun, do: &KeepFix.me/0
        def call, do: KeepFix.me()
        def apply_me(f), do: apply(KeepFix, f, [])
        def other, do: {KeepFix.Other, [KeepFix.Other]}
      end

      defmodule KeepFix.Other do
      end
      """)

    kept = relocate_and_load(mods, "kp", %{}, keep_atoms: [KeepFix])
    plain = relocate_and_load(mods, "kq")
    {k, p} = {kept[KeepFix], plain[KeepFix]}

    # Data: operands and literals keep the name (the host has no KeepFix).
    assert k.me() == KeepFix
    assert k.tagged(1) == {KeepFix, 1}
    assert k.lit() == [KeepFix, :a, %{k: KeepFix}]
    refute :code.is_loaded(KeepFix)
    # Calls, fun literals and the module's identity are relocated.
    assert Function.info(k.fun(), :module) == {:module, k}
    assert k.fun().() == KeepFix
    assert k.call() == KeepFix
    assert k.module_info(:module) == k
    assert k.__info__(:module) == k
    assert {:me, 0} in k.module_info(:exports)
    # A name that is not kept is renamed as ever, and so is all of it
    # without keep_atoms.
    other = kept[KeepFix.Other]
    assert k.other() == {other, [other]}
    assert p.me() == p and p.tagged(1) == {p, 1} and p.lit() == [p, :a, %{k: p}]
    # The trade-off: a dynamic apply of the atom as data reaches the host's
    # KeepFix (here: none).
    assert_raise UndefinedFunctionError, fn -> k.apply_me(:me) end
    assert p.apply_me(:me) == p

    {:ok, parsed} =
      Beam.parse(
        elem(
          Beam.relocate(mods |> hd() |> elem(1), kept, %{}, keep_atoms: [KeepFix]),
          1
        )
      )

    assert hd(parsed.atoms) == k
    assert List.last(parsed.atoms) == KeepFix
    for {_, mod} <- Map.to_list(kept) ++ Map.to_list(plain), do: unload(mod)
  end

  test "keep_atoms: a name not renamed changes nothing; wrong types raise" do
    [{_, beam}, _] =
      compile_unloaded(
        "defmodule KeepArg do def f, do: {KeepArg, :x} end; defmodule KeepArg.B do end"
      )

    renames = %{KeepArg => :"Elixir.Sandbox@ka.KeepArg"}
    {:ok, plain} = Beam.relocate(beam, renames)
    assert Beam.relocate(beam, renames, %{}, keep_atoms: [:x, KeepArg.B]) == {:ok, plain}
    assert Beam.relocate(beam, renames, %{}, keep_atoms: []) == {:ok, plain}
    assert {:ok, kept} = Beam.relocate(beam, renames, %{}, keep_atoms: [KeepArg, KeepArg])
    assert kept != plain

    for bad <- [:x, ["x"], [:a | :b], %{}] do
      assert_raise ArgumentError, fn -> Beam.relocate(beam, renames, %{}, keep_atoms: bad) end
    end
  end

  test "BIF imports of :erlang cannot be redirected" do
    [{_, beam}] =
      compile_unloaded(~S"""
      defmodule BifFix do
        def len(l), do: length(l) + :erlang.phash2(l)
      end
      """)

    assert {:error, {:cannot_redirect_bif, {:erlang, _, _}}} =
             Beam.relocate(beam, %{}, %{erlang: :shim})
  end

  test "renames that make two literal map keys equal are refused" do
    [{_, beam}] =
      compile_unloaded(~S"""
      defmodule DupFix do
        def map, do: %{DupFix.A => 1, DupFix.B => 2}
      end
      """)

    assert {:error, {:duplicate_map_key, DupFix.B}} = Beam.relocate(beam, %{DupFix.A => DupFix.B})

    assert {:ok, _} = Beam.relocate(beam, %{DupFix.A => DupFix.C})
  end

  test "a resulting atom over 255 bytes is refused" do
    [{_, beam}] = compile_unloaded("defmodule LongFix do def f, do: :ok end")
    long = String.to_atom(String.duplicate("é", 200))
    assert {:error, {:atom_too_long, name}} = Beam.relocate(beam, %{LongFix => long})
    assert name == Atom.to_string(long)
  end

  test "names outside latin-1 are relocated too" do
    [{_, beam}] = compile_unloaded("defmodule UniFix do def me, do: __MODULE__ end")
    new_name = :"Elixir.Sandbox@u.Λάμδα"
    {:ok, out} = Beam.relocate(beam, %{UniFix => new_name})
    {:module, mod} = :code.load_binary(new_name, ~c"u", out)
    assert mod.me() == new_name
    unload(new_name)
  end

  test "relocated_name/2 and rename_map/2 validate ids and lengths" do
    assert {:error, {:invalid_id, "a.b"}} = Beam.relocated_name("a.b", Foo)
    assert {:error, {:invalid_id, :a}} = Beam.relocated_name(:a, Foo)
    assert {:error, {:invalid_id, ""}} = Beam.rename_map("", [])
    long_id = String.duplicate("x", 64)
    assert {:ok, _} = Beam.relocated_name(long_id, Foo)
    assert {:error, {:invalid_id, _}} = Beam.relocated_name(long_id <> "x", Foo)

    long_mod = String.to_atom("Elixir." <> String.duplicate("M", 240))
    assert {:error, {:atom_too_long, name}} = Beam.relocated_name(long_id, long_mod)
    assert String.length(name) > 255
  end

  test "wrong argument types raise ArgumentError" do
    [{_, beam}] = compile_unloaded("defmodule ArgFix do end")
    assert_raise ArgumentError, fn -> Beam.relocate(:nope, %{}) end
    assert_raise ArgumentError, fn -> Beam.relocate(beam, a: :b) end
    assert_raise ArgumentError, fn -> Beam.relocate(beam, %{"a" => :b}) end
    assert_raise ArgumentError, fn -> Beam.relocate(beam, %{a: "b"}) end
    assert_raise ArgumentError, fn -> Beam.relocate(beam, %{}, %{a: 1}) end
    assert_raise ArgumentError, fn -> Beam.relocate(beam, %{}, %{}, debug_info: :maybe) end
    assert_raise ArgumentError, fn -> Beam.relocate(beam, %{}, %{}, bogus: 1) end
    assert_raise ArgumentError, fn -> Beam.rename_map("a", [:not_parsed]) end
    # The Erlang entry point takes names as binaries too; they must be UTF-8.
    assert :sandbox_nif.relocate(beam, %{<<255>> => "x"}, %{}, false) == {:error, :badarg}

    assert {:ok, _} =
             :sandbox_nif.relocate(beam, %{"Elixir.ArgFix" => "Elixir.ArgFix2"}, %{}, false)
  end

  test "malformed BEAMs are errors, never crashes" do
    [{_, beam}] = compile_unloaded("defmodule MalFix do def f, do: %{a: MalFix} end")
    renames = %{MalFix => :"Elixir.Sandbox@m.MalFix"}
    {:ok, parsed} = Beam.parse(beam)

    for {_id, offset, size} <- parsed.chunks, cut <- [offset - 8, offset + div(size, 2)] do
      assert {:error, {:truncated, _}} = Beam.relocate(binary_part(beam, 0, cut), renames)
    end

    :rand.seed(:exsss, {1, 2, 3})

    for _ <- 1..300 do
      pos = :rand.uniform(byte_size(beam)) - 1
      <<pre::binary-size(pos), byte, post::binary>> = beam
      flipped = <<pre::binary, Bitwise.bxor(byte, :rand.uniform(255)), post::binary>>

      case Beam.relocate(flipped, renames) do
        {:ok, out} -> assert is_binary(out)
        {:error, _} -> :ok
      end
    end
  end

  test "the old latin-1 Atom chunk is converted to AtU8" do
    [{_, beam}] = compile_unloaded("defmodule Latin1Fix do def who, do: Latin1Fix end")
    {:ok, _, chunks} = :beam_lib.all_chunks(beam)

    latin1 =
      Enum.map(chunks, fn
        {~c"AtU8", data} -> {~c"Atom", data}
        other -> other
      end)

    {:ok, old} = :beam_lib.build_module(latin1)
    assert {:ok, %Beam{atom_encoding: :latin1}} = Beam.parse(old)

    {:ok, new} = Beam.relocate(old, %{Latin1Fix => :"Elixir.Sandbox@l.Latin1Fix"})
    assert {:ok, %Beam{atom_encoding: :utf8}} = Beam.parse(new)
    refute Map.has_key?(chunks(new), "Atom")
    {:module, mod} = :code.load_binary(:"Elixir.Sandbox@l.Latin1Fix", ~c"l", new)
    assert mod.who() == mod
  end
end
