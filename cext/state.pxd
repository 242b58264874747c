# cython: language_level=3
"""The state API of stateful native NFs: keys, the per-batch cache view, read/update.

A stateful NF derives from :class:`StatefulNF` and implements two methods:

* ``key(pkt, k)``: the state key a packet needs (return 1), or none (0).  The
  runtime calls it for every packet of a batch *before* ``process``, looks
  the keys up in its local cache and fetches those the cache lacks from
  Redis in one pipelined round trip (MGET), so that in ``process`` every
  packet's state is local;
* ``process(batch)`` as for any NF, using ``self.state``:

  - ``qd_state_get(s, i)``: the value of packet ``i``'s key (NULL: none);
  - ``qd_state_read(s, k)``: the value of any key the cache holds;
  - ``qd_state_update(s, i, k, value, len)`` / ``qd_state_delete(s, i, k)``:
    change a key; packet ``i`` (``QD_NO_PKT``: none) is *held* by the runtime
    until Redis acknowledged the write, and so is every later packet whose
    key still has an unacknowledged write (per-flow order is kept).

All of it is nogil, no allocation, bounded work.  The layout in Redis and
the runtime's side are in docs/state.rst; ``cext/stateful.pyx`` is the runtime.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from cext.nf cimport NativeNF, qd_batch, qd_pkt


cdef extern from "rte_hash.h":
    cdef struct rte_hash:
        pass

    ctypedef uint32_t (*rte_hash_function)(const void *key, uint32_t key_len,
                                           uint32_t init_val) noexcept nogil

    cdef struct rte_hash_parameters:
        const char *name
        uint32_t entries
        uint32_t reserved
        uint32_t key_len
        rte_hash_function hash_func
        uint32_t hash_func_init_val
        int socket_id
        uint8_t extra_flag

    rte_hash *rte_hash_create(const rte_hash_parameters *params)
    void rte_hash_free(rte_hash *h)
    void rte_hash_reset(rte_hash *h)
    int32_t rte_hash_count(const rte_hash *h) nogil
    int32_t rte_hash_add_key(const rte_hash *h, const void *key) nogil
    int32_t rte_hash_del_key(const rte_hash *h, const void *key) nogil
    int32_t rte_hash_lookup(const rte_hash *h, const void *key) nogil


cdef extern from "rte_hash_crc.h":
    uint32_t rte_hash_crc(const void *data, uint32_t data_len, uint32_t init_val) nogil


cdef enum:
    QD_STATE_VAL_MAX = 48       # bytes of value per key
    QD_STATE_BATCH = 256        # = QD_MAX_BURST
    QD_STATE_MAX_DIRTY = 1024   # keys one batch may change
    QD_NO_PKT = 0xffff          # update/delete not caused by a packet (timers)


# A state key: 16 bytes, compared as bytes (zero the padding: use qd_key_init).
ctypedef struct qd_key:
    uint32_t a          # e.g. source address (host order)
    uint32_t b          # e.g. destination address
    uint16_t pa         # e.g. source port
    uint16_t pb         # e.g. destination port
    uint8_t proto
    uint8_t kind        # the NF's own namespace (0: plain 5-tuple)
    uint8_t pad[2]


ctypedef struct qd_val:
    uint8_t len         # bytes used of data
    uint8_t data[QD_STATE_VAL_MAX]


# One cache entry (indexed by the rte_hash position of its key).
ctypedef struct qd_entry:
    qd_key key
    uint8_t present     # 1: a value (in val); 0: Redis has none
    uint8_t loading     # 1: asked for, not fetched yet (this batch's misses)
    uint16_t pad
    uint32_t dirty_gen  # == qd_state.gen: changed in the current batch
    uint64_t pending    # write group of its last change (> acked: not yet acknowledged)
    uint64_t held_mark  # ordinal of its last held packet (> qd_state.unheld: still held)
    qd_val val


ctypedef struct qd_state:
    rte_hash *h
    qd_entry *entries
    uint32_t capacity
    uint32_t gen            # batch generation (dirty_gen)
    uint64_t issued         # last write group handed to Redis
    uint64_t acked          # last write group Redis acknowledged
    uint64_t holds          # packets held so far (their ordinals: 1, 2, ...)
    uint64_t unheld         # of those, released or dropped so far (in hold order: FIFO)
    # this batch
    uint16_t count
    int32_t pos[QD_STATE_BATCH]         # entry of packet i's key, -1: none
    uint8_t changed[QD_STATE_BATCH]     # packet i called update/delete
    uint32_t dirty[QD_STATE_MAX_DIRTY]  # entries changed in this batch
    uint32_t ndirty
    uint32_t misses[QD_STATE_BATCH]     # entries to fetch (loading)
    uint32_t nmisses
    # counters
    uint64_t hits
    uint64_t fetched
    uint64_t updates
    uint64_t cache_full
    # 1 while Redis cannot be reached (the runtime reconnects; docs/state.rst): an NF
    # that asks the store itself (the NAT's timer re-reads) waits for it to be back
    int store_down


cdef inline void qd_key_init(qd_key *k) noexcept nogil:
    memset(k, 0, sizeof(qd_key))


cdef inline int32_t qd_state_slot(qd_state *s, const qd_key *k, int add) noexcept nogil:
    """The entry of ``k`` (added, absent and clean, if ``add``), or -1."""
    cdef int32_t p = rte_hash_lookup(s.h, k)
    cdef qd_entry *e
    if p >= 0 or not add:
        return p if p < <int32_t>s.capacity else -1
    p = rte_hash_add_key(s.h, k)
    if p < 0 or p >= <int32_t>s.capacity:
        s.cache_full += 1
        return -1
    e = &s.entries[p]
    memcpy(&e.key, k, sizeof(qd_key))
    e.present = 0
    e.loading = 0
    e.dirty_gen = 0
    e.pending = 0
    e.held_mark = 0
    e.val.len = 0
    return p


cdef inline const qd_val *qd_state_get(qd_state *s, uint16_t i) noexcept nogil:
    """Packet ``i``'s state (its key from ``key()``), or NULL if it has none."""
    cdef int32_t p
    if i >= s.count:
        return NULL
    p = s.pos[i]
    if p < 0 or not s.entries[p].present:
        return NULL
    return &s.entries[p].val


cdef inline const qd_val *qd_state_read(qd_state *s, const qd_key *k) noexcept nogil:
    """Any key's value if the cache has it (only a batch's own keys are fetched)."""
    cdef int32_t p = qd_state_slot(s, k, 0)
    if p < 0 or not s.entries[p].present or s.entries[p].loading:
        return NULL
    return &s.entries[p].val


cdef inline int qd_state_change(qd_state *s, uint16_t i, const qd_key *k,
                                const void *v, uint32_t n, int present) noexcept nogil:
    cdef int32_t p
    cdef qd_entry *e
    if n > QD_STATE_VAL_MAX:
        return -1
    p = qd_state_slot(s, k, 1)
    if p < 0:
        return -1
    e = &s.entries[p]
    if e.dirty_gen != s.gen:
        if s.ndirty >= QD_STATE_MAX_DIRTY:
            return -1
        e.dirty_gen = s.gen
        s.dirty[s.ndirty] = <uint32_t>p
        s.ndirty += 1
    e.loading = 0
    e.present = <uint8_t>present
    e.val.len = <uint8_t>n
    if n:
        memcpy(e.val.data, v, n)
    if i < s.count:
        s.changed[i] = 1
    s.updates += 1
    return 0


cdef inline int qd_state_update(qd_state *s, uint16_t i, const qd_key *k,
                                const void *v, uint32_t n) noexcept nogil:
    """Set ``k`` to ``n`` bytes at ``v``; hold packet ``i`` until Redis has it.
    Returns 0, or -1 (value too long, cache or batch write log full: drop ``i``)."""
    return qd_state_change(s, i, k, v, n, 1)


cdef inline int qd_state_delete(qd_state *s, uint16_t i, const qd_key *k) noexcept nogil:
    """Remove ``k``; hold packet ``i`` until Redis has removed it.  0 or -1."""
    return qd_state_change(s, i, k, NULL, 0, 0)


cdef inline int qd_key_eq(const qd_key *x, const qd_key *y) noexcept nogil:
    return memcmp(x, y, sizeof(qd_key)) == 0


cdef class StatefulNF(NativeNF):
    # Set by the runtime before the first batch; valid in key() and process().
    cdef qd_state *state
    # 1: key() returns the same key for both directions of a flow (informational).
    cdef public int bidirectional
    cdef int key(self, const qd_pkt *pkt, qd_key *k) noexcept nogil
