/* Per-flow hold: how a chain instance that takes over flows keeps them in order.
 *
 * When the controller moves flows from instance A to instance B, B must not
 * process a moved flow's packets before A has emitted everything it had of
 * that flow.  So the controller first asks B's agent to *hold* the flows: B's
 * first NF (qs_run_first) sets every received packet of a held flow aside, in
 * arrival order, in a private queue per flow.  Then the switch's rules change,
 * A's agent waits until A has emitted what it had (see the progress counters
 * below) and the controller asks B's agent to *release*: B processes each
 * released flow's queue before anything newer of that flow, then the flow runs
 * as any other.  A hold nobody releases ends by itself after max_hold_ms (the
 * controller may have died): the queue is released, the entry counted expired.
 *
 * The region is a small file (4 KiB + entries) the agent creates per instance,
 * owned root:<chain gid> 0660 like the chain buffer; only NF1 maps it.
 *
 *   entry.state   FREE -> ON        agent (qs_hold_claim: compare-and-swap)
 *                 ON -> RELEASE     agent (qs_hold_release), or NF1 on expiry
 *                 RELEASE -> FREE   NF1, once the flow's queue is empty
 *   active        bit i set while entry i is not FREE (agent sets, NF1 clears)
 *
 * NF1 looks at packets only while `active` or `mark` is non-zero: a stateless
 * instance with nothing held pays one load per burst.
 *
 * Marked packets.  When a chain that had no instance gets one, the controller
 * has packets of the flows it held (and more may still be on their way to it
 * as packet-ins) that are older than anything the flows' new rules forward.
 * It holds the flows here, sends its own packets with a marker 802.1Q tag in
 * front (VID 4095, which 802.1Q reserves for implementation use and no link
 * carries), installs the rules, and releases once the last of them is out.
 * NF1 strips the marker and processes a marked packet at once, while the
 * rule-forwarded packets of the same flows wait in their queues: so every
 * packet of a flow reaches the NFs in the order the switch first saw them.
 * The agent sets `mark` the first time a hold asks for it; a NIC that strips
 * VLAN tags itself is handled too (the mbuf's stripped TCI).
 *
 * Keys are the controller's flow keys (quadrant_app/flowkey.py): Ethernet, at
 * most one 802.1Q tag, IPv4 (non-first fragments carry no ports and match no
 * held flow) or IPv6 with the transport header right after the fixed header;
 * ports 0 for protocols other than TCP, UDP and SCTP.
 */
#ifndef QS_FLOWHOLD_H
#define QS_FLOWHOLD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rte_byteorder.h>
#include <rte_cycles.h>
#include <rte_mbuf.h>

#define QS_HOLD_MAGIC 0x31444c4851ULL /* "QHLD1" */
#define QS_HOLD_MAX 64u               /* flows held at once per instance */
#define QS_HOLD_QUEUE 4096u           /* packets held per flow; more are dropped, counted */

#define QS_HOLD_MARK_VID 0x0fffu      /* the marker tag's VID (see above) */

#define QS_HOLD_FREE 0u
#define QS_HOLD_ON 1u
#define QS_HOLD_RELEASE 2u

struct qs_hold_key {
    uint16_t eth_type; /* host order: 0x0800, 0x86dd */
    uint8_t proto;
    uint8_t _pad;
    uint16_t sport, dport; /* host order */
    uint8_t src[16], dst[16]; /* IPv4: the first 4 bytes, network order, rest zero */
};

struct qs_hold_entry {
    volatile uint32_t state;
    uint32_t _pad;
    struct qs_hold_key key;
    volatile uint64_t held;     /* NF1: packets set aside */
    volatile uint64_t released; /* NF1: set-aside packets processed after release */
    volatile uint64_t dropped;  /* NF1: queue full */
    volatile uint64_t expired;  /* NF1: holds released by max_hold_ms */
    uint8_t _p1[128 - 8 - sizeof(struct qs_hold_key) - 32];
};

struct qs_hold_region {
    uint64_t magic;
    uint32_t max_hold_ms; /* agent */
    volatile uint32_t mark; /* agent: strip marker tags (packets the controller sent) */
    volatile uint64_t active;
    volatile uint64_t marked; /* NF1: marked packets received (tag stripped) */
    uint8_t _p0[64 - 32];
    /* NF1's progress, for the agent's drain: a poll that returned fewer packets
     * than it asked for emptied the port's queue, so everything that arrived
     * before it has been received; rx_at_short is NF1's received count then. */
    volatile uint64_t short_polls;
    volatile uint64_t rx_at_short;
    uint8_t _p1[64 - 16];
    struct qs_hold_entry e[QS_HOLD_MAX];
};

#define QS_HOLD_SIZE (sizeof(struct qs_hold_region))

/* -- agent side -------------------------------------------------------------- */

static inline void qs_hold_format(struct qs_hold_region *r, uint32_t max_hold_ms)
{
    memset(r, 0, sizeof(*r));
    r->max_hold_ms = max_hold_ms;
    __atomic_store_n(&r->magic, QS_HOLD_MAGIC, __ATOMIC_RELEASE);
}

/* Hold `k`: the entry index, or -1 if every entry is in use. */
static inline int qs_hold_claim(struct qs_hold_region *r, const struct qs_hold_key *k)
{
    uint32_t i;
    for (i = 0; i < QS_HOLD_MAX; i++) {
        uint32_t want = QS_HOLD_FREE;
        if (__atomic_load_n(&r->active, __ATOMIC_ACQUIRE) & (1ULL << i))
            continue; /* NF1 has not finished with it */
        if (__atomic_compare_exchange_n(&r->e[i].state, &want, QS_HOLD_FREE, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            r->e[i].key = *k;
            __atomic_store_n(&r->e[i].state, QS_HOLD_ON, __ATOMIC_RELEASE);
            __atomic_fetch_or(&r->active, 1ULL << i, __ATOMIC_RELEASE);
            return (int)i;
        }
    }
    return -1;
}

/* Release entry i if it holds `k`: 1 if released, 0 if it was not held. */
static inline int qs_hold_release(struct qs_hold_region *r, uint32_t i, const struct qs_hold_key *k)
{
    uint32_t want = QS_HOLD_ON;
    if (i >= QS_HOLD_MAX || memcmp(&r->e[i].key, k, sizeof(*k)) != 0)
        return 0;
    return __atomic_compare_exchange_n(&r->e[i].state, &want, QS_HOLD_RELEASE, 0,
                                       __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

/* -- NF1 side ---------------------------------------------------------------- */

struct qs_hold_local {
    struct qs_hold_region *r;
    struct rte_mbuf **q[QS_HOLD_MAX];
    uint32_t head[QS_HOLD_MAX], tail[QS_HOLD_MAX];
    uint64_t since[QS_HOLD_MAX]; /* TSC when NF1 first saw the hold */
    /* a released entry's queue goes only once every packet that had reached the
     * port when NF1 saw the release is set aside too: after a poll that emptied
     * the port's queue (short_polls reaches settle) or QS_HOLD_QUEUE received */
    uint64_t settle[QS_HOLD_MAX], settle_rx[QS_HOLD_MAX];
    uint64_t rx; /* packets qs_hold_filter has seen */
    uint64_t max_cycles;
};

static inline int qs_hold_local_init(struct qs_hold_local *h, struct qs_hold_region *r)
{
    uint32_t i;
    memset(h, 0, sizeof(*h));
    h->r = r;
    h->max_cycles = (uint64_t)r->max_hold_ms * rte_get_tsc_hz() / 1000u;
    for (i = 0; i < QS_HOLD_MAX; i++) {
        h->q[i] = (struct rte_mbuf **)malloc(QS_HOLD_QUEUE * sizeof(struct rte_mbuf *));
        if (h->q[i] == NULL)
            return -1;
    }
    return 0;
}

static inline void qs_hold_local_free(struct qs_hold_local *h)
{
    uint32_t i;
    for (i = 0; i < QS_HOLD_MAX; i++) {
        if (h->q[i] == NULL)
            continue;
        while (h->head[i] != h->tail[i])
            rte_pktmbuf_free(h->q[i][h->head[i]++ % QS_HOLD_QUEUE]);
        free(h->q[i]);
    }
}

/* The flow key of a frame (0), or -1 if it has none a held flow could have. */
static inline int qs_hold_key_of(const uint8_t *d, uint32_t len, struct qs_hold_key *k)
{
    uint32_t off = 14, l4;
    uint16_t et;
    if (len < 14)
        return -1;
    et = (uint16_t)(d[12] << 8 | d[13]);
    if (et == 0x8100 || et == 0x88a8) {
        if (len < 18)
            return -1;
        et = (uint16_t)(d[16] << 8 | d[17]);
        off = 18;
    }
    memset(k, 0, sizeof(*k));
    k->eth_type = et;
    if (et == 0x0800) {
        uint32_t ihl;
        if (len < off + 20)
            return -1;
        ihl = (uint32_t)(d[off] & 0x0f) * 4;
        if (ihl < 20 || len < off + ihl)
            return -1;
        if ((d[off + 6] & 0x1f) || d[off + 7])
            return -1; /* a non-first fragment: no ports */
        k->proto = d[off + 9];
        memcpy(k->src, d + off + 12, 4);
        memcpy(k->dst, d + off + 16, 4);
        l4 = off + ihl;
    } else if (et == 0x86dd) {
        if (len < off + 40)
            return -1;
        k->proto = d[off + 6];
        memcpy(k->src, d + off + 8, 16);
        memcpy(k->dst, d + off + 24, 16);
        l4 = off + 40;
    } else {
        return -1;
    }
    if (k->proto == 6 || k->proto == 17 || k->proto == 132) {
        if (len < l4 + 4)
            return -1;
        k->sport = (uint16_t)(d[l4] << 8 | d[l4 + 1]);
        k->dport = (uint16_t)(d[l4 + 2] << 8 | d[l4 + 3]);
    }
    return 0;
}

/* A marked packet (see the top of this file): strip the marker, 1; else 0. */
static inline int qs_hold_unmark(struct rte_mbuf *m)
{
    uint8_t *d = rte_pktmbuf_mtod(m, uint8_t *);
    if ((m->ol_flags & RTE_MBUF_F_RX_VLAN_STRIPPED) &&
        (m->vlan_tci & 0x0fffu) == QS_HOLD_MARK_VID) {
        m->ol_flags &= ~(RTE_MBUF_F_RX_VLAN | RTE_MBUF_F_RX_VLAN_STRIPPED);
        m->vlan_tci = 0;
        return 1;
    }
    if (m->data_len < 18 || d[12] != 0x81 || d[13] != 0x00 ||
        (((uint32_t)(d[14] & 0x0f) << 8) | d[15]) != QS_HOLD_MARK_VID)
        return 0;
    memmove(d + 4, d, 12);
    rte_pktmbuf_adj(m, 4);
    return 1;
}

/* Set aside the packets of held flows: returns how many of rx[0..n) remain,
 * compacted in order.  Marked packets stay, their marker stripped. */
static inline uint32_t qs_hold_filter(struct qs_hold_local *h, struct rte_mbuf **rx, uint32_t n)
{
    uint64_t active = __atomic_load_n(&h->r->active, __ATOMIC_ACQUIRE);
    uint32_t mark = __atomic_load_n(&h->r->mark, __ATOMIC_RELAXED);
    uint32_t i, keep = 0;
    if (active == 0 && mark == 0)
        return n;
    h->rx += n;
    for (i = 0; i < n; i++) {
        struct rte_mbuf *m = rx[i];
        struct qs_hold_key k;
        uint64_t bits = active;
        int hit = -1;
        if (mark && qs_hold_unmark(m)) {
            h->r->marked++;
            rx[keep++] = m;
            continue;
        }
        if (active == 0) {
            rx[keep++] = m;
            continue;
        }
        if (qs_hold_key_of(rte_pktmbuf_mtod(m, const uint8_t *), m->data_len, &k) == 0) {
            while (bits) {
                uint32_t e = (uint32_t)__builtin_ctzll(bits);
                bits &= bits - 1;
                if (memcmp(&h->r->e[e].key, &k, sizeof(k)) == 0) {
                    hit = (int)e;
                    break;
                }
            }
        }
        if (hit < 0) {
            rx[keep++] = m;
            continue;
        }
        if (h->tail[hit] - h->head[hit] >= QS_HOLD_QUEUE) {
            rte_pktmbuf_free(m);
            h->r->e[hit].dropped++;
            continue;
        }
        h->q[hit][h->tail[hit]++ % QS_HOLD_QUEUE] = m;
        h->r->e[hit].held++;
    }
    return keep;
}

/* Housekeeping before a poll: expire old holds, finish released ones whose queue
 * is empty, and take up to `max` packets of released queues into rx (these go
 * before anything newer).  Returns how many it took.
 *
 * A release takes effect once what the port had queued when NF1 first saw it
 * is set aside too (settle): the instance may have been parked meanwhile, its
 * port's queue holding packets of the flow that arrived before the release,
 * which would otherwise go after ones that arrived later (the controller's
 * marked packets).  Packets of a released flow keep queuing until its queue
 * is empty. */
static inline uint32_t qs_hold_take(struct qs_hold_local *h, struct rte_mbuf **rx, uint32_t max)
{
    uint64_t active = __atomic_load_n(&h->r->active, __ATOMIC_ACQUIRE), bits = active;
    uint64_t now = 0;
    uint32_t n = 0;
    while (bits) {
        uint32_t e = (uint32_t)__builtin_ctzll(bits);
        struct qs_hold_entry *en = &h->r->e[e];
        uint32_t st = __atomic_load_n(&en->state, __ATOMIC_ACQUIRE);
        bits &= bits - 1;
        if (st == QS_HOLD_ON) {
            if (now == 0)
                now = rte_rdtsc();
            if (h->since[e] == 0)
                h->since[e] = now;
            else if (h->max_cycles && now - h->since[e] > h->max_cycles) {
                uint32_t want = QS_HOLD_ON;
                if (__atomic_compare_exchange_n(&en->state, &want, QS_HOLD_RELEASE, 0,
                                                __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
                    en->expired++;
            }
            continue;
        }
        if (st != QS_HOLD_RELEASE)
            continue;
        if (h->settle[e] == 0) {
            h->settle[e] = h->r->short_polls + 1;
            h->settle_rx[e] = h->rx;
            continue;
        }
        if (h->r->short_polls < h->settle[e] && h->rx - h->settle_rx[e] < QS_HOLD_QUEUE)
            continue;
        while (n < max && h->head[e] != h->tail[e]) {
            rx[n++] = h->q[e][h->head[e]++ % QS_HOLD_QUEUE];
            en->released++;
        }
        if (h->head[e] == h->tail[e]) {
            h->since[e] = 0;
            h->settle[e] = 0;
            __atomic_store_n(&en->state, QS_HOLD_FREE, __ATOMIC_RELEASE);
            __atomic_fetch_and(&h->r->active, ~(1ULL << e), __ATOMIC_RELEASE);
        }
    }
    return n;
}

#endif
