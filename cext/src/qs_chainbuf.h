/* Chain packet buffer: the memory NF2..NFn of one chain instance share.
 *
 * One file-backed region per chain instance (hugetlbfs or memfd/tmpfs):
 *
 *   [header: geometry, control word, per-NF counters and
 *            per-NF cycles-per-batch histograms]        16 KiB
 *   [ring 0][ring 1]...[ring R-1]                        SP/SC rings of slot offsets
 *   [slot 0][slot 1]...[slot S-1]                        QS_SLOT_SIZE bytes each
 *
 * A slot is [meta 64 B][headroom 128 B][data QS_SLOT_DATA B].  Ring entries
 * are byte offsets of slots from the start of the slot area, so they mean
 * the same thing in every process whatever address the region is mapped at.
 *
 * Every NF of the chain can write every byte of the region, a malicious one
 * included.  So each process reads the geometry once, checks it against the
 * file size, keeps it in private memory (struct qs_view) and from then on
 * never trusts what the region says: ring indices are clamped, every offset
 * and every slot's data_off/len are checked before use.  A corrupt value
 * costs that chain its packets, never another process its memory safety.
 */
#ifndef QS_CHAINBUF_H
#define QS_CHAINBUF_H

#include <stdint.h>
#include <string.h>

#include "qd_stats.h" /* qd_hist_bucket: the single-NF runtime's histogram rule */

#define QS_CB_MAGIC 0x3146554248434d51ULL /* "QMCHBUF1" little-endian */
#define QS_CB_VERSION 2u /* 2: per-NF histograms, 16 KiB header */
#define QS_HDR_SIZE 16384u
#define QS_SLOT_SHIFT 11
#define QS_SLOT_SIZE (1u << QS_SLOT_SHIFT) /* 2048 */
#define QS_SLOT_META 64u
#define QS_SLOT_HEADROOM 128u
#define QS_SLOT_DATA (QS_SLOT_SIZE - QS_SLOT_META - QS_SLOT_HEADROOM) /* 1856 */
#define QS_MAX_RINGS 16u
#define QS_MAX_NFS 8u
#define QS_CACHE 64u
#define QS_HIST_BUCKETS QD_STATS_HIST_BUCKETS /* 128, log-linear: see qd_stats.h */

/* control word values (header.ctl) */
#define QS_CTL_PARK 0u /* detached: finish in-flight batches, then sleep */
#define QS_CTL_RUN 1u  /* attached: process batches */
#define QS_CTL_STOP 2u /* tear down: leave the loop */

/* per-NF state (nfctl.state), written by the NF's runtime */
#define QS_NF_INIT 0u
#define QS_NF_RUNNING 1u
#define QS_NF_PARKED 2u
#define QS_NF_EXITED 3u
#define QS_NF_DRAINING 4u /* first NF: detach asked, no more RX, waiting for in-flight slots */

/* slot flags */
#define QS_SLOT_DROPPED 1u

struct qs_slot_meta {
    uint16_t data_off; /* from the slot start; QS_SLOT_META + QS_SLOT_HEADROOM when fresh */
    uint16_t len;
    uint32_t flags;
    uint64_t seq;
};

struct qs_ring {
    volatile uint32_t head; /* producer writes */
    uint8_t _p0[QS_CACHE - 4];
    volatile uint32_t tail; /* consumer writes */
    uint8_t _p1[QS_CACHE - 4];
    uint32_t entries[];
};

struct qs_nfctl {
    volatile uint32_t state;
    volatile int32_t tid;
    volatile uint64_t batches;
    volatile uint64_t pkts;   /* packets handed to this NF (first NF: received) */
    volatile uint64_t tx;     /* first NF only: packets sent out of the port */
    volatile uint64_t bad;    /* invalid offsets / lengths / ring indices refused */
    volatile uint64_t drops;
    volatile uint64_t cycles; /* TSC cycles spent inside the NF's process call */
    volatile uint32_t park_gen; /* control generation (futex) it last parked/drained under */
    volatile uint32_t store_wait; /* a stateful stage waiting on Redis: 1 unreachable,
                                   * 2 every held slot taken (qs_state_turn) */
} __attribute__((aligned(QS_CACHE)));

struct qs_cbhdr {
    uint64_t magic;
    uint32_t version;
    uint32_t n_slots;
    uint32_t slot_size;
    uint32_t n_rings;
    uint32_t ring_cap; /* power of two >= n_slots */
    uint32_t n_nfs;
    uint64_t rings_off;
    uint64_t ring_stride;
    uint64_t slots_off;
    uint64_t total_size;
    char name[64];
    /* control, its own cache line: written by the scheduler/agent */
    volatile uint32_t ctl __attribute__((aligned(QS_CACHE)));
    volatile uint32_t batch;   /* batch size the first NF receives with */
    volatile uint32_t futex;   /* bumped on every ctl change; parked NFs wait on it */
    volatile uint32_t yield_after_batch; /* 1: cooperative (coop/copy); 0: yield only when idle (cfs) */
    struct qs_nfctl nf[QS_MAX_NFS] __attribute__((aligned(QS_CACHE)));
    /* hist[i][b]: batches of NF i's process whose cycles fall in bucket b
     * (qd_hist_bucket), from the start of its batch work to its end (NF1:
     * TX of what came back, RX, its NF(s), copy into the buffer; NF2..n:
     * dequeue, its NF, pass on).  Written by NF i's process only, with plain
     * stores; a monitor reads it without a lock (each bucket is one aligned
     * 8-byte word, so a reading is at most a batch or two behind). */
    volatile uint64_t hist[QS_MAX_NFS][QS_HIST_BUCKETS] __attribute__((aligned(QS_CACHE)));
};

/* A process's private copy of the geometry, checked once. */
struct qs_view {
    uint8_t *base;
    uint8_t *slots;
    struct qs_cbhdr *hdr;
    uint64_t size;
    uint32_t n_slots;
    uint32_t n_rings;
    uint32_t mask; /* ring_cap - 1 */
    uint32_t slot_bytes; /* n_slots << QS_SLOT_SHIFT */
    struct qs_ring *rings[QS_MAX_RINGS];
};

static inline uint32_t qs_pow2_ge(uint32_t v)
{
    uint32_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

static inline uint64_t qs_align(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

/* Bytes needed for a region of n_slots slots and n_rings rings. */
static inline uint64_t qs_region_size(uint32_t n_slots, uint32_t n_rings, uint64_t *rings_off,
                                      uint64_t *stride, uint64_t *slots_off)
{
    uint32_t cap = qs_pow2_ge(n_slots);
    uint64_t st = qs_align(sizeof(struct qs_ring) + (uint64_t)cap * 4, QS_CACHE);
    uint64_t ro = QS_HDR_SIZE;
    uint64_t so = qs_align(ro + st * n_rings, 4096);
    if (rings_off)
        *rings_off = ro;
    if (stride)
        *stride = st;
    if (slots_off)
        *slots_off = so;
    return so + ((uint64_t)n_slots << QS_SLOT_SHIFT);
}

/* Lay out a fresh region (creator only).  The caller zero-filled it. */
static inline void qs_region_format(uint8_t *base, uint32_t n_slots, uint32_t n_rings,
                                    uint32_t n_nfs, const char *name)
{
    struct qs_cbhdr *h = (struct qs_cbhdr *)base;
    uint64_t ro, st, so;
    h->total_size = qs_region_size(n_slots, n_rings, &ro, &st, &so);
    h->version = QS_CB_VERSION;
    h->n_slots = n_slots;
    h->slot_size = QS_SLOT_SIZE;
    h->n_rings = n_rings;
    h->ring_cap = qs_pow2_ge(n_slots);
    h->n_nfs = n_nfs;
    h->rings_off = ro;
    h->ring_stride = st;
    h->slots_off = so;
    strncpy(h->name, name, sizeof(h->name) - 1);
    h->ctl = QS_CTL_PARK;
    h->batch = 32;
    h->yield_after_batch = 1;
    __atomic_store_n(&h->magic, QS_CB_MAGIC, __ATOMIC_RELEASE);
}

/* Check the header against the mapped size and fill a private view.
 * Returns 0, or a negative code naming what is wrong. */
static inline int qs_view_init(struct qs_view *v, uint8_t *base, uint64_t size)
{
    struct qs_cbhdr *h = (struct qs_cbhdr *)base;
    uint64_t ro, st, so, total;
    uint32_t i;
    if (size < QS_HDR_SIZE)
        return -1;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != QS_CB_MAGIC || h->version != QS_CB_VERSION)
        return -2;
    if (h->n_slots == 0 || h->n_slots > (1u << 20) || h->n_rings == 0 ||
        h->n_rings > QS_MAX_RINGS || h->slot_size != QS_SLOT_SIZE)
        return -3;
    total = qs_region_size(h->n_slots, h->n_rings, &ro, &st, &so);
    if (total > size || h->total_size != total || h->rings_off != ro || h->ring_stride != st ||
        h->slots_off != so || h->ring_cap != qs_pow2_ge(h->n_slots))
        return -4;
    v->base = base;
    v->hdr = h;
    v->size = size;
    v->n_slots = h->n_slots;
    v->n_rings = h->n_rings;
    v->mask = h->ring_cap - 1;
    v->slot_bytes = h->n_slots << QS_SLOT_SHIFT;
    v->slots = base + so;
    for (i = 0; i < QS_MAX_RINGS; i++)
        v->rings[i] = i < v->n_rings ? (struct qs_ring *)(base + ro + st * i) : 0;
    return 0;
}

/* A slot offset is usable if it is slot-aligned and inside the slot area. */
static inline int qs_off_ok(const struct qs_view *v, uint32_t off)
{
    return (off & (QS_SLOT_SIZE - 1)) == 0 && off < v->slot_bytes;
}

static inline struct qs_slot_meta *qs_meta(const struct qs_view *v, uint32_t off)
{
    return (struct qs_slot_meta *)(v->slots + off);
}

/* Packet bytes of a slot, or NULL if its data_off/len do not fit the slot. */
static inline uint8_t *qs_slot_data(const struct qs_view *v, uint32_t off, uint16_t *len)
{
    struct qs_slot_meta *m = qs_meta(v, off);
    uint32_t d = m->data_off, l = m->len;
    if (d < QS_SLOT_META || d + l > QS_SLOT_SIZE)
        return 0;
    *len = (uint16_t)l;
    return v->slots + off + d;
}

/* Single-producer enqueue of up to n entries; returns how many went in. */
static inline uint32_t qs_ring_enqueue(const struct qs_view *v, uint32_t r, const uint32_t *objs,
                                       uint32_t n)
{
    struct qs_ring *q = v->rings[r];
    uint32_t head = q->head; /* only we write it */
    uint32_t tail = __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE);
    uint32_t used = head - tail, cap = v->mask + 1, i;
    if (used > cap)
        return 0; /* corrupt: treat as full */
    if (n > cap - used)
        n = cap - used;
    for (i = 0; i < n; i++)
        q->entries[(head + i) & v->mask] = objs[i];
    __atomic_store_n(&q->head, head + n, __ATOMIC_RELEASE);
    return n;
}

/* Single-consumer dequeue of up to n entries.  Returns the count, or -1 if
 * the ring's indices are corrupt (more entries than it can hold). */
static inline int32_t qs_ring_dequeue(const struct qs_view *v, uint32_t r, uint32_t *objs,
                                      uint32_t n)
{
    struct qs_ring *q = v->rings[r];
    uint32_t tail = q->tail;
    uint32_t head = __atomic_load_n(&q->head, __ATOMIC_ACQUIRE);
    uint32_t avail = head - tail, i;
    if (avail > v->mask + 1)
        return -1;
    if (n > avail)
        n = avail;
    for (i = 0; i < n; i++)
        objs[i] = q->entries[(tail + i) & v->mask];
    __atomic_store_n(&q->tail, tail + n, __ATOMIC_RELEASE);
    return (int32_t)n;
}

static inline uint32_t qs_ring_count(const struct qs_view *v, uint32_t r)
{
    struct qs_ring *q = v->rings[r];
    uint32_t c = __atomic_load_n(&q->head, __ATOMIC_ACQUIRE) - __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE);
    return c > v->mask + 1 ? 0 : c;
}

static inline uint64_t qs_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

_Static_assert(sizeof(struct qs_cbhdr) <= QS_HDR_SIZE, "header fits its page");
_Static_assert(sizeof(struct qs_nfctl) == QS_CACHE, "one cache line per NF");

#endif
