/* Dependency graphs: iterative Tarjan SCC, canonical condensation order, and
 * the id map the NIF uses to turn atoms into dense node ids. See graph.h. */
#include "graph.h"

#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

/* malloc of n elements of `size` bytes (at most 8): never malloc(0), never an
 * overflow. No array here exceeds 2^34 elements. */
static void *alloc_array(size_t n, size_t size) {
    if (n > ((size_t)1 << 34) || size > 8) {
        return NULL;
    }
    return malloc((n + 1) * size);
}

void graph_csr_free(graph_csr *g) {
    free(g->offsets);
    free(g->targets);
    g->offsets = NULL;
    g->targets = NULL;
    g->nnodes = 0;
    g->nedges = 0;
}

graph_errcode graph_csr_build(uint32_t nnodes, size_t nedges, const uint32_t *src,
                              const uint32_t *dst, graph_csr *out) {
    memset(out, 0, sizeof *out);
    if (nnodes > GRAPH_MAX_COUNT || nedges > GRAPH_MAX_COUNT) {
        return GRAPH_E_TOO_LARGE;
    }
    for (size_t i = 0; i < nedges; i++) {
        if (src[i] >= nnodes || dst[i] >= nnodes) {
            return GRAPH_E_BAD_TARGET;
        }
    }
    uint32_t *offsets = alloc_array((size_t)nnodes + 1, sizeof *offsets);
    uint32_t *targets = alloc_array(nedges, sizeof *targets);
    if (!offsets || !targets) {
        free(offsets);
        free(targets);
        return GRAPH_E_NOMEM;
    }
    memset(offsets, 0, ((size_t)nnodes + 1) * sizeof *offsets);
    for (size_t i = 0; i < nedges; i++) {
        offsets[src[i] + 1]++;
    }
    for (uint32_t v = 0; v < nnodes; v++) {
        offsets[v + 1] += offsets[v];
    }
    /* Fill with offsets[v] as a cursor, then shift the cursors back. */
    for (size_t i = 0; i < nedges; i++) {
        targets[offsets[src[i]]++] = dst[i];
    }
    for (uint32_t v = nnodes; v > 0; v--) {
        offsets[v] = offsets[v - 1];
    }
    offsets[0] = 0;
    out->nnodes = nnodes;
    out->nedges = (uint32_t)nedges;
    out->offsets = offsets;
    out->targets = targets;
    return GRAPH_OK;
}

graph_errcode graph_csr_check(const graph_csr *g) {
    if (g->nnodes > GRAPH_MAX_COUNT || g->nedges > GRAPH_MAX_COUNT) {
        return GRAPH_E_TOO_LARGE;
    }
    if (g->nnodes == 0) {
        return g->nedges == 0 && (!g->offsets || g->offsets[0] == 0) ? GRAPH_OK
                                                                     : GRAPH_E_BAD_OFFSETS;
    }
    if (!g->offsets || g->offsets[0] != 0 || g->offsets[g->nnodes] != g->nedges ||
        (g->nedges > 0 && !g->targets)) {
        return GRAPH_E_BAD_OFFSETS;
    }
    for (uint32_t v = 0; v < g->nnodes; v++) {
        if (g->offsets[v + 1] < g->offsets[v]) {
            return GRAPH_E_BAD_OFFSETS;
        }
    }
    for (uint32_t e = 0; e < g->nedges; e++) {
        if (g->targets[e] >= g->nnodes) {
            return GRAPH_E_BAD_TARGET;
        }
    }
    return GRAPH_OK;
}

void graph_order_free(graph_order *o) {
    free(o->order);
    free(o->group_start);
    o->order = NULL;
    o->group_start = NULL;
    o->ngroups = 0;
}

/* Tarjan's algorithm with an explicit call stack. Writes each node's
 * component number to comp[] and returns the number of components. */
static graph_errcode tarjan(const graph_csr *g, uint32_t *comp, uint32_t *ncomps) {
    uint32_t n = g->nnodes;
    uint32_t *index = alloc_array(n, sizeof *index);
    uint32_t *low = alloc_array(n, sizeof *low);
    uint32_t *cursor = alloc_array(n, sizeof *cursor);
    uint32_t *stack = alloc_array(n, sizeof *stack);
    uint32_t *calls = alloc_array(n, sizeof *calls);
    graph_errcode rc = GRAPH_E_NOMEM;
    if (!index || !low || !cursor || !stack || !calls) {
        goto out;
    }
    for (uint32_t v = 0; v < n; v++) {
        index[v] = NONE;
        comp[v] = NONE;
    }
    uint32_t counter = 0, sp = 0, csp = 0, nc = 0;
    for (uint32_t root = 0; root < n; root++) {
        if (index[root] != NONE) {
            continue;
        }
        index[root] = low[root] = counter++;
        cursor[root] = g->offsets[root];
        stack[sp++] = root;
        calls[csp++] = root;
        while (csp > 0) {
            uint32_t v = calls[csp - 1];
            if (cursor[v] < g->offsets[v + 1]) {
                uint32_t w = g->targets[cursor[v]++];
                if (index[w] == NONE) {
                    index[w] = low[w] = counter++;
                    cursor[w] = g->offsets[w];
                    stack[sp++] = w;
                    calls[csp++] = w;
                } else if (comp[w] == NONE && index[w] < low[v]) {
                    /* w is on the stack: visited, not yet in a component. */
                    low[v] = index[w];
                }
                continue;
            }
            csp--;
            if (low[v] == index[v]) {
                uint32_t w;
                do {
                    w = stack[--sp];
                    comp[w] = nc;
                } while (w != v);
                nc++;
            }
            if (csp > 0) {
                uint32_t u = calls[csp - 1];
                if (low[v] < low[u]) {
                    low[u] = low[v];
                }
            }
        }
    }
    *ncomps = nc;
    rc = GRAPH_OK;
out:
    free(index);
    free(low);
    free(cursor);
    free(stack);
    free(calls);
    return rc;
}

/* A binary min-heap of component labels (smaller label = smaller key). */
static void heap_push(uint32_t *heap, uint32_t *len, uint32_t x) {
    uint32_t i = (*len)++;
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (heap[parent] <= x) {
            break;
        }
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = x;
}

static uint32_t heap_pop(uint32_t *heap, uint32_t *len) {
    uint32_t top = heap[0];
    uint32_t x = heap[--(*len)];
    uint32_t i = 0, n = *len;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && heap[c + 1] < heap[c]) {
            c++;
        }
        if (x <= heap[c]) {
            break;
        }
        heap[i] = heap[c];
        i = c;
    }
    if (n > 0) {
        heap[i] = x;
    }
    return top;
}

graph_errcode graph_reload_order(const graph_csr *g, graph_order *out) {
    memset(out, 0, sizeof *out);
    graph_errcode rc = graph_csr_check(g);
    if (rc != GRAPH_OK) {
        return rc;
    }
    uint32_t n = g->nnodes;
    uint32_t *comp = alloc_array(n, sizeof *comp);
    uint32_t *label = NULL, *mstart = NULL, *members = NULL, *pending = NULL, *roff = NULL,
             *rev = NULL, *heap = NULL;
    uint32_t *order = alloc_array(n, sizeof *order);
    uint32_t *gstart = NULL;
    uint32_t nc = 0;
    rc = GRAPH_E_NOMEM;
    if (!comp || !order) {
        goto fail;
    }
    rc = tarjan(g, comp, &nc);
    if (rc != GRAPH_OK) {
        goto fail;
    }
    rc = GRAPH_E_NOMEM;
    label = alloc_array(nc, sizeof *label);
    mstart = alloc_array((size_t)nc + 1, sizeof *mstart);
    members = alloc_array(n, sizeof *members);
    pending = alloc_array(nc, sizeof *pending);
    roff = alloc_array((size_t)nc + 1, sizeof *roff);
    rev = alloc_array(g->nedges, sizeof *rev);
    heap = alloc_array(nc, sizeof *heap);
    gstart = alloc_array((size_t)nc + 1, sizeof *gstart);
    if (!label || !mstart || !members || !pending || !roff || !rev || !heap || !gstart) {
        goto fail;
    }

    /* Relabel components by their smallest member, so label order is key
     * order; then list each component's members in ascending id order. */
    for (uint32_t c = 0; c < nc; c++) {
        label[c] = NONE;
    }
    uint32_t next = 0;
    for (uint32_t v = 0; v < n; v++) {
        if (label[comp[v]] == NONE) {
            label[comp[v]] = next++;
        }
        comp[v] = label[comp[v]];
    }
    memset(mstart, 0, ((size_t)nc + 1) * sizeof *mstart);
    for (uint32_t v = 0; v < n; v++) {
        mstart[comp[v] + 1]++;
    }
    for (uint32_t c = 0; c < nc; c++) {
        mstart[c + 1] += mstart[c];
    }
    for (uint32_t v = 0; v < n; v++) {
        members[mstart[comp[v]]++] = v;
    }
    for (uint32_t c = nc; c > 0; c--) {
        mstart[c] = mstart[c - 1];
    }
    mstart[0] = 0;

    /* Edges between components, reversed (dependency -> dependent), and for
     * each component the number of edges to its dependencies. */
    memset(pending, 0, (size_t)nc * sizeof *pending);
    memset(roff, 0, ((size_t)nc + 1) * sizeof *roff);
    for (uint32_t u = 0; u < n; u++) {
        for (uint32_t e = g->offsets[u]; e < g->offsets[u + 1]; e++) {
            uint32_t cu = comp[u], cw = comp[g->targets[e]];
            if (cu != cw) {
                pending[cu]++;
                roff[cw + 1]++;
            }
        }
    }
    for (uint32_t c = 0; c < nc; c++) {
        roff[c + 1] += roff[c];
    }
    for (uint32_t u = 0; u < n; u++) {
        for (uint32_t e = g->offsets[u]; e < g->offsets[u + 1]; e++) {
            uint32_t cu = comp[u], cw = comp[g->targets[e]];
            if (cu != cw) {
                rev[roff[cw]++] = cu;
            }
        }
    }
    for (uint32_t c = nc; c > 0; c--) {
        roff[c] = roff[c - 1];
    }
    roff[0] = 0;

    /* Kahn's algorithm with the smallest ready component first. */
    uint32_t hlen = 0, placed = 0, ng = 0;
    for (uint32_t c = 0; c < nc; c++) {
        if (pending[c] == 0) {
            heap_push(heap, &hlen, c);
        }
    }
    while (hlen > 0) {
        uint32_t c = heap_pop(heap, &hlen);
        gstart[ng++] = placed;
        for (uint32_t i = mstart[c]; i < mstart[c + 1]; i++) {
            order[placed++] = members[i];
        }
        for (uint32_t i = roff[c]; i < roff[c + 1]; i++) {
            if (--pending[rev[i]] == 0) {
                heap_push(heap, &hlen, rev[i]);
            }
        }
    }
    gstart[ng] = placed;
    /* The condensation is acyclic, so every component is placed. */
    rc = ng == nc && placed == n ? GRAPH_OK : GRAPH_E_BAD_OFFSETS;
    if (rc != GRAPH_OK) {
        goto fail;
    }
    out->ngroups = nc;
    out->order = order;
    out->group_start = gstart;
    order = NULL;
    gstart = NULL;
fail:
    free(comp);
    free(label);
    free(mstart);
    free(members);
    free(pending);
    free(roff);
    free(rev);
    free(heap);
    free(order);
    free(gstart);
    return rc;
}

graph_errcode graph_sort_keys(uint64_t *keys, uint32_t *ids, size_t n) {
    if (n < 2) {
        return GRAPH_OK;
    }
    uint64_t *tkeys = alloc_array(n, sizeof *tkeys);
    uint32_t *tids = alloc_array(n, sizeof *tids);
    if (!tkeys || !tids) {
        free(tkeys);
        free(tids);
        return GRAPH_E_NOMEM;
    }
    uint64_t *k = keys, *tk = tkeys;
    uint32_t *d = ids, *td = tids;
    for (unsigned shift = 0; shift < 64; shift += 8) {
        size_t count[256] = {0};
        for (size_t i = 0; i < n; i++) {
            count[(k[i] >> shift) & 0xff]++;
        }
        if (count[(k[0] >> shift) & 0xff] == n) {
            continue;
        }
        size_t sum = 0;
        for (unsigned b = 0; b < 256; b++) {
            size_t c = count[b];
            count[b] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) {
            size_t at = count[(k[i] >> shift) & 0xff]++;
            tk[at] = k[i];
            td[at] = d[i];
        }
        uint64_t *sk = k;
        uint32_t *sd = d;
        k = tk;
        d = td;
        tk = sk;
        td = sd;
    }
    if (k != keys) {
        memcpy(keys, k, n * sizeof *keys);
        memcpy(ids, d, n * sizeof *ids);
    }
    free(tkeys);
    free(tids);
    return GRAPH_OK;
}

/* splitmix64's finaliser: atom terms differ in few low bits. */
static size_t hash64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return (size_t)x;
}

static graph_errcode idmap_alloc(graph_idmap *m, size_t capacity) {
    m->keys = alloc_array(capacity, sizeof *m->keys);
    m->ids = alloc_array(capacity, sizeof *m->ids);
    if (!m->keys || !m->ids) {
        free(m->keys);
        free(m->ids);
        m->keys = NULL;
        m->ids = NULL;
        return GRAPH_E_NOMEM;
    }
    memset(m->ids, 0xff, capacity * sizeof *m->ids);
    m->mask = capacity - 1;
    return GRAPH_OK;
}

graph_errcode graph_idmap_init(graph_idmap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    if (expected > GRAPH_MAX_COUNT) {
        return GRAPH_E_TOO_LARGE;
    }
    size_t capacity = 16;
    while (capacity < 2 * expected) {
        capacity *= 2;
    }
    return idmap_alloc(m, capacity);
}

void graph_idmap_free(graph_idmap *m) {
    free(m->keys);
    free(m->ids);
    memset(m, 0, sizeof *m);
}

static size_t idmap_slot(const graph_idmap *m, uint64_t key) {
    size_t i = hash64(key) & m->mask;
    while (m->ids[i] != NONE && m->keys[i] != key) {
        i = (i + 1) & m->mask;
    }
    return i;
}

static graph_errcode idmap_grow(graph_idmap *m) {
    graph_idmap old = *m;
    if (idmap_alloc(m, 2 * (old.mask + 1)) != GRAPH_OK) {
        *m = old;
        return GRAPH_E_NOMEM;
    }
    m->count = old.count;
    for (size_t i = 0; i <= old.mask; i++) {
        if (old.ids[i] != NONE) {
            size_t s = idmap_slot(m, old.keys[i]);
            m->keys[s] = old.keys[i];
            m->ids[s] = old.ids[i];
        }
    }
    free(old.keys);
    free(old.ids);
    return GRAPH_OK;
}

graph_errcode graph_idmap_put(graph_idmap *m, uint64_t key, uint32_t *id, int *inserted) {
    size_t s = idmap_slot(m, key);
    if (m->ids[s] != NONE) {
        *id = m->ids[s];
        *inserted = 0;
        return GRAPH_OK;
    }
    if (m->count >= GRAPH_MAX_COUNT) {
        return GRAPH_E_TOO_LARGE;
    }
    if (2 * ((size_t)m->count + 1) > m->mask + 1) {
        if (idmap_grow(m) != GRAPH_OK) {
            return GRAPH_E_NOMEM;
        }
        s = idmap_slot(m, key);
    }
    m->keys[s] = key;
    m->ids[s] = m->count;
    *id = m->count++;
    *inserted = 1;
    return GRAPH_OK;
}

uint32_t graph_idmap_get(const graph_idmap *m, uint64_t key) {
    return m->ids[idmap_slot(m, key)];
}
