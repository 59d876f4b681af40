defmodule Sandbox.Node.WireTest do
  use ExUnit.Case, async: true

  alias Sandbox.Node.Wire

  @node :"sandbox_vm_1@sandbox.invalid"

  describe "framing" do
    test "output before the sync frame is skipped; frames after it come whole, in order" do
      frames = [Wire.frame({:a, 1}), Wire.frame("two"), Wire.frame([3])]
      stream = IO.iodata_to_binary(["boot noise\n", Wire.sync_frame() | frames])

      # Fed one byte at a time: every split point of every frame.
      {payloads, _} =
        for <<byte <- stream>>, reduce: {[], Wire.new(1_000)} do
          {acc, buf} ->
            {:ok, out, buf} = Wire.feed(buf, <<byte>>)
            {acc ++ out, buf}
        end

      assert Enum.map(payloads, &:erlang.binary_to_term/1) == [{:a, 1}, "two", [3]]
    end

    test "a frame above the maximum breaks the stream" do
      {:ok, [], buf} = Wire.feed(Wire.new(10), Wire.sync_frame())
      assert Wire.feed(buf, <<11::32, 0::88>>) == {:error, {:frame_too_large, 11}}
    end

    test "a stream that never syncs is refused after 64 KiB" do
      noise = :binary.copy("x", 70_000)
      assert Wire.feed(Wire.new(10), noise) == {:error, :no_sync}
    end
  end

  describe "decode (frames from a sandbox VM are hostile)" do
    test "a pid of the sandbox VM cannot name a process of this VM" do
      # The sandbox VM is nonode@nohost like a non-distributed host: its
      # <0.N.0> decodes as our <0.N.0>. Rehomed, it names nobody here.
      bin = :erlang.term_to_binary({:ok, self(), make_ref(), hd(Port.list())})
      {:ok, {:ok, pid, ref, port}, 0} = Wire.decode(bin, 0, @node)

      assert node(pid) == @node and node(ref) == @node and node(port) == @node
      refute pid == self()
      send(pid, :lost)
      refute_received :lost
    end

    test "rehome reaches map keys, improper lists and structs" do
      me = self()
      term = %{me => [1, me | me], s: URI.parse("http://x"), t: {me}}
      moved = Wire.rehome(term, @node)
      [{pid, [1, p2 | p3]}] = for {k, v} <- moved, is_pid(k), do: {k, v}
      assert Enum.all?([pid, p2, p3, elem(moved.t, 0)], &(node(&1) == @node))
      assert %URI{host: "x"} = moved.s
    end

    test "new atoms are counted against a budget; over it, nothing is created" do
      fresh = "node_wire_test_#{System.unique_integer([:positive])}"
      # {:ok, :<fresh>} built by hand: the atom exists nowhere yet.
      bin = <<131, 104, 2, 119, 2, "ok", 119, byte_size(fresh), fresh::binary>>

      assert Wire.decode(bin, 0, @node) == {:error, {:too_many_atoms, 0}}
      assert_raise ArgumentError, fn -> String.to_existing_atom(fresh) end
      assert {:ok, {:ok, atom}, 1} = Wire.decode(bin, 1, @node)
      assert Atom.to_string(atom) == fresh
    end

    test "funs are refused" do
      assert {:error, {:unsafe_term, :fun}} =
               Wire.decode(:erlang.term_to_binary(&Enum.map/2), 10, @node)
    end
  end

  describe "what may be sent to a sandbox VM" do
    test "MFAs, external funs and closures of shared code; not closures of host code" do
      assert Wire.check_serialisable({:erlang, :node, []}, "x") == :ok
      assert Wire.check_serialisable(&Enum.sum/1, "x") == :ok
      assert Wire.check_serialisable(&:lists.seq/2, "x") == :ok

      # A closure of this test module: its code is not in the sandbox VM.
      closure = fn -> :host end
      assert Wire.check_serialisable(closure, "x") == {:error, {:not_serialisable, closure}}

      assert Wire.check_serialisable([a: {1, closure}], "x") ==
               {:error, {:not_serialisable, closure}}

      # A closure made by Elixir's own code (shared), capturing plain data
      # (Stream.intersperse/2 returns one, holding its separator).
      shared = Stream.intersperse([1], :sep)
      assert Wire.check_serialisable(shared, "x") == :ok
      # ... but not one capturing a pid (it would name a process of the VM).
      with_pid = Stream.intersperse([1], self())
      assert Wire.check_serialisable(with_pid, "x") == {:error, {:not_serialisable, with_pid}}
    end

    test "external funs of the sandbox's own modules (relocated names)" do
      fun = Function.capture(:"Elixir.Sandbox@x.Counter", :value, 0)
      assert Wire.check_serialisable(fun, "x") == :ok
      assert {:error, {:not_serialisable, ^fun}} = Wire.check_serialisable(fun, "y")
    end
  end

  test "portable replaces funs (which cannot cross) by their text" do
    f = fn -> :ok end
    assert %{a: [text, 1]} = Wire.portable(%{a: [f, 1]})
    assert text == inspect(f)
  end
end
