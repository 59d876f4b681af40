# Sandbox.Beam against the OTP baselines (API.md "Benchmarks").
#
#   parse_corpus_median: per file of the installed OTP and Elixir, the median
#     over files of each file's median time, parse/1 against
#     :beam_lib.chunks(bin, [:atoms, :imports, :exports, :locals, :attributes,
#     :compile_info]).
#   checksum_<size>: checksum/1 against :crypto.hash(:sha256, _).
#   <fun>_sched_us_at_threshold: how long one call at the dirty threshold
#     holds a normal scheduler (the rule: about 1 ms at most).
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
# dirty. Measured with microstate accounting (:msacc): the normal schedulers'
# emulator and gc time (NIF time counts as emulator time) during one call in
# a fresh process; the median of `n` calls. It includes the Erlang wrapper,
# collecting the result and whatever else ran meanwhile, so it is an upper
# bound; the time schedulers spend spinning while a dirty call runs ("other")
# is not holding them.
normal_hold_us = fn fun, n ->
  times =
    for _ <- 1..n do
      :msacc.start()
      :msacc.reset()
      {_pid, ref} = spawn_monitor(fn -> fun.() end)

      receive do
        {:DOWN, ^ref, :process, _, :normal} -> :ok
      end

      :msacc.stop()

      # msacc counters are in microseconds.
      Enum.sum(
        for %{type: :scheduler, counters: counters} <- :msacc.stats(),
            state <- [:emulator, :gc],
            do: Map.get(counters, state, 0)
      )
    end

  Bench.median(times)
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

for {name, fun, n} <- [
      {"parse_hold_us_real_below_threshold", fn -> Sandbox.Beam.parse(parse_real) end, 50},
      {"parse_hold_us_atom_heavy", fn -> Sandbox.Beam.parse(atom_heavy) end, 10},
      {"parse_hold_us_literal_heavy", fn -> Sandbox.Beam.parse(literal_heavy) end, 10},
      {"validate_hold_us_real_below_threshold", fn -> Sandbox.Beam.validate(validate_real) end,
       50},
      {"validate_hold_us_literal_heavy", fn -> Sandbox.Beam.validate(literal_heavy) end, 10},
      {"checksum_hold_us_at_threshold", fn -> Sandbox.Beam.checksum(checksum_input) end, 50}
    ] do
  fun.()
  Bench.value(name, normal_hold_us.(fun, n) * 1.0, "us", 1000)
end
