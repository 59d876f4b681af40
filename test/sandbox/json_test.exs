defmodule Sandbox.JSONTest do
  use ExUnit.Case, async: true

  doctest Sandbox.JSON

  test "round trips through a strict decoder" do
    term = %{
      "a" => [1, -2, 3.5, true, false, nil],
      "b" => %{"c" => "quote\" slash\\ tab\t \u0001 é"}
    }

    assert Sandbox.TestJSON.decode(Sandbox.JSON.encode!(term)) == {:ok, term}
  end

  test "atoms, tuples, structs and non-UTF-8 binaries" do
    assert Sandbox.TestJSON.decode(Sandbox.JSON.encode!({:a, [b: 1]})) ==
             {:ok, ["a", [["b", 1]]]}

    assert {:ok, %{"first" => _}} = Sandbox.TestJSON.decode(Sandbox.JSON.encode!(1..2))
    assert Sandbox.JSON.encode!(<<255>>) == ~s("<<255>>")
    assert Sandbox.JSON.encode!(self()) =~ ~r/^"#PID</
  end
end
