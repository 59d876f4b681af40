/* Criterion tests of the dependency-graph core: SCCs, the canonical reload
 * order, deep graphs (no recursion limit), malformed CSR input, the id map. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"

/* Runs graph_reload_order on edge pairs; asserts success. */
static graph_order order_of(uint32_t n, size_t ne, const uint32_t *src, const uint32_t *dst) {
    graph_csr g;
    cr_assert_eq(graph_csr_build(n, ne, src, dst, &g), GRAPH_OK);
    graph_order o;
    cr_assert_eq(graph_reload_order(&g, &o), GRAPH_OK);
    graph_csr_free(&g);
    return o;
}

/* The group of each node; asserts every node is placed exactly once. */
static uint32_t *group_of(const graph_order *o, uint32_t n) {
    uint32_t *gr = malloc((n + 1) * sizeof *gr);
    for (uint32_t v = 0; v < n; v++) {
        gr[v] = UINT32_MAX;
    }
    cr_assert_eq(o->group_start[0], 0);
    cr_assert_eq(o->group_start[o->ngroups], n);
    for (uint32_t k = 0; k < o->ngroups; k++) {
        cr_assert_lt(o->group_start[k], o->group_start[k + 1], "empty group %u", k);
        for (uint32_t i = o->group_start[k]; i < o->group_start[k + 1]; i++) {
            uint32_t v = o->order[i];
            cr_assert_lt(v, n);
            cr_assert_eq(gr[v], UINT32_MAX, "node %u placed twice", v);
            gr[v] = k;
        }
    }
    return gr;
}

/* Expected groups as a flat list with -1 between groups and at the end. */
static void assert_groups(const graph_order *o, const int *expected) {
    uint32_t k = 0, i = 0;
    for (const int *p = expected; *p != -2; p++) {
        if (*p == -1) {
            cr_assert_lt(k, o->ngroups);
            cr_assert_eq(o->group_start[k + 1], i, "group %u ends at %u", k, i);
            k++;
        } else {
            cr_assert_eq(o->order[i], (uint32_t)*p, "position %u: %u, expected %d", i, o->order[i],
                         *p);
            i++;
        }
    }
    cr_assert_eq(o->ngroups, k);
}

Test(graph, empty_graph) {
    graph_csr g = {0, 0, NULL, NULL};
    graph_order o;
    cr_assert_eq(graph_reload_order(&g, &o), GRAPH_OK);
    cr_assert_eq(o.ngroups, 0);
    cr_assert_eq(o.group_start[0], 0);
    graph_order_free(&o);
}

Test(graph, dependencies_come_first) {
    /* 0 -> 1 -> 2: 2 first. */
    uint32_t s[] = {0, 1}, d[] = {1, 2};
    graph_order o = order_of(3, 2, s, d);
    assert_groups(&o, (int[]){2, -1, 1, -1, 0, -1, -2});
    graph_order_free(&o);
}

Test(graph, cycle_is_one_group_in_ascending_order) {
    /* 3 -> 0 -> 2 -> 1 -> 0 (cycle {0,1,2}); 1 -> 4. */
    uint32_t s[] = {3, 0, 2, 1, 1}, d[] = {0, 2, 1, 0, 4};
    graph_order o = order_of(5, 5, s, d);
    assert_groups(&o, (int[]){4, -1, 0, 1, 2, -1, 3, -1, -2});
    graph_order_free(&o);
}

Test(graph, self_loops_and_duplicates_change_nothing) {
    uint32_t s[] = {0, 0, 1, 1, 1}, d[] = {0, 1, 1, 1, 0};
    graph_order o = order_of(3, 5, s, d);
    /* {0,1} is a cycle; 2 is isolated and smaller-keyed groups go first. */
    assert_groups(&o, (int[]){0, 1, -1, 2, -1, -2});
    graph_order_free(&o);

    uint32_t s2[] = {0, 0}, d2[] = {0, 0};
    o = order_of(1, 2, s2, d2);
    assert_groups(&o, (int[]){0, -1, -2});
    graph_order_free(&o);
}

Test(graph, disconnected_parts_in_canonical_order) {
    /* Two parts: 4 -> 1 and 3 -> 0 <-> 2; isolated 5. Ready groups go
     * smallest first: {0,2}, then 1, then 3 (now ready), 4, 5. */
    uint32_t s[] = {4, 3, 0, 2}, d[] = {1, 0, 2, 0};
    graph_order o = order_of(6, 4, s, d);
    assert_groups(&o, (int[]){0, 2, -1, 1, -1, 3, -1, 4, -1, 5, -1, -2});
    graph_order_free(&o);
}

Test(graph, order_is_independent_of_edge_order) {
    uint32_t s1[] = {0, 0, 1, 2, 3}, d1[] = {1, 2, 3, 3, 1};
    uint32_t s2[] = {3, 2, 1, 0, 0}, d2[] = {1, 3, 3, 2, 1};
    graph_order a = order_of(4, 5, s1, d1), b = order_of(4, 5, s2, d2);
    cr_assert_eq(a.ngroups, b.ngroups);
    cr_assert_arr_eq(a.order, b.order, 4 * sizeof(uint32_t));
    cr_assert_arr_eq(a.group_start, b.group_start, (a.ngroups + 1) * sizeof(uint32_t));
    graph_order_free(&a);
    graph_order_free(&b);
}

/* A chain of n nodes, i -> i + 1 (forward) or i + 1 -> i; optionally closed
 * into one big cycle. Deep DFS: a recursive Tarjan overflows its stack. */
static void chain(uint32_t n, int forward, int closed) {
    size_t ne = n - 1 + (closed ? 1 : 0);
    uint32_t *s = malloc(ne * sizeof *s), *d = malloc(ne * sizeof *d);
    for (uint32_t i = 0; i + 1 < n; i++) {
        s[i] = forward ? i : i + 1;
        d[i] = forward ? i + 1 : i;
    }
    if (closed) {
        s[n - 1] = forward ? n - 1 : 0;
        d[n - 1] = forward ? 0 : n - 1;
    }
    graph_order o = order_of(n, ne, s, d);
    if (closed) {
        cr_assert_eq(o.ngroups, 1);
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(o.order[i], i);
        }
    } else {
        cr_assert_eq(o.ngroups, n);
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(o.order[i], forward ? n - 1 - i : i);
            cr_assert_eq(o.group_start[i], i);
        }
    }
    graph_order_free(&o);
    free(s);
    free(d);
}

Test(graph, chain_of_100k_nodes) {
    chain(100000, 1, 0);
    chain(100000, 0, 0);
    chain(100000, 1, 1);
}

Test(graph, chain_of_1m_nodes) {
    chain(1000000, 1, 0);
    chain(1000000, 0, 1);
}

/* Random graphs: check the SCCs against reachability (Floyd–Warshall on a
 * small n) and that every edge between groups points to an earlier group. */
Test(graph, random_graphs_against_reachability) {
    srand(12345);
    enum { N = 24 };
    for (int round = 0; round < 300; round++) {
        uint32_t n = 1 + (uint32_t)(rand() % N);
        size_t ne = (size_t)(rand() % (3 * N));
        uint32_t s[3 * N], d[3 * N];
        unsigned char reach[N][N];
        memset(reach, 0, sizeof reach);
        for (uint32_t v = 0; v < n; v++) {
            reach[v][v] = 1;
        }
        for (size_t i = 0; i < ne; i++) {
            s[i] = (uint32_t)rand() % n;
            d[i] = (uint32_t)rand() % n;
            reach[s[i]][d[i]] = 1;
        }
        for (uint32_t k = 0; k < n; k++) {
            for (uint32_t i = 0; i < n; i++) {
                for (uint32_t j = 0; j < n; j++) {
                    reach[i][j] |= reach[i][k] && reach[k][j];
                }
            }
        }
        graph_order o = order_of(n, ne, s, d);
        uint32_t *gr = group_of(&o, n);
        for (uint32_t i = 0; i < n; i++) {
            for (uint32_t j = 0; j < n; j++) {
                int same_scc = reach[i][j] && reach[j][i];
                cr_assert_eq(gr[i] == gr[j], same_scc, "round %d: %u and %u", round, i, j);
            }
        }
        for (size_t i = 0; i < ne; i++) {
            cr_assert_leq(gr[d[i]], gr[s[i]], "round %d: edge %u -> %u", round, s[i], d[i]);
        }
        for (uint32_t k = 0; k < o.ngroups; k++) {
            for (uint32_t i = o.group_start[k] + 1; i < o.group_start[k + 1]; i++) {
                cr_assert_lt(o.order[i - 1], o.order[i]);
            }
        }
        free(gr);
        graph_order_free(&o);
    }
}

Test(graph, malformed_csr_is_refused) {
    uint32_t offsets[] = {0, 2, 1, 3}, targets[] = {0, 1, 2};
    graph_csr g = {3, 3, offsets, targets};
    graph_order o;
    cr_assert_eq(graph_reload_order(&g, &o), GRAPH_E_BAD_OFFSETS);
    offsets[2] = 2;
    targets[1] = 3;
    cr_assert_eq(graph_reload_order(&g, &o), GRAPH_E_BAD_TARGET);
    targets[1] = 1;
    offsets[3] = 2;
    cr_assert_eq(graph_reload_order(&g, &o), GRAPH_E_BAD_OFFSETS);
    offsets[3] = 3;
    cr_assert_eq(graph_reload_order(&g, &o), GRAPH_OK);
    graph_order_free(&o);
    graph_csr empty_with_edges = {0, 1, NULL, targets};
    cr_assert_eq(graph_reload_order(&empty_with_edges, &o), GRAPH_E_BAD_OFFSETS);
    graph_csr too_big = {UINT32_MAX, 0, offsets, targets};
    cr_assert_eq(graph_reload_order(&too_big, &o), GRAPH_E_TOO_LARGE);
}

Test(graph, csr_build_checks_ids) {
    uint32_t s[] = {0, 5}, d[] = {1, 1};
    graph_csr g;
    cr_assert_eq(graph_csr_build(3, 2, s, d, &g), GRAPH_E_BAD_TARGET);
    cr_assert_eq(graph_csr_build(UINT32_MAX, 0, s, d, &g), GRAPH_E_TOO_LARGE);
    s[1] = 2;
    cr_assert_eq(graph_csr_build(3, 2, s, d, &g), GRAPH_OK);
    uint32_t offsets[] = {0, 1, 1, 2};
    cr_assert_arr_eq(g.offsets, offsets, sizeof offsets);
    cr_assert_eq(graph_csr_check(&g), GRAPH_OK);
    graph_csr_free(&g);
}

Test(graph, idmap_assigns_dense_ids_and_grows) {
    graph_idmap m;
    cr_assert_eq(graph_idmap_init(&m, 1), GRAPH_OK);
    uint32_t id;
    int inserted;
    for (uint64_t k = 0; k < 100000; k++) {
        cr_assert_eq(graph_idmap_put(&m, k * 64 + 11, &id, &inserted), GRAPH_OK);
        cr_assert_eq(id, (uint32_t)k);
        cr_assert(inserted);
    }
    for (uint64_t k = 0; k < 100000; k += 7) {
        cr_assert_eq(graph_idmap_put(&m, k * 64 + 11, &id, &inserted), GRAPH_OK);
        cr_assert_eq(id, (uint32_t)k);
        cr_assert_not(inserted);
        cr_assert_eq(graph_idmap_get(&m, k * 64 + 11), (uint32_t)k);
    }
    cr_assert_eq(graph_idmap_get(&m, 12), UINT32_MAX);
    cr_assert_eq(m.count, 100000);
    graph_idmap_free(&m);
}

Test(graph, sort_keys_is_a_stable_sort) {
    enum { N = 5000 };
    uint64_t keys[N], copy[N];
    uint32_t ids[N];
    srand(99);
    for (uint32_t i = 0; i < N; i++) {
        /* Few distinct values in some bytes, none in others. */
        keys[i] = (uint64_t)(rand() % 7) << 56 | (uint64_t)(rand() % 300) << 8 | 0x42;
        copy[i] = keys[i];
        ids[i] = i;
    }
    cr_assert_eq(graph_sort_keys(keys, ids, N), GRAPH_OK);
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_eq(keys[i], copy[ids[i]]);
        if (i > 0) {
            cr_assert_leq(keys[i - 1], keys[i]);
            if (keys[i - 1] == keys[i]) {
                cr_assert_lt(ids[i - 1], ids[i], "not stable at %u", i);
            }
        }
    }
    cr_assert_eq(graph_sort_keys(keys, ids, 0), GRAPH_OK);
    cr_assert_eq(graph_sort_keys(keys, ids, 1), GRAPH_OK);
}
