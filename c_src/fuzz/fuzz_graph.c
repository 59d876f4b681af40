/* libFuzzer target for the dependency-graph core. The first byte picks a
 * mode and the node count (1..64); the rest is either edge pairs (checked:
 * the reload order's invariants against a reachability matrix) or raw CSR
 * arrays (unchecked input: an error or a valid order, never a crash). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Every node placed once; groups non-empty, members ascending. Returns the
 * group of each node in gr[]. */
static void check_placement(const graph_order *o, uint32_t n, uint32_t *gr) {
    for (uint32_t v = 0; v < n; v++) {
        gr[v] = UINT32_MAX;
    }
    CHECK(o->group_start[0] == 0 && o->group_start[o->ngroups] == n);
    for (uint32_t k = 0; k < o->ngroups; k++) {
        CHECK(o->group_start[k] < o->group_start[k + 1]);
        for (uint32_t i = o->group_start[k]; i < o->group_start[k + 1]; i++) {
            uint32_t v = o->order[i];
            CHECK(v < n && gr[v] == UINT32_MAX);
            CHECK(i == o->group_start[k] || o->order[i - 1] < v);
            gr[v] = k;
        }
    }
}

static void fuzz_edges(uint32_t n, const uint8_t *data, size_t size) {
    size_t ne = size / 2;
    uint32_t *src = malloc((ne + 1) * sizeof *src), *dst = malloc((ne + 1) * sizeof *dst);
    uint64_t reach[64];
    CHECK(src && dst);
    for (uint32_t v = 0; v < n; v++) {
        reach[v] = (uint64_t)1 << v;
    }
    for (size_t i = 0; i < ne; i++) {
        src[i] = data[2 * i] % n;
        dst[i] = data[2 * i + 1] % n;
        reach[src[i]] |= (uint64_t)1 << dst[i];
    }
    for (uint32_t k = 0; k < n; k++) {
        for (uint32_t i = 0; i < n; i++) {
            if (reach[i] >> k & 1) {
                reach[i] |= reach[k];
            }
        }
    }
    graph_csr g;
    graph_order o;
    CHECK(graph_csr_build(n, ne, src, dst, &g) == GRAPH_OK);
    CHECK(graph_reload_order(&g, &o) == GRAPH_OK);
    uint32_t gr[64];
    check_placement(&o, n, gr);
    /* Same group exactly when mutually reachable. */
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < n; j++) {
            int scc = (reach[i] >> j & 1) && (reach[j] >> i & 1);
            CHECK((gr[i] == gr[j]) == scc);
        }
    }
    /* Dependencies first. */
    for (size_t i = 0; i < ne; i++) {
        CHECK(gr[dst[i]] <= gr[src[i]]);
    }
    /* Canonical: no later group was ready earlier with a smaller first member. */
    for (uint32_t k = 0; k < o.ngroups; k++) {
        uint32_t key = o.order[o.group_start[k]];
        for (uint32_t j = k + 1; j < o.ngroups; j++) {
            int ready = 1;
            for (uint32_t i = o.group_start[j]; ready && i < o.group_start[j + 1]; i++) {
                uint32_t v = o.order[i];
                for (uint32_t e = g.offsets[v]; e < g.offsets[v + 1]; e++) {
                    if (gr[g.targets[e]] != j && gr[g.targets[e]] >= k) {
                        ready = 0;
                        break;
                    }
                }
            }
            CHECK(!ready || o.order[o.group_start[j]] > key);
        }
    }
    graph_order_free(&o);
    graph_csr_free(&g);
    free(src);
    free(dst);
}

static void fuzz_raw_csr(uint32_t n, const uint8_t *data, size_t size) {
    /* n + 1 offsets, then targets, one byte each. */
    if (size < (size_t)n + 1) {
        return;
    }
    uint32_t offsets[65], *targets = malloc((size - n) * sizeof *targets);
    CHECK(targets);
    for (uint32_t i = 0; i <= n; i++) {
        offsets[i] = data[i];
    }
    uint32_t ne = (uint32_t)(size - n - 1);
    for (uint32_t i = 0; i < ne; i++) {
        targets[i] = data[n + 1 + i];
    }
    graph_csr g = {n, ne, offsets, targets};
    graph_order o;
    graph_errcode rc = graph_reload_order(&g, &o);
    CHECK(rc == graph_csr_check(&g));
    if (rc == GRAPH_OK) {
        uint32_t gr[64];
        check_placement(&o, n, gr);
        graph_order_free(&o);
    }
    free(targets);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    uint32_t n = (uint32_t)(data[0] & 63) + 1;
    if (data[0] & 64) {
        fuzz_raw_csr(n, data + 1, size - 1);
    } else {
        fuzz_edges(n, data + 1, size - 1);
    }
    /* The key sort: 8-byte windows of the input, sorted stably. */
    size_t nk = size / 8 < 256 ? size / 8 : 256;
    uint64_t keys[256], copy[256];
    uint32_t ids[256];
    for (size_t i = 0; i < nk; i++) {
        memcpy(&keys[i], data + 8 * i, 8);
        copy[i] = keys[i];
        ids[i] = (uint32_t)i;
    }
    CHECK(graph_sort_keys(keys, ids, nk) == GRAPH_OK);
    for (size_t i = 0; i < nk; i++) {
        CHECK(keys[i] == copy[ids[i]]);
        CHECK(i == 0 || keys[i - 1] < keys[i] || (keys[i - 1] == keys[i] && ids[i - 1] < ids[i]));
    }
    /* The id map: keys from the input, ids dense in order of first insertion. */
    graph_idmap m;
    CHECK(graph_idmap_init(&m, 0) == GRAPH_OK);
    for (size_t i = 1; i + 1 < size && i < 512; i += 2) {
        uint64_t key = (uint64_t)data[i] << 8 | data[i + 1];
        uint32_t before = m.count, id;
        int inserted;
        CHECK(graph_idmap_put(&m, key, &id, &inserted) == GRAPH_OK);
        CHECK(inserted ? id == before && m.count == before + 1 : id < before);
        CHECK(graph_idmap_get(&m, key) == id);
    }
    graph_idmap_free(&m);
    return 0;
}
