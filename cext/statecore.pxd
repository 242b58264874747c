# cython: language_level=3
"""The per-batch state machinery of a stateful NF, shared by its two loops.

:class:`StateCore` owns the local cache, the Redis connection's write side
and the write-group counters; :class:`cext.stateful.StatefulRuntime` (an NF
alone on a port, mbufs held) and the chain stage loop (``cext/chainbuf.pyx``
through :class:`StageState`, chain-buffer slots held) both call it:

* ``run(batch)``: ``begin`` (keys, cache lookups, one MGET for misses), the
  NF's ``process``, ``commit`` (the batch's changes as one write group, sent);
* ``hold_seq(i, verdict)``: ``QD_NO_HOLD`` if packet ``i`` may go on now, else
  the write group it must wait for (the caller counts it in ``s.unheld`` when
  it leaves its held FIFO);
* ``poll()``: read acknowledgements without blocking (``s.acked``), and while
  Redis is unreachable, reconnect every ``retry_s`` and send again what it
  had not acknowledged.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from cext.nf cimport qd_batch, qd_pkt
from cext.state cimport StatefulNF, qd_state


cdef extern from "src/qd_resp.h":
    cdef int QD_RESP_ERR

    cdef struct qd_resp:
        int fd
        uint8_t prefix[80]
        uint32_t prefix_len
        uint8_t *buf
        uint32_t cap, len
        uint64_t base, sent, acked_end
        uint64_t head, tail
        int line_start
        int failed
        int lost
        char error[201]
        uint64_t bytes_sent, keys_written, bytes_resent

    uint32_t qd_resp_item_max(const qd_resp *r, uint32_t vmax) nogil
    int qd_resp_room(qd_resp *r, uint32_t need) nogil
    void qd_resp_cmd(qd_resp *r, uint32_t nargs, const char *name) nogil
    void qd_resp_key(qd_resp *r, const uint8_t *key16) nogil
    void qd_resp_bulk(qd_resp *r, const void *p, uint32_t n) nogil
    int qd_resp_end_group(qd_resp *r, uint8_t replies) nogil
    void qd_resp_flush(qd_resp *r) nogil
    void qd_resp_reset(qd_resp *r, int fd) nogil
    int64_t qd_resp_poll(qd_resp *r) nogil


cdef extern from "src/qs_statehook.h":
    cdef int QS_HOLD
    cdef int QS_HOOK_BATCH
    cdef uint64_t QD_NO_HOLD  # StateCore.hold_seq: the packet goes on now
    cdef unsigned QS_HOOK_LAT_SLOTS

    ctypedef int (*qs_state_poll_fn)(void *ctx) noexcept nogil

    cdef struct qs_state_hook:
        void *ctx
        qs_state_poll_fn poll
        uint64_t *acked
        uint64_t *issued
        uint64_t *unheld
        const int *store_down
        uint64_t hseq[1024]
        uint32_t nh
        int failed
        uint32_t *held_off
        uint64_t *held_seq
        uint64_t *held_tsc
        uint32_t max_held, head, count
        uint64_t held_total, released, max_held_seen, stalls, held_dropped
        uint32_t *lat
        uint64_t lat_head


cdef enum:
    # free cache entries kept before a batch: its keys (256) and its changes (1024) fit
    EVICT_MARGIN = 2048
    LAT_SLOTS = 65536   # ring of release latencies (cycles) of held packets
    QD_POS_UNKNOWN = -2  # qd_state.pos[i]: the key's state could not be fetched (Redis down)


cdef class StateCore:
    cdef StatefulNF snf
    cdef qd_state *s
    cdef object store
    cdef int has_store
    cdef qd_resp *resp
    cdef uint32_t group_max
    cdef object _hash_name
    cdef uint64_t fetch_round_trips, fetch_batches, write_groups, evictions, evict_acked
    cdef public object error
    # Redis unreachable: since when (TSC), the next reconnect (TSC), the interval
    cdef int down
    cdef uint64_t down_since, retry_at, retry_cycles
    cdef uint64_t outages, reconnects, down_cycles, unknown_dropped, groups_resent
    cdef public object last_outage

    cdef int run(self, qd_batch *b) noexcept nogil
    cdef int begin(self, qd_pkt *pkts, uint16_t n) noexcept nogil
    cdef int _unknown(self, uint16_t n) noexcept nogil
    cdef void _process_known(self, qd_batch *b) noexcept nogil
    cdef int commit(self) noexcept nogil
    cdef int poll(self) noexcept nogil
    cdef uint64_t hold_seq(self, uint16_t i, uint8_t v) noexcept nogil
    cdef int _fetch(self) noexcept with gil
    cdef int _send(self) noexcept nogil
    cdef int _resp_failed(self) noexcept with gil
    cdef int _replay_full(self) noexcept with gil
    cdef int _fail(self, exc) except? -1
    cdef void _go_down(self) noexcept with gil
    cdef int _reconnect(self) noexcept with gil
    cdef uint32_t _evict(self) noexcept nogil


cdef class StageState:
    """A stateful NF at a chain position: its :class:`StateCore` and the stage's hook."""

    cdef StateCore core
    cdef qs_state_hook hook

    cdef void batch(self, qd_batch *b) noexcept nogil


# The NF call of a stateful stage (ctx: its StageState); run_stage installs it.
cdef void stage_batch(void *ctx, qd_batch *b) noexcept nogil
