%% @doc The native BEAM toolkit for Erlang callers: thin wrappers over the
%% NIF library `priv/sandbox_nif.so'.
%%
%% Each function checks its argument types (`badarg' otherwise) and chooses
%% the scheduler by input size: small inputs run on the calling normal
%% scheduler, large ones on a dirty CPU scheduler, so no call holds a normal
%% scheduler for more than about a millisecond.
%%
%% Elixir users call `Sandbox.Beam', which documents the results and the
%% error reasons.
-module(sandbox_nif).

-export([parse/1, validate/1, checksum/1, dirty_thresholds/0]).

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
-define(CHECKSUM_DIRTY_BYTES, 1024 * 1024).

-spec parse(binary()) -> {ok, map()} | {error, term()}.
parse(Bin) when is_binary(Bin), byte_size(Bin) > ?PARSE_DIRTY_BYTES -> sort_funs(parse_dirty(Bin));
parse(Bin) when is_binary(Bin) -> sort_funs(parse_nif(Bin));
parse(Other) -> erlang:error(badarg, [Other]).

sort_funs({ok, #{external_funs := Funs} = M}) -> {ok, M#{external_funs := lists:usort(Funs)}};
sort_funs(Error) -> Error.

-spec validate(binary()) -> ok | {error, term()}.
validate(Bin) when is_binary(Bin), byte_size(Bin) > ?VALIDATE_DIRTY_BYTES -> validate_dirty(Bin);
validate(Bin) when is_binary(Bin) -> validate_nif(Bin);
validate(Other) -> erlang:error(badarg, [Other]).

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

%% @doc The input sizes (bytes) above which each function runs dirty.
-spec dirty_thresholds() -> #{parse := pos_integer(), validate := pos_integer(),
                              checksum := pos_integer()}.
dirty_thresholds() ->
    #{parse => ?PARSE_DIRTY_BYTES, validate => ?VALIDATE_DIRTY_BYTES,
      checksum => ?CHECKSUM_DIRTY_BYTES}.

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

parse_nif(_) -> erlang:nif_error(nif_not_loaded).
parse_dirty(_) -> erlang:nif_error(nif_not_loaded).
validate_nif(_) -> erlang:nif_error(nif_not_loaded).
validate_dirty(_) -> erlang:nif_error(nif_not_loaded).
checksum_nif(_) -> erlang:nif_error(nif_not_loaded).
checksum_dirty(_) -> erlang:nif_error(nif_not_loaded).
