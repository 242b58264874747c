/* The burst loops of a chain instance's NF processes.
 *
 *   qs_run_first  the first NF's process: owns the port and its mempool.
 *                 RX a batch -> its NF(s) on the mbufs -> either TX (a
 *                 single-NF chain, or every NF in this one thread: the
 *                 single_thread baseline) or copy into the chain buffer and
 *                 hand the slot offsets to NF2.  Each turn it first sends
 *                 out what came back from the last NF (copy into fresh mbufs,
 *                 TX), so only this process ever touches the port.
 *   qs_run_stage  NF2..NFn: take slot offsets from the input ring, run the NF
 *                 on the slots in place, pass the offsets on (coop), or copy
 *                 the batch into the next NF's own region (the copy baseline).
 *                 A stateful NF's stage also holds the slots of packets whose
 *                 state writes Redis has not acknowledged yet (qs_statehook.h).
 *
 * Both loops check the chain's control word between batches only, so attach,
 * detach and stop take effect at batch boundaries, and yield the core after
 * every batch (cooperative) or only when idle (the cfs baseline).
 */
#ifndef QS_CHAINRT_H
#define QS_CHAINRT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_memcpy.h>
#include <rte_prefetch.h>

#include "qs_chainbuf.h"
#include "qs_flowhold.h"
#include "qs_statehook.h"

#define QS_FORWARD 0
#define QS_DROP 1
#define QS_MAX_BATCH 1024u   /* packets per chain batch (per yield) */
#define QS_NF_MAX_COUNT 256u /* packets per NF call: == QD_MAX_BURST (cext/runtime.pxd) */

/* The NF interface, binary-compatible with issue 4's qd_pkt/qd_batch
 * (cext/nf.pxd): a descriptor per packet pointing at its bytes in place,
 * verdicts preset to forward.  The NF may move data into the headroom or
 * change len within the tailroom; the runtime checks the result against
 * the packet's buffer afterwards, so a lying NF only loses its packets. */
struct qs_pkt {
    uint8_t *data;
    uint16_t len;
    uint16_t headroom;
    uint16_t tailroom;
    uint16_t port;
};

struct qs_batch {
    struct qs_pkt *pkts;
    uint8_t *verdicts;
    uint16_t count;
    uint64_t tsc;
};

typedef void (*qs_nf_batch_fn)(void *ctx, struct qs_batch *b);

struct qs_nf {
    qs_nf_batch_fn fn;
    void *ctx;
};

struct qs_first_cfg {
    uint16_t port_in, port_out;
    struct rte_mempool *pool;
    struct qs_nf *nfs; /* run in this process, in order */
    uint32_t n_nfs;
    struct qs_view *ctl; /* control header + counters (nf[0]) */
    struct qs_view *out; /* NULL: no chain buffer, transmit directly */
    uint32_t out_ring;
    struct qs_view *ret; /* region the last NF's output comes back in */
    uint32_t ret_ring;
    uint32_t max_in_flight;
    struct qs_hold_local *hold; /* NULL: this instance never holds flows */
};

struct qs_stage_cfg {
    struct qs_view *ctl;
    uint32_t index; /* 1..n-1 */
    struct qs_view *in;
    uint32_t in_ring;
    struct qs_view *out; /* == in unless copying */
    uint32_t out_ring;
    int copy;
    struct qs_nf nf;
    struct qs_state_hook *state; /* NULL: a stateless NF */
};

static inline long qs_futex_wait(volatile uint32_t *addr, uint32_t val, long timeout_ns)
{
    struct timespec ts = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
    return syscall(SYS_futex, addr, FUTEX_WAIT, val, &ts, NULL, 0);
}

static inline long qs_futex_wake(volatile uint32_t *addr)
{
    return syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static inline uint32_t qs_load(volatile uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

static inline void qs_set_state(struct qs_nfctl *me, uint32_t s)
{
    __atomic_store_n(&me->state, s, __ATOMIC_RELEASE);
}

/* A private LIFO cache of free slots in front of a region's free ring: the
 * slot freed last is reused first, so the slots in use stay few and warm in
 * the cache instead of cycling through the whole region (as DPDK's mempool
 * per-lcore caches do). */
struct qs_slot_cache {
    uint32_t *off;
    uint32_t n, cap;
};

static inline int qs_cache_init(struct qs_slot_cache *sc, const struct qs_view *v)
{
    sc->n = 0;
    sc->cap = v ? v->n_slots : 0;
    sc->off = sc->cap ? (uint32_t *)malloc(sizeof(uint32_t) * sc->cap) : NULL;
    return sc->cap && sc->off == NULL ? -1 : 0;
}

/* Take up to n slots: from the cache, refilled from the region's free ring. */
static inline uint32_t qs_cache_get(struct qs_slot_cache *sc, const struct qs_view *v,
                                    uint32_t *out, uint32_t n, struct qs_nfctl *me)
{
    uint32_t i;
    if (sc->n < n) {
        int32_t got = qs_ring_dequeue(v, 0, sc->off + sc->n, sc->cap - sc->n);
        if (got < 0)
            me->bad++;
        else
            sc->n += (uint32_t)got;
    }
    if (n > sc->n)
        n = sc->n;
    for (i = 0; i < n; i++)
        out[i] = sc->off[--sc->n];
    return n;
}

static inline void qs_cache_put(struct qs_slot_cache *sc, const uint32_t *offs, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n && sc->n < sc->cap; i++)
        sc->off[sc->n++] = offs[i];
}

/* Park: record the generation of the PARK command we park under, then sleep
 * on the futex until the next control change (or 100 ms).  The caller
 * re-checks everything when it returns: an NF parks batch boundary by batch
 * boundary, never for good, so it can never sleep on packets that reached
 * its ring after it decided to park.  The generation is what lets a
 * successor (and the scheduler) tell "parked under this detach" from a
 * stale "parked" left over from an earlier one. */
static inline void qs_park(struct qs_cbhdr *h, struct qs_nfctl *me, uint32_t gen, uint32_t state)
{
    __atomic_store_n(&me->park_gen, gen, __ATOMIC_RELEASE);
    qs_set_state(me, state);
    if (state == QS_NF_PARKED)
        qs_futex_wait(&h->futex, gen, 100000000L);
}

static inline void qs_running(struct qs_nfctl *me)
{
    if (me->state != QS_NF_RUNNING)
        qs_set_state(me, QS_NF_RUNNING);
}

/* Run the NFs of this thread over one batch.  With several NFs (the
 * single_thread baseline) each later NF sees only what the earlier ones
 * forwarded: pkts/verdicts/idx are compacted between calls, idx[] telling
 * which input packet each descriptor is.  Returns the survivors' count. */
static inline uint32_t qs_run_nfs(struct qs_nf *nfs, uint32_t n_nfs, struct qs_pkt *pkts,
                                  uint8_t *verdict, uint32_t *idx, uint32_t n, uint64_t tsc,
                                  struct qs_nfctl *me)
{
    struct qs_batch b;
    uint64_t t0 = qs_rdtsc();
    uint32_t j, i, k, at;
    for (i = 0; i < n; i++) {
        verdict[i] = QS_FORWARD;
        idx[i] = i;
    }
    for (j = 0; j < n_nfs && n; j++) {
        /* an NF sees at most QS_NF_MAX_COUNT packets per call (issue 4's contract:
         * qd_batch.count <= QD_MAX_BURST, NFs size their arrays by it) */
        for (at = 0; at < n; at += QS_NF_MAX_COUNT) {
            b.pkts = pkts + at;
            b.verdicts = verdict + at;
            b.count = (uint16_t)(n - at < QS_NF_MAX_COUNT ? n - at : QS_NF_MAX_COUNT);
            b.tsc = tsc;
            nfs[j].fn(nfs[j].ctx, &b);
        }
        if (j + 1 < n_nfs) {
            for (i = 0, k = 0; i < n; i++) {
                if (verdict[i] != QS_FORWARD)
                    continue;
                pkts[k] = pkts[i];
                idx[k] = idx[i];
                verdict[k] = QS_FORWARD;
                k++;
            }
            n = k;
        }
    }
    me->cycles += qs_rdtsc() - t0;
    return n;
}

static inline int qs_pkt_inside(const struct qs_pkt *p, const uint8_t *lo, const uint8_t *hi)
{
    return p->data >= lo && p->data + p->len <= hi;
}

static inline void qs_describe(struct qs_pkt *p, uint8_t *lo, uint8_t *d, uint16_t l,
                               uint8_t *hi, uint16_t port)
{
    p->data = d;
    p->len = l;
    p->headroom = (uint16_t)(d - lo);
    p->tailroom = (uint16_t)(hi - d - l);
    p->port = port;
}

/* Fix an mbuf up after its NF moved data/len; 0 if they stay inside its buffer. */
static inline int qs_mbuf_fix(struct rte_mbuf *m, const struct qs_pkt *p)
{
    uint8_t *lo = (uint8_t *)m->buf_addr;
    if (!qs_pkt_inside(p, lo, lo + m->buf_len) || m->nb_segs != 1)
        return -1;
    m->data_off = (uint16_t)(p->data - lo);
    m->data_len = p->len;
    m->pkt_len = p->len;
    return 0;
}

/* Send the last NF's output: copy each valid slot into a fresh mbuf, TX, and
 * give the slots back to the region's free ring.  Returns slots returned. */
static inline void qs_first_free(struct qs_first_cfg *c, struct qs_slot_cache *sc,
                                 const uint32_t *offs, uint32_t n)
{
    if (c->ret == c->out)
        qs_cache_put(sc, offs, n); /* coop: our own region, our own cache */
    else
        qs_ring_enqueue(c->ret, 0, offs, n); /* copy: back to the last NF's region */
}

static inline uint32_t qs_first_transmit(struct qs_first_cfg *c, struct qs_slot_cache *sc,
                                         struct qs_nfctl *me)
{
    uint32_t offs[QS_MAX_BATCH], freed[QS_MAX_BATCH];
    struct rte_mbuf *tx[QS_MAX_BATCH];
    uint32_t i, k = 0, nf = 0, sent;
    int32_t n = qs_ring_dequeue(c->ret, c->ret_ring, offs, QS_MAX_BATCH);
    if (n <= 0) {
        if (n < 0)
            me->bad++;
        return 0;
    }
    if (rte_pktmbuf_alloc_bulk(c->pool, tx, (unsigned)n) != 0) {
        /* no mbufs: the batch is lost, its slots are not */
        for (i = 0; i < (uint32_t)n; i++)
            if (qs_off_ok(c->ret, offs[i]))
                freed[nf++] = offs[i];
        me->drops += nf;
        qs_first_free(c, sc, freed, nf);
        return nf;
    }
    for (i = 0; i < (uint32_t)n; i++) {
        uint32_t off = offs[i];
        uint16_t l;
        uint8_t *d;
        if (!qs_off_ok(c->ret, off)) {
            me->bad++;
            continue;
        }
        freed[nf++] = off;
        if (qs_meta(c->ret, off)->flags & QS_SLOT_DROPPED) {
            me->drops++;
            continue;
        }
        d = qs_slot_data(c->ret, off, &l);
        if (d == NULL || l > rte_pktmbuf_tailroom(tx[k])) {
            me->bad++;
            continue;
        }
        rte_memcpy(rte_pktmbuf_mtod(tx[k], uint8_t *), d, l);
        tx[k]->data_len = l;
        tx[k]->pkt_len = l;
        k++;
    }
    for (i = k; i < (uint32_t)n; i++)
        rte_pktmbuf_free(tx[i]);
    qs_first_free(c, sc, freed, nf);
    sent = rte_eth_tx_burst(c->port_out, 0, tx, (uint16_t)k);
    for (i = sent; i < k; i++)
        rte_pktmbuf_free(tx[i]);
    me->tx += sent;
    me->drops += k - sent;
    return nf;
}

static int qs_run_first(struct qs_first_cfg *c)
{
    struct rte_mbuf *rx[QS_MAX_BATCH], *keep[QS_MAX_BATCH];
    struct qs_pkt pkts[QS_MAX_BATCH];
    uint8_t verdict[QS_MAX_BATCH];
    uint32_t idx[QS_MAX_BATCH], offs[QS_MAX_BATCH];
    struct qs_cbhdr *h = c->ctl->hdr;
    struct qs_nfctl *me = &h->nf[0];
    int64_t in_flight = 0;
    uint64_t seq = 0;
    uint32_t i;
    struct qs_slot_cache sc;

    if (qs_cache_init(&sc, c->out) != 0)
        return -1;
    me->tid = (int32_t)syscall(SYS_gettid);
    qs_set_state(me, QS_NF_RUNNING);
    for (;;) {
        /* a batch's work starts here: TX of what came back, then RX */
        uint64_t tb = qs_rdtsc();
        uint32_t gen = qs_load(&h->futex), ctl = qs_load(&h->ctl), b, n = 0, k, live;
        if (ctl == QS_CTL_STOP)
            break;
        if (c->out) {
            in_flight -= qs_first_transmit(c, &sc, me);
            if (in_flight < 0)
                in_flight = 0; /* someone returned slots twice: not ours to trust */
        }
        if (ctl == QS_CTL_PARK) {
            /* no more RX; park once every slot handed out has come back */
            if (c->out == NULL || in_flight == 0) {
                qs_park(h, me, gen, QS_NF_PARKED);
            } else {
                qs_park(h, me, gen, QS_NF_DRAINING);
                sched_yield();
            }
            continue;
        }
        qs_running(me);
        b = qs_load(&h->batch);
        if (b == 0 || b > QS_MAX_BATCH)
            b = QS_MAX_BATCH;
        if (c->out && in_flight + b > c->max_in_flight)
            b = in_flight >= c->max_in_flight ? 0 : (uint32_t)(c->max_in_flight - in_flight);
        if (b && c->hold != NULL) {
            /* released flows' set-aside packets go first (qs_flowhold.h) */
            n = c->hold->r->active ? qs_hold_take(c->hold, rx, b) : 0;
            if (n == 0) {
                uint32_t got = rte_eth_rx_burst(c->port_in, 0, rx, (uint16_t)b);
                n = qs_hold_filter(c->hold, rx, got);
                if (got < b) { /* the port's queue is empty: all before is received */
                    c->hold->r->rx_at_short = me->pkts + n;
                    c->hold->r->short_polls++;
                }
            }
        } else if (b) {
            n = rte_eth_rx_burst(c->port_in, 0, rx, (uint16_t)b);
        }
        if (n) {
            uint64_t tsc = tb;
            for (i = 0; i < n; i++) {
                struct rte_mbuf *m = rx[i];
                uint8_t *lo = (uint8_t *)m->buf_addr;
                qs_describe(&pkts[i], lo, lo + m->data_off, m->data_len, lo + m->buf_len, m->port);
                rte_prefetch0(pkts[i].data);
            }
            live = qs_run_nfs(c->nfs, c->n_nfs, pkts, verdict, idx, n, tsc, me);
            me->pkts += n;
            me->batches++;
            /* keep[] = the mbufs that go on, in order; the rest are freed */
            k = 0;
            for (i = 0; i < live; i++) {
                if (verdict[i] != QS_FORWARD || qs_mbuf_fix(rx[idx[i]], &pkts[i]) != 0)
                    continue;
                keep[k] = rx[idx[i]];
                rx[idx[i]] = NULL;
                pkts[k] = pkts[i];
                k++;
            }
            for (i = 0; i < n; i++)
                if (rx[i] != NULL)
                    rte_pktmbuf_free(rx[i]);
            me->drops += n - k;
            if (c->out == NULL) {
                uint16_t sent = rte_eth_tx_burst(c->port_out, 0, keep, (uint16_t)k);
                for (i = sent; i < k; i++)
                    rte_pktmbuf_free(keep[i]);
                me->tx += sent;
                me->drops += k - sent;
            } else {
                uint32_t got = k ? qs_cache_get(&sc, c->out, offs, k, me) : 0;
                uint32_t j = 0;
                for (i = 0; i < got && j < k; i++) {
                    uint32_t off = offs[i];
                    struct qs_slot_meta *m;
                    if (!qs_off_ok(c->out, off) || pkts[j].len > QS_SLOT_DATA) {
                        me->bad++;
                        continue;
                    }
                    m = qs_meta(c->out, off);
                    m->data_off = QS_SLOT_META + QS_SLOT_HEADROOM;
                    m->len = pkts[j].len;
                    m->flags = 0;
                    m->seq = seq++;
                    rte_memcpy(c->out->slots + off + m->data_off, pkts[j].data, pkts[j].len);
                    offs[j++] = off;
                }
                rte_pktmbuf_free_bulk(keep, k); /* the port's memory never leaves this process */
                me->drops += k - j;             /* no free slot for the rest */
                in_flight += qs_ring_enqueue(c->out, c->out_ring, offs, j);
            }
            h->hist[0][qd_hist_bucket(qs_rdtsc() - tb)]++;
        }
        if (h->yield_after_batch || n == 0)
            sched_yield();
    }
    free(sc.off);
    qs_set_state(me, QS_NF_EXITED);
    return 0;
}

/* May stage `index` park under generation `gen`?  Only once nothing more can
 * reach its input: its predecessor has stopped under this same PARK command
 * (NF1 draining or parked, a later NF parked) and its input ring is empty. */
static inline int qs_stage_may_park(struct qs_cbhdr *h, struct qs_stage_cfg *c, uint32_t gen)
{
    struct qs_nfctl *p = &h->nf[c->index - 1];
    uint32_t ps = qs_load(&p->state);
    if (ps == QS_NF_EXITED)
        return qs_ring_count(c->in, c->in_ring) == 0;
    if (qs_load(&p->park_gen) != gen)
        return 0;
    if (ps != QS_NF_PARKED && !(c->index == 1 && ps == QS_NF_DRAINING))
        return 0;
    return qs_ring_count(c->in, c->in_ring) == 0;
}

_Static_assert(QS_HOOK_BATCH == QS_MAX_BATCH, "qs_statehook.h: one hseq per packet of a batch");

/* A stateful stage, before its dequeue: read Redis' acks, pass on the held
 * slots whose writes are acknowledged (oldest first).  Returns -1 if the
 * store failed (the stage stops), else how many it may take in this batch
 * (the room left under max_held). */
static inline int64_t qs_state_turn(struct qs_stage_cfg *c, struct qs_nfctl *me, uint64_t now,
                                    uint32_t b)
{
    struct qs_state_hook *st = c->state;
    uint32_t offs[QS_MAX_BATCH], n = 0, wait;
    if (st->failed ||
        ((*st->acked < *st->issued || *st->store_down) && st->poll(st->ctx) != 0)) {
        st->failed = 1;
        return -1;
    }
    while (st->count && n < QS_MAX_BATCH && st->held_seq[st->head] <= *st->acked) {
        uint64_t w = now - st->held_tsc[st->head];
        st->lat[st->lat_head++ & (QS_HOOK_LAT_SLOTS - 1)] =
            w > 0xffffffffULL ? 0xffffffffu : (uint32_t)w;
        offs[n++] = st->held_off[st->head];
        st->head = (st->head + 1) % st->max_held;
        st->count--;
    }
    if (n) {
        uint32_t put = qs_ring_enqueue(c->out, c->out_ring, offs, n);
        *st->unheld += n;
        st->released += n;
        me->drops += n - put;
    }
    /* waiting on Redis (1: unreachable, 2: every held slot taken): the monitor's
     * stall rule must not take this for a hung NF */
    wait = (*st->store_down ? 1u : 0u) | (st->count + b > st->max_held ? 2u : 0u);
    if (me->store_wait != wait)
        __atomic_store_n(&me->store_wait, wait, __ATOMIC_RELEASE);
    if (st->count + b > st->max_held) {
        st->stalls++;
        return st->max_held - st->count;
    }
    return b;
}

/* After a stateful NF: the slots of its QS_HOLD packets go into the held FIFO
 * (with the write group each waits for, in order) instead of on; returns the
 * offsets left to pass on, compacted in place.  A held packet is in the FIFO
 * behind every earlier one, so a flow's packets leave in the order they came. */
static inline uint32_t qs_state_hold(struct qs_state_hook *st, uint32_t *offs, uint32_t k,
                                     const uint32_t *at, const uint32_t *live,
                                     const uint8_t *verdict, uint32_t nl, uint64_t now)
{
    uint32_t i, j = 0, w = 0;
    for (i = 0; i < nl && j < st->nh; i++) {
        uint32_t t;
        if (verdict[i] != QS_HOLD || offs[at[i]] == UINT32_MAX)
            continue;
        t = (st->head + st->count) % st->max_held;
        st->held_off[t] = live[i];
        st->held_seq[t] = st->hseq[j++];
        st->held_tsc[t] = now;
        st->count++;
        offs[at[i]] = UINT32_MAX;
    }
    st->held_total += j;
    if (st->count > st->max_held_seen)
        st->max_held_seen = st->count;
    for (i = 0; i < k; i++)
        if (offs[i] != UINT32_MAX)
            offs[w++] = offs[i];
    return w;
}

static int qs_run_stage(struct qs_stage_cfg *c)
{
    uint32_t offs[QS_MAX_BATCH], live[QS_MAX_BATCH], outo[QS_MAX_BATCH], idx[QS_MAX_BATCH];
    uint32_t at[QS_MAX_BATCH]; /* live[i] == offs[at[i]] */
    struct qs_pkt pkts[QS_MAX_BATCH];
    uint8_t verdict[QS_MAX_BATCH];
    struct qs_cbhdr *h = c->ctl->hdr;
    struct qs_nfctl *me = &h->nf[c->index];
    uint32_t i;
    struct qs_slot_cache sc;

    if (c->state && c->copy)
        return -1; /* the copy baseline is stateless */

    if (qs_cache_init(&sc, c->copy ? c->out : NULL) != 0)
        return -1;
    me->tid = (int32_t)syscall(SYS_gettid);
    qs_set_state(me, QS_NF_RUNNING);
    for (;;) {
        uint64_t tb = qs_rdtsc(); /* a batch's work starts with the dequeue */
        uint32_t gen = qs_load(&h->futex), ctl = qs_load(&h->ctl), nl = 0, k = 0, b;
        int32_t n;
        if (ctl == QS_CTL_STOP)
            break;
        b = qs_load(&h->batch); /* a batch is the chain's batch size at every hop */
        if (b == 0 || b > QS_MAX_BATCH)
            b = QS_MAX_BATCH;
        if (c->state) {
            int64_t room = qs_state_turn(c, me, tb, b);
            if (room < 0)
                break; /* the store failed: stop (the agent sees the NF exit) */
            b = (uint32_t)room;
            c->state->nh = 0;
        }
        n = b ? qs_ring_dequeue(c->in, c->in_ring, offs, b) : 0;
        if (n < 0) {
            me->bad++;
            n = 0;
        }
        if (n == 0) {
            if (ctl == QS_CTL_PARK && qs_stage_may_park(h, c, gen) &&
                (c->state == NULL || c->state->count == 0)) {
                qs_park(h, me, gen, QS_NF_PARKED);
            } else {
                qs_running(me);
                sched_yield();
            }
            continue;
        }
        qs_running(me);
        /* keep only valid offsets; hand the NF the packets not yet dropped */
        for (i = 0; i < (uint32_t)n; i++) {
            uint32_t off = offs[i];
            struct qs_slot_meta *m;
            uint8_t *slot, *d;
            uint16_t l;
            if (!qs_off_ok(c->in, off)) {
                me->bad++;
                continue;
            }
            offs[k++] = off;
            m = qs_meta(c->in, off);
            if (m->flags & QS_SLOT_DROPPED)
                continue;
            at[nl] = k - 1;
            d = qs_slot_data(c->in, off, &l);
            if (d == NULL) {
                me->bad++;
                m->flags |= QS_SLOT_DROPPED;
                continue;
            }
            slot = c->in->slots + off;
            qs_describe(&pkts[nl], slot + QS_SLOT_META, d, l, slot + QS_SLOT_SIZE, 0);
            rte_prefetch0(d);
            live[nl++] = off;
        }
        if (nl)
            qs_run_nfs(&c->nf, 1, pkts, verdict, idx, nl, tb, me);
        for (i = 0; i < nl; i++) {
            uint8_t *slot = c->in->slots + live[i];
            struct qs_slot_meta *m = qs_meta(c->in, live[i]);
            uint8_t v = verdict[i];
            if ((v != QS_FORWARD && (v != QS_HOLD || c->state == NULL)) ||
                !qs_pkt_inside(&pkts[i], slot + QS_SLOT_META, slot + QS_SLOT_SIZE)) {
                m->flags |= QS_SLOT_DROPPED;
                me->drops++;
            } else {
                m->data_off = (uint16_t)(pkts[i].data - slot);
                m->len = pkts[i].len;
            }
        }
        if (c->state && c->state->nh)
            k = qs_state_hold(c->state, offs, k, at, live, verdict, nl, tb);
        me->pkts += nl;
        me->batches++;
        if (c->copy) {
            /* the copy baseline: the next NF gets its own copy in its own region */
            uint32_t got = qs_cache_get(&sc, c->out, outo, k, me);
            uint32_t j = 0, g;
            for (i = 0, g = 0; i < k && g < got; g++) {
                struct qs_slot_meta *src = qs_meta(c->in, offs[i]), *dst;
                uint16_t l;
                uint8_t *d;
                if (!qs_off_ok(c->out, outo[g])) {
                    me->bad++;
                    continue;
                }
                dst = qs_meta(c->out, outo[g]);
                dst->data_off = QS_SLOT_META + QS_SLOT_HEADROOM;
                dst->seq = src->seq;
                dst->flags = src->flags;
                dst->len = 0;
                d = (src->flags & QS_SLOT_DROPPED) ? NULL : qs_slot_data(c->in, offs[i], &l);
                if (d != NULL && l <= QS_SLOT_DATA) {
                    dst->len = l;
                    rte_memcpy(c->out->slots + outo[g] + dst->data_off, d, l);
                } else {
                    dst->flags |= QS_SLOT_DROPPED;
                }
                outo[j++] = outo[g];
                i++;
            }
            /* our own slots go back to our predecessor, the copies go on */
            qs_ring_enqueue(c->in, 0, offs, k);
            me->drops += k - i;
            qs_ring_enqueue(c->out, c->out_ring, outo, j);
        } else {
            uint32_t put = qs_ring_enqueue(c->out, c->out_ring, offs, k);
            me->drops += k - put;
        }
        h->hist[c->index][qd_hist_bucket(qs_rdtsc() - tb)]++;
        if (h->yield_after_batch)
            sched_yield();
    }
    free(sc.off);
    if (c->state) { /* held at the end: never acknowledged, never passed on */
        c->state->held_dropped += c->state->count;
        *c->state->unheld += c->state->count;
    }
    qs_set_state(me, QS_NF_EXITED);
    return c->state && c->state->failed ? -2 : 0;
}

#endif
