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

%% Dependency graphs: reload order and dependency graph entry points.

reload_order_test() ->
    ?assertEqual({ok, []}, sandbox_nif:reload_order(#{})),
    ?assertEqual({ok, [[c], [a, b], [d]]},
                 sandbox_nif:reload_order(#{a => [b, c], b => [a], d => [d, b]})),
    ?assertEqual({error, {bad_node, "x"}}, sandbox_nif:reload_order(#{a => ["x"]})),
    ?assertEqual({error, {bad_edges, a}}, sandbox_nif:reload_order(#{a => [b | c]})),
    ?assertError(badarg, sandbox_nif:reload_order([{a, [b]}])).

dependency_graph_test() ->
    Entries = [{a, [{b, f, 1}, {a, g, 0}, {lists, map, 2}], [{c, h, 0}], []},
               {b, [], [], [a, zz]},
               {c, [], [], []}],
    ?assertEqual({ok, #{a => [b, c], b => [a], c => []}}, sandbox_nif:dependency_graph(Entries)),
    ?assertEqual({error, {duplicate_module, a}},
                 sandbox_nif:dependency_graph([{a, [], [], []}, {a, [], [], []}])),
    ?assertError(badarg, sandbox_nif:dependency_graph([{a, [], []}])),
    ?assertError(badarg, sandbox_nif:dependency_graph([{a, [{"b", f, 1}], [], []}])),
    ?assertError(badarg, sandbox_nif:dependency_graph([{a, [], [], [b | c]}])),
    ?assertError(badarg, sandbox_nif:dependency_graph(#{})).

%% Inputs above the threshold, by key count or by edge count, run dirty and
%% give the answers a small input would.
graph_dirty_paths_test() ->
    #{graph := T} = sandbox_nif:dirty_thresholds(),
    Names = [list_to_atom("g" ++ integer_to_list(I)) || I <- lists:seq(1, T + 5)],
    Sorted = lists:sort(Names),
    %% Many keys: a chain over the sorted names.
    Chain = maps:from_list(lists:zip(Sorted, [[N] || N <- tl(Sorted)] ++ [[]])),
    ?assertEqual({ok, lists:reverse([[N] || N <- Sorted])}, sandbox_nif:reload_order(Chain)),
    %% One key, many edges.
    ?assertEqual({ok, [[N] || N <- Sorted] ++ [[hub]]},
                 sandbox_nif:reload_order(#{hub => Names})),
    ?assertEqual({error, {bad_node, 1}}, sandbox_nif:reload_order(#{hub => Names ++ [1]})),
    %% Many modules; one module with many references.
    Mods = [{N, [], [], []} || N <- Names],
    {ok, Empty} = sandbox_nif:dependency_graph(Mods),
    ?assertEqual(maps:from_list([{N, []} || N <- Names]), Empty),
    Refs = [{N, f, 0} || N <- Names],
    {ok, #{hub := HubDeps}} = sandbox_nif:dependency_graph([{hub, Refs, [], []} | Mods]),
    ?assertEqual(Sorted, HubDeps),
    %% Few modules, many references: the NIF moves itself to a dirty scheduler.
    ?assertEqual({ok, #{hub => [g1], g1 => []}},
                 sandbox_nif:dependency_graph([{hub, Refs, Refs, []}, {g1, [], [], []}])).
