defmodule Sandbox.Node.Wire do
  @moduledoc """
  The wire between the host and a sandbox VM (`isolation: :node`, see
  `Sandbox.Node`): `{packet, 4}` frames of the external term format over the
  sandbox VM's standard input and output, which the supervising C-node
  carries (`Sandbox.CNode.write_stdin/3`, `{:stdout, data}` events).

  ## Synchronisation

  Before its first frame, the sandbox VM writes the *sync frame*
  (`sync_frame/0`: a 4-byte length and the text `#{"SANDBOX-AGENT-1"}`).
  Whatever came on standard output before it (anything the VM printed while
  it booted) is discarded; after it, the stream is frames and nothing else
  (the agent owns every output of the VM, see `Sandbox.Node.Agent`). A
  stream that breaks the framing (a length above the maximum, no sync frame
  within the first 64 KiB) is an error: the host kills the VM.

  ## Trust

  The sandbox VM runs code written to hurt, so every frame from it is
  hostile input: it is decoded by `Sandbox.SafeTerm` (no funs, no
  compressed terms, a budget of atoms that do not exist yet, counted over
  the whole life of the sandbox by its connection), and the pids, ports and
  references in it are rehomed (`rehome/2`) to a node that does not exist:
  the sandbox VM is not distributed, so its pids would otherwise decode as
  pids of *this* VM (both are `nonode@nohost`) and name host processes.
  What the host sends is rehomed the same way in the other direction, so
  host pids never alias processes of the sandbox VM.

  Funs cannot cross in either direction, except where the receiving VM has
  their code: see `check_serialisable/2`.
  """

  alias Sandbox.SafeTerm

  @magic "SANDBOX-AGENT-1"
  @sync <<byte_size(@magic)::32, @magic::binary>>
  @max_presync 65_536

  @typedoc "A frame reassembly buffer (see `new/1` and `feed/2`)."
  @type buffer :: %{buf: binary, synced: boolean, max: pos_integer, skipped: non_neg_integer}

  @doc "The frame that starts the stream of a sandbox VM."
  @spec sync_frame() :: binary
  def sync_frame, do: @sync

  @doc "The magic text of the sync frame (without its length)."
  @spec magic() :: binary
  def magic, do: @magic

  @doc "`term` as one frame: its external term format behind a 4-byte length."
  @spec frame(term) :: binary
  def frame(term) do
    bin = :erlang.term_to_binary(term)
    <<byte_size(bin)::32, bin::binary>>
  end

  @doc "A reassembly buffer for frames of at most `max` bytes, waiting for the sync frame."
  @spec new(pos_integer) :: buffer
  def new(max) when is_integer(max) and max > 0,
    do: %{buf: <<>>, synced: false, max: max, skipped: 0}

  @doc """
  Adds `data` read from the stream: `{:ok, frames, buffer}` with the
  complete frames (payloads, in order), or `{:error, reason}` when the
  stream breaks the framing: `{:frame_too_large, size}` or `:no_sync`.
  """
  @spec feed(buffer, binary) :: {:ok, [binary], buffer} | {:error, term}
  def feed(%{synced: false} = b, data) do
    buf = b.buf <> data

    case :binary.match(buf, @sync) do
      {pos, len} ->
        rest = binary_part(buf, pos + len, byte_size(buf) - pos - len)
        feed(%{b | buf: <<>>, synced: true, skipped: b.skipped + pos}, rest)

      :nomatch ->
        skipped = b.skipped + byte_size(buf)

        if skipped > @max_presync do
          {:error, :no_sync}
        else
          # Keep what could be the start of the sync frame.
          keep = min(byte_size(buf), byte_size(@sync) - 1)
          tail = binary_part(buf, byte_size(buf) - keep, keep)
          {:ok, [], %{b | buf: tail, skipped: b.skipped + byte_size(buf) - keep}}
        end
    end
  end

  def feed(b, data), do: frames(b.buf <> data, b, [])

  defp frames(<<len::32, _::binary>>, b, _acc) when len > b.max,
    do: {:error, {:frame_too_large, len}}

  defp frames(<<len::32, payload::binary-size(len), rest::binary>>, b, acc),
    do: frames(rest, b, [payload | acc])

  defp frames(rest, b, acc), do: {:ok, Enum.reverse(acc), %{b | buf: rest}}

  @doc """
  Decodes a frame from a sandbox VM (hostile): `{:ok, term, new_atoms}`
  (`new_atoms`: how many atoms it created in this VM), or `{:error,
  reason}` (`Sandbox.SafeTerm`'s reasons; `{:too_many_atoms, budget}`
  when it would create more than `budget` atoms). Pids, ports and
  references are rehomed to `node` (see `rehome/2`).
  """
  @spec decode(binary, non_neg_integer, node) ::
          {:ok, term, non_neg_integer} | {:error, term}
  def decode(bin, budget, node) when is_binary(bin) and is_integer(budget) and budget >= 0 do
    with {:ok, new} <- SafeTerm.new_atoms(bin, budget),
         {:ok, term} <- SafeTerm.decode(bin, max_new_atoms: length(new)) do
      {:ok, rehome(term, node), length(new)}
    end
  end

  @doc """
  `term` with every pid, port and reference in it (in tuples, lists and
  maps, keys included) made a pid, port or reference of `node`: same
  numbers, another node. A message sent to such a pid goes nowhere (this
  VM is not connected to `node`), a monitor of it says `:noconnection`.
  """
  @spec rehome(term, node) :: term
  def rehome(term, node) when is_atom(node), do: walk(term, node)

  defp walk(t, node) when is_pid(t) or is_port(t) or is_reference(t), do: move(t, node)

  defp walk(t, node) when is_tuple(t),
    do: t |> Tuple.to_list() |> walk_list(node) |> List.to_tuple()

  defp walk(t, node) when is_list(t), do: walk_list(t, node)

  defp walk(t, node) when is_map(t),
    do: :maps.from_list(for {k, v} <- :maps.to_list(t), do: {walk(k, node), walk(v, node)})

  defp walk(t, _node), do: t

  # Proper and improper lists, without recursion on the spine.
  defp walk_list(list, node), do: walk_list(list, node, [])
  defp walk_list([h | t], node, acc), do: walk_list(t, node, [walk(h, node) | acc])
  defp walk_list([], _node, acc), do: :lists.reverse(acc)
  defp walk_list(tail, node, acc), do: :lists.reverse(acc, walk(tail, node))

  defp move(x, node) do
    if node(x) == node do
      x
    else
      <<131, tag, rest::binary>> = :erlang.term_to_binary(x)
      # References carry a 2-byte length of their ids before the node.
      {head, rest} = if tag in [114, 90], do: split_at(rest, 2), else: {<<>>, rest}

      tail = skip_atom(rest)
      name = Atom.to_string(node)

      :erlang.binary_to_term(
        <<131, tag, head::binary, 118, byte_size(name)::16, name::binary, tail::binary>>
      )
    end
  end

  defp split_at(bin, n), do: {binary_part(bin, 0, n), binary_part(bin, n, byte_size(bin) - n)}

  defp skip_atom(<<tag, len::16, _::binary-size(len), rest::binary>>) when tag in [100, 118],
    do: rest

  defp skip_atom(<<tag, len, _::binary-size(len), rest::binary>>) when tag in [115, 119],
    do: rest

  @doc """
  `term` made portable for a frame from a sandbox VM: every fun (which
  cannot cross: the host refuses code from a sandbox VM) is replaced by
  the text `inspect/1` gives it.
  """
  @spec portable(term) :: term
  def portable(t) when is_function(t), do: inspect(t)

  def portable(t) when is_tuple(t),
    do: t |> Tuple.to_list() |> portable_list([]) |> List.to_tuple()

  def portable(t) when is_list(t), do: portable_list(t, [])

  def portable(t) when is_map(t),
    do: :maps.from_list(for {k, v} <- :maps.to_list(t), do: {portable(k), portable(v)})

  def portable(t), do: t

  defp portable_list([h | t], acc), do: portable_list(t, [portable(h) | acc])
  defp portable_list([], acc), do: :lists.reverse(acc)
  defp portable_list(tail, acc), do: :lists.reverse(acc, portable(tail))

  @doc """
  Whether `term` can be sent to the sandbox VM of sandbox `id` as it is:
  `:ok`, or `{:error, {:not_serialisable, fun}}` for the first fun it holds
  that the sandbox VM cannot run.

  A fun can be sent when the sandbox VM has its code: an external fun
  (`&Mod.fun/arity`) or a closure of a module of OTP, Elixir or this
  library (the code the sandbox VM loads from the same files as this VM),
  or of one of the sandbox's own modules (by its relocated name), with no
  pid, port or reference among the values it captured. A closure of host
  code — the caller's own module, a test module — cannot: its code is not
  in the sandbox VM.
  """
  @spec check_serialisable(term, String.t()) :: :ok | {:error, {:not_serialisable, term}}
  def check_serialisable(term, id) do
    case find_unsendable(term, id) do
      nil -> :ok
      fun -> {:error, {:not_serialisable, fun}}
    end
  end

  defp find_unsendable(t, id) when is_function(t) do
    info = Function.info(t)

    cond do
      not agent_module?(info[:module], id) -> t
      info[:type] == :external -> nil
      Enum.any?(info[:env], &has_identity?/1) -> t
      # The fun given is named, whatever it holds that cannot be sent.
      find_in_list(info[:env], id) != nil -> t
      true -> nil
    end
  end

  defp find_unsendable(t, id) when is_tuple(t),
    do: t |> Tuple.to_list() |> find_in_list(id)

  defp find_unsendable(t, id) when is_list(t), do: find_in_list(t, id)

  defp find_unsendable(t, id) when is_map(t),
    do: find_in_list(:maps.to_list(t), id)

  defp find_unsendable(_t, _id), do: nil

  defp find_in_list([h | t], id), do: find_unsendable(h, id) || find_in_list(t, id)
  defp find_in_list([], _id), do: nil
  defp find_in_list(tail, id), do: find_unsendable(tail, id)

  defp has_identity?(t) when is_pid(t) or is_port(t) or is_reference(t), do: true
  defp has_identity?(t) when is_tuple(t), do: t |> Tuple.to_list() |> Enum.any?(&has_identity?/1)
  defp has_identity?([h | t]), do: has_identity?(h) or has_identity?(t)
  defp has_identity?(t) when is_map(t), do: has_identity?(:maps.to_list(t))
  defp has_identity?(_), do: false

  @doc """
  Whether the sandbox VM of sandbox `id` has module `module`: one of the
  sandbox's own modules (relocated name), or a module loaded here from
  OTP's, Elixir's or this library's directories (which the sandbox VM
  loads from the same files).
  """
  @spec agent_module?(module, String.t()) :: boolean
  def agent_module?(module, id) when is_atom(module) do
    name = Atom.to_string(module)

    cond do
      String.starts_with?(name, ["Elixir.Sandbox@#{id}.", "sandbox@#{id}@"]) -> true
      true -> shared_code?(module)
    end
  end

  defp shared_code?(module) do
    case :code.which(module) do
      :preloaded ->
        true

      path when is_list(path) and path != [] ->
        path = path |> List.to_string() |> Path.expand()
        Enum.any?(Sandbox.Node.code_dirs(), &String.starts_with?(path, &1 <> "/"))

      _ ->
        false
    end
  end
end
