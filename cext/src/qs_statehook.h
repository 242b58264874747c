/* A stateful NF's side of a chain stage (cext/statecore.pyx fills it in).
 *
 * The stage loop (qs_run_stage in qs_chainrt.h) runs the NF through a wrapper
 * that does the state work around each NF call: keys and one MGET before,
 * the batch's changes as one write group after.  A packet that must wait for
 * Redis to acknowledge a write comes back with the verdict QS_HOLD, and the
 * write group it waits for is appended to hseq[] (in packet order).  The
 * stage then keeps that packet's slot in its held FIFO instead of passing it
 * on, and passes it on once *acked reaches its group: packets of one flow
 * leave in order, because every later packet of a key with a write still
 * unacknowledged is held behind it.  At most max_held slots are held; at the
 * bound the stage takes fewer packets from its input (back-pressure up the
 * chain, nothing dropped).
 */
#ifndef QS_STATEHOOK_H
#define QS_STATEHOOK_H

#include <stdint.h>

#define QS_HOLD 2          /* == QD_HOLD (cext/nf.pxd) */
#define QS_HOOK_BATCH 1024 /* == QS_MAX_BATCH (qs_chainrt.h) */
#define QD_NO_HOLD UINT64_MAX /* StateCore.hold_seq: the packet goes on now */
#define QS_HOOK_LAT_SLOTS 65536u /* the release-latency ring (a power of two) */

typedef int (*qs_state_poll_fn)(void *ctx);

struct qs_state_hook {
    void *ctx;
    qs_state_poll_fn poll; /* read acks without blocking: 0, or -1 (the store failed) */
    uint64_t *acked;       /* last write group Redis acknowledged */
    uint64_t *issued;      /* last write group sent */
    uint64_t *unheld;      /* held packets that left the FIFO so far (released or dropped) */
    const int *store_down; /* non-zero while Redis is unreachable (the NF reconnects) */
    /* this batch: the group each QS_HOLD packet waits for, in packet order */
    uint64_t hseq[QS_HOOK_BATCH];
    uint32_t nh;
    int failed; /* the wrapper could not reach the store: the stage stops */
    /* the stage's held slots, a FIFO of max_held */
    uint32_t *held_off;
    uint64_t *held_seq;
    uint64_t *held_tsc;
    uint32_t max_held, head, count;
    /* counters */
    uint64_t held_total, released, max_held_seen, stalls, held_dropped;
    uint32_t *lat; /* cycles from arrival to release, a ring of QS_HOOK_LAT_SLOTS */
    uint64_t lat_head;
};

#endif
