%% @doc The native BEAM toolkit for Erlang callers: thin wrappers over the
%% NIF library `priv/sandbox_nif.so'.
%%
%% Each function checks its argument types (`badarg' otherwise) and chooses
%% the scheduler by input size: small inputs run on the calling normal
%% scheduler, large ones on a dirty CPU scheduler. Small inputs that are
%% costly (what a module declares: chunks, atoms, the sizes its compressed
%% chunks inflate to) are moved to a dirty scheduler by the NIF itself, so
%% no call holds a normal scheduler for more than about a millisecond.
%%
%% Elixir users call `Sandbox.Beam', which documents the results and the
%% error reasons.
-module(sandbox_nif).

-export([parse/1, parse/2, validate/1, validate/2, call_sites/1, call_sites/2, checksum/1,
         relocate/4, relocate/5, relocate/6, dirty_thresholds/0, limits/1]).
-export([reload_order/1, dependency_graph/1]).

-on_load(init/0).

%% Sizes above which the dirty variant is used. Below them the NIF also
%% estimates the cost from the contents (atoms, inflated literals) and
%% reschedules itself as dirty when a call would exceed about 1 ms, so these
%% bound the cheap first parse that estimate needs. Measured with
%% bench/beam_bench.exs (normal-scheduler emulator + gc time per call, msacc,
%% on the shared 2-core machine): a module of nothing but 1-byte atoms just
%% under 128 KiB held a normal scheduler for about 0.95 ms (about 0.2-0.45 ms
%% of it the first parse, the rest the caller collecting 62,000 atoms),
%% hence 64 KiB; the real module nearest 64 KiB validates in 12 us and
%% 1 MiB checksums in 55-65 us.
-define(PARSE_DIRTY_BYTES, 64 * 1024).
-define(VALIDATE_DIRTY_BYTES, 64 * 1024).
-define(CALL_SITES_DIRTY_BYTES, 64 * 1024).
-define(CHECKSUM_DIRTY_BYTES, 1024 * 1024).
%% Relocation rewrites and recompresses term chunks (zlib at about 20 MB/s
%% for deflate): above this size it runs dirty.
-define(RELOCATE_DIRTY_BYTES, 16 * 1024).

%% Limits on what one call may do with untrusted input (see limits/1).
-define(DEFAULT_MAX_INFLATED_BYTES, 256 * 1024 * 1024).
-define(DEFAULT_MAX_NEW_ATOMS, 65536).

-type limits() :: #{max_inflated_bytes => pos_integer(), max_new_atoms => pos_integer()}.

%% @doc The limits a call runs under: those given, else the application
%% environment's (`sandbox'), else the defaults.
%%
%% `max_inflated_bytes': the most bytes the compressed chunks of one BEAM
%% (the literal table and the term chunks) may declare they inflate to,
%% together, and the most a relocation's rewritten terms may grow to
%% (default 256 MiB; the largest installed module declares 5.6 MB).
%% `max_new_atoms': the most atoms one call may create from its input
%% (default 65,536; the module with the most atoms in OTP has 2,146). Every
%% check runs before any atom is made, so a refused BEAM makes none.
-spec limits(limits()) -> {pos_integer(), pos_integer()}.
limits(Opts) when is_map(Opts) ->
    {limit(max_inflated_bytes, Opts, ?DEFAULT_MAX_INFLATED_BYTES),
     limit(max_new_atoms, Opts, ?DEFAULT_MAX_NEW_ATOMS)};
limits(Other) ->
    erlang:error(badarg, [Other]).

limit(Key, Opts, Default) ->
    Value =
        case Opts of
            #{Key := V} -> V;
            #{} -> application:get_env(sandbox, Key, Default)
        end,
    case is_integer(Value) andalso Value > 0 andalso Value < 1 bsl 64 of
        true -> Value;
        false -> erlang:error(badarg, [Key, Value])
    end.

-spec parse(binary()) -> {ok, map()} | {error, term()}.
parse(Bin) -> parse(Bin, #{}).

-spec parse(binary(), limits()) -> {ok, map()} | {error, term()}.
parse(Bin, Opts) when is_binary(Bin) ->
    {MaxInflated, MaxAtoms} = limits(Opts),
    case byte_size(Bin) > ?PARSE_DIRTY_BYTES of
        true -> sort_funs(parse_dirty(Bin, MaxInflated, MaxAtoms));
        false -> sort_funs(parse_nif(Bin, MaxInflated, MaxAtoms))
    end;
parse(Other, Opts) -> erlang:error(badarg, [Other, Opts]).

sort_funs({ok, #{external_funs := Funs} = M}) -> {ok, M#{external_funs := lists:usort(Funs)}};
sort_funs(Error) -> Error.

-spec validate(binary()) -> ok | {error, term()}.
validate(Bin) -> validate(Bin, #{}).

-spec validate(binary(), limits()) -> ok | {error, term()}.
validate(Bin, Opts) when is_binary(Bin) ->
    {MaxInflated, _} = limits(Opts),
    case byte_size(Bin) > ?VALIDATE_DIRTY_BYTES of
        true -> validate_dirty(Bin, MaxInflated);
        false -> validate_nif(Bin, MaxInflated)
    end;
validate(Other, Opts) -> erlang:error(badarg, [Other, Opts]).

%% @doc Every call site of a module's code: a map of `caller' (`{F, A}', or
%% `nil' for a fun literal no instruction uses), `line' (or `nil'), `kind'
%% (`call', `bif', `fun', `apply', `call_fun', `send') and `target'.
-spec call_sites(binary()) -> {ok, [map()]} | {error, term()}.
call_sites(Bin) -> call_sites(Bin, #{}).

-spec call_sites(binary(), limits()) -> {ok, [map()]} | {error, term()}.
call_sites(Bin, Opts) when is_binary(Bin) ->
    {MaxInflated, MaxAtoms} = limits(Opts),
    case byte_size(Bin) > ?CALL_SITES_DIRTY_BYTES of
        true -> call_sites_dirty(Bin, MaxInflated, MaxAtoms);
        false -> call_sites_nif(Bin, MaxInflated, MaxAtoms)
    end;
call_sites(Other, Opts) -> erlang:error(badarg, [Other, Opts]).

%% @doc XXH3-128 of iodata, 16 bytes in canonical (big-endian) order.
-spec checksum(iodata()) -> <<_:128>>.
checksum(Bin) when is_binary(Bin), byte_size(Bin) > ?CHECKSUM_DIRTY_BYTES -> checksum_dirty(Bin);
checksum(Bin) when is_binary(Bin) -> checksum_nif(Bin);
checksum(IoList) when is_list(IoList) ->
    %% Flattening costs per element, not per byte (a 1 MiB list of integers
    %% took 13 ms in the NIF): iolist_to_binary/1 yields, then the binary
    %% takes the size-based path.
    checksum(iolist_to_binary(IoList));
checksum(Other) ->
    erlang:error(badarg, [Other]).

%% @doc Relocates a BEAM: `Renames' and `Redirects' map names to names
%% (atoms, or UTF-8 binaries); `StripDebug' drops the Dbgi and Docs chunks.
%% The NIF reads atom names itself; OTP 25 gives NIFs only latin-1 atom
%% names, so maps holding other atoms are passed on as binaries.
-spec relocate(binary(), #{atom() | binary() => atom() | binary()},
               #{atom() | binary() => atom() | binary()}, boolean()) ->
    {ok, binary()} | {error, term()}.
relocate(Bin, Renames, Redirects, Strip) -> relocate(Bin, Renames, Redirects, Strip, #{}).

%% @doc relocate/4 under the given limits (see limits/1).
-spec relocate(binary(), #{atom() | binary() => atom() | binary()},
               #{atom() | binary() => atom() | binary()}, boolean(), limits()) ->
    {ok, binary()} | {error, term()}.
relocate(Bin, Renames, Redirects, Strip, Opts) ->
    relocate(Bin, Renames, Redirects, Strip, #{}, Opts).

-type guards() :: #{import_redirects => #{mfa() => {atom(), atom()}},
                    dynamic_guard => {atom(), [apply | call_fun | send]},
                    keep_atoms => [atom()]}.

%% @doc relocate/5 with capability guards: `import_redirects' repoints the
%% imports and external fun literals of single functions (`{M, F, A} =>
%% {M2, F2}'), `dynamic_guard' rewrites the code's apply, call_fun and send
%% instructions of the kinds given into calls of the guard module's
%% `$apply'/N+2, `$call_fun'/N+1 and `$send'/2; `keep_atoms' lists renamed
%% atoms that keep their original name where they are data (code operands
%% and literals), while the atom table, calls, exports, `func_info' and
%% `module_info' still use the renamed name.
-spec relocate(binary(), #{atom() | binary() => atom() | binary()},
               #{atom() | binary() => atom() | binary()}, boolean(), guards(), limits()) ->
    {ok, binary()} | {error, term()}.
relocate(Bin, Renames, Redirects, Strip, Guards, Opts)
  when is_binary(Bin), is_map(Renames), is_map(Redirects), is_boolean(Strip), is_map(Guards) ->
    Limits = limits(Opts),
    G = guards(Guards),
    case relocate_call(Bin, Renames, Redirects, Strip, G, Limits) of
        {error, badarg} ->
            %% badarg from the NIF: retry with every name as a binary, which
            %% reaches non-latin-1 atoms; other bad arguments fail again.
            relocate_call(Bin, as_binaries(Renames), as_binaries(Redirects), Strip, G, Limits);
        Result ->
            Result
    end;
relocate(Bin, Renames, Redirects, Strip, Guards, Opts) ->
    erlang:error(badarg, [Bin, Renames, Redirects, Strip, Guards, Opts]).

%% The guards as the NIF takes them: {[{M, F, A, M2, F2}], Guard | undefined,
%% Kinds} or, with kept atoms, {..., Kinds, [Keep]}; names as UTF-8 binaries,
%% Kinds a bit mask (apply 1, call_fun 2, send 4).
guards(Guards) ->
    Base = guards_base(Guards),
    case maps:get(keep_atoms, Guards, []) of
        [] ->
            Base;
        Keeps when is_list(Keeps) ->
            lists:all(fun is_atom/1, Keeps) orelse erlang:error(badarg, [Guards]),
            erlang:append_element(Base, [name(K) || K <- lists:usort(Keeps)]);
        _ ->
            erlang:error(badarg, [Guards])
    end.

guards_base(Guards) ->
    Mfas = maps:get(import_redirects, Guards, #{}),
    is_map(Mfas) orelse erlang:error(badarg, [Guards]),
    List = [case Entry of
                {{M, F, A}, {M2, F2}} when is_atom(M), is_atom(F), is_integer(A), A >= 0, A =< 255,
                                           is_atom(M2), is_atom(F2) ->
                    {name(M), name(F), A, name(M2), name(F2)};
                _ ->
                    erlang:error(badarg, [Guards])
            end || Entry <- maps:to_list(Mfas)],
    case maps:get(dynamic_guard, Guards, undefined) of
        undefined ->
            {List, undefined, 0};
        {Guard, Kinds} when is_atom(Guard), is_list(Kinds) ->
            {List, name(Guard), lists:foldl(fun(K, Acc) -> Acc bor kind(K, Guards) end, 0, Kinds)};
        _ ->
            erlang:error(badarg, [Guards])
    end.

kind(apply, _) -> 1;
kind(call_fun, _) -> 2;
kind(send, _) -> 4;
kind(_, Guards) -> erlang:error(badarg, [Guards]).

relocate_call(Bin, Renames, Redirects, Strip, Guards, {MaxInflated, MaxAtoms}) ->
    try
        case byte_size(Bin) > ?RELOCATE_DIRTY_BYTES of
            true -> relocate_dirty(Bin, Renames, Redirects, Strip, Guards, MaxInflated, MaxAtoms);
            false -> relocate_nif(Bin, Renames, Redirects, Strip, Guards, MaxInflated, MaxAtoms)
        end
    catch
        error:badarg -> {error, badarg}
    end.

as_binaries(Map) ->
    maps:from_list([{name(K), name(V)} || {K, V} <- maps:to_list(Map)]).

name(A) when is_atom(A) -> atom_to_binary(A, utf8);
name(Other) -> Other.
%% Graph work in nodes + edges. reload_order/1 costs about 150 ns per node
%% (three passes over the map, the id map, the sort of the names, the heap of
%% ready groups) and 20 ns per edge, measured on 1,000- and 4,000-node graphs
%% with no edges and with 5 per node (2 shared cores, load average 6): 4,000
%% units take at most about 0.65 ms. The Erlang side sees only the key count;
%% the NIF counts edges and moves itself to a dirty scheduler when the total
%% is above the threshold.
-define(GRAPH_DIRTY_WORK, 4000).

%% @doc Strongly connected components of `Graph' (node => nodes it depends
%% on), dependencies first; see `Sandbox.Beam.Graph' for the order.
-spec reload_order(#{atom() => [atom()]}) ->
    {ok, [[atom(), ...]]}
    | {error, {bad_node, term()} | {bad_edges, atom()} | too_large | out_of_memory}.
reload_order(Graph) when is_map(Graph), map_size(Graph) > ?GRAPH_DIRTY_WORK ->
    reload_order_dirty(Graph, ?GRAPH_DIRTY_WORK);
reload_order(Graph) when is_map(Graph) -> reload_order_nif(Graph, ?GRAPH_DIRTY_WORK);
reload_order(Other) -> erlang:error(badarg, [Other]).

%% @doc Each module's dependencies among the given modules, from
%% `{Module, Imports, ExternalFuns, Extra}' entries (`{M, F, A}' or `M'
%% references), without self-edges, sorted.
-spec dependency_graph([{atom(), [mfa() | atom()], [mfa() | atom()], [mfa() | atom()]}]) ->
    {ok, #{atom() => [atom()]}} | {error, {duplicate_module, atom()} | too_large | out_of_memory}.
dependency_graph(Entries) when is_list(Entries) ->
    case length(Entries) > ?GRAPH_DIRTY_WORK of
        true -> dependency_graph_dirty(Entries, ?GRAPH_DIRTY_WORK);
        false -> dependency_graph_nif(Entries, ?GRAPH_DIRTY_WORK)
    end;
dependency_graph(Other) -> erlang:error(badarg, [Other]).

reload_order_nif(_, _) -> erlang:nif_error(nif_not_loaded).
reload_order_dirty(_, _) -> erlang:nif_error(nif_not_loaded).
dependency_graph_nif(_, _) -> erlang:nif_error(nif_not_loaded).
dependency_graph_dirty(_, _) -> erlang:nif_error(nif_not_loaded).

%% @doc The input sizes (bytes) above which each function runs dirty.
%% (`graph' is in nodes + edges.)
-spec dirty_thresholds() -> #{parse := pos_integer(), validate := pos_integer(),
                              call_sites := pos_integer(),
                              checksum := pos_integer(), relocate := pos_integer(),
                              graph := pos_integer()}.
dirty_thresholds() ->
    #{parse => ?PARSE_DIRTY_BYTES, validate => ?VALIDATE_DIRTY_BYTES,
      call_sites => ?CALL_SITES_DIRTY_BYTES,
      checksum => ?CHECKSUM_DIRTY_BYTES, relocate => ?RELOCATE_DIRTY_BYTES,
      graph => ?GRAPH_DIRTY_WORK}.

init() ->
    Path = filename:join(priv_dir(), "sandbox_nif"),
    erlang:load_nif(Path, max_opcode()).

priv_dir() ->
    case code:priv_dir(sandbox) of
        {error, bad_name} ->
            %% Not loaded as an application (e.g. erlc + erl -pa): ../priv.
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

%% The highest opcode the running system loads, from the compiler's own table.
max_opcode() ->
    try
        highest_opcode(1)
    catch
        _:_ -> 0
    end.

highest_opcode(N) ->
    try beam_opcodes:opname(N) of
        _ -> highest_opcode(N + 1)
    catch
        error:_ when N > 1 -> N - 1
    end.

parse_nif(_, _, _) -> erlang:nif_error(nif_not_loaded).
parse_dirty(_, _, _) -> erlang:nif_error(nif_not_loaded).
validate_nif(_, _) -> erlang:nif_error(nif_not_loaded).
call_sites_nif(_, _, _) -> erlang:nif_error(nif_not_loaded).
call_sites_dirty(_, _, _) -> erlang:nif_error(nif_not_loaded).
validate_dirty(_, _) -> erlang:nif_error(nif_not_loaded).
checksum_nif(_) -> erlang:nif_error(nif_not_loaded).
checksum_dirty(_) -> erlang:nif_error(nif_not_loaded).
relocate_nif(_, _, _, _, _, _, _) -> erlang:nif_error(nif_not_loaded).
relocate_dirty(_, _, _, _, _, _, _) -> erlang:nif_error(nif_not_loaded).
