%% EUnit tests of the Erlang entry points of the native toolkit.
-module(sandbox_nif_tests).

-include_lib("eunit/include/eunit.hrl").

lists_beam() ->
    {lists, Bin, _} = code:get_object_code(lists),
    Bin.

parse_matches_beam_lib_test() ->
    Bin = lists_beam(),
    {ok, M} = sandbox_nif:parse(Bin),
    {ok, {lists, [{exports, Exports}, {imports, Imports}]}} =
        beam_lib:chunks(Bin, [exports, imports]),
    ?assertEqual(lists, maps:get(module, M)),
    ?assertEqual(lists:sort(Exports), lists:sort(maps:get(exports, M))),
    ?assertEqual(lists:sort(Imports), lists:sort(maps:get(imports, M))),
    ?assert(maps:get(has_literals, M)).

validate_test() ->
    ?assertEqual(ok, sandbox_nif:validate(lists_beam())),
    ?assertEqual({error, not_iff}, sandbox_nif:validate(<<"RIFF0000BEAMxxxx">>)),
    ?assertEqual({error, {truncated, header}}, sandbox_nif:validate(<<"FOR1">>)).

%% Large inputs take the dirty path and give the same answers.
dirty_path_test() ->
    #{validate := V, checksum := C} = sandbox_nif:dirty_thresholds(),
    Big = binary:copy(<<0>>, max(V, C) + 1),
    ?assertEqual({error, not_iff}, sandbox_nif:validate(Big)),
    ?assertEqual({error, not_iff}, sandbox_nif:parse(Big)),
    ?assertEqual(sandbox_nif:checksum(Big), sandbox_nif:checksum([Big])).

checksum_test() ->
    ?assertEqual(16, byte_size(sandbox_nif:checksum(<<"abc">>))),
    ?assertEqual(sandbox_nif:checksum(<<"abc">>), sandbox_nif:checksum(["a", [<<"b">>], $c])),
    ?assertNotEqual(sandbox_nif:checksum(<<"abc">>), sandbox_nif:checksum(<<"abd">>)).

badarg_test_() ->
    [?_assertError(badarg, sandbox_nif:parse(not_a_binary)),
     ?_assertError(badarg, sandbox_nif:validate(<<1:3>>)),
     ?_assertError(badarg, sandbox_nif:checksum([foo])),
     ?_assertError(badarg, sandbox_nif:checksum(42))].
