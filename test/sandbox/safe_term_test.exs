defmodule Sandbox.SafeTermTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.AtomFixtures, only: [existing_atoms: 1]

  alias Sandbox.SafeTerm

  doctest SafeTerm

  defp sample_terms do
    [
      nil,
      42,
      -7,
      2 ** 70,
      -(2 ** 300),
      3.25,
      "binary",
      <<1, 2, 3::5>>,
      ~c"charlist",
      [1, [2, [3 | 4]]],
      {},
      {:a, {:b, :c}},
      List.to_tuple(Enum.to_list(1..300)),
      %{a: 1, b: %{"c" => [d: 2]}},
      Map.new(1..40, &{&1, &1}),
      [:ok, :ünïcödé, :"quoted atom"],
      self(),
      make_ref(),
      hd(Port.list())
    ]
  end

  test "decodes what term_to_binary encodes" do
    for term <- sample_terms(), opts <- [[], [minor_version: 1], [:deterministic]] do
      assert SafeTerm.decode(:erlang.term_to_binary(term, opts)) == {:ok, term}
    end
  end

  test "latin-1 atom encodings (minor version 0) decode" do
    term = {:café, [:plain]}
    assert SafeTerm.decode(:erlang.term_to_binary(term, minor_version: 0)) == {:ok, term}
  end

  test "new atoms count against the budget, and a refused binary creates none" do
    names = for i <- 1..100, do: "safe_term_new_#{System.unique_integer([:positive])}_#{i}"
    # Encoded by hand: encoding them with term_to_binary would create them.
    bin = IO.iodata_to_binary([131, 108, <<100::32>>, Enum.map(names, &atom_ext/1), 106])

    assert SafeTerm.decode(bin, max_new_atoms: 99) == {:error, {:too_many_atoms, 99}}
    assert existing_atoms(names) == 0

    assert {:ok, atoms} = SafeTerm.decode(bin, max_new_atoms: 100)
    assert Enum.map(atoms, &Atom.to_string/1) == names
    # Now they exist: no budget needed.
    assert {:ok, ^atoms} = SafeTerm.decode(bin, max_new_atoms: 0)
  end

  test "new_atoms/3 reads an external fun's module and function with external_funs: true" do
    [m, f] = for w <- ["m", "f"], do: "safe_term_fun_#{w}_#{System.unique_integer([:positive])}"
    # fun m:f/2, encoded by hand (EXPORT_EXT: module, function, arity).
    bin = IO.iodata_to_binary([131, 113, atom_ext(m), atom_ext(f), 97, 2])

    assert SafeTerm.new_atoms(bin, 10) == {:error, {:unsafe_term, :fun}}
    assert {:ok, new} = SafeTerm.new_atoms(bin, 10, external_funs: true)
    assert Enum.sort(new) == Enum.sort([m, f])
    assert SafeTerm.new_atoms(bin, 1, external_funs: true) == {:error, {:too_many_atoms, 1}}
    assert existing_atoms([m, f]) == 0
  end

  test "an atom repeated counts once" do
    name = "safe_term_rep_#{System.unique_integer([:positive])}"
    bin = IO.iodata_to_binary([131, 108, <<3::32>>, List.duplicate(atom_ext(name), 3), 106])
    assert {:ok, [a, a, a]} = SafeTerm.decode(bin, max_new_atoms: 1)
  end

  test "funs, compressed terms and atom cache references are refused" do
    assert SafeTerm.decode(:erlang.term_to_binary(fn -> :x end)) ==
             {:error, {:unsafe_term, :fun}}

    assert SafeTerm.decode(:erlang.term_to_binary(&Kernel.inspect/1)) ==
             {:error, {:unsafe_term, :fun}}

    big = :erlang.term_to_binary(String.duplicate("a", 10_000), compressed: 9)
    assert SafeTerm.decode(big) == {:error, {:unsafe_term, :compressed}}
    assert SafeTerm.decode(<<131, 82, 0>>) == {:error, {:unsafe_term, :atom_cache_ref}}
    assert SafeTerm.decode(<<131, 200>>) == {:error, {:unsafe_term, {:tag, 200}}}
  end

  test "malformed binaries: every prefix is truncated, extra bytes are trailing" do
    bin = :erlang.term_to_binary({:ok, %{list: [1, 2.5, "x"], ref: make_ref(), big: 2 ** 80}})

    for n <- 1..(byte_size(bin) - 1) do
      assert SafeTerm.decode(binary_part(bin, 0, n)) == {:error, :truncated}
    end

    assert SafeTerm.decode(bin <> <<0>>) == {:error, :trailing_bytes}
    assert SafeTerm.decode(<<>>) == {:error, :not_etf}
    assert SafeTerm.decode(<<130, 97, 1>>) == {:error, :not_etf}
  end

  test "atoms with an invalid encoding or over 255 characters are refused" do
    assert SafeTerm.decode(<<131, 119, 2, 0xC3, 0x28>>) == {:error, {:bad_atom, <<0xC3, 0x28>>}}
    long = String.duplicate("é", 256)

    assert SafeTerm.decode(<<131, 118, byte_size(long)::16, long::binary>>) ==
             {:error, {:bad_atom, long}}
  end

  test "random corruption never raises and never exceeds the budget" do
    bins = Enum.map(sample_terms(), &:erlang.term_to_binary/1)
    :rand.seed(:exsss, {1, 2, 3})

    for _ <- 1..3_000 do
      bin = Enum.random(bins)
      pos = :rand.uniform(byte_size(bin)) - 1
      <<head::binary-size(pos), _, tail::binary>> = bin
      corrupt = <<head::binary, :rand.uniform(256) - 1, tail::binary>>

      case SafeTerm.decode(corrupt, max_new_atoms: 2) do
        {:ok, _} -> :ok
        {:error, _} -> :ok
      end
    end
  end

  test "wrong argument types raise" do
    assert_raise ArgumentError, fn -> SafeTerm.decode(:not_binary) end
    assert_raise ArgumentError, fn -> SafeTerm.decode(<<131, 106>>, max_new_atoms: -1) end
  end

  defp atom_ext(name), do: [118, <<byte_size(name)::16>>, name]
end
