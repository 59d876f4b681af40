defmodule Sandbox.Beam do
  @moduledoc """
  The native BEAM toolkit: parse, validate and checksum compiled `.beam`
  binaries in C.

  Every function takes the binary itself (for example from `File.read!/1` or
  `:code.get_object_code/1`). Malformed input never crashes the VM: it is an
  `{:error, reason}` with one of the reasons below. Arguments of the wrong
  type raise `ArgumentError`. Inputs that are large, or small but costly
  (many chunks or atoms, chunks that declare they inflate a thousandfold),
  are processed on dirty CPU schedulers; the rest on the calling scheduler,
  for at most about a millisecond.

      iex> {_, bin, _} = :code.get_object_code(:lists)
      iex> {:ok, beam} = Sandbox.Beam.parse(bin)
      iex> beam.module
      :lists
      iex> Sandbox.Beam.validate(bin)
      :ok

  ## Limits

  The binaries may come from anywhere, so each call is bounded:

    * `:max_inflated_bytes` — the most bytes the compressed chunks of one
      BEAM (the literal table `LitT` and the term chunks `Attr`, `CInf`,
      `Dbgi`, `Docs`, `ExCk`, `Meta`) may declare they inflate to, together;
      for `relocate/4` also the most its rewritten terms may grow to.
      Default 256 MiB (the largest installed module declares 5.6 MB).
    * `:max_new_atoms` — the most atoms one call may create (`parse/2`, and
      the key of a `relocate/4` error). Default 65,536 (the module with the
      most atoms in OTP has 2,146). Every check runs before any atom is
      made, so a binary that is refused creates none. The atoms of the
      literal table, which the loader makes, are counted separately
      (`new_literal_atoms/3`; a sandbox's loads refuse more than this many).

  Each is taken from the call's options, else from the application
  environment (`config :sandbox, max_inflated_bytes: ..., max_new_atoms:
  ...`), else the default.

  ## Error reasons

  Chunk ids in reasons are 4-byte binaries such as `"ImpT"`.

    * `:not_iff` — the binary does not start with `FOR1`
    * `:not_beam` — the IFF form type is not `BEAM`
    * `{:truncated, :header}` — shorter than the 12-byte IFF header
    * `{:truncated, :form}` — the header declares more bytes than there are,
      and the binary ends between chunks or inside a chunk's 8-byte header
    * `{:truncated, id}` — the chunk `id` (or its padding) runs past the end
      of the binary, or its contents end early
    * `{:trailing_bytes, n}` — `n` bytes follow the IFF form or the last chunk
    * `{:bad_padding, id}` — non-zero padding after chunk `id`
    * `{:duplicate_chunk, id}` — chunk `id` occurs twice
    * `{:missing_chunk, id}` — a required chunk is absent (`"AtU8"` for the
      atom table, or `"Code"`, `"StrT"`, `"ImpT"`, `"ExpT"` for `validate/1`)
    * `{:bad_chunk, id}` — the chunk's contents contradict its size (an
      entry count that does not fit, bytes after the last entry)
    * `{:bad_atom, index}` — atom `index` (1-based) is longer than 255
      characters or not valid UTF-8, or (in the compact atom table) its length
      is not encoded as a one- or two-byte unsigned integer
    * `{:bad_atom_index, :imports | :exports | :locals, index}` — a table
      entry refers to an atom index outside the atom table
    * `{:zlib_error, "LitT"}` — the literal table does not inflate to its
      declared size, or (from `validate/1`) is stored uncompressed, which
      OTP 25's loader refuses
    * `{:bad_literal, n}` — literal `n` (0-based) is not one valid external
      term
    * `{:bad_term, id}` — a term chunk (`Attr` or `CInf`; for `validate/2`
      and `relocate/4` also `Dbgi`, `Docs`, `ExCk`, `Meta`) is not one valid
      external term
    * `{:too_large, id, bytes, cap}` — the compressed chunks up to and
      including chunk `id` declare they inflate to `bytes` bytes together, or
      (from `relocate/4`) rewriting chunk `id` would take the rewritten terms
      to `bytes`: over the `:max_inflated_bytes` cap `cap`. Nothing is
      inflated beyond the cap.
    * `{:too_many_atoms, count, max}` — the call would create `count` atoms
      (an upper bound: each occurrence of a name that is not an atom yet),
      over the `:max_new_atoms` budget `max`; none were created
    * `{:unsupported_instruction_set, n}` — the code header's instruction set
      is not 0
    * `{:unsupported_opcode, n}` — the module uses opcodes up to `n`, above
      the highest opcode of the running system, or its code has opcode `n`,
      which the running system does not load (above its highest, or retired)
    * `{:bad_code, offset}` — the instruction stream of the `Code` chunk is
      not what the compiler emits, at byte `offset` of the chunk: an operand
      of the wrong kind for its instruction (a list where it takes none, a
      register where it takes a label), a list whose count its bytes cannot
      hold or that an instruction needs in pairs, an index outside its table
      (atoms, literals, labels, imports, lambdas, line items, types, `StrT`),
      an x or y register at or above 1024, a function not laid out as the
      loader expects (label, `func_info`, entry label), or bytes after
      `int_code_end`
    * `{:bad_chunk, "Code" | "ExpT" | "FunT" | "Line" | "Type"}` (from
      `validate/2`) — besides contradicting its size: the code header's label
      or function count disagrees with the code, a label is used but never
      defined, a local call or an export or lambda does not name a
      function's entry (with its arity); or the `Line` or `Type` chunk is
      malformed
    * `:out_of_memory`
  """

  @typedoc "A 4-byte chunk id such as `\"AtU8\"`."
  @type chunk_id :: <<_::32>>

  @type reason ::
          :not_iff
          | :not_beam
          | {:truncated, :header | :form | chunk_id}
          | {:trailing_bytes, pos_integer}
          | {:bad_padding | :duplicate_chunk | :missing_chunk | :bad_chunk, chunk_id}
          | {:bad_atom, pos_integer}
          | {:bad_atom_index, :imports | :exports | :locals, non_neg_integer}
          | {:zlib_error, chunk_id}
          | {:bad_literal, non_neg_integer}
          | {:bad_term, chunk_id}
          | {:too_large, chunk_id, pos_integer, pos_integer}
          | {:too_many_atoms, pos_integer, pos_integer}
          | {:unsupported_instruction_set, non_neg_integer}
          | {:unsupported_opcode, non_neg_integer}
          | {:bad_code, non_neg_integer}
          | :out_of_memory

  @typedoc """
  A parsed module.

    * `module` — the module name (atom 1)
    * `atoms` — the atom table in order (atom index `i` is `Enum.at(atoms, i - 1)`)
    * `atom_encoding` — `:utf8` for an `AtU8` chunk, `:latin1` for the old `Atom` chunk
    * `chunks` — every chunk, interpreted or not: `{id, data_offset, size}`
    * `imports` — `{module, function, arity}` in table order
    * `exports`, `locals` — `{function, arity}` in table order
    * `external_funs` — the external funs `fun M:F/A` among the literals
      (`LitT`), sorted and without duplicates
    * `attributes` — the decoded `Attr` chunk (`[]` when absent)
    * `compile_info` — the decoded `CInf` chunk (`[]` when absent)
    * `has_literals`, `has_debug_info`, `has_docs`, `has_exck` — whether the
      `LitT`, `Dbgi`, `Docs` and `ExCk` chunks are present
  """
  @type t :: %__MODULE__{
          module: atom,
          atoms: [atom],
          atom_encoding: :utf8 | :latin1,
          chunks: [{chunk_id, non_neg_integer, non_neg_integer}],
          imports: [{atom, atom, arity}],
          exports: [{atom, arity}],
          locals: [{atom, arity}],
          external_funs: [{atom, atom, arity}],
          attributes: term,
          compile_info: term,
          has_literals: boolean,
          has_debug_info: boolean,
          has_docs: boolean,
          has_exck: boolean
        }

  defstruct module: nil,
            atoms: [],
            atom_encoding: :utf8,
            chunks: [],
            imports: [],
            exports: [],
            locals: [],
            external_funs: [],
            attributes: [],
            compile_info: [],
            has_literals: false,
            has_debug_info: false,
            has_docs: false,
            has_exck: false

  @doc """
  Parses a BEAM binary: its chunk table, atom table, import, export and local
  tables, and the `Attr` and `CInf` terms.

  Parsing checks every bound and index it reads, and walks the literal
  table for external funs; it does not look at the code (see `validate/2`
  for the checks a loadable module needs). All of that is checked before
  any atom is created.

      iex> {_, bin, _} = :code.get_object_code(:lists)
      iex> {:ok, %Sandbox.Beam{exports: exports}} = Sandbox.Beam.parse(bin)
      iex> {:reverse, 1} in exports
      true

  ## Options

    * `:max_inflated_bytes`, `:max_new_atoms` — see "Limits" above
  """
  @spec parse(binary, keyword) :: {:ok, t} | {:error, reason}
  def parse(beam, opts \\ [])

  def parse(beam, opts) when is_binary(beam) do
    case :sandbox_nif.parse(beam, limits!(opts, [:max_inflated_bytes, :max_new_atoms])) do
      {:ok, map} -> {:ok, Map.put(map, :__struct__, __MODULE__)}
      {:error, _} = error -> error
    end
  end

  def parse(other, _opts),
    do: raise(ArgumentError, "expected a BEAM binary, got: #{inspect(other)}")

  # The limit options as the NIF wrapper takes them; the others go to the
  # application environment or the defaults there.
  defp limits!(opts, allowed) do
    unless Keyword.keyword?(opts),
      do: raise(ArgumentError, "expected options, got: #{inspect(opts)}")

    Enum.reduce(opts, %{}, fn {key, value}, acc ->
      cond do
        key not in allowed ->
          raise ArgumentError, "unknown option #{inspect(key)}"

        not (is_integer(value) and value > 0) ->
          raise ArgumentError,
                "#{inspect(key)} must be a positive integer, got: #{inspect(value)}"

        true ->
          Map.put(acc, key, value)
      end
    end)
  end

  @doc """
  Checks that a BEAM binary is well formed enough to be offered to the loader.

  Beyond `parse/2`: the required chunks (`Code`, `StrT`, `ImpT`, `ExpT`)
  are present, the literal table inflates and every literal is one valid
  external term, every term chunk (`Attr`, `CInf`, `Dbgi`, `Docs`, `ExCk`,
  `Meta`) is one valid external term, the code header names instruction
  set 0 and no opcode above the running system's highest, and the whole
  instruction stream decodes: every instruction is one OTP 25's loader
  takes, every operand has the kind its instruction expects and refers
  within its table, lists occur only where an instruction takes one, and
  the functions, exports (`ExpT`), lambdas (`FunT`) and line table (`Line`)
  agree with the code. The loader trusts operand shapes (it allocates a
  list's count before reading the list, indexes tables by operand values),
  so a binary that `validate/2` accepts is either loaded or refused by
  `:code.load_binary/3`, never a crash of the VM. Returns `:ok` or
  `{:error, reason}`. Creates no atoms; linear in the size of the binary.

      iex> Sandbox.Beam.validate("FOR1")
      {:error, {:truncated, :header}}

  ## Options

    * `:max_inflated_bytes` — see "Limits" above
  """
  @spec validate(binary, keyword) :: :ok | {:error, reason}
  def validate(beam, opts \\ [])

  def validate(beam, opts) when is_binary(beam),
    do: :sandbox_nif.validate(beam, limits!(opts, [:max_inflated_bytes]))

  def validate(other, _opts),
    do: raise(ArgumentError, "expected a BEAM binary, got: #{inspect(other)}")

  @typedoc """
  A call site (see `call_sites/2`).
  """
  @type call_site :: %{
          caller: {atom, arity} | nil,
          line: pos_integer | nil,
          kind: :call | :bif | :fun | :apply | :call_fun | :send,
          target: mfa | {:apply, arity} | {:call_fun, arity} | :send
        }

  @doc """
  Every call site of a BEAM's code, in code order.

  The `Code` chunk is decoded (and validated, as `validate/2` does) and each
  instruction that calls, or refers to a fun, gives one site:

    * `:call` — `call_ext`, `call_ext_last`, `call_ext_only`: `target` is the
      import `{m, f, a}`
    * `:bif` — `bif0`..`bif2`, `gc_bif1`..`gc_bif3`: the import `{m, f, a}`
      (the guard BIFs such as `element/2` and arithmetic)
    * `:fun` — an external fun `fun M:F/A` in a literal (`&Mod.fun/1`):
      `{m, f, a}`, one site for each instruction that refers to the literal;
      a literal no instruction refers to gives one site with `caller: nil`
    * `:apply` — `apply`, `apply_last` (module and function computed at run
      time): `{:apply, arity}`
    * `:call_fun` — `call_fun`, `call_fun2`: `{:call_fun, arity}`
    * `:send` — `send`: `:send`

  `caller` is the `{function, arity}` whose `func_info` precedes the
  instruction; `line` is that of the most recent `line` instruction,
  resolved through the `Line` chunk (`nil` without line information).
  Local funs (`make_fun3`) are not call sites: their bodies are code of
  the module, and calls made there are listed like any other.

      iex> {_, bin, _} = :code.get_object_code(:lists)
      iex> {:ok, sites} = Sandbox.Beam.call_sites(bin)
      iex> Enum.any?(sites, &match?(%{kind: :call, target: {:erlang, :error, 2}}, &1))
      true

  ## Options

    * `:max_inflated_bytes`, `:max_new_atoms` — see "Limits" above (the
      atoms counted are the whole atom table and the funs' names)

  Errors are `validate/2`'s reasons.
  """
  @spec call_sites(binary, keyword) :: {:ok, [call_site]} | {:error, reason}
  def call_sites(beam, opts \\ [])

  def call_sites(beam, opts) when is_binary(beam),
    do: :sandbox_nif.call_sites(beam, limits!(opts, [:max_inflated_bytes, :max_new_atoms]))

  def call_sites(other, _opts),
    do: raise(ArgumentError, "expected a BEAM binary, got: #{inspect(other)}")

  @doc """
  `beam` with its export table (the `ExpT` chunk) cut down to the functions
  in `keep` (`{name, arity}` pairs): the others stay in the module as local
  functions, and `module_info(:exports)` lists only those kept. Every
  other chunk is kept as it is.

  Used to load a module that takes fewer entries of the VM's export
  table, which is never freed (see `Sandbox.ChangeSet`, "The guard's
  exports").

      iex> {_, bin, _} = :code.get_object_code(:lists)
      iex> {:ok, small} = Sandbox.Beam.filter_exports(bin, [{:reverse, 1}])
      iex> {:ok, {:lists, [exports: exports]}} = :beam_lib.chunks(small, [:exports])
      iex> exports
      [reverse: 1]

  Returns `{:error, reason}` when `beam` is not a BEAM `:beam_lib` can
  read (`reason` as `:beam_lib` gives it).
  """
  @spec filter_exports(binary, Enumerable.t()) :: {:ok, binary} | {:error, term}
  def filter_exports(beam, keep) when is_binary(beam) do
    keep = MapSet.new(keep)

    with {:ok, {_module, [atoms: atoms]}} <- :beam_lib.chunks(beam, [:atoms]),
         {:ok, _module, chunks} <- :beam_lib.all_chunks(beam),
         {~c"ExpT", <<_count::32, entries::binary>>} <- List.keyfind(chunks, ~c"ExpT", 0) do
      names = Map.new(atoms)

      kept =
        for <<f::32, a::32, label::32 <- entries>>,
            MapSet.member?(keep, {Map.get(names, f), a}),
            do: <<f::32, a::32, label::32>>

      exp_t = IO.iodata_to_binary([<<length(kept)::32>> | kept])
      :beam_lib.build_module(List.keyreplace(chunks, ~c"ExpT", 0, {~c"ExpT", exp_t}))
    else
      {:error, :beam_lib, reason} -> {:error, reason}
      _ -> {:error, :no_export_table}
    end
  end

  def filter_exports(other, _keep),
    do: raise(ArgumentError, "expected a BEAM binary, got: #{inspect(other)}")

  @doc """
  The atoms the literals of `beam` (its `LitT` chunk) would create when
  the module is loaded, without creating any: `{:ok, names}` (UTF-8
  names, each once), `{:error, :too_many_atoms}` past `max` of them, or
  `{:error, reason}` for a literal table that does not inflate (within
  `max_bytes`, default 64 MiB) or decode. `parse/2` counts only the atom
  table; the loader makes the literals' atoms too.

      iex> {_, bin, _} = :code.get_object_code(:lists)
      iex> Sandbox.Beam.new_literal_atoms(bin, 10)
      {:ok, []}
  """
  @spec new_literal_atoms(binary, non_neg_integer, pos_integer) ::
          {:ok, [binary]} | {:error, term}
  def new_literal_atoms(beam, max, max_bytes \\ 64 * 1024 * 1024) when is_binary(beam) do
    case :beam_lib.chunks(beam, [~c"LitT"], [:allow_missing_chunks]) do
      {:ok, {_, [{~c"LitT", :missing_chunk}]}} ->
        {:ok, []}

      {:ok, {_, [{~c"LitT", <<_size::32, compressed::binary>>}]}} ->
        with {:ok, table} <- inflate(compressed, max_bytes), do: literal_atoms(table, max)

      {:ok, _} ->
        {:error, :bad_literals}

      {:error, :beam_lib, reason} ->
        {:error, reason}
    end
  end

  defp literal_atoms(<<_count::32, entries::binary>>, max),
    do: literal_atoms(entries, max, MapSet.new())

  defp literal_atoms(_other, _max), do: {:error, :bad_literals}

  defp literal_atoms(<<>>, _max, names), do: {:ok, MapSet.to_list(names)}

  defp literal_atoms(<<len::32, etf::binary-size(len), rest::binary>>, max, names) do
    case Sandbox.SafeTerm.new_atoms(etf, max, external_funs: true) do
      {:ok, new} ->
        names = Enum.into(new, names)

        if MapSet.size(names) > max,
          do: {:error, :too_many_atoms},
          else: literal_atoms(rest, max, names)

      {:error, {:too_many_atoms, _}} ->
        {:error, :too_many_atoms}

      {:error, _} ->
        {:error, :bad_literals}
    end
  end

  defp literal_atoms(_rest, _max, _names), do: {:error, :bad_literals}

  # Inflates at most `cap` bytes.
  defp inflate(compressed, cap) do
    z = :zlib.open()

    try do
      :ok = :zlib.inflateInit(z)
      inflate_loop(z, :zlib.safeInflate(z, compressed), [], 0, cap)
    rescue
      _ -> {:error, :bad_literals}
    after
      :zlib.close(z)
    end
  end

  defp inflate_loop(z, {status, out}, acc, size, cap) do
    size = size + IO.iodata_length(out)

    cond do
      size > cap -> {:error, :too_large}
      status == :finished -> {:ok, IO.iodata_to_binary([acc, out])}
      true -> inflate_loop(z, :zlib.safeInflate(z, []), [acc, out], size, cap)
    end
  end

  @id_pattern ~r/\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\z/

  @doc """
  The name module `module` gets in sandbox `id`.

  An Elixir module `Elixir.Rest` becomes `Elixir.Sandbox@<id>.Rest`; an
  Erlang module `m` becomes `sandbox@<id>@m`. Ids match
  `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`, so they contain neither `@` nor `.`
  and relocated names never collide across sandboxes or with host modules.

      iex> Sandbox.Beam.relocated_name("a", Demo.Counter)
      {:ok, :"Elixir.Sandbox@a.Demo.Counter"}
      iex> Sandbox.Beam.relocated_name("a", :demo_sup)
      {:ok, :"sandbox@a@demo_sup"}
      iex> Sandbox.Beam.relocated_name("no.dots", :m)
      {:error, {:invalid_id, "no.dots"}}

  Returns `{:error, {:atom_too_long, name}}` (`name` a string) when the
  result would exceed 255 characters.
  """
  @spec relocated_name(String.t(), module) ::
          {:ok, module} | {:error, {:invalid_id, term} | {:atom_too_long, String.t()}}
  def relocated_name(id, module) when is_atom(module) do
    with :ok <- check_id(id), do: to_atom(relocated_string(id, Atom.to_string(module)))
  end

  def relocated_name(_id, module),
    do: raise(ArgumentError, "expected a module name (atom), got: #{inspect(module)}")

  defp check_id(id) do
    if is_binary(id) and Regex.match?(@id_pattern, id), do: :ok, else: {:error, {:invalid_id, id}}
  end

  defp relocated_string(id, "Elixir." <> rest), do: "Elixir.Sandbox@#{id}." <> rest
  defp relocated_string(id, name), do: "sandbox@#{id}@" <> name

  defp to_atom(name) do
    if String.length(name) > 255,
      do: {:error, {:atom_too_long, name}},
      else: {:ok, String.to_atom(name)}
  end

  @doc """
  The renames for a sandbox's whole set of modules: each module's
  `relocated_name/2`, except protocol implementations, which are named so
  that protocol dispatch finds them:

    * an implementation of a host protocol `P` for a sandbox type `T` is
      `P.<relocated T without "Elixir.">`, e.g.
      `Elixir.String.Chars.Sandbox@a.Counter.Point`;
    * an implementation of a sandbox protocol is the relocated protocol's name
      followed by the type's name (relocated when the type is the sandbox's).

  An implementation of a host protocol for a host type cannot be given a
  name that dispatch finds without replacing the host's own implementation,
  so it is relocated like any other module (and is not dispatched to).

  `modules` are parsed modules (`parse/1`); implementations are recognised
  by their `__impl__` attribute.
  """
  @spec rename_map(String.t(), [t]) ::
          {:ok, %{module => module}}
          | {:error, {:invalid_id, term} | {:atom_too_long, String.t()}}
  def rename_map(id, modules) when is_list(modules) do
    with :ok <- check_id(id) do
      own = MapSet.new(modules, &module_of/1)

      Enum.reduce_while(modules, {:ok, %{}}, fn beam, {:ok, acc} ->
        case to_atom(renamed_string(id, beam, own)) do
          {:ok, new} -> {:cont, {:ok, Map.put(acc, beam.module, new)}}
          error -> {:halt, error}
        end
      end)
    end
  end

  def rename_map(_id, other),
    do: raise(ArgumentError, "expected a list of %Sandbox.Beam{}, got: #{inspect(other)}")

  defp module_of(%__MODULE__{module: m}), do: m

  defp module_of(other),
    do: raise(ArgumentError, "expected a %Sandbox.Beam{}, got: #{inspect(other)}")

  defp renamed_string(id, %__MODULE__{module: module, attributes: attrs}, own) do
    with impl when is_list(impl) <- Keyword.get(List.wrap(attrs), :__impl__),
         protocol when is_atom(protocol) <- Keyword.get(impl, :protocol),
         type when is_atom(type) <- Keyword.get(impl, :for),
         true <- MapSet.member?(own, protocol) or MapSet.member?(own, type) do
      proto = if MapSet.member?(own, protocol), do: relocated_string(id, Atom.to_string(protocol))
      proto = proto || Atom.to_string(protocol)
      type = Atom.to_string(type)

      type =
        if MapSet.member?(own, String.to_atom(type)), do: relocated_string(id, type), else: type

      proto <> "." <> String.replace_prefix(type, "Elixir.", "")
    else
      _ -> relocated_string(id, Atom.to_string(module))
    end
  end

  @doc """
  Relocates a BEAM: renames module atoms and redirects calls, without
  re-parsing source or touching the code.

    * `renames` (`%{module => new_name}`) — every atom equal to a key is
      replaced, in the atom table and inside every term chunk (`LitT`,
      `Attr`, `CInf`, `Dbgi`, `Docs`, `ExCk`, `Meta`): the module's own
      name, structs' `__struct__`, behaviours, literal `apply` targets,
      external funs. Every other atom is left alone.
    * `redirects` (`%{host_module => shim}`) — calls to `host_module` go to
      `shim` instead: the shim's name is appended to the atom table and only
      the import entries and external fun literals (`&Application.get_env/2`)
      naming `host_module` are repointed. The atom `host_module` used as data
      is unchanged. Imports of `:erlang` BIFs cannot be redirected.

  Chunks that refer to atoms by index (`Code`, `ExpT`, `LocT`, `FunT`,
  `Line`, `Type`), `StrT` and unknown chunks are kept byte for byte (the
  `Code` chunk except with `:dynamic_guard` or `:keep_atoms`). The result always has an
  `AtU8` atom table.

  Every term chunk it rewrites, and every literal, is walked whole (and so
  validated) before it is rewritten.

  ## Options

    * `:debug_info` — `:keep` (default) rewrites `Dbgi` and `Docs` like the
      other term chunks; `:strip` drops them (no debugger, `:cover` or docs
      for the relocated module, and much faster).
    * `:import_redirects` — `%{{m, f, a} => {m2, f2}}`: exactly the imports
      of `m:f/a` (the `ImpT` entries) and the external fun literals
      `fun m:f/a` (in every term chunk) become `m2:f2/a`, same arity. The
      keys are matched against the names in the binary as given (before
      `renames`); `m2` and `f2` are final names, written as given (appended
      to the atom table, which keeps its existing atoms: data atoms never
      change). Takes precedence over a module-level `redirects` entry for
      the same import. An import that a `bif`/`gc_bif` instruction uses must
      stay a BIF: redirecting one is `{:error, {:bif_redirect, {m, f, a}}}`.
    * `:dynamic_guard` — `{guard, kinds}`, `kinds` a non-empty subset of
      `[:apply, :call_fun, :send]`: rewrites the code's dynamic calls of
      those kinds into calls of module `guard`:

        * `apply A` / `apply_last A, D` (`mod.fun(args)` with a computed
          module or function) call `guard.'$apply'/(A + 2)` with the
          arguments, then the module and the function;
        * `call_fun A` / `call_fun2` (calling a fun value) call
          `guard.'$call_fun'/(A + 1)` with the arguments, then the fun;
        * `send` (`dest ! msg`) calls `guard.'$send'/2` with the
          destination and the message, and must return the message.

      The guard's imports are appended to `ImpT` (and its names to the atom
      table). A guard whose functions just do the operation (`apply(m, f,
      args)`, `apply(fun, args)`, `send(dest, msg)`) leaves the module's
      behaviour unchanged (stack traces show the guard's frames). A call
      that would take more than 255 arguments is
      `{:error, {:arity_too_large, {:apply | :call_fun, arity}}}`. Count the
      rewritten sites with `call_sites/2` before relocating.
    * `:keep_atoms` — a list of atoms (default `[]`) that `renames` renames
      but that keep their original name wherever they are data: the `Code`
      chunk's atom operands (`{telemetry, handler, failure}` built at run
      time, `application:get_env(telemetry, k)`) and literals. Calls
      (imports, `fun m:f/a` in literals), exports, the module's own name
      (the atom table entry, `func_info`, the bodies of `module_info/0,1`
      and `__info__/1`) and the other term chunks are still renamed: for
      each kept atom that the module holds and `renames` renames, one atom
      of the original name is appended to the atom table and the operands
      naming it are repointed there (so the `Code` chunk is decoded,
      validated and rewritten, as with `:dynamic_guard`). The bytecode
      cannot tell data from identity: every data use changes, including
      `?MODULE` / `__MODULE__` as an ETS table name, a registered name or
      a process group (then shared with the host and other sandboxes
      keeping the atom), as a callback module given to `gen_server` or
      `apply/3` (which then reaches the host's module of that name, if
      any) and as a struct's `__struct__`. Names not in `renames` change
      nothing.
    * `:max_inflated_bytes`, `:max_new_atoms` — see "Limits" above

  With `:import_redirects` (when one applies), `:dynamic_guard` or
  `:keep_atoms` (when the module holds one), the `Code` chunk is decoded
  and validated as `validate/2` does, and its reasons apply.

  ## Errors

  Besides the reasons of `parse/2` (a term chunk that does not inflate to
  its declared size is `{:zlib_error, id}`):

    * `{:atom_too_long, name}` — a resulting atom would be over 255 bytes
    * `{:duplicate_map_key, key}` — renaming makes two keys of a literal map
      equal
    * `{:cannot_redirect_bif, {:erlang, f, a}}` — a redirect of `:erlang`
      would repoint a BIF import
    * `{:bif_redirect, {m, f, a}}` and `{:arity_too_large, {kind, arity}}`
      — see the options above

  Wrong argument types (a non-binary BEAM, renames or redirects that are not
  maps of atoms to atoms, an unknown option) raise `ArgumentError`.
  """
  @spec relocate(binary, %{module => module}, %{module => module}, keyword) ::
          {:ok, binary}
          | {:error,
             reason
             | {:atom_too_long, String.t()}
             | {:duplicate_map_key, term}
             | {:cannot_redirect_bif, mfa}
             | {:bif_redirect, mfa}
             | {:arity_too_large, {:apply | :call_fun, arity}}}
  def relocate(beam, renames, redirects \\ %{}, opts \\ [])

  def relocate(beam, renames, redirects, opts) when is_binary(beam) do
    strip = strip_option(opts)
    guards = guard_options!(opts)

    limits =
      opts
      |> Keyword.drop([:debug_info, :import_redirects, :dynamic_guard, :keep_atoms])
      |> limits!([:max_inflated_bytes, :max_new_atoms])

    check_atom_map!(renames, "renames")
    check_atom_map!(redirects, "redirects")

    with :ok <- check_bif_redirects(beam, redirects, limits) do
      case :sandbox_nif.relocate(beam, renames, redirects, strip, guards, limits) do
        {:error, :badarg} -> raise ArgumentError, "relocate: the NIF refused its arguments"
        result -> result
      end
    end
  end

  def relocate(other, _renames, _redirects, _opts),
    do: raise(ArgumentError, "expected a BEAM binary, got: #{inspect(other)}")

  @guard_kinds [:apply, :call_fun, :send]

  defp guard_options!(opts) do
    guards =
      case Keyword.get(opts, :import_redirects, %{}) do
        map when is_map(map) ->
          Enum.each(:maps.to_list(map), fn
            {{m, f, a}, {m2, f2}}
            when is_atom(m) and is_atom(f) and is_integer(a) and a in 0..255 and is_atom(m2) and
                   is_atom(f2) ->
              :ok

            pair ->
              raise ArgumentError,
                    ":import_redirects must map {m, f, a} to {m2, f2}, got: #{inspect(pair)}"
          end)

          %{import_redirects: map}

        other ->
          raise ArgumentError, ":import_redirects must be a map, got: #{inspect(other)}"
      end

    guards =
      case Keyword.get(opts, :keep_atoms, []) do
        [] ->
          guards

        atoms when is_list(atoms) ->
          unless not List.improper?(atoms) and Enum.all?(atoms, &is_atom/1),
            do:
              raise(ArgumentError, ":keep_atoms must be a list of atoms, got: #{inspect(atoms)}")

          Map.put(guards, :keep_atoms, Enum.uniq(atoms))

        other ->
          raise ArgumentError, ":keep_atoms must be a list of atoms, got: #{inspect(other)}"
      end

    case Keyword.get(opts, :dynamic_guard) do
      nil ->
        guards

      {module, kinds} = value when is_atom(module) and is_list(kinds) ->
        unless kinds != [] and Enum.all?(kinds, &(&1 in @guard_kinds)),
          do: raise(ArgumentError, "bad :dynamic_guard #{inspect(value)}")

        Map.put(guards, :dynamic_guard, {module, Enum.uniq(kinds)})

      other ->
        raise ArgumentError,
              ":dynamic_guard must be {module, kinds} with kinds in #{inspect(@guard_kinds)}, " <>
                "got: #{inspect(other)}"
    end
  end

  defp strip_option(opts) do
    unless Keyword.keyword?(opts),
      do: raise(ArgumentError, "expected options, got: #{inspect(opts)}")

    case Keyword.get(opts, :debug_info, :keep) do
      :keep -> false
      :strip -> true
      other -> raise ArgumentError, "bad :debug_info #{inspect(other)}"
    end
  end

  # :maps.to_list/1, not Enum: a map with an :__struct__ key is still a map here.
  defp check_atom_map!(map, what) when is_map(map) do
    Enum.each(:maps.to_list(map), fn
      {from, to} when is_atom(from) and is_atom(to) ->
        :ok

      pair ->
        raise ArgumentError, "#{what} must map atoms to atoms, got: #{inspect(pair)}"
    end)
  end

  defp check_atom_map!(other, what),
    do: raise(ArgumentError, "#{what} must be a map, got: #{inspect(other)}")

  # The loader requires BIF imports of :erlang to stay BIFs.
  defp check_bif_redirects(beam, %{erlang: _}, limits) do
    with {:ok, %__MODULE__{imports: imports}} <- parse(beam, Map.to_list(limits)) do
      case Enum.find(imports, fn {m, f, a} -> m == :erlang and :erlang.is_builtin(m, f, a) end) do
        nil -> :ok
        mfa -> {:error, {:cannot_redirect_bif, mfa}}
      end
    end
  end

  defp check_bif_redirects(_beam, _redirects, _limits), do: :ok

  @doc """
  The XXH3-128 digest of `data`: 16 bytes in canonical (big-endian) order.

      iex> byte_size(Sandbox.Beam.checksum(["abc", ?d]))
      16
  """
  @spec checksum(iodata) :: <<_::128>>
  def checksum(data) when is_binary(data) or is_list(data) do
    :sandbox_nif.checksum(data)
  rescue
    ArgumentError -> raise ArgumentError, "expected iodata, got: #{inspect(data)}"
  end

  def checksum(other), do: raise(ArgumentError, "expected iodata, got: #{inspect(other)}")

  @doc """
  The XXH3-128 digest of `data` as 32 lowercase hex characters.

      iex> Sandbox.Beam.checksum_hex("") |> String.length()
      32
  """
  @spec checksum_hex(iodata) :: String.t()
  def checksum_hex(data), do: data |> checksum() |> Base.encode16(case: :lower)

  @doc """
  The runtime dependency graph of a set of parsed modules: each module's
  imports and external fun literals, restricted to the set, without
  self-edges. Option `extra_edges: %{module => [module]}` adds edges such as
  compile-time dependencies. See `Sandbox.Beam.Graph.dependency_graph/2`.
  """
  @spec dependency_graph([t]) ::
          {:ok, %{atom => [atom]}}
          | {:error, {:duplicate_module, atom} | :too_large | :out_of_memory}
  @spec dependency_graph([t], keyword) ::
          {:ok, %{atom => [atom]}}
          | {:error, {:duplicate_module, atom} | :too_large | :out_of_memory}
  defdelegate dependency_graph(parsed_modules, opts \\ []), to: Sandbox.Beam.Graph

  @doc """
  Strongly connected components of a graph `%{node => [dependency]}` in
  reload order: `{:ok, groups}`, dependencies first, each cycle one group,
  canonical term order; `Enum.concat(groups)` is the flat order. See
  `Sandbox.Beam.Graph.reload_order/1`.
  """
  @spec reload_order(%{atom => [atom]}) ::
          {:ok, [[atom, ...]]} | {:error, Sandbox.Beam.Graph.reason()}
  defdelegate reload_order(graph), to: Sandbox.Beam.Graph
end
