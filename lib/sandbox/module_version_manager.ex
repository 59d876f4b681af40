defmodule Sandbox.ModuleVersionManager do
  @moduledoc """
  The version store of a sandbox: what is loaded, and its history.

  A store records the changes applied to a sandbox (`Sandbox.ChangeSet`):
  for each of the sandbox's modules (original names), its current version,
  its kept versions (the seed's `module_version` maps) and what the store
  needs to build the next change (its parsed BEAM and the binary loaded
  for it). It also keeps the sandbox's renames (original name → relocated
  name, from `Sandbox.Beam.rename_map/2`), redirects, shims, the
  functions its copy of the guard exports (see `Sandbox.ChangeSet`) and
  the atoms its relocations keep as data (the create option `:keep_atoms`).

  Every module of the sandbox is version 1 when the sandbox is created; a
  module added later starts at version 1 too. Each change that alters a
  module's bytes adds its next version (numbers are never reused, even
  after a rollback, which marks the version it leaves `rolled_back_at`).
  A store lives in the sandbox's `Sandbox.Instance`, which serialises
  every change; the functions here are pure.
  """

  alias Sandbox.{Beam, ChangeSet}

  @typedoc "One version of a module (original names)."
  @type module_version :: Sandbox.Models.ModuleVersion.t()

  @typedoc "A module's slot: its current version and what is loaded for it."
  @type slot :: %{
          current: pos_integer,
          next: pos_integer,
          history: [module_version],
          parsed: Beam.t(),
          binary: binary
        }

  @typedoc "A sandbox's version store."
  @type t :: %__MODULE__{
          id: String.t(),
          max_versions: pos_integer,
          profile: Sandbox.SecurityController.profile() | nil,
          keep_atoms: [atom],
          renames: %{module => module},
          redirects: %{module => module},
          shims: [module],
          modules: %{module => slot},
          graph: %{module => [module]},
          protocols: Sandbox.Protocols.t(),
          guard_exports: MapSet.t({atom, arity})
        }

  defstruct id: nil,
            max_versions: 10,
            profile: nil,
            keep_atoms: [],
            renames: %{},
            redirects: %{},
            shims: [],
            modules: %{},
            graph: %{},
            protocols: %{},
            guard_exports: MapSet.new()

  @doc """
  An empty store for sandbox `id` (a create is the first change recorded);
  `profile` is the sandbox's security profile, which every change is
  classified under (`nil`: none); `keep_atoms` the atoms every relocation
  of its modules keeps as data (`Sandbox.Beam.relocate/4`'s `:keep_atoms`).
  """
  @spec new(String.t(), pos_integer, Sandbox.SecurityController.profile() | nil, [atom]) :: t
  def new(id, max_versions, profile \\ nil, keep_atoms \\ []),
    do: %__MODULE__{
      id: id,
      max_versions: max_versions,
      profile: profile,
      keep_atoms: keep_atoms
    }

  @doc "The relocated names of everything loaded for the sandbox (modules and shims)."
  @spec loaded(t) :: [module]
  def loaded(store), do: store.shims ++ for({m, _} <- store.modules, do: store.renames[m])

  @doc "The current version of `module`: `{:ok, version}` or `{:error, :not_found}`."
  @spec current_version(t, module) :: {:ok, pos_integer} | {:error, :not_found}
  def current_version(store, module) do
    case store.modules do
      %{^module => %{current: v}} -> {:ok, v}
      _ -> {:error, :not_found}
    end
  end

  @doc "The kept versions of `module`, oldest first (`[]` for an unknown module)."
  @spec versions(t, module) :: [module_version]
  def versions(store, module) do
    case store.modules do
      %{^module => %{history: history}} -> history
      _ -> []
    end
  end

  @doc "The current version's entry of `module`, or `nil`."
  @spec current(t, module) :: module_version | nil
  def current(store, module) do
    case store.modules do
      %{^module => %{current: v, history: history}} -> Enum.find(history, &(&1.version == v))
      _ -> nil
    end
  end

  @doc "A kept version of `module`: `{:ok, entry}` or `{:error, reason}`."
  @spec fetch_version(t, module, pos_integer) :: {:ok, module_version} | {:error, term}
  def fetch_version(store, module, version) do
    case store.modules do
      %{^module => %{history: history}} ->
        case Enum.find(history, &(&1.version == version)) do
          nil -> {:error, {:unknown_version, module, version}}
          entry -> {:ok, entry}
        end

      _ ->
        {:error, {:unknown_module, module}}
    end
  end

  @doc """
  The dependency graph of the current versions: `%{module => [module]}`,
  original names, each module's calls into other modules of the sandbox.
  """
  @spec dependency_graph(t) :: %{module => [module]}
  def dependency_graph(store), do: store.graph

  @doc """
  `modules` in reload order, dependencies first, the members of a cycle
  adjacent: `{:ok, modules}` or `{:error, {:unknown_module, module}}`.
  """
  @spec reload_order(t, [module]) :: {:ok, [module]} | {:error, term}
  def reload_order(store, modules) when is_list(modules) do
    case Enum.find(modules, &(not Map.has_key?(store.modules, &1))) do
      nil ->
        wanted = MapSet.new(modules)
        {:ok, groups} = Beam.reload_order(dependency_graph(store))
        {:ok, groups |> Enum.concat() |> Enum.filter(&MapSet.member?(wanted, &1))}

      unknown ->
        {:error, {:unknown_module, unknown}}
    end
  end

  @doc """
  Records an applied change: added modules get their first version,
  changed ones their new version (or, for a rollback, the kept version
  they went back to, the one left marked `rolled_back_at`), removed ones
  go. Relinked modules (same BEAM, relocated again) keep their version.
  """
  @spec record(t, ChangeSet.t()) :: t
  def record(store, %ChangeSet{} = change) do
    now = DateTime.utc_now()
    modules = Map.drop(store.modules, Enum.map(change.removed, & &1.module))

    modules =
      Enum.reduce(change.added ++ change.changed ++ change.relinked, modules, fn e, modules ->
        Map.put(
          modules,
          e.module,
          record_entry(store, Map.get(modules, e.module), e, change, now)
        )
      end)

    %{
      store
      | modules: modules,
        graph: change.graph,
        protocols: change.protocols,
        renames: change.renames,
        redirects: change.redirects,
        shims: Enum.uniq(store.shims ++ Enum.map(change.shims, & &1.name)),
        guard_exports: MapSet.union(store.guard_exports, change.guard_exports)
    }
  end

  # A module a revert brings back gets its history back.
  defp record_entry(_store, nil, %{slot: %{} = slot} = e, _change, _now),
    do: %{slot | binary: e.binary}

  defp record_entry(store, nil, e, _change, now) do
    entry = version(store.id, e, 1, now)
    %{current: 1, next: 2, history: [entry], parsed: e.parsed, binary: e.binary}
  end

  defp record_entry(_store, slot, %{kind: :relinked} = e, _change, _now),
    do: %{slot | binary: e.binary}

  defp record_entry(_store, slot, e, %ChangeSet{kind: kind}, now)
       when kind in [:rollback, :revert] do
    history =
      Enum.map(slot.history, fn
        %{version: v} = h when v == slot.current -> %{h | rolled_back_at: now}
        h -> h
      end)

    %{slot | current: e.to, history: history, parsed: e.parsed, binary: e.binary}
  end

  defp record_entry(store, slot, e, _change, now) do
    entry = version(store.id, e, e.to, now)

    %{
      slot
      | current: e.to,
        next: e.to + 1,
        parsed: e.parsed,
        binary: e.binary,
        history: trim(slot.history ++ [entry], e.to, store.max_versions)
    }
  end

  defp version(id, e, version, now) do
    %Sandbox.Models.ModuleVersion{
      sandbox_id: id,
      module: e.module,
      version: version,
      beam_data: e.beam,
      checksum: e.checksum,
      loaded_at: now,
      dependencies: e.deps,
      rolled_back_at: nil
    }
  end

  # Keeps the newest `max` versions, never dropping the current one.
  defp trim(history, current, max) do
    excess = length(history) - max

    if excess <= 0 do
      history
    else
      {_dropped, kept} =
        Enum.reduce(history, {0, []}, fn entry, {n, kept} ->
          if n < excess and entry.version != current,
            do: {n + 1, kept},
            else: {n, [entry | kept]}
        end)

      Enum.reverse(kept)
    end
  end
end
