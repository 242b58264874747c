/* The bridge to a third-party NF: a chain position whose NF is an unmodified
 * program (or kernel configuration) in a network namespace of its own.
 *
 *   qs_run_bridge  the bridge process at that position.  Each turn it takes a
 *                  batch of slot offsets from its input ring (only after its
 *                  predecessor finished the batch: the cooperative schedule),
 *                  copies every live frame into an mbuf and sends it out of the
 *                  NF's "to" interface (net_af_packet on the bridge's end of a
 *                  veth pair whose other end is in the NF's namespace), then
 *                  reads whatever the NF sent out of its "from" interface and
 *                  writes those frames into the slots it holds, in the order the
 *                  NF sent them, and passes the slots on.
 *
 * Slots are the chain's currency: NF1 gets every slot it handed out back
 * through the return ring, so the bridge never keeps one.  A slot whose frame
 * went to the NF waits in a private FIFO ("held") until a frame comes back to
 * fill it, or until it has waited `hold_cycles` (or more than `max_held` wait):
 * then it goes on empty (DROPPED) and counts as `expired`.  A frame from the NF
 * with no held slot to carry it (an NF that generates more than it received
 * within the hold) is dropped and counted as `overflow`.  Slots the predecessor
 * had dropped go on at once.  So what the NF drops or adds is visible in the
 * counters below, and NF1's slots always come back.
 *
 * The counters live in the header's spare space after its struct (QS_BRIDGE_OFF),
 * two cache lines per chain position.
 */
#ifndef QS_BRIDGE_H
#define QS_BRIDGE_H

#include "qs_chainrt.h"

/* right after the header's struct, in the header's spare space (cache-line aligned) */
#define QS_BRIDGE_OFF ((sizeof(struct qs_cbhdr) + QS_CACHE - 1) / QS_CACHE * QS_CACHE)
#define QS_BRIDGE_RX 64u /* frames read from the NF per rx_burst call */

struct qs_bridgectl {
    volatile uint64_t to_nf;      /* frames the NF's "to" interface took */
    volatile uint64_t to_nf_fail; /* frames it refused (link down, ring full) */
    volatile uint64_t from_nf;    /* frames read from the NF's "from" interface */
    volatile uint64_t passed;     /* of those, passed on to the next NF in a slot */
    volatile uint64_t expired;    /* slots passed on empty: nothing came back for them in time */
    volatile uint64_t overflow;   /* NF frames with no held slot (or too long): dropped */
    volatile uint64_t reverse;    /* unicast frames the NF sent back out of its "to"
                                     interface: dropped (group-addressed ones: chatter) */
    volatile uint64_t held;       /* slots waiting for the NF's output right now */
    volatile uint64_t late;       /* of `passed`, frames that came back at a later turn */
    volatile uint64_t flushed;    /* frames in the rings before the loop started: dropped */
    volatile uint64_t chatter;    /* multicast/broadcast frames the NF's kernel sent on its
                                     own (IGMP and MLD reports, ARP), on either interface:
                                     never chain data; those on "to" count in from_nf too */
} __attribute__((aligned(QS_CACHE)));

_Static_assert(QS_BRIDGE_OFF + QS_MAX_NFS * sizeof(struct qs_bridgectl) <= QS_HDR_SIZE,
               "bridge counters overflow the chain header");

static inline struct qs_bridgectl *qs_bridgectl_of(struct qs_cbhdr *h, uint32_t index)
{
    return (struct qs_bridgectl *)((uint8_t *)h + QS_BRIDGE_OFF) + index;
}

struct qs_bridge_cfg {
    struct qs_view *ctl;
    uint32_t index; /* 1..n-1 */
    struct qs_view *in;
    uint32_t in_ring, out_ring;
    uint16_t port_to, port_from; /* equal: one interface both ways */
    struct rte_mempool *pool;
    uint64_t hold_cycles;
    uint32_t max_held;
    int set_dst; /* write dst_mac into every frame sent to the NF (an L3 NF's own MAC) */
    uint8_t dst_mac[6];
};

struct qs_held {
    uint32_t *off;
    uint64_t *tsc;
    uint32_t head, tail, mask; /* [tail, head) waiting, oldest at tail */
};

static inline uint32_t qs_held_count(const struct qs_held *q) { return q->head - q->tail; }

/* Frames the NF sent back: each fills the oldest held slot, in arrival order. */
static inline uint32_t qs_bridge_collect(struct qs_bridge_cfg *c, struct qs_held *q,
                                         struct qs_bridgectl *bx, struct qs_nfctl *me,
                                         uint32_t *outo, uint32_t k, uint32_t room,
                                         uint64_t turn)
{
    struct rte_mbuf *rx[QS_BRIDGE_RX];
    uint16_t r, i;
    do {
        r = rte_eth_rx_burst(c->port_from, 0, rx, QS_BRIDGE_RX);
        bx->from_nf += r;
        for (i = 0; i < r; i++) {
            struct rte_mbuf *m = rx[i];
            struct qs_slot_meta *meta;
            uint32_t off;
            if (m->data_len >= 6 && (rte_pktmbuf_mtod(m, const uint8_t *)[0] & 1)) {
                /* group-addressed: the chain's flows are unicast; this is the kernel's
                 * own traffic, and it must not take a held packet's slot */
                bx->chatter++;
                rte_pktmbuf_free(m);
                continue;
            }
            if (qs_held_count(q) == 0 || k >= room || m->nb_segs != 1 ||
                m->data_len > QS_SLOT_DATA) {
                bx->overflow++;
                rte_pktmbuf_free(m);
                continue;
            }
            if (q->tsc[q->tail & q->mask] != turn)
                bx->late++; /* its slot was sent at an earlier turn */
            off = q->off[q->tail++ & q->mask];
            meta = qs_meta(c->in, off);
            meta->data_off = QS_SLOT_META + QS_SLOT_HEADROOM;
            meta->len = m->data_len;
            meta->flags = 0;
            rte_memcpy(c->in->slots + off + meta->data_off, rte_pktmbuf_mtod(m, uint8_t *),
                       m->data_len);
            rte_pktmbuf_free(m);
            outo[k++] = off;
            bx->passed++;
            me->tx++;
        }
    } while (r == QS_BRIDGE_RX);
    if (c->port_to != c->port_from) {
        /* what the NF sends back towards its predecessor has nowhere to go */
        do {
            r = rte_eth_rx_burst(c->port_to, 0, rx, QS_BRIDGE_RX);
            for (i = 0; i < r; i++) {
                const struct rte_mbuf *m = rx[i];
                if (m->data_len >= 6 && (rte_pktmbuf_mtod(m, const uint8_t *)[0] & 1)) {
                    bx->chatter++; /* the kernel's own, as on the "from" side */
                    bx->from_nf++;
                } else {
                    bx->reverse++;
                }
            }
            if (r)
                rte_pktmbuf_free_bulk(rx, r);
        } while (r == QS_BRIDGE_RX);
    }
    return k;
}

/* Empty a port's RX ring.  A net_af_packet socket is made for ETH_P_ALL and only
 * bound to its interface after its rings are set up: what reached the ring in
 * between came from *any* interface of the namespace (other chains' included),
 * and what the NF sent while it was set up is not the chain's either. */
static inline uint64_t qs_bridge_flush(uint16_t port)
{
    struct rte_mbuf *rx[QS_BRIDGE_RX];
    uint64_t total = 0;
    uint16_t r;
    do {
        r = rte_eth_rx_burst(port, 0, rx, QS_BRIDGE_RX);
        if (r)
            rte_pktmbuf_free_bulk(rx, r);
        total += r;
    } while (r);
    return total;
}

static int qs_run_bridge(struct qs_bridge_cfg *c)
{
    uint32_t offs[QS_MAX_BATCH];
    struct rte_mbuf *tx[QS_MAX_BATCH];
    struct qs_cbhdr *h = c->ctl->hdr;
    struct qs_nfctl *me = &h->nf[c->index];
    struct qs_bridgectl *bx = qs_bridgectl_of(h, c->index);
    struct qs_stage_cfg park = {0};
    struct qs_held q;
    uint32_t cap = qs_pow2_ge(c->in->n_slots), room = cap + QS_MAX_BATCH, *outo;
    uint32_t i;

    q.off = (uint32_t *)malloc(sizeof(uint32_t) * cap);
    q.tsc = (uint64_t *)malloc(sizeof(uint64_t) * cap);
    outo = (uint32_t *)malloc(sizeof(uint32_t) * room);
    if (q.off == NULL || q.tsc == NULL || outo == NULL) {
        free(q.off);
        free(q.tsc);
        free(outo);
        return -1;
    }
    q.head = q.tail = 0;
    q.mask = cap - 1;
    park.index = c->index;
    park.in = c->in;
    park.in_ring = c->in_ring;
    bx->flushed += qs_bridge_flush(c->port_from);
    if (c->port_to != c->port_from)
        bx->flushed += qs_bridge_flush(c->port_to);
    me->tid = (int32_t)syscall(SYS_gettid);
    qs_set_state(me, QS_NF_RUNNING);
    for (;;) {
        uint32_t gen = qs_load(&h->futex), ctl = qs_load(&h->ctl), b, k = 0, m = 0, live = 0;
        uint64_t now;
        int32_t n;
        uint16_t sent;
        if (ctl == QS_CTL_STOP)
            break;
        b = qs_load(&h->batch);
        if (b == 0 || b > QS_MAX_BATCH)
            b = QS_MAX_BATCH;
        n = qs_ring_dequeue(c->in, c->in_ring, offs, b);
        if (n < 0) {
            me->bad++;
            n = 0;
        }
        now = qs_rdtsc();
        if (n > 0) {
            /* cycles: copy out, send (the kernel runs a kernel NF's whole path inside
             * the send, in this turn), read back: the NF's cost as this chain pays it */
            qs_running(me);
            if (rte_pktmbuf_alloc_bulk(c->pool, tx, (unsigned)n) != 0)
                m = UINT32_MAX; /* no mbufs: every live frame of this batch is lost */
            for (i = 0; i < (uint32_t)n; i++) {
                uint32_t off = offs[i];
                struct qs_slot_meta *meta;
                uint8_t *d;
                uint16_t l;
                if (!qs_off_ok(c->in, off)) {
                    me->bad++;
                    continue;
                }
                meta = qs_meta(c->in, off);
                if (meta->flags & QS_SLOT_DROPPED) {
                    outo[k++] = off; /* dropped upstream: on at once, in order */
                    continue;
                }
                d = qs_slot_data(c->in, off, &l);
                if (d == NULL || m == UINT32_MAX || l > rte_pktmbuf_tailroom(tx[m]) ||
                    qs_held_count(&q) > q.mask) {
                    if (d == NULL || qs_held_count(&q) > q.mask)
                        me->bad++; /* (held full: a predecessor passed a slot twice) */
                    else
                        me->drops++;
                    meta->flags |= QS_SLOT_DROPPED;
                    outo[k++] = off;
                    continue;
                }
                rte_memcpy(rte_pktmbuf_mtod(tx[m], uint8_t *), d, l);
                if (c->set_dst && l >= 6)
                    memcpy(rte_pktmbuf_mtod(tx[m], uint8_t *), c->dst_mac, 6);
                tx[m]->data_len = l;
                tx[m]->pkt_len = l;
                m++;
                live++;
                /* the slot waits for the NF's output (its frame is in the mbuf now) */
                q.off[q.head & q.mask] = off;
                q.tsc[q.head & q.mask] = now;
                q.head++;
            }
            if (m == UINT32_MAX) {
                m = 0;
            } else {
                for (i = m; i < (uint32_t)n; i++)
                    rte_pktmbuf_free(tx[i]);
            }
            me->pkts += live;
            me->batches++;
            sent = m ? rte_eth_tx_burst(c->port_to, 0, tx, (uint16_t)m) : 0;
            for (i = sent; i < m; i++)
                rte_pktmbuf_free(tx[i]);
            bx->to_nf += sent;
            bx->to_nf_fail += m - sent;
        }
        /* a kernel NF has usually answered by now: tx_burst's send ran its path */
        k = qs_bridge_collect(c, &q, bx, me, outo, k, room, now);
        if (n > 0) {
            uint64_t spent = qs_rdtsc() - now;
            me->cycles += spent;
            h->hist[c->index][qd_hist_bucket(spent)]++; /* the monitor's p99 sees the NF too */
        }
        /* slots that waited long enough go on empty, oldest first */
        while (qs_held_count(&q) &&
               (now - q.tsc[q.tail & q.mask] > c->hold_cycles || qs_held_count(&q) > c->max_held)) {
            uint32_t off = q.off[q.tail++ & q.mask];
            qs_meta(c->in, off)->flags |= QS_SLOT_DROPPED;
            outo[k++] = off;
            bx->expired++;
            me->drops++;
        }
        bx->held = qs_held_count(&q);
        if (k)
            me->drops += k - qs_ring_enqueue(c->in, c->out_ring, outo, k);
        if (n == 0 && k == 0) {
            park.ctl = c->ctl;
            if (ctl == QS_CTL_PARK && qs_held_count(&q) == 0 && qs_stage_may_park(h, &park, gen)) {
                qs_park(h, me, gen, QS_NF_PARKED);
            } else {
                qs_running(me);
                sched_yield();
            }
            continue;
        }
        if (h->yield_after_batch)
            sched_yield();
    }
    free(q.off);
    free(q.tsc);
    free(outo);
    qs_set_state(me, QS_NF_EXITED);
    return 0;
}

#endif
