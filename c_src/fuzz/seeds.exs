# Seeds for c_src/fuzz/fuzz_relocate.c's structured inputs: a selector byte
# (low 3 bits: 0 Attr, 1 CInf, 2 Dbgi, 3 Docs, 4 ExCk, 5 Meta, 6 LitT;
# bit 3: compressed) and a term without its version byte. Most name `m`,
# which the target renames, before something long: mutations then reach
# the rewrite of what follows the renamed atom.
#
#   elixir c_src/fuzz/seeds.exs DIR
[dir] = System.argv()
File.mkdir_p!(dir)

atom = fn name -> <<119, byte_size(name), name::binary>> end
latin1 = fn bytes -> <<100, byte_size(bytes)::16, bytes::binary>> end
small_latin1 = fn bytes -> <<115, byte_size(bytes), bytes::binary>> end
tuple = fn elems -> <<104, length(elems), IO.iodata_to_binary(elems)::binary>> end
list = fn elems -> <<108, length(elems)::32, IO.iodata_to_binary(elems)::binary, 106>> end

map = fn pairs ->
  <<116, length(pairs)::32, IO.iodata_to_binary(for {k, v} <- pairs, do: [k, v])::binary>>
end

int = fn n -> <<97, n>> end
m = atom.("m")
e_acute = fn n -> :binary.copy(<<0xE9>>, n) end

terms = [
  {5, tuple.([m, latin1.(e_acute.(255))])},
  {13, tuple.([m, latin1.(e_acute.(255))])},
  {4, tuple.([m, small_latin1.(e_acute.(250))])},
  {2 + 8,
   tuple.([atom.("debug_info_v1"), m, list.([m, atom.("f"), atom.("ok"), latin1.("abc")])])},
  {3 + 8, list.([tuple.([m, int.(1)]), latin1.(e_acute.(200))])},
  {6, tuple.([m, map.([{m, int.(1)}, {atom.("k"), int.(2)}, {atom.("ok"), int.(3)}])])},
  {6, <<113, m::binary, atom.("f")::binary, 97, 0>>},
  {6, list.([m, latin1.(e_acute.(200))])},
  {6, map.([{m, int.(1)}, {atom.("sandbox@f@m"), int.(2)}])},
  {0,
   list.([tuple.([atom.("behaviour"), list.([m])]), tuple.([atom.("vsn"), list.([int.(1)])])])},
  {1,
   list.([tuple.([atom.("options"), <<106>>]), tuple.([atom.("version"), <<107, 3::16, "8.2">>])])},
  {5, list.(List.duplicate(m, 64))},
  {5, tuple.([m, <<88, m::binary, 0::32, 0::32, 0::32>>])},
  {13, tuple.([list.([m, m]), map.([{tuple.([m, int.(1)]), m}])])}
]

for {{selector, term}, i} <- Enum.with_index(terms) do
  File.write!(Path.join(dir, "seed-#{i}"), <<selector, term::binary>>)
end
