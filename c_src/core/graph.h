/* Dependency graphs: strongly connected components and a reload order.
 *
 * Nodes are dense integer ids 0..nnodes-1; edges are CSR arrays (the targets
 * of node v are targets[offsets[v] .. offsets[v + 1] - 1]). An edge u -> v
 * means "u depends on v", so v must be reloaded before u.
 *
 * graph_reload_order() finds the strongly connected components with an
 * iterative Tarjan (no recursion, so no depth limit) and orders them with
 * dependencies first. The order is canonical, a function of the graph alone:
 * among the groups whose dependencies are all placed, the one whose smallest
 * member id is smallest comes next, and each group lists its members in
 * ascending id order. Self-loops and duplicate edges are allowed and change
 * nothing. Time O(V + E + C log C) for C components; memory O(V + E).
 *
 * Pure C: no erl_nif.h, so Criterion and libFuzzer use it directly. */
#ifndef SANDBOX_GRAPH_H
#define SANDBOX_GRAPH_H

#include <stddef.h>
#include <stdint.h>

/* The largest node or edge count (ids and offsets are uint32_t). */
#define GRAPH_MAX_COUNT (UINT32_MAX - 1)

typedef enum {
    GRAPH_OK = 0,
    GRAPH_E_NOMEM,
    GRAPH_E_BAD_OFFSETS, /* offsets[0] != 0, decreasing, or offsets[nnodes] != nedges */
    GRAPH_E_BAD_TARGET,  /* an edge target >= nnodes */
    GRAPH_E_TOO_LARGE,   /* more than GRAPH_MAX_COUNT nodes or edges */
} graph_errcode;

typedef struct {
    uint32_t nnodes;
    uint32_t nedges;
    uint32_t *offsets; /* nnodes + 1 entries */
    uint32_t *targets; /* nedges entries */
} graph_csr;

typedef struct {
    uint32_t ngroups;
    uint32_t *order;       /* nnodes node ids, group after group */
    uint32_t *group_start; /* ngroups + 1 offsets into order */
} graph_order;

/* Builds a CSR graph from edge pairs src[i] -> dst[i] (a counting sort: each
 * node's targets keep their input order). Ids must be < nnodes. Free with
 * graph_csr_free(). */
graph_errcode graph_csr_build(uint32_t nnodes, size_t nedges, const uint32_t *src,
                              const uint32_t *dst, graph_csr *out);
void graph_csr_free(graph_csr *g);

/* Checks the CSR invariants that graph_reload_order() relies on. */
graph_errcode graph_csr_check(const graph_csr *g);

/* Strongly connected components in dependency order (see above). The input
 * is checked with graph_csr_check() first. Free with graph_order_free(). */
graph_errcode graph_reload_order(const graph_csr *g, graph_order *out);
void graph_order_free(graph_order *o);

/* Sorts keys[] ascending, permuting ids[] alongside: a stable LSD radix
 * sort by bytes, skipping bytes that are equal in every key. O(n). */
graph_errcode graph_sort_keys(uint64_t *keys, uint32_t *ids, size_t n);

/* A hash map from 64-bit keys (e.g. atom terms) to dense ids 0, 1, 2, ... in
 * order of first insertion. Open addressing, linear probing. */
typedef struct {
    uint64_t *keys;
    uint32_t *ids; /* UINT32_MAX marks an empty slot */
    size_t mask;   /* capacity - 1, capacity a power of two */
    uint32_t count;
} graph_idmap;

/* Room for at least `expected` keys without growing. */
graph_errcode graph_idmap_init(graph_idmap *m, size_t expected);
void graph_idmap_free(graph_idmap *m);

/* The id of `key`, inserting it with the next id when absent (*inserted is
 * then 1). */
graph_errcode graph_idmap_put(graph_idmap *m, uint64_t key, uint32_t *id, int *inserted);

/* The id of `key`, or UINT32_MAX when absent. */
uint32_t graph_idmap_get(const graph_idmap *m, uint64_t key);

#endif
