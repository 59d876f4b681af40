# Sandbox.Beam against the OTP baselines (API.md "Benchmarks").
#
#   parse_corpus_median: per file of the installed OTP and Elixir, the median
#     over files of each file's median time, parse/1 against
#     :beam_lib.chunks(bin, [:atoms, :imports, :exports, :locals, :attributes,
#     :compile_info]).
#   checksum_<size>: checksum/1 against :crypto.hash(:sha256, _).
#   <fun>_hold_us_<case>: how long one call holds a normal scheduler (the
#     rule: about 1 ms at most), for real modules just below each size
#     threshold and for crafted worst cases below them (issue 10: a Meta
#     bomb, dense atoms, many map keys, 64 KiB of empty chunks, ...).
import Bitwise
alias Sandbox.Bench

beam_lib_chunks = [:atoms, :imports, :exports, :locals, :attributes, :compile_info]

corpus =
  Path.wildcard(Path.join(List.to_string(:code.root_dir()), "lib/*/ebin/*.beam")) ++
    for(
      app <- [:elixir, :eex, :ex_unit, :iex, :logger, :mix],
      file <- Path.wildcard(Path.join([:code.lib_dir(app), "ebin", "*.beam"])),
      do: file
    )

bins = corpus |> Enum.uniq() |> Enum.map(&File.read!/1)

# Per file: the median of a few runs of each, so one slow run (a GC, the
# other engineers' jobs on this shared machine) does not count.
{ours, base} =
  bins
  |> Enum.map(fn bin ->
    {Bench.median_us(fn -> Sandbox.Beam.parse(bin) end, 5, 1),
     Bench.median_us(fn -> :beam_lib.chunks(bin, beam_lib_chunks) end, 5, 1)}
  end)
  |> Enum.unzip()

Bench.compare("parse_corpus_median", Bench.median(ours), Bench.median(base))

for {label, size} <- [
      {"4KiB", 4096},
      {"64KiB", 65_536},
      {"1MiB", 1_048_576},
      {"16MiB", 16_777_216}
    ] do
  data = :crypto.strong_rand_bytes(size)
  n = if size > 1_048_576, do: 11, else: 31

  Bench.compare(
    "checksum_#{label}",
    Bench.median_us(fn -> Sandbox.Beam.checksum(data) end, n),
    Bench.median_us(fn -> :crypto.hash(:sha256, data) end, n)
  )
end

# How long one call holds a normal scheduler (the rule: about 1 ms at most),
# at each size threshold of src/sandbox_nif.erl and for small inputs that are
# expensive: crafted worst cases that make the NIF reschedule itself as
# dirty. Measured from `running` trace events of the calling process (with
# monotonic timestamps): the longest stretch it ran without being scheduled
# out, not counting stretches on a dirty scheduler (a dirty NIF's stretch
# ends with the process scheduled out in erts_internal:dirty_nif_finalizer/1,
# which then runs on a normal scheduler); the median over `n` calls in
# fresh processes. Erlang
# code is preempted every few thousand reductions, so what a stretch over
# 1 ms shows is a NIF, or a garbage collection, holding the scheduler.
defmodule BeamBench.Hold do
  @moduledoc false

  def longest_normal_us(fun) do
    parent = self()
    pid = spawn(fn -> receive(do: (:go -> fun.())) end)
    :erlang.trace(pid, true, [:running, :exiting, :monotonic_timestamp, {:tracer, parent}])
    ref = Process.monitor(pid)
    send(pid, :go)

    receive do
      {:DOWN, ^ref, :process, _, :normal} -> :ok
    end

    delivered(pid, :erlang.trace_delivered(pid))
    events = collect(pid, [])
    stretches(events, nil, 0)
  end

  defp delivered(pid, tref) do
    receive do
      {:trace_delivered, ^pid, r} when r == tref -> :ok
    end
  end

  defp collect(pid, acc) do
    receive do
      {:trace_ts, ^pid, event, mfa, ts} -> collect(pid, [{event, mfa, ts} | acc])
      {:trace_ts, ^pid, event, ts} -> collect(pid, [{event, nil, ts} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  # An in event (:in, :in_exiting) opens a stretch, the next out event
  # (:out, :out_exiting, :out_exited) closes it.
  defp stretches([], _open, longest), do: longest

  defp stretches([{event, _mfa, ts} | rest], _open, longest)
       when event in [:in, :in_exiting],
       do: stretches(rest, ts, longest)

  defp stretches([{_out, {:erts_internal, :dirty_nif_finalizer, 1}, _ts} | rest], _open, longest),
    do: stretches(rest, nil, longest)

  defp stretches([{_out, _mfa, ts} | rest], open, longest) when is_integer(open) do
    us = System.convert_time_unit(ts - open, :native, :nanosecond) / 1000
    stretches(rest, nil, max(longest, us))
  end

  defp stretches([_ | rest], open, longest), do: stretches(rest, open, longest)
end

normal_hold_us = fn fun, n ->
  Bench.median(for _ <- 1..n, do: BeamBench.Hold.longest_normal_us(fun))
end

%{parse: parse_t, validate: validate_t, checksum: checksum_t} = :sandbox_nif.dirty_thresholds()

# The real module nearest each threshold from below.
nearest_below = fn threshold ->
  bins |> Enum.filter(&(byte_size(&1) <= threshold)) |> Enum.max_by(&byte_size/1)
end

# Crafted: a minimal loadable module plus one expensive part.
{:ok, _, base_chunks} = :beam_lib.all_chunks(elem(:code.get_object_code(:erl_anno), 1))

base_chunks =
  Enum.filter(base_chunks, fn {id, _} ->
    id in [~c"AtU8", ~c"Code", ~c"StrT", ~c"ImpT", ~c"ExpT"]
  end)

build = fn chunks ->
  {:ok, bin} = :beam_lib.build_module(chunks)
  bin
end

# As many 1-byte atoms as fit under the parse threshold.
{_, <<natoms::32, names::binary>>} = List.keyfind(base_chunks, ~c"AtU8", 0)
extra = div(parse_t - 4096, 2)
atoms = <<natoms + extra::32, names::binary, :binary.copy(<<1, ?a>>, extra)::binary>>
atom_heavy = build.(List.keyreplace(base_chunks, ~c"AtU8", 0, {~c"AtU8", atoms}))

# A literal table of a few KiB that inflates to 16 MiB.
term = :erlang.term_to_binary(List.duplicate(1, 8 * 1024 * 1024))
table = <<1::32, byte_size(term)::32, term::binary>>

literal_heavy =
  build.(base_chunks ++ [{~c"LitT", <<byte_size(table)::32, :zlib.compress(table)::binary>>}])

checksum_input = :crypto.strong_rand_bytes(checksum_t)

parse_real = nearest_below.(parse_t)
validate_real = nearest_below.(validate_t)

%{relocate: relocate_t} = :sandbox_nif.dirty_thresholds()
relocate_real = nearest_below.(relocate_t)
{:ok, %{module: relocate_real_module}} = Sandbox.Beam.parse(relocate_real)
relocate_real_renames = %{relocate_real_module => :sandbox@bench@real}

# The minimal module (erl_anno's atom table) named `m` by a chunk, for the
# relocation cases: every one renames erl_anno, which each term names.
term_chunk = fn term -> :erlang.term_to_binary(term, [:compressed]) end
relocate_renames = %{erl_anno: :sandbox@bench@erl_anno}

# About 16 KiB whose compressed Meta declares about 1,000 times that
# (issue 10's example): relocation rewrites and recompresses 16 MiB.
meta_bomb =
  build.(base_chunks ++ [{~c"Meta", term_chunk.({:erl_anno, :binary.copy(<<0>>, 12 <<< 20)})}])

# Small atoms, densely: 40,000 of them in one Meta, a few KiB compressed.
# Each is looked up in the renames; the declared size alone looks cheap.
atom_dense =
  build.(base_chunks ++ [{~c"Meta", term_chunk.([:erl_anno | List.duplicate(:a, 40_000)])}])

# One literal map of 4,500 atom keys (about 16 KiB), renamed: its keys are
# sorted for the duplicate check.
keys = for i <- 1..4_500, do: String.to_atom("k#{Integer.to_string(i, 36)}")
map_literal = :erlang.term_to_binary(Map.new([{:erl_anno, 0} | Enum.map(keys, &{&1, 0})]))
map_table = <<1::32, byte_size(map_literal)::32, map_literal::binary>>

map_keys =
  build.(
    base_chunks ++
      [{~c"LitT", <<byte_size(map_table)::32, :zlib.compress(map_table)::binary>>}]
  )

# Empty chunks after a minimal module, just under a size threshold: the
# duplicate chunk check compared every pair of ids.
empty_chunks = fn threshold ->
  build.(
    base_chunks ++
      for(
        i <- 1..div(threshold - 4096, 8),
        do: {[?z, i >>> 16 &&& 255, i >>> 8 &&& 255, i &&& 255], <<>>}
      )
  )
end

empty_chunks_64k = empty_chunks.(parse_t)
empty_chunks_16k = empty_chunks.(relocate_t)

# Debug info that validate/2 now walks: a Dbgi chunk that inflates to 16 MiB.
dbgi_heavy =
  build.(
    base_chunks ++
      [
        {~c"Dbgi",
         term_chunk.({:debug_info_v1, :erl_abstract_code, :binary.copy(<<0>>, 16 <<< 20)})}
      ]
  )

# External funs densely: 20,000 `fun m:f/0` literals, two atoms each.
funs = for i <- 1..20_000, do: Function.capture(:lists, String.to_atom("f#{i}"), 0)
funs_literal = :erlang.term_to_binary(funs)
funs_table = <<1::32, byte_size(funs_literal)::32, funs_literal::binary>>

funs_heavy =
  build.(
    base_chunks ++ [{~c"LitT", <<byte_size(funs_table)::32, :zlib.compress(funs_table)::binary>>}]
  )

relocate = fn bin, renames -> fn -> {:ok, _} = Sandbox.Beam.relocate(bin, renames) end end

for {name, fun, n} <- [
      {"parse_hold_us_real_below_threshold", fn -> Sandbox.Beam.parse(parse_real) end, 50},
      {"parse_hold_us_atom_heavy", fn -> Sandbox.Beam.parse(atom_heavy) end, 10},
      {"parse_hold_us_literal_heavy", fn -> Sandbox.Beam.parse(literal_heavy) end, 10},
      {"parse_hold_us_funs_heavy", fn -> Sandbox.Beam.parse(funs_heavy) end, 10},
      {"parse_hold_us_empty_chunks", fn -> Sandbox.Beam.parse(empty_chunks_64k) end, 10},
      {"validate_hold_us_real_below_threshold", fn -> Sandbox.Beam.validate(validate_real) end,
       50},
      {"validate_hold_us_literal_heavy", fn -> Sandbox.Beam.validate(literal_heavy) end, 10},
      {"validate_hold_us_dbgi_heavy", fn -> Sandbox.Beam.validate(dbgi_heavy) end, 10},
      {"validate_hold_us_empty_chunks", fn -> Sandbox.Beam.validate(empty_chunks_64k) end, 10},
      {"relocate_hold_us_real_below_threshold", relocate.(relocate_real, relocate_real_renames),
       50},
      {"relocate_hold_us_meta_bomb", relocate.(meta_bomb, relocate_renames), 10},
      {"relocate_hold_us_atom_dense", relocate.(atom_dense, relocate_renames), 10},
      {"relocate_hold_us_map_keys", relocate.(map_keys, relocate_renames), 10},
      {"relocate_hold_us_empty_chunks", relocate.(empty_chunks_16k, relocate_renames), 10},
      {"checksum_hold_us_at_threshold", fn -> Sandbox.Beam.checksum(checksum_input) end, 50}
    ] do
  fun.()
  Bench.value(name, normal_hold_us.(fun, n) * 1.0, "us", 1000)
end
