defmodule Sandbox.Test.ExportTableFixtures do
  @moduledoc false
  # Fills a VM's export table (in a peer: a full table stops the VM).

  @doc """
  Makes funs of functions that do not exist (each takes an export-table
  entry) until the table holds `target` entries, then loads a module so
  that they show in the active table; returns the entries then.
  """
  def fill_to(target) do
    %{entries: entries} = Sandbox.ExportTable.usage()
    need = max(target - entries, 0)
    funs = make_funs(:gx_fill, need)
    commit()
    Process.put({__MODULE__, :keep}, funs)
    Sandbox.ExportTable.usage().entries
  end

  @doc "Makes `n` funs of distinct functions of module `m` that do not exist."
  def make_funs(m, n) do
    names = for i <- 0..div(n, 256), do: :"f#{i}"
    pairs = for f <- names, a <- 0..255, do: {f, a}
    for {f, a} <- Enum.take(pairs, n), do: :erlang.make_fun(m, f, a)
  end

  # Loading code makes the staging export table (where funs of functions
  # not loaded yet go) the active one.
  defp commit do
    name = :"gx_commit_#{System.unique_integer([:positive])}"
    {:ok, ^name, bin} = :compile.forms([{:attribute, 1, :module, name}], [:binary])
    {:module, ^name} = :code.load_binary(name, ~c"gx", bin)
  end
end
