defmodule Sandbox.Beam.Graph do
  @moduledoc """
  Module dependency graphs and the order to reload them in, computed in C.

  A graph is a map from each node (an atom, usually a module) to the nodes it
  depends on. An edge `a => [b]` means "`a` depends on `b`": `b` is reloaded
  before `a`.

      iex> {:ok, groups} = Sandbox.Beam.Graph.reload_order(%{A => [B], B => [C, A], C => []})
      iex> groups
      [[C], [A, B]]
      iex> Enum.concat(groups)
      [C, A, B]

  ## Dependency graphs

  `dependency_graph/2` builds a graph from parsed modules (`Sandbox.Beam.parse/1`):
  a module depends on every module of the given set that it calls through an
  import (a remote call `M.f(...)`) or holds as an external fun literal
  (`&M.f/1`, `fun M:F/A`). Modules outside the set (Elixir, OTP, the host's
  dependencies) are left out. A module never depends on itself: a remote call
  to its own module (`__MODULE__.f()`) is not an edge, as it says nothing
  about reload order. Each module's dependencies are listed once, in term
  order (alphabetical for atoms).

  What the BEAM does not record as a call is not an edge: dynamic
  `apply(mod, ...)` with a computed module, a module used only as data, and
  compile-time dependencies (macros, structs expanded at compile time,
  behaviours). Callers that know those add them with the `:extra_edges`
  option, or merge maps themselves:

      Map.merge(graph, extra, fn _module, a, b -> Enum.uniq(a ++ b) end)

  ## Reload order

  `reload_order/1` finds the strongly connected components (groups of
  modules that depend on each other in a cycle) with an iterative Tarjan
  algorithm, so deep graphs cannot overflow a stack, and orders them with
  dependencies first. Time and memory are linear in the size of the graph,
  plus a sort of the node names. The result is `{:ok, groups}`: a list of
  groups, each a list of one or more nodes.

  The order is canonical, a function of the graph alone (not of map or list
  order): among the groups whose dependencies are all placed, the one whose
  first member comes first in term order goes next, and each group lists its
  members in term order. Self-loops and duplicate edges are allowed and
  change nothing. A node that appears only as a dependency, not as a key, is
  a node too.

  The flat order that `Sandbox.calculate_reload_order/2` returns ("a cycle's
  members adjacent") is `Enum.concat(groups)`.

  ## Scheduling

  Graphs of up to a few thousand nodes and edges run on the calling
  scheduler; larger ones move to a dirty CPU scheduler so that no call holds
  a normal scheduler for more than about a millisecond (see
  `:sandbox_nif.dirty_thresholds/0`).
  """

  @typedoc "A dependency graph: each node and the nodes it depends on."
  @type graph :: %{atom => [atom]}

  @typedoc "Nodes that must be reloaded together (one cycle, or a single node)."
  @type group :: [atom, ...]

  @typedoc """
  Why a graph was refused:

    * `{:bad_node, term}` — a key or a dependency is not an atom
    * `{:bad_edges, node}` — the value for `node` is not a proper list
    * `:too_large` — more than 2^32 - 2 nodes or edges
    * `:out_of_memory`
  """
  @type reason :: {:bad_node, term} | {:bad_edges, atom} | :too_large | :out_of_memory

  @doc """
  The runtime dependency graph of a set of parsed modules.

  Returns `{:ok, graph}` with one key per module, or
  `{:error, {:duplicate_module, module}}` when a module occurs twice.

  ## Options

    * `:extra_edges` — `%{module => [module]}` of edges to add, such as
      compile-time dependencies. Like the others, they are kept only between
      modules of the set, never from a module to itself. Default `%{}`.

  Raises `ArgumentError` unless `parsed_modules` is a list of
  `%Sandbox.Beam{}` structs as `Sandbox.Beam.parse/1` returns them and the
  options are as above.

      iex> {:ok, a} = Sandbox.Beam.parse(elem(:code.get_object_code(:lists), 1))
      iex> {:ok, b} = Sandbox.Beam.parse(elem(:code.get_object_code(:proplists), 1))
      iex> Sandbox.Beam.Graph.dependency_graph([a, b])
      {:ok, %{lists: [], proplists: [:lists]}}
      iex> Sandbox.Beam.Graph.dependency_graph([a, b], extra_edges: %{lists: [:proplists, :ets]})
      {:ok, %{lists: [:proplists], proplists: [:lists]}}
  """
  @spec dependency_graph([Sandbox.Beam.t()]) ::
          {:ok, graph} | {:error, {:duplicate_module, atom} | :too_large | :out_of_memory}
  @spec dependency_graph([Sandbox.Beam.t()], keyword) ::
          {:ok, graph} | {:error, {:duplicate_module, atom} | :too_large | :out_of_memory}
  def dependency_graph(parsed_modules, opts \\ [])

  def dependency_graph(parsed_modules, opts) when is_list(parsed_modules) and is_list(opts) do
    extra = extra_edges(opts)

    entries =
      Enum.map(parsed_modules, fn
        %Sandbox.Beam{module: m, imports: imports, external_funs: funs}
        when is_atom(m) and is_list(imports) and is_list(funs) ->
          {m, imports, funs, Map.get(extra, m, [])}

        other ->
          raise ArgumentError,
                "expected a parsed module (%Sandbox.Beam{}), got: #{inspect(other)}"
      end)

    try do
      :sandbox_nif.dependency_graph(entries)
    rescue
      ArgumentError ->
        reraise ArgumentError,
                [
                  message:
                    "malformed imports, external_funs or extra edges in #{inspect(parsed_modules, limit: 5)}"
                ],
                __STACKTRACE__
    end
  end

  def dependency_graph(parsed_modules, opts) do
    raise ArgumentError,
          "expected a list of parsed modules and a keyword list, got: " <>
            "#{inspect(parsed_modules)}, #{inspect(opts)}"
  end

  defp extra_edges(opts) do
    Enum.reduce(opts, %{}, fn
      {:extra_edges, extra}, _ when is_map(extra) ->
        Enum.each(extra, fn
          {from, to} when is_atom(from) and is_list(to) ->
            if not Enum.all?(to, &is_atom/1), do: bad_extra(extra)

          _ ->
            bad_extra(extra)
        end)

        extra

      {:extra_edges, extra}, _ ->
        bad_extra(extra)

      other, _ ->
        raise ArgumentError, "unknown option: #{inspect(other)}"
    end)
  end

  defp bad_extra(extra) do
    raise ArgumentError,
          "expected :extra_edges to be a map of atom => [atom], got: #{inspect(extra)}"
  end

  @doc """
  Strongly connected components of `graph` in reload order: dependencies
  before dependents, each cycle as one group, both in canonical term order
  (see the module documentation).

  Returns `{:ok, groups}`, `{:error, reason}` for a malformed graph (see
  `t:reason/0`), and raises `ArgumentError` when `graph` is not a map.

      iex> Sandbox.Beam.Graph.reload_order(%{app: [:lib, :util], lib: [:util], util: []})
      {:ok, [[:util], [:lib], [:app]]}
      iex> Sandbox.Beam.Graph.reload_order(%{a: [:b], b: [:a, :b], c: []})
      {:ok, [[:a, :b], [:c]]}
      iex> Sandbox.Beam.Graph.reload_order(%{a: [:b, "c"]})
      {:error, {:bad_node, "c"}}
  """
  @spec reload_order(graph) :: {:ok, [group]} | {:error, reason}
  def reload_order(graph) when is_map(graph), do: :sandbox_nif.reload_order(graph)

  def reload_order(other) do
    raise ArgumentError, "expected a graph (a map of atom => [atom]), got: #{inspect(other)}"
  end
end
