defmodule Sandbox.BeamGuardsTest.PassGuard do
  @moduledoc false
  # A dynamic guard that just does the operation, counting its calls.

  def hits, do: :counters.get(counters(), 1)

  defp hit, do: :counters.add(counters(), 1, 1)

  defp counters do
    case :persistent_term.get({__MODULE__, :hits}, nil) do
      nil ->
        ref = :counters.new(1, [:atomics])
        :persistent_term.put({__MODULE__, :hits}, ref)
        :persistent_term.get({__MODULE__, :hits})

      ref ->
        ref
    end
  end

  for n <- 0..12 do
    args = Macro.generate_arguments(n, __MODULE__)

    def unquote(:"$apply")(unquote_splicing(args), m, f) do
      hit()
      apply(m, f, unquote(args))
    end

    def unquote(:"$call_fun")(unquote_splicing(args), fun) do
      hit()
      apply(fun, unquote(args))
    end
  end

  def unquote(:"$send")(dest, msg) do
    hit()
    send(dest, msg)
  end
end

defmodule Sandbox.BeamGuardsTest.Counter do
  @moduledoc false
  def init(n), do: {:ok, n}
  def handle_call(:get, _from, n), do: {:reply, n, n}
  def handle_cast({:add, k}, n), do: {:noreply, n + k}
  def handle_info({:add, k}, n), do: {:noreply, n + k}
end

defmodule Sandbox.BeamGuardsTest.Target do
  @moduledoc false
  def rev(l), do: {:redirected, Enum.reverse(l)}
  def reverse(l, t), do: {:shim, l, t}
end

defmodule Sandbox.BeamGuardsTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.BeamHelpers

  alias Sandbox.Beam
  alias Sandbox.BeamGuardsTest.PassGuard

  @all [:apply, :call_fun, :send]
  @deny Sandbox.BeamGuardsTest.DenyGuard
  @remote Sandbox.BeamGuardsTest.Remote
  @target Sandbox.BeamGuardsTest.Target

  # Every dynamic call instruction the OTP 25 compiler emits, at known lines.
  @fixture """
  -module(MOD).
  -export([apply0/2, apply2/4, apply_tail/3, call_fun1/2, call_fun_tail/2, call_fun3/4,
           call_fun_known/2, send_tail/2, send_then/2, send_frame/2, ext_fun/0, local_fun/1,
           bif/2, halt_static/0, data/0, rev1/1, rev2/2, nested/3]).

  apply0(M, F) -> {ok, M:F()}.
  apply2(M, F, A, B) -> {ok, M:F(A, B)}.
  apply_tail(M, F, A) -> M:F(A).
  call_fun1(F, X) -> {ok, F(X)}.
  call_fun_tail(F, X) -> F(X).
  call_fun3(F, A, B, C) -> {ok, F(A, B, C)}.
  call_fun_known(F, X) when is_function(F, 1) -> {ok, F(X)}.
  send_tail(P, M) -> P ! M.
  send_then(P, M) -> P ! M, ok.
  send_frame(P, M) -> X = id(M), P ! X, {sent, id(X)}.
  ext_fun() -> fun lists:reverse/1.
  local_fun(X) -> fun(Y) -> X + Y end.
  bif(T, N) -> element(N, T) + N.
  halt_static() -> erlang:halt().
  data() -> {lists, reverse}.
  rev1(L) -> lists:reverse(L).
  rev2(L, T) -> lists:reverse(L, T).
  nested(M, F, L) ->
      try M:F(L) of
          R -> {ok, [X || X <- R, is_integer(X)]}
      catch
          C:E -> {C, E}
      end.
  id(X) -> X.
  """

  defp fixture(name) do
    @fixture |> String.replace("MOD", Atom.to_string(name)) |> compile_erl()
  end

  defp forms(source) do
    {:ok, tokens, _} = :erl_scan.string(String.to_charlist(source))

    tokens
    |> Enum.chunk_while(
      [],
      fn
        {:dot, _} = dot, acc -> {:cont, Enum.reverse([dot | acc]), []}
        token, acc -> {:cont, [token | acc]}
      end,
      fn acc -> {:cont, acc} end
    )
    |> Enum.reject(&(&1 == []))
    |> Enum.map(fn f ->
      {:ok, form} = :erl_parse.parse_form(f)
      form
    end)
  end

  defp compile_erl(source) do
    {:ok, _mod, bin} = :compile.forms(forms(source), [:binary, :return_errors])
    bin
  end

  # Compiles `source` to BEAM assembly, lets `fun` change each function's
  # instructions, and assembles the result with the compiler's assembler
  # alone (beam_validator would refuse some of what older compilers and
  # hand-written code do, such as a send without a stack frame).
  # The compiler also writes the listing (Mod.S) to its outdir: a private
  # directory, not the project's.
  defp asm_dir do
    dir = Path.join(System.tmp_dir!(), "beam_guards_asm_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    String.to_charlist(dir)
  end

  defp compile_asm(source, fun) do
    {:ok, _mod, {m, exports, attrs, functions, labels}} =
      :compile.forms(forms(source), [:S, :binary, {:outdir, asm_dir()}])

    functions =
      for {:function, name, arity, entry, code} <- functions,
          do: {:function, name, arity, entry, fun.(name, code)}

    {:ok, bin} = :beam_asm.module({m, exports, attrs, functions, labels}, [], [], [])
    bin
  end

  defp load!(name, bin) do
    {:module, ^name} = :code.load_binary(name, ~c"guarded", bin)
    on_exit(fn -> unload(name) end)
    name
  end

  defp relocate!(bin, from, to, opts) do
    {:ok, new} = Beam.relocate(bin, %{from => to}, %{}, opts)
    assert Beam.validate(new) == :ok
    new
  end

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp kinds(sites), do: Enum.frequencies_by(sites, & &1.kind)

  # ---------------------------------------------------------------------------

  describe "call_sites/2" do
    test "the fixture's sites, with their callers and lines" do
      bin = fixture(:guard_sites)
      assert {:ok, sites} = Beam.call_sites(bin)

      for site <- [
            %{caller: {:apply0, 2}, line: 6, kind: :apply, target: {:apply, 0}},
            %{caller: {:apply2, 4}, line: 7, kind: :apply, target: {:apply, 2}},
            %{caller: {:apply_tail, 3}, line: 8, kind: :apply, target: {:apply, 1}},
            %{caller: {:call_fun1, 2}, line: 9, kind: :call_fun, target: {:call_fun, 1}},
            %{caller: {:call_fun3, 4}, line: 11, kind: :call_fun, target: {:call_fun, 3}},
            %{caller: {:call_fun_known, 2}, line: 12, kind: :call_fun, target: {:call_fun, 1}},
            %{caller: {:send_tail, 2}, line: 13, kind: :send, target: :send},
            %{caller: {:send_frame, 2}, line: 15, kind: :send, target: :send},
            %{caller: {:ext_fun, 0}, line: 16, kind: :fun, target: {:lists, :reverse, 1}},
            %{caller: {:bif, 2}, line: 18, kind: :bif, target: {:erlang, :element, 2}},
            %{caller: {:bif, 2}, line: 18, kind: :bif, target: {:erlang, :+, 2}},
            %{caller: {:halt_static, 0}, line: 19, kind: :call, target: {:erlang, :halt, 0}},
            %{caller: {:rev2, 2}, line: 22, kind: :call, target: {:lists, :reverse, 2}}
          ] do
        assert site in sites, inspect(site)
      end

      # The local fun is not a call site; the data atoms are no target.
      refute Enum.any?(sites, &(&1.caller == {:local_fun, 1}))
      refute Enum.any?(sites, &(&1.caller == {:data, 0}))
      assert %{apply: 4, call_fun: 4, send: 3} = kinds(sites)
    end

    # beam_disasm decodes the code in Erlang: both must see the same calls.
    test "agrees with beam_disasm on real modules" do
      for module <- [:gen_server, :lists, :proc_lib, :supervisor, Enum, String, Task, Keyword] do
        {^module, bin, _} = :code.get_object_code(module)
        {:ok, sites} = Beam.call_sites(bin)
        ours = for s <- sites, s.caller != nil, do: {s.caller, s.kind, s.target}
        assert Enum.sort(ours) == Enum.sort(disasm_sites(bin)), inspect(module)
      end
    end

    test "a fun literal no instruction uses has no caller" do
      # A literal only the loader's tables hold: add one to a real table.
      {_, bin, _} = :code.get_object_code(:erl_anno)
      keep = [~c"AtU8", ~c"Code", ~c"StrT", ~c"ImpT", ~c"ExpT"]
      {:ok, _, chunks} = :beam_lib.all_chunks(bin)
      term = :erlang.term_to_binary(&:lists.sort/1)
      table = <<1::32, byte_size(term)::32, term::binary>>
      litt = <<byte_size(table)::32, :zlib.compress(table)::binary>>
      chunks = Enum.filter(chunks, fn {id, _} -> id in keep end) ++ [{~c"LitT", litt}]
      {:ok, with_lit} = :beam_lib.build_module(chunks)
      assert {:ok, sites} = Beam.call_sites(with_lit)

      assert %{caller: nil, line: nil, kind: :fun, target: {:lists, :sort, 1}} in sites
    end

    test "bad input: the reasons of validate/2, ArgumentError for wrong types" do
      bin = fixture(:guard_sites_bad)
      {:ok, %Beam{chunks: chunks}} = Beam.parse(bin)
      {"Code", off, size} = List.keyfind(chunks, "Code", 0)
      # The code's last byte is int_code_end: cut it.
      <<pre::binary-size(off + size - 1), 3, post::binary>> = bin
      bad = pre <> <<0>> <> post
      assert {:error, {:bad_code, _}} = Beam.validate(bad)
      assert Beam.call_sites(bad) == Beam.validate(bad)
      assert Beam.call_sites("FOR1") == {:error, {:truncated, :header}}
      # Two names no atom has yet (binaries, so that none is made here).
      fresh = "guard_fresh_#{System.unique_integer([:positive])}"

      {:ok, unseen} =
        :sandbox_nif.relocate(
          bin,
          %{"guard_sites_bad" => fresh <> "_m", "rev1" => fresh <> "_f"},
          %{},
          false
        )

      assert Beam.call_sites(unseen, max_new_atoms: 1) == {:error, {:too_many_atoms, 2, 1}}
      assert {:ok, _} = Beam.call_sites(unseen, max_new_atoms: 2)

      for arg <- [:atom, 42, [bin], nil] do
        assert_raise ArgumentError, fn -> Beam.call_sites(arg) end
      end
    end
  end

  # What beam_disasm says a module calls: {caller, kind, target}.
  defp disasm_sites(bin) do
    {:beam_file, _, _, _, _, code} = :beam_disasm.file(bin)

    for {:function, name, arity, _, instrs} <- code,
        instr <- instrs,
        site <- disasm_site(instr),
        do: {{name, arity}, elem(site, 0), elem(site, 1)}
  end

  defp disasm_site({op, _, {:extfunc, m, f, a}}) when op in [:call_ext, :call_ext_only],
    do: [{:call, {m, f, a}}]

  defp disasm_site({:call_ext_last, _, {:extfunc, m, f, a}, _}), do: [{:call, {m, f, a}}]
  defp disasm_site({:bif, f, _, args, _}), do: [{:bif, {:erlang, f, length(args)}}]
  defp disasm_site({:gc_bif, f, _, _, args, _}), do: [{:bif, {:erlang, f, length(args)}}]
  defp disasm_site({:apply, a}), do: [{:apply, {:apply, a}}]
  defp disasm_site({:apply_last, a, _}), do: [{:apply, {:apply, a}}]
  defp disasm_site({:call_fun, a}), do: [{:call_fun, {:call_fun, a}}]
  defp disasm_site({:call_fun2, _, a, _}), do: [{:call_fun, {:call_fun, a}}]
  defp disasm_site(:send), do: [{:send, :send}]
  defp disasm_site(instr), do: for(f <- literal_funs(instr), do: {:fun, f})

  defp literal_funs({:literal, term}), do: term_funs(term)

  defp literal_funs(t) when is_tuple(t),
    do: t |> Tuple.to_list() |> Enum.flat_map(&literal_funs/1)

  defp literal_funs(l) when is_list(l), do: Enum.flat_map(l, &literal_funs/1)
  defp literal_funs(_), do: []

  defp term_funs(f) when is_function(f) do
    case Function.info(f, :type) do
      {:type, :external} ->
        {:module, m} = Function.info(f, :module)
        {:name, n} = Function.info(f, :name)
        {:arity, a} = Function.info(f, :arity)
        [{m, n, a}]

      _ ->
        []
    end
  end

  defp term_funs(t) when is_tuple(t), do: t |> Tuple.to_list() |> Enum.flat_map(&term_funs/1)
  defp term_funs([h | t]), do: term_funs(h) ++ term_funs(t)
  defp term_funs(%{} = m), do: m |> :maps.to_list() |> Enum.flat_map(&term_funs/1)
  defp term_funs(_), do: []

  # ---------------------------------------------------------------------------

  describe "dynamic_guard:" do
    test "the rewritten fixture behaves like the original, through the guard" do
      orig = load!(:guard_orig, fixture(:guard_orig))
      name = unique(:guard_pass)
      bin = fixture(:guard_pass_src)
      new = relocate!(bin, :guard_pass_src, name, dynamic_guard: {PassGuard, @all})
      load!(name, new)

      {:ok, before} = Beam.call_sites(bin)
      {:ok, after_} = Beam.call_sites(new)
      refute Map.has_key?(kinds(after_), :apply)
      refute Map.has_key?(kinds(after_), :call_fun)
      refute Map.has_key?(kinds(after_), :send)

      guard_calls = for %{kind: :call, target: {PassGuard, f, a}} <- after_, do: {f, a}

      assert Enum.frequencies(guard_calls) == %{
               {:"$apply", 2} => 1,
               {:"$apply", 4} => 1,
               {:"$apply", 3} => 2,
               {:"$call_fun", 2} => 3,
               {:"$call_fun", 4} => 1,
               {:"$send", 2} => 3
             }

      assert length(guard_calls) ==
               Enum.count(before, &(&1.kind in [:apply, :call_fun, :send]))

      pid = self()

      calls = [
        {:apply0, [:erlang, :self]},
        {:apply2, [:lists, :append, [1], [2]]},
        {:apply_tail, [:lists, :reverse, [1, 2, 3]]},
        {:call_fun1, [&(&1 * 2), 21]},
        {:call_fun1, [&:erlang.atom_to_list/1, :abc]},
        {:call_fun_tail, [fn x -> {x} end, 5]},
        {:call_fun3, [fn a, b, c -> a + b + c end, 1, 2, 3]},
        {:call_fun_known, [&length/1, [1, 2]]},
        {:send_tail, [pid, :m1]},
        {:send_then, [pid, :m2]},
        {:send_frame, [pid, :m3]},
        {:ext_fun, []},
        {:bif, [{1, 2}, 2]},
        {:data, []},
        {:rev1, [[1, 2]]},
        {:nested, [:lists, :reverse, [1, :a, 2]]},
        {:nested, [:lists, :nope, []]}
      ]

      for {f, args} <- calls do
        before_hits = PassGuard.hits()
        assert apply(name, f, args) == apply(orig, f, args), inspect({f, args})

        if f in [:ext_fun, :bif, :data, :rev1] do
          assert PassGuard.hits() == before_hits, inspect(f)
        else
          assert PassGuard.hits() > before_hits, inspect(f)
        end
      end

      for m <- [:m1, :m2, :m3, :m1, :m2, :m3], do: assert_received(^m)
      assert apply(name, :local_fun, [1]).(2) == 3
    end

    test "a send without a stack frame: a tail call before return, wrapped otherwise" do
      source = """
      -module(MOD).
      -export([send_tail/2, send_then/2]).
      send_tail(P, M) -> P ! M.
      send_then(P, M) -> P ! M, ok.
      """

      # OTP 25 gives send a frame; older compilers and hand-written code do not.
      frameless = fn _name, code ->
        Enum.reject(code, &match?({op, _} when op in [:allocate, :deallocate], &1)) --
          [
            {:allocate, 0, 2}
          ]
      end

      bin = compile_asm(String.replace(source, "MOD", "guard_frameless"), frameless)
      {:beam_file, _, _, _, _, code} = :beam_disasm.file(bin)
      instrs = for {:function, :send_tail, 2, _, is} <- code, i <- is, do: i
      refute Enum.any?(instrs, &match?({:allocate, _, _}, &1))
      assert :send in instrs

      name = unique(:guard_frameless)
      new = relocate!(bin, :guard_frameless, name, dynamic_guard: {PassGuard, [:send]})
      load!(name, new)
      {:beam_file, _, _, _, _, code} = :beam_disasm.file(new)
      tail = for {:function, :send_tail, 2, _, is} <- code, i <- is, do: i
      then = for {:function, :send_then, 2, _, is} <- code, i <- is, do: i

      assert {:call_ext_only, 2, {:extfunc, PassGuard, :"$send", 2}} in tail
      refute :return in tail

      assert [
               {:allocate, 0, 2},
               {:call_ext, 2, {:extfunc, PassGuard, :"$send", 2}},
               {:deallocate, 0}
             ] ==
               Enum.filter(then, &match?({op, _, _} when op in [:allocate, :call_ext], &1)) ++
                 Enum.filter(then, &match?({:deallocate, _}, &1))

      before_hits = PassGuard.hits()
      assert name.send_tail(self(), :x) == :x
      assert name.send_then(self(), :y) == :ok
      assert PassGuard.hits() == before_hits + 2
      assert_received :x
      assert_received :y
    end

    test "call_fun2 with the fun in a y register or a typed x register" do
      source = """
      -module(MOD).
      -export([in_y/2, known/2]).
      in_y(F, X) -> {ok, F(X)}.
      known(F, X) when is_function(F, 1) -> {ok, F(X)}.
      """

      in_y = fn
        :in_y, code ->
          [l1, line, fi, l2 | _] = code

          [
            l1,
            line,
            fi,
            l2,
            {:allocate, 1, 2},
            {:move, {:x, 0}, {:y, 0}},
            {:move, {:x, 1}, {:x, 0}},
            {:call_fun2, {:atom, :unsafe}, 1, {:y, 0}},
            {:test_heap, 3, 1},
            {:put_tuple2, {:x, 0}, {:list, [{:atom, :ok}, {:x, 0}]}},
            {:deallocate, 1},
            :return
          ]

        _, code ->
          code
      end

      bin = compile_asm(String.replace(source, "MOD", "guard_cf2"), in_y)
      {:ok, sites} = Beam.call_sites(bin)
      assert Enum.count(sites, &(&1.kind == :call_fun)) == 2
      name = unique(:guard_cf2)
      new = relocate!(bin, :guard_cf2, name, dynamic_guard: {PassGuard, [:call_fun]})
      load!(name, new)

      {:beam_file, _, _, _, _, code} = :beam_disasm.file(new)
      in_y_code = for {:function, :in_y, 2, _, is} <- code, i <- is, do: i
      known_code = for {:function, :known, 2, _, is} <- code, i <- is, do: i
      assert {:move, {:y, 0}, {:x, 1}} in in_y_code
      refute Enum.any?(known_code, &match?({:move, _, {:x, 1}}, &1))

      before_hits = PassGuard.hits()
      assert name.in_y(&(&1 + 1), 41) == {:ok, 42}
      assert name.known(&(&1 * 3), 3) == {:ok, 9}
      assert PassGuard.hits() == before_hits + 2
    end

    test "only the kinds asked for are rewritten" do
      bin = fixture(:guard_kinds)

      for kinds <- [[:apply], [:call_fun], [:send], [:apply, :send]] do
        {:ok, new} = Beam.relocate(bin, %{}, %{}, dynamic_guard: {PassGuard, kinds})
        {:ok, sites} = Beam.call_sites(new)
        left = kinds(sites)

        for kind <- @all do
          assert Map.has_key?(left, kind) == kind not in kinds, inspect({kinds, kind})
        end
      end
    end

    test "real modules rewritten behave like the originals" do
      for {module, check} <- [
            {:orddict, &orddict_calls/1},
            {Enum, &enum_calls/1},
            {:gen_server, &gen_server_calls/1}
          ] do
        {^module, bin, _} = :code.get_object_code(module)
        name = unique(:guarded)
        {:ok, sites} = Beam.call_sites(bin)
        assert Enum.any?(sites, &(&1.kind in @all)), inspect(module)
        new = relocate!(bin, module, name, dynamic_guard: {PassGuard, @all})
        load!(name, new)
        before_hits = PassGuard.hits()
        check.({module, name})
        assert PassGuard.hits() > before_hits, inspect(module)
      end
    end

    test "a call over 255 arguments is refused" do
      args = Enum.map_join(1..254, ", ", &Integer.to_string/1)

      src = """
      -module(guard_wide).
      -export([f/2, g/1]).
      f(M, F) -> {ok, M:F(#{args})}.
      g(Fun) -> {ok, Fun(0, #{args})}.
      """

      bin = compile_erl(src)

      assert Beam.relocate(bin, %{}, %{}, dynamic_guard: {PassGuard, [:apply]}) ==
               {:error, {:arity_too_large, {:apply, 254}}}

      assert Beam.relocate(bin, %{}, %{}, dynamic_guard: {PassGuard, [:call_fun]}) ==
               {:error, {:arity_too_large, {:call_fun, 255}}}

      assert {:ok, _} = Beam.relocate(bin, %{}, %{}, dynamic_guard: {PassGuard, [:send]})
    end

    test "wrong options raise ArgumentError" do
      bin = fixture(:guard_args)

      for opt <- [
            {PassGuard, []},
            {PassGuard, [:apply, :halt]},
            {"PassGuard", [:apply]},
            PassGuard,
            {PassGuard, :apply}
          ] do
        assert_raise ArgumentError, fn -> Beam.relocate(bin, %{}, %{}, dynamic_guard: opt) end
      end
    end

    test "an attack: a computed halt stops a peer VM, and the guard refuses it" do
      peer = attack_peer()
      bin = fixture(:guard_attack)
      name = unique(:guard_attack)
      guarded = relocate!(bin, :guard_attack, name, dynamic_guard: {@deny, @all})

      # Guarded: refused, and the peer lives on.
      {:module, ^name} = :peer.call(peer, :code, :load_binary, [name, ~c"g", guarded])

      assert {:error, {:exception, %ArgumentError{message: "halt refused"}}} =
               peer_apply(peer, name, :apply0, [:erlang, :halt])

      assert {:error, {:exception, %ArgumentError{message: "send to init refused"}}} =
               peer_apply(peer, name, :send_tail, [:init, {:stop, :stop}])

      assert :peer.call(peer, :erlang, :+, [1, 2]) == 3

      # Unguarded, the same call stops the VM.
      {:module, _} = :peer.call(peer, :code, :load_binary, [:guard_attack, ~c"o", bin])
      assert_stops(peer, fn -> :peer.call(peer, :guard_attack, :apply0, [:erlang, :halt]) end)
    end
  end

  # A guard that refuses what would stop the VM (erlang:halt, by apply or by
  # import, and any send to init), and a runner that reports exceptions as
  # terms: compiled here and loaded into the peer only.
  @peer_modules """
  defmodule #{inspect(@deny)} do
    for n <- 0..3 do
      args = Macro.generate_arguments(n, __MODULE__)

      def unquote(:"$apply")(unquote_splicing(args), m, f) do
        if m == :erlang and f == :halt,
          do: raise(ArgumentError, "halt refused"),
          else: apply(m, f, unquote(args))
      end
    end

    def unquote(:"$send")(:init, _msg), do: raise(ArgumentError, "send to init refused")
    def unquote(:"$send")(dest, msg), do: send(dest, msg)
    def halt, do: raise(ArgumentError, "halt refused")
  end

  defmodule #{inspect(@remote)} do
    def run(m, f, a) do
      {:ok, apply(m, f, a)}
    rescue
      e -> {:error, {:exception, e}}
    end
  end
  """

  defp attack_peer do
    args = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    {:ok, peer, _node} = :peer.start(%{connection: :standard_io, args: args})

    on_exit(fn ->
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end
    end)

    for {m, bin} <- compile_unloaded(@peer_modules) do
      {:module, ^m} = :peer.call(peer, :code, :load_binary, [m, ~c"test", bin])
    end

    peer
  end

  defp assert_stops(peer, fun) do
    ref = Process.monitor(peer)
    catch_exit(fun.())
    assert_receive {:DOWN, ^ref, :process, ^peer, _}, 10_000
  end

  defp peer_apply(peer, m, f, a), do: :peer.call(peer, @remote, :run, [m, f, a])

  # ---------------------------------------------------------------------------

  describe "import_redirects:" do
    test "repoint exactly the imports and fun literals given" do
      bin = fixture(:guard_mfa_src)
      name = unique(:guard_mfa)
      redirects = %{{:lists, :reverse, 1} => {@target, :rev}}
      new = relocate!(bin, :guard_mfa_src, name, import_redirects: redirects)
      load!(name, new)

      assert name.rev1([1, 2]) == {:redirected, [2, 1]}
      assert name.rev2([1], [0]) == [1, 0]
      assert name.ext_fun() == (&@target.rev/1)
      assert name.data() == {:lists, :reverse}

      {:ok, old} = Beam.parse(bin)
      {:ok, parsed} = Beam.parse(new)
      assert {@target, :rev, 1} in parsed.imports
      assert {:lists, :reverse, 2} in parsed.imports
      refute {:lists, :reverse, 1} in parsed.imports
      assert length(parsed.imports) == length(old.imports)
      # Atoms are appended: every index keeps its atom (the module's renamed).
      assert tl(Enum.take(parsed.atoms, length(old.atoms))) == tl(old.atoms)
      assert @target in parsed.atoms and :rev in parsed.atoms
      assert parsed.external_funs == [{@target, :rev, 1}]

      {:ok, sites} = Beam.call_sites(new)
      assert %{caller: {:rev1, 1}, line: 21, kind: :call, target: {@target, :rev, 1}} in sites
      assert %{caller: {:ext_fun, 0}, line: 16, kind: :fun, target: {@target, :rev, 1}} in sites
    end

    test "an import a bif instruction uses stays a BIF" do
      bin = fixture(:guard_bif)

      for mfa <- [{:erlang, :element, 2}, {:erlang, :+, 2}] do
        assert Beam.relocate(bin, %{}, %{}, import_redirects: %{mfa => {@deny, :x}}) ==
                 {:error, {:bif_redirect, mfa}}
      end

      # erlang:halt/0 is called, not used as a BIF: it can be repointed.
      assert {:ok, _} =
               Beam.relocate(bin, %{}, %{},
                 import_redirects: %{{:erlang, :halt, 0} => {@deny, :halt}}
               )
    end

    test "an MFA redirect wins over its module's redirect; both compose with the guard" do
      bin = fixture(:guard_compose_src)
      name = unique(:guard_compose)

      new =
        relocate!(bin, :guard_compose_src, name,
          import_redirects: %{{:lists, :reverse, 1} => {@target, :rev}},
          dynamic_guard: {PassGuard, @all}
        )

      {:ok, new} = Beam.relocate(new, %{}, %{lists: @target})
      load!(name, new)
      assert name.rev1([1, 2]) == {:redirected, [2, 1]}
      assert name.rev2([1], [0]) == {:shim, [1], [0]}
      before_hits = PassGuard.hits()
      assert name.apply2(:lists, :append, [1], [2]) == {:ok, [1, 2]}
      assert PassGuard.hits() == before_hits + 1
    end

    test "a redirect that matches no import leaves the binary as plain relocation makes it" do
      bin = fixture(:guard_nomatch)
      plain = relocate!(bin, :guard_nomatch, :guard_nomatch2, [])

      assert relocate!(bin, :guard_nomatch, :guard_nomatch2,
               import_redirects: %{{:nope, :nope, 1} => {@target, :rev}}
             ) == plain
    end

    test "an attack: a static halt stops a peer VM, and the redirect refuses it" do
      peer = attack_peer()
      bin = fixture(:guard_static)
      name = unique(:guard_static)

      guarded =
        relocate!(bin, :guard_static, name,
          import_redirects: %{{:erlang, :halt, 0} => {@deny, :halt}}
        )

      {:module, ^name} = :peer.call(peer, :code, :load_binary, [name, ~c"g", guarded])

      assert {:error, {:exception, %ArgumentError{message: "halt refused"}}} =
               peer_apply(peer, name, :halt_static, [])

      assert :peer.call(peer, :erlang, :+, [1, 2]) == 3
      {:module, _} = :peer.call(peer, :code, :load_binary, [:guard_static, ~c"o", bin])
      assert_stops(peer, fn -> :peer.call(peer, :guard_static, :halt_static, []) end)
    end

    test "wrong options raise ArgumentError" do
      bin = fixture(:guard_mfa_args)

      for opt <- [
            [{{:lists, :reverse, 1}, {@target, :rev}}],
            %{{:lists, :reverse} => {@target, :rev}},
            %{{:lists, :reverse, 1} => {@target}},
            %{{:lists, :reverse, 256} => {@target, :rev}},
            %{{"lists", :reverse, 1} => {@target, :rev}}
          ] do
        assert_raise ArgumentError, fn -> Beam.relocate(bin, %{}, %{}, import_redirects: opt) end
      end
    end
  end

  defp orddict_calls({orig, name}) do
    d = :orddict.from_list([{1, :a}, {2, :b}, {3, :c}])

    for {f, a} <- [
          {:map, [fn k, v -> {k, v} end, d]},
          {:filter, [fn k, _ -> k > 1 end, d]},
          {:fold, [fn k, _, acc -> k + acc end, 0, d]},
          {:update, [2, &{&1}, d]},
          {:update, [9, &{&1}, :new, d]},
          {:merge, [fn _k, a, b -> {a, b} end, d, d]},
          {:update_counter, [1, 5, [{1, 1}]]}
        ] do
      assert apply(name, f, a) == apply(orig, f, a), inspect(f)
    end
  end

  defp enum_calls({orig, name}) do
    for {f, a} <- [
          {:map, [1..5, &(&1 + 1)]},
          {:reduce, [[1, 2, 3], 0, &+/2]},
          {:group_by, [~w(a bb cc d), &String.length/1]},
          {:sort_by, [[3, 1, 2], &(-&1)]},
          {:chunk_while, [[1, 2, 3, 4], [], fn x, acc -> {:cont, [x | acc]} end, &{:cont, &1}]},
          {:flat_map, [%{a: 1}, fn {k, v} -> [k, v] end]},
          {:zip_with, [[1, 2], [3, 4], &*/2]},
          {:into, [[a: 1], %{}, fn {k, v} -> {v, k} end]}
        ] do
      assert apply(name, f, a) == apply(orig, f, a), inspect(f)
    end
  end

  defp gen_server_calls({_orig, name}) do
    {:ok, pid} = name.start_link(Sandbox.BeamGuardsTest.Counter, 5, [])
    assert name.call(pid, :get) == 5
    :ok = name.cast(pid, {:add, 2})
    send(pid, {:add, 3})
    assert name.call(pid, :get) == 10
    req = name.send_request(pid, :get)
    assert name.wait_response(req, 5000) == {:reply, 10}
    assert name.stop(pid) == :ok
  end
end
