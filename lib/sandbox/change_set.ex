defmodule Sandbox.ChangeSet do
  @moduledoc """
  One change to a sandbox's code, built once and applied as a whole.

  Create, reload, automatic reload, rollback and destroy are all the same
  operation: a change set is built here from the sandbox's version store
  (`Sandbox.ModuleVersionManager`) and what is to change, applied by
  `Sandbox.StatePreservation.apply/2`, and recorded by
  `Sandbox.ModuleVersionManager.record/2`. Building it does all of the
  per-BEAM work exactly once: parse, validate, checksum, one dependency
  graph of the result (in C), the renames of the result, and relocation.

  A change holds entries for modules that are:

    * `added` — new to the sandbox (version 1);
    * `changed` — a BEAM whose bytes differ from the current version's (the
      next version; for a rollback, the kept version gone back to);
    * `removed` — gone from the sandbox;
    * `relinked` — unchanged, but relocated again because the renames
      changed under it (a module it names was added): loaded with the
      change, no new version;
    * `shims` — the sandbox's copies of the library's shim modules (create),
      and its copy of the guard whenever the change needs guard functions
      the loaded copy does not export (see "The guard's exports").

  Each entry is a map: `kind`, `module` (original name), `name` (relocated),
  `beam` (as given), `binary` (relocated, what is loaded), `old_binary`
  (what was loaded before, to restore), `checksum` (hex), `parsed`
  (`Sandbox.Beam.t()`), `deps` (its dependencies in the result's graph),
  `from` and `to` (versions; `nil` for none), `old_parsed` (a changed
  module's parse before the change) and `slot` (a removed module's store
  slot, so that reverting the change restores its history).

  `graph` is the dependency graph of the sandbox after the change, `order`
  the entries to load in reload order (dependencies first), `renames` the
  sandbox's renames after it, `protocols` the consolidated host protocols
  its types implement after it (`Sandbox.Protocols`) and `from_protocols`
  those before it. `guard_exports` are the functions the sandbox's copy of
  `Sandbox.Guard` exports after the change.

  ## The guard's exports

  Every function a module exports or calls takes an entry in the VM's
  export table, which is never freed and holds 524,288 entries in OTP 25
  (a full table stops the VM). The guard template has one function per
  guarded operation, more than 400 in all, so a copy of all of them per
  sandbox would use up the table after about a thousand sandboxes. A
  sandbox's copy of the guard therefore exports only the functions its
  relocated code calls (imports and external funs in literals). A change
  whose code calls one more loads a new copy with the union, in the same
  atomic load as the change; the set only grows, so that every version a
  rollback can go back to still finds its functions. Dynamic calls and
  funs handed to the guard never need the copy's exports
  (`Sandbox.Guard.Runtime` calls its checks directly).
  """

  alias Sandbox.{Beam, SecurityController}
  alias Sandbox.ModuleVersionManager, as: Store

  @type kind :: :create | :reload | :rollback | :revert | :destroy
  @type entry :: %{
          kind: :added | :changed | :removed | :relinked | :shim,
          module: module,
          name: module,
          beam: binary | nil,
          binary: binary | nil,
          old_binary: binary | nil,
          checksum: String.t() | nil,
          parsed: Beam.t() | nil,
          deps: [module],
          from: pos_integer | nil,
          to: pos_integer | nil
        }

  @type t :: %__MODULE__{
          sandbox_id: String.t(),
          kind: kind,
          added: [entry],
          changed: [entry],
          removed: [entry],
          relinked: [entry],
          shims: [entry],
          unchanged: [module],
          renames: %{module => module},
          redirects: %{module => module},
          graph: %{module => [module]},
          protocols: Sandbox.Protocols.t(),
          from_protocols: Sandbox.Protocols.t(),
          order: [entry],
          guard_exports: MapSet.t({atom, arity})
        }

  defstruct sandbox_id: nil,
            kind: :reload,
            added: [],
            changed: [],
            removed: [],
            relinked: [],
            shims: [],
            unchanged: [],
            renames: %{},
            redirects: %{},
            graph: %{},
            protocols: %{},
            from_protocols: %{},
            order: [],
            guard_exports: MapSet.new()

  @relocate_opts [debug_info: :strip]
  # Capability guards in relocation (per-function redirects of guarded
  # calls, dynamic calls rewritten into calls of the guard). Off, guarded
  # calls are not redirected (forbidden ones are refused all the same).
  @guards_in_relocation true

  @doc """
  The change that creates a sandbox: every module of `modules`
  (`[{module, beam}]` or BEAMs) added to the empty `store`, and a copy of
  each shim template in `shims` (`[{host_module, template}]`) relocated for
  the sandbox, with calls to each host module redirected to its copy.
  `shim_renames` are extra renames of the shim templates (such as the atom
  through which a shim knows its sandbox).
  """
  @spec create(Store.t(), [{module, binary} | binary], [{module, module}], map) ::
          {:ok, t} | {:error, term}
  def create(%Store{} = store, modules, shims, shim_renames \\ %{}) do
    with {:ok, shim_entries, redirects} <- build_shims(store.id, shims, shim_renames),
         store = %{store | redirects: redirects},
         {:ok, given} <- parse_given(Enum.map(modules, &beam_of/1), store, allow_unchanged: false) do
      assemble(store, :create, given, [], shim_entries)
    end
  end

  defp beam_of({_module, beam}), do: beam
  defp beam_of(beam), do: beam

  @doc """
  A reload: `beams` (BEAM binaries under their original names) replace or
  add modules, and the modules in `opts[:remove]` go. `{:ok, :unchanged}`
  when every BEAM is byte-identical to its module's current version and
  nothing is removed.

  Errors: `:no_beams`, `{:invalid_beam, module | nil, reason}` (`reason`
  `{:too_many_atoms, :literals, max}` when its literals would make more
  than `:max_new_atoms` atoms, `{:bad_literals, why}` for a literal table
  that does not inflate or decode, `:reserved_name` for a module named
  like the library's guard or shims,
  `Sandbox.Guard`, `Sandbox.Shim.Application` and
  `Sandbox.Shim.ErlApplication`, whose sandbox copies it would replace),
  `{:duplicate_module, module}`, `{:unknown_module, module}` (in
  `:remove`), `{:security_violation, violations}`,
  `{:dynamic_call_too_wide, sites}`, `{:atom_too_long, name}`,
  `{:relocation_failed, module, reason}`.

  `{:dynamic_call_too_wide, sites}`: the code makes a dynamic call
  (`mod.fun(...)` with a computed module or function, or `fun.(...)`) with
  more than `Sandbox.Guard.max_dynamic_arity/0` (#{32}) arguments, which
  the guard cannot take; `sites` are
  `t:Sandbox.SecurityController.wide_site/0` (`%{caller: {m, f, a}, line:
  n | nil, kind: :apply | :call_fun, arity: n}`, original names). Only
  when the sandbox has a security profile (every profile rewrites dynamic
  calls). `apply/3` with a list of any length is not limited.
  """
  @spec reload(Store.t(), [binary], keyword) :: {:ok, t} | {:ok, :unchanged} | {:error, term}
  def reload(%Store{} = store, beams, opts \\ []) do
    remove = Keyword.get(opts, :remove, [])

    with :ok <- if(beams == [] and remove == [], do: {:error, :no_beams}, else: :ok),
         {:ok, given} <- parse_given(beams, store, allow_unchanged: true),
         {:ok, removed} <- removed_entries(store, remove, given) do
      case Enum.reject(given, &(&1.kind == :unchanged)) do
        [] when removed == [] -> {:ok, :unchanged}
        _ -> assemble(store, :reload, given, removed, [], Keyword.get(opts, :relink, true))
      end
    end
  end

  @doc """
  A rollback of `module` to its kept `version`. Errors:
  `{:unknown_module, module}`, `{:unknown_version, module, version}`,
  `{:already_current, module, version}` and the relocation errors of
  `reload/3`.
  """
  @spec rollback(Store.t(), module, pos_integer) :: {:ok, t} | {:error, term}
  def rollback(%Store{} = store, module, version) do
    with {:ok, entry} <- Store.fetch_version(store, module, version),
         true <-
           version != store.modules[module].current ||
             {:error, {:already_current, module, version}},
         {:ok, [given]} <- parse_given([entry.beam_data], store, allow_unchanged: false) do
      assemble(store, :rollback, [%{given | to: version}], [], [])
    end
  end

  @doc """
  The inverse of an applied change `change` (for an automatic rollback):
  changed modules go back to the versions they had, added ones go, removed
  ones come back. `store` is the store after `change` was recorded.
  """
  @spec revert(Store.t(), t) :: {:ok, t}
  def revert(%Store{} = _store, %__MODULE__{} = change) do
    back = fn e -> %{e | binary: e.old_binary, old_binary: e.binary, from: e.to, to: e.from} end

    changed =
      for e <- change.changed do
        %{back.(e) | beam: nil, checksum: nil, parsed: e.old_parsed, old_parsed: e.parsed}
      end

    removed = for e <- change.added, do: %{back.(e) | kind: :removed, to: nil}
    added = for e <- change.removed, do: %{back.(e) | kind: :added}
    relinked = for e <- change.relinked, do: back.(e)

    renames =
      Enum.reduce(
        change.removed,
        Map.drop(change.renames, Enum.map(change.added, & &1.module)),
        fn e, acc -> Map.put(acc, e.module, e.name) end
      )

    {:ok,
     %__MODULE__{
       change
       | kind: :revert,
         added: added,
         changed: changed,
         removed: removed,
         relinked: relinked,
         shims: [],
         renames: renames,
         protocols: change.from_protocols,
         from_protocols: change.protocols,
         graph: Map.drop(change.graph, Enum.map(change.added, & &1.module)),
         order: Enum.reverse(added ++ changed ++ relinked)
     }}
  end

  @doc "The change that removes everything of a sandbox (destroy)."
  @spec destroy(Store.t()) :: t
  def destroy(%Store{} = store) do
    removed =
      for {module, slot} <- store.modules do
        entry(:removed, module, store.renames[module], %{old_binary: slot.binary})
      end

    shims = for name <- store.shims, do: entry(:shim, name, name, %{})

    %__MODULE__{
      sandbox_id: store.id,
      kind: :destroy,
      removed: removed ++ shims,
      protocols: %{},
      from_protocols: store.protocols,
      renames: store.renames,
      redirects: store.redirects,
      guard_exports: store.guard_exports
    }
  end

  @doc "Every module the change touches (original names), for events."
  @spec modules(t) :: [module]
  def modules(%__MODULE__{} = change),
    do: Enum.map(change.added ++ change.changed ++ change.removed, & &1.module)

  @doc "The version each added or changed module gets: `%{module => version}`."
  @spec versions(t) :: %{module => pos_integer}
  def versions(%__MODULE__{} = change),
    do: Map.new(change.added ++ change.changed, &{&1.module, &1.to})

  ## Building

  defp entry(kind, module, name, fields) do
    Map.merge(
      %{
        kind: kind,
        module: module,
        name: name,
        beam: nil,
        binary: nil,
        old_binary: nil,
        checksum: nil,
        parsed: nil,
        deps: [],
        from: nil,
        to: nil,
        old_parsed: nil,
        slot: nil
      },
      fields
    )
  end

  # Parses, validates and checksums every BEAM once, and classifies it
  # against the store: added, changed or unchanged.
  defp parse_given(beams, store, opts) do
    Enum.reduce_while(beams, {:ok, []}, fn beam, {:ok, acc} ->
      with true <- is_binary(beam) || {:error, {:invalid_beam, nil, :not_a_binary}},
           {:ok, parsed} <- tag_invalid(Beam.parse(beam), nil),
           :ok <- not_reserved(parsed.module),
           :ok <- literal_atoms(beam, parsed.module),
           :ok <- tag_invalid(Beam.validate(beam), parsed.module),
           :ok <- unique(acc, parsed.module) do
        {:cont, {:ok, [classify(store, parsed, beam, opts) | acc]}}
      else
        {:error, _} = error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, list} -> {:ok, Enum.reverse(list)}
      error -> error
    end
  end

  # The names of the sandbox's own copies of the library's modules (the
  # guard, the shims): a module of the sandbox by one of them would take
  # their place.
  @reserved [Sandbox.Guard, Sandbox.Shim.Application, Sandbox.Shim.ErlApplication]

  defp not_reserved(module) when module in @reserved,
    do: {:error, {:invalid_beam, module, :reserved_name}}

  defp not_reserved(_module), do: :ok

  # The atoms the loader makes from the literal table, which Beam.parse/2
  # does not read: bounded like the atom table's (`:max_new_atoms`), so
  # that no BEAM fills the VM's atom table when it loads.
  defp literal_atoms(beam, module) do
    max = Application.get_env(:sandbox, :max_new_atoms, 65_536)
    bytes = Application.get_env(:sandbox, :max_inflated_bytes, 256 * 1024 * 1024)

    case Beam.new_literal_atoms(beam, max, bytes) do
      {:ok, _names} ->
        :ok

      {:error, :too_many_atoms} ->
        {:error, {:invalid_beam, module, {:too_many_atoms, :literals, max}}}

      {:error, reason} ->
        {:error, {:invalid_beam, module, {:bad_literals, reason}}}
    end
  end

  defp tag_invalid({:error, reason}, module), do: {:error, {:invalid_beam, module, reason}}
  defp tag_invalid(ok, _module), do: ok

  defp unique(acc, module) do
    if Enum.any?(acc, &(&1.module == module)),
      do: {:error, {:duplicate_module, module}},
      else: :ok
  end

  defp classify(store, parsed, beam, opts) do
    module = parsed.module
    checksum = Beam.checksum_hex(beam)
    fields = %{beam: beam, parsed: parsed, checksum: checksum}

    case store.modules do
      %{^module => slot} ->
        current = Store.current(store, module)

        kind =
          if opts[:allow_unchanged] && current.checksum == checksum && current.beam_data == beam,
            do: :unchanged,
            else: :changed

        entry(
          kind,
          module,
          nil,
          Map.merge(fields, %{
            old_binary: slot.binary,
            old_parsed: slot.parsed,
            from: slot.current,
            to: slot.next
          })
        )

      _ ->
        entry(:added, module, nil, Map.put(fields, :to, 1))
    end
  end

  defp removed_entries(store, remove, given) do
    Enum.reduce_while(remove, {:ok, []}, fn module, {:ok, acc} ->
      cond do
        Enum.any?(given, &(&1.module == module)) ->
          {:cont, {:ok, acc}}

        slot = store.modules[module] ->
          fields = %{old_binary: slot.binary, from: slot.current, parsed: slot.parsed, slot: slot}
          {:cont, {:ok, [entry(:removed, module, store.renames[module], fields) | acc]}}

        true ->
          {:halt, {:error, {:unknown_module, module}}}
      end
    end)
  end

  # The result: renames and the dependency graph of every module after the
  # change, the modules relocated again because a name they hold is now
  # renamed, and every binary relocated.
  defp assemble(store, kind, given, removed, shims, relink? \\ true) do
    touched = Enum.reject(given, &(&1.kind == :unchanged))
    gone = MapSet.new(removed, & &1.module)

    parsed =
      store.modules
      |> Map.drop(MapSet.to_list(gone))
      |> Map.new(fn {m, slot} -> {m, slot.parsed} end)
      |> Map.merge(Map.new(touched, &{&1.module, &1.parsed}))

    phantoms = phantoms(store.id, parsed)

    # Calls to phantoms count as the sandbox's own.
    with {:ok, guard} <- classify(store, touched, Map.merge(phantoms, parsed)),
         {:ok, renames} <- Beam.rename_map(store.id, Map.values(parsed)),
         renames = Map.merge(phantoms, renames),
         {:ok, graph} <- graph(Map.values(parsed)) do
      relinked = if relink?, do: relinked(store, renames, touched, gone), else: []
      to_relocate = touched ++ relinked
      opts = relocate_opts(store, guard)
      # The create option :keep_atoms, for every relocation of the sandbox's modules.
      opts = Keyword.put(opts, :keep_atoms, store.keep_atoms)

      with {:ok, relocated} <- relocate_all(to_relocate, renames, store.redirects, opts),
           {:ok, guard_shims, guard_exports} <- guard_copy(store, relocated) do
        relocated = Enum.map(relocated, &%{&1 | deps: Map.get(graph, &1.module, [])})
        by_kind = Enum.group_by(relocated, & &1.kind)

        {:ok,
         %__MODULE__{
           sandbox_id: store.id,
           kind: kind,
           added: Map.get(by_kind, :added, []),
           changed: Map.get(by_kind, :changed, []),
           relinked: Map.get(by_kind, :relinked, []),
           removed: removed,
           shims: shims ++ guard_shims,
           guard_exports: guard_exports,
           unchanged: for(%{kind: :unchanged, module: m} <- given, do: m),
           renames: renames,
           redirects: store.redirects,
           graph: graph,
           protocols: Sandbox.Protocols.implementations(Map.values(parsed), renames),
           from_protocols: store.protocols,
           order: in_order(relocated, graph)
         }}
      end
    end
  end

  defp graph(parsed) do
    case Beam.dependency_graph(parsed) do
      {:ok, graph} -> {:ok, graph}
      {:error, reason} -> {:error, {:dependency_graph_failed, reason}}
    end
  end

  # Modules left as they are whose atom table holds a name that the change
  # renames anew (a module added, or a protocol implementation renamed):
  # their binaries were relocated without that rename.
  defp relinked(store, renames, touched, gone) do
    fresh =
      for {from, to} <- renames, Map.get(store.renames, from) != to, into: MapSet.new(), do: from

    skip = MapSet.union(gone, MapSet.new(touched, & &1.module))

    if MapSet.size(fresh) == 0 do
      []
    else
      for {module, slot} <- store.modules,
          not MapSet.member?(skip, module),
          Enum.any?(slot.parsed.atoms, &MapSet.member?(fresh, &1)) do
        current = Store.current(store, module)

        entry(:relinked, module, nil, %{
          beam: current.beam_data,
          parsed: slot.parsed,
          checksum: current.checksum,
          old_binary: slot.binary,
          from: slot.current,
          to: slot.current
        })
      end
    end
  end

  defp relocate_all(entries, renames, redirects, opts) do
    Enum.reduce_while(entries, {:ok, []}, fn e, {:ok, acc} ->
      case Beam.relocate(e.beam, renames, redirects, opts) do
        {:ok, bin} ->
          {:cont, {:ok, [%{e | binary: bin, name: Map.fetch!(renames, e.module)} | acc]}}

        {:error, reason} ->
          {:halt, {:error, {:relocation_failed, e.module, reason}}}
      end
    end)
    |> case do
      {:ok, list} -> {:ok, Enum.reverse(list)}
      error -> error
    end
  end

  defp in_order([_] = entries, _graph), do: entries

  defp in_order(entries, graph) do
    {:ok, groups} = Beam.reload_order(graph)
    by_module = Map.new(entries, &{&1.module, &1})
    for m <- Enum.concat(groups), e = by_module[m], e != nil, do: e
  end

  # Every call the touched modules make is classified under the sandbox's
  # profile (Sandbox.SecurityController): a forbidden one refuses the
  # change; guarded ones are redirected to the sandbox's guard.
  defp classify(%{profile: nil}, _touched, _parsed), do: {:ok, %{redirects: %{}}}

  defp classify(store, touched, parsed) do
    own = MapSet.new(Map.keys(parsed))
    modules = for e <- touched, do: {e.module, e.beam, e.parsed}

    case SecurityController.classify(modules, own, store.profile) do
      %{violations: [], too_wide: []} = result -> {:ok, result}
      %{violations: [], too_wide: sites} -> too_wide(sites)
      %{violations: violations} -> {:error, {:security_violation, violations}}
    end
  end

  # Phantom modules (Sandbox.RuntimeCode): Elixir modules that the
  # sandbox's code calls (imports, external funs) but that are neither its
  # own nor in the host (not loaded, not on the code path). Such a module
  # can only come to exist at run time, created by the sandbox itself, so
  # its name is relocated into the sandbox's namespace at load (calls and
  # the atom alike, as for an own module) and its calls count as the
  # sandbox's own. Erlang names are left alone.
  defp phantoms(id, parsed) do
    candidates =
      for {_m, p} <- parsed,
          {m, _f, _a} <- p.imports ++ p.external_funs,
          not Map.has_key?(parsed, m),
          uniq: true,
          do: m

    for m <- candidates, phantom?(m), into: %{} do
      {:ok, name} = Beam.relocated_name(id, m)
      {m, name}
    end
  end

  defp phantom?(m) do
    match?("Elixir." <> _, Atom.to_string(m)) and not :erlang.module_loaded(m) and
      not String.starts_with?(Atom.to_string(m), "Elixir.Sandbox@") and
      :code.which(m) == :non_existing
  end

  # A dynamic call is rewritten into a call of the guard's `$apply` or
  # `$call_fun` of one more arity per argument, and the guard defines them
  # only up to Sandbox.Guard.max_dynamic_arity() arguments.
  defp too_wide(sites) do
    if @guards_in_relocation,
      do: {:error, {:dynamic_call_too_wide, Enum.sort(sites)}},
      else: {:ok, %{redirects: %{}}}
  end

  # Guarded calls go to the sandbox's copy of Sandbox.Guard, and dynamic
  # calls through it (own module names mapped in every profile; checked
  # unless the profile allows everything). Needs the relocator's
  # per-function redirects and instruction rewriting.
  defp relocate_opts(store, guard) do
    if @guards_in_relocation and store.profile != nil do
      {:ok, name} = Beam.relocated_name(store.id, Sandbox.Guard)
      redirects = Map.new(guard.redirects, fn {mfa, fun} -> {mfa, {name, fun}} end)

      kinds =
        if :all in store.profile.allowed_operations,
          do: [:apply, :call_fun],
          else: [:apply, :call_fun, :send]

      @relocate_opts ++ [import_redirects: redirects, dynamic_guard: {name, kinds}]
    else
      @relocate_opts
    end
  end

  # The sandbox's copy of Sandbox.Guard, when the relocated code calls a
  # function of it that the loaded copy does not export: a new copy that
  # exports the union (see "The guard's exports").
  defp guard_copy(store, relocated) do
    {:ok, name} = Beam.relocated_name(store.id, Sandbox.Guard)
    needed = guard_calls(relocated, name)

    if MapSet.subset?(needed, store.guard_exports) do
      {:ok, [], store.guard_exports}
    else
      exports = MapSet.union(needed, store.guard_exports)
      {^name, beam, bin} = guard_binary(store.id, name, exports)
      {:ok, [entry(:shim, Sandbox.Guard, name, %{beam: beam, binary: bin})], exports}
    end
  end

  defp guard_calls(relocated, name) do
    for e <- relocated,
        {:ok, parsed} = Beam.parse(e.binary),
        {^name, f, a} <- parsed.imports ++ parsed.external_funs,
        into: MapSet.new(),
        do: {f, a}
  end

  @doc false
  # The guard template relocated for sandbox `id` as `name`, exporting only
  # `exports` (and module_info/0,1): `{name, template_beam, binary}`.
  def guard_binary(id, name, exports) do
    {Sandbox.Guard, template, _} = :code.get_object_code(Sandbox.Guard)
    keep = MapSet.union(exports, MapSet.new([{:module_info, 0}, {:module_info, 1}]))
    {:ok, filtered} = Beam.filter_exports(template, keep)
    renames = %{Sandbox.Guard => name, __sandbox_shim_id__: String.to_atom(id)}
    {:ok, bin} = Beam.relocate(filtered, renames, %{}, @relocate_opts)
    {name, template, bin}
  end

  defp build_shims(_id, [], _extra), do: {:ok, [], %{}}

  defp build_shims(id, shims, extra) do
    Enum.reduce_while(shims, {:ok, [], %{}}, fn {host, template}, {:ok, acc, redirects} ->
      {^template, beam, _} = :code.get_object_code(template)
      {:ok, name} = Beam.relocated_name(id, template)

      case Beam.relocate(beam, Map.put(extra, template, name), %{}, @relocate_opts) do
        {:ok, bin} ->
          shim = entry(:shim, template, name, %{beam: beam, binary: bin})
          redirects = if host, do: Map.put(redirects, host, name), else: redirects
          {:cont, {:ok, [shim | acc], redirects}}

        {:error, reason} ->
          {:halt, {:error, {:shim_failed, template, reason}}}
      end
    end)
    |> case do
      {:ok, list, redirects} -> {:ok, Enum.reverse(list), redirects}
      error -> error
    end
  end
end
