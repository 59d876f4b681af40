defmodule Sandbox.Beam do
  @moduledoc """
  The native BEAM toolkit: parse, validate and checksum compiled `.beam`
  binaries in C.

  Every function takes the binary itself (for example from `File.read!/1` or
  `:code.get_object_code/1`). Malformed input never crashes the VM: it is an
  `{:error, reason}` with one of the reasons below. Arguments of the wrong
  type raise `ArgumentError`. Inputs that are large, or small but costly
  (many atoms, literals that inflate a thousandfold), are processed on dirty
  CPU schedulers; the rest on the calling scheduler.

      iex> {_, bin, _} = :code.get_object_code(:lists)
      iex> {:ok, beam} = Sandbox.Beam.parse(bin)
      iex> beam.module
      :lists
      iex> Sandbox.Beam.validate(bin)
      :ok

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
      declared size
    * `{:bad_literal, n}` — literal `n` (0-based) is not one valid external
      term
    * `{:bad_term, id}` — the `Attr` or `CInf` chunk is not one valid
      external term
    * `{:unsupported_instruction_set, n}` — the code header's instruction set
      is not 0
    * `{:unsupported_opcode, n}` — the module uses opcodes up to `n`, above
      the highest opcode of the running system
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
          | {:unsupported_instruction_set, non_neg_integer}
          | {:unsupported_opcode, non_neg_integer}
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
  table for external funs; it does not look at the code (see `validate/1`
  for the checks a loadable module needs).

      iex> {_, bin, _} = :code.get_object_code(:lists)
      iex> {:ok, %Sandbox.Beam{exports: exports}} = Sandbox.Beam.parse(bin)
      iex> {:reverse, 1} in exports
      true
  """
  @spec parse(binary) :: {:ok, t} | {:error, reason}
  def parse(beam) when is_binary(beam) do
    case :sandbox_nif.parse(beam) do
      {:ok, map} -> {:ok, Map.put(map, :__struct__, __MODULE__)}
      {:error, _} = error -> error
    end
  end

  def parse(other), do: raise(ArgumentError, "expected a BEAM binary, got: #{inspect(other)}")

  @doc """
  Checks that a BEAM binary is well formed enough to be offered to the loader.

  Beyond `parse/1`: the required chunks (`Code`, `StrT`, `ImpT`, `ExpT`)
  are present, the literal table inflates and every literal is one valid
  external term, `Attr` and `CInf` are valid external terms, and the code
  header names instruction set 0 and no opcode above the running system's
  highest. Returns `:ok` or `{:error, reason}`.

      iex> Sandbox.Beam.validate("FOR1")
      {:error, {:truncated, :header}}
  """
  @spec validate(binary) :: :ok | {:error, reason}
  def validate(beam) when is_binary(beam), do: :sandbox_nif.validate(beam)

  def validate(other),
    do: raise(ArgumentError, "expected a BEAM binary, got: #{inspect(other)}")

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
end
