defmodule Sandbox.Test.AtomFixtures do
  @moduledoc false
  # BEAMs whose literals hold atoms the test VM does not have.

  alias Sandbox.Test.Peer

  @doc """
  A BEAM of `module` exporting `function/0`, which returns `n` atoms no VM
  has yet (`fresh_atom_names(tag, n)`). Built in `peer` (a VM with Elixir)
  from strings, so that none is made in the caller's VM (in a fun: eval's
  binding would bring them back).
  """
  def fresh_atoms_beam(peer, module, function, n, tag \\ System.unique_integer([:positive])) do
    Peer.eval(peer, """
    (fn ->
      atoms = for i <- 1..#{n}, do: String.to_atom("fresh_atom_#{tag}_\#{i}")
      forms = [
        {:attribute, 1, :module, #{inspect(module)}},
        {:attribute, 1, :export, [{#{inspect(function)}, 0}]},
        {:function, 1, #{inspect(function)}, 0, [{:clause, 1, [], [], [:erl_parse.abstract(atoms)]}]}
      ]
      {:ok, _, bin} = :compile.forms(forms, [:binary])
      bin
    end).()
    """)
  end

  @doc "The names of the atoms in `fresh_atoms_beam/5`'s BEAM of `tag`."
  def fresh_atom_names(tag, n), do: for(i <- 1..n, do: "fresh_atom_#{tag}_#{i}")

  @doc """
  How many of `names` are atoms of this VM (none is made to find out): a
  check that a refused load made none of them, which other tests' atoms
  cannot disturb, as they would a difference of atom counts.
  """
  def existing_atoms(names) do
    Enum.count(names, fn name ->
      try do
        _ = String.to_existing_atom(name)
        true
      rescue
        ArgumentError -> false
      end
    end)
  end
end
