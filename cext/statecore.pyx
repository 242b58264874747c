# cython: language_level=3
"""The per-batch state machinery of a stateful NF (see ``cext/statecore.pxd``).

Redis is talked to directly from the NF's process (``worker/state_store.py``),
not through the agent: one hop less on the path every held packet waits for;
the agent only creates the NF's ACL user and hands it the credentials.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from cext.nf cimport QD_FORWARD, QD_HOLD, qd_batch, qd_pkt
from cext.state cimport (
    QD_STATE_MAX_DIRTY,
    QD_STATE_VAL_MAX,
    StatefulNF,
    qd_entry,
    qd_key,
    qd_state,
    rte_hash_add_key,
    rte_hash_count,
    rte_hash_create,
    rte_hash_crc,
    rte_hash_del_key,
    rte_hash_free,
    rte_hash_lookup,
    rte_hash_parameters,
)

LAT_RING = LAT_SLOTS

if QS_HOLD != QD_HOLD:
    raise ImportError("statecore: QS_HOLD (qs_statehook.h) must equal QD_HOLD (cext/nf.pxd)")
if QS_HOOK_LAT_SLOTS != LAT_SLOTS:
    raise ImportError("statecore: QS_HOOK_LAT_SLOTS (qs_statehook.h) must equal LAT_SLOTS")


cdef class StateCore:
    """The cache, the Redis write side and the write groups of one stateful NF.

    ``store`` is a :class:`worker.state_store.RedisStore` (or ``None``: state
    kept only in the local cache, every write acknowledged at once: the
    benchmark's baseline); ``cache_entries`` sizes the local cache.  Calls the
    NF's ``restore`` once, from Python, before any batch.
    """

    def __init__(self, StatefulNF nf, store=None, int cache_entries=65536):
        cdef rte_hash_parameters hp
        if cache_entries < 4 * EVICT_MARGIN:
            raise ValueError(f"state.cache_entries: must be at least {4 * EVICT_MARGIN}")
        self.snf = nf
        self.store = store
        self.has_store = store is not None
        self.error = None
        self.evict_acked = <uint64_t>-1
        self.s = <qd_state *>PyMem_Malloc(sizeof(qd_state))
        if not self.s:
            raise MemoryError()
        memset(self.s, 0, sizeof(qd_state))
        self.s.entries = <qd_entry *>PyMem_Malloc(cache_entries * sizeof(qd_entry))
        if not self.s.entries:
            raise MemoryError()
        memset(self.s.entries, 0, cache_entries * sizeof(qd_entry))
        self._hash_name = f"qdst_{id(self) & 0xffffff:x}".encode()
        memset(&hp, 0, sizeof(hp))
        hp.name = self._hash_name
        hp.entries = cache_entries
        hp.key_len = sizeof(qd_key)
        hp.hash_func = rte_hash_crc
        hp.socket_id = -1
        self.s.h = rte_hash_create(&hp)
        if self.s.h == NULL:
            raise MemoryError(f"rte_hash_create({cache_entries} entries) failed")
        self.s.capacity = cache_entries
        nf.state = self.s
        if store is not None:
            self._open_resp(store)
            nf.restore(store.fetch_many)

    def _open_resp(self, store):
        cdef bytes prefix = store.prefix
        if len(prefix) > 80:
            raise ValueError(f"state.prefix: at most 79 characters, got {len(prefix) - 1}")
        self.resp = <qd_resp *>PyMem_Malloc(sizeof(qd_resp))
        if self.resp == NULL:
            raise MemoryError()
        memset(self.resp, 0, sizeof(qd_resp))
        self.resp.fd = store.wsock.fileno()
        memcpy(self.resp.prefix, <char *>prefix, len(prefix))
        self.resp.prefix_len = len(prefix)
        self.resp.line_start = 1
        self.resp.cap = QD_STATE_MAX_DIRTY * qd_resp_item_max(self.resp, QD_STATE_VAL_MAX) + 4096
        self.resp.buf = <uint8_t *>PyMem_Malloc(self.resp.cap)
        if self.resp.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.snf is not None:
            self.snf.state = NULL
        if self.resp != NULL:
            PyMem_Free(self.resp.buf)
            PyMem_Free(self.resp)
        if self.s != NULL:
            if self.s.h != NULL:
                rte_hash_free(self.s.h)
            PyMem_Free(self.s.entries)
            PyMem_Free(self.s)

    @property
    def outstanding(self):
        """Write groups sent and not yet acknowledged."""
        return self.s.issued - self.s.acked

    # -- Python side: once per batch with misses / a failed write ---------------------------

    cdef int _fetch(self) noexcept with gil:
        cdef qd_state *s = self.s
        cdef qd_entry *e
        cdef uint32_t j
        cdef bytes v
        try:
            keys = [(<char *>&s.entries[s.misses[j]].key)[:sizeof(qd_key)]
                    for j in range(s.nmisses)]
            values = self.store.fetch(keys)
            for j in range(s.nmisses):
                e = &s.entries[s.misses[j]]
                v = values[j]
                e.loading = 0
                if v is None or len(v) > sizeof(e.val.data):
                    e.present = 0
                    e.val.len = 0
                else:
                    e.present = 1
                    e.val.len = <uint8_t>len(v)
                    memcpy(e.val.data, <char *>v, len(v))
            return 0
        except BaseException as exc:
            return self._fail(exc)

    cdef int _resp_failed(self) noexcept with gil:
        from worker.state_store import StateStoreError

        msg = (<char *>self.resp.error).decode(errors="replace") or "too many groups in flight"
        try:
            raise StateStoreError(f"state store: write refused or failed: {msg}")
        except StateStoreError as exc:
            return self._fail(exc)

    cdef int _fail(self, exc) except? -1:
        import traceback

        self.error = (exc, traceback.format_exc())
        self.snf.halt = 1
        return -1

    # -- data core -----------------------------------------------------------------------

    cdef uint32_t _evict(self) noexcept nogil:
        """Make room when the cache nears full: drop clean *absent* entries (keys Redis
        has no value for: deleted NAT ports, flows without state) first, and only if
        that frees too little every clean entry.  Entries with unacknowledged writes
        stay; what is dropped is fetched again on its next packet."""
        cdef qd_state *s = self.s
        cdef uint32_t p, freed = 0
        cdef int present
        cdef qd_entry *e
        for present in range(2):
            if present and <uint32_t>rte_hash_count(s.h) + 2 * EVICT_MARGIN <= s.capacity:
                break
            for p in range(s.capacity):
                e = &s.entries[p]
                if (e.pending > s.acked or e.held_mark > s.unheld or e.loading
                        or e.present != present):
                    continue
                if rte_hash_lookup(s.h, &e.key) == <int32_t>p:
                    rte_hash_del_key(s.h, &e.key)
                    freed += 1
        self.evictions += freed
        return freed

    cdef int begin(self, qd_pkt *pkts, uint16_t n) noexcept nogil:
        """Before the NF: every packet's key looked up, the misses fetched in ONE MGET."""
        cdef qd_state *s = self.s
        cdef qd_entry *e
        cdef qd_key k
        cdef int32_t pos
        cdef uint32_t j
        cdef uint16_t i
        if (<uint32_t>rte_hash_count(s.h) + EVICT_MARGIN > s.capacity
                and s.acked != self.evict_acked):
            # an eviction that freed little is not retried until acks made
            # more entries clean (else every batch would scan the whole cache)
            self.evict_acked = s.acked if self._evict() < EVICT_MARGIN else <uint64_t>-1
        s.gen += 1
        s.count = n
        s.ndirty = 0
        s.nmisses = 0
        for i in range(n):
            s.changed[i] = 0
            s.pos[i] = -1
            if not self.snf.key(&pkts[i], &k):
                continue
            pos = rte_hash_lookup(s.h, &k)
            if pos >= 0:
                if not s.entries[pos].loading:
                    s.hits += 1
                s.pos[i] = pos
                continue
            pos = rte_hash_add_key(s.h, &k)
            if pos < 0 or pos >= <int32_t>s.capacity:
                s.cache_full += 1
                continue
            e = &s.entries[pos]
            memcpy(&e.key, &k, sizeof(qd_key))
            e.present = 0
            e.loading = 1
            e.dirty_gen = 0
            e.pending = 0
            e.held_mark = 0
            e.val.len = 0
            s.misses[s.nmisses] = <uint32_t>pos
            s.nmisses += 1
            s.pos[i] = pos
        if s.nmisses:
            s.fetched += s.nmisses
            if self.has_store:
                if self._fetch():
                    return -1
                self.fetch_round_trips += 1
            else:
                for j in range(s.nmisses):
                    s.entries[s.misses[j]].loading = 0
            self.fetch_batches += 1
        return 0

    cdef int _send(self) noexcept nogil:
        """The batch's changes as one write group (MSET + DEL), sent, not waited for."""
        cdef qd_state *s = self.s
        cdef qd_resp *r = self.resp
        cdef qd_entry *e
        cdef uint32_t j, nset = 0, ndel = 0
        cdef uint8_t replies = 0
        for j in range(s.ndirty):
            if s.entries[s.dirty[j]].present:
                nset += 1
            else:
                ndel += 1
        if nset:
            qd_resp_cmd(r, 1 + 2 * nset, "MSET")
            for j in range(s.ndirty):
                e = &s.entries[s.dirty[j]]
                if e.present:
                    qd_resp_key(r, <uint8_t *>&e.key)
                    qd_resp_bulk(r, e.val.data, e.val.len)
            replies += 1
        if ndel:
            qd_resp_cmd(r, 1 + ndel, "DEL")
            for j in range(s.ndirty):
                e = &s.entries[s.dirty[j]]
                if not e.present:
                    qd_resp_key(r, <uint8_t *>&e.key)
            replies += 1
        r.keys_written += nset + ndel
        if qd_resp_end_group(r, replies) or qd_resp_flush(r):
            return self._resp_failed()
        return 0

    cdef int commit(self) noexcept nogil:
        """After the NF: the batch's changes as one write group (none: nothing sent)."""
        cdef qd_state *s = self.s
        cdef uint32_t j
        if s.ndirty == 0:
            return 0
        s.issued += 1
        for j in range(s.ndirty):
            s.entries[s.dirty[j]].pending = s.issued
        self.write_groups += 1
        if self.has_store:
            return self._send()
        s.acked = s.issued
        return 0

    cdef int poll(self) noexcept nogil:
        """Acknowledgements that arrived, without blocking (advances ``s.acked``)."""
        cdef int64_t done
        if not self.has_store or self.s.acked >= self.s.issued:
            return 0
        done = qd_resp_poll(self.resp)
        if done < 0:
            return self._resp_failed()
        self.s.acked += <uint64_t>done
        return 0

    cdef uint64_t hold_seq(self, uint16_t i, uint8_t v) noexcept nogil:
        """QD_NO_HOLD: packet ``i`` (verdict ``v``, forward or hold) goes on now.  Else
        the caller holds it (in FIFO order behind every packet held before) until
        ``s.acked`` reaches the returned write group, and counts it in ``s.unheld``
        when it leaves the FIFO.  It is held if it changed state or asked to be
        held (its batch's group), if its key has a write not yet acknowledged (that
        group), or if an earlier packet of its key is still held: a packet must
        never overtake one of its own flow that waits behind another flow's."""
        cdef qd_state *s = self.s
        cdef int32_t pos = s.pos[i]
        cdef qd_entry *e = &s.entries[pos] if pos >= 0 else NULL
        cdef uint64_t q = QD_NO_HOLD
        if (v == QD_HOLD or s.changed[i]) and s.acked < s.issued:
            q = s.issued
        elif e != NULL and e.pending > s.acked:
            q = e.pending
        elif e != NULL and e.held_mark > s.unheld:
            q = s.acked  # no write of its own to wait for: only its turn in the FIFO
        if q == QD_NO_HOLD:
            return q
        s.holds += 1
        if e != NULL:
            e.held_mark = s.holds
        return q

    def counters(self):
        s = self.s
        return {
            "hits": s.hits, "fetched": s.fetched, "updates": s.updates,
            "cache_full": s.cache_full, "cache_used": rte_hash_count(s.h),
            "fetch_round_trips": self.fetch_round_trips, "fetch_batches": self.fetch_batches,
            "write_groups": self.write_groups, "acked_groups": s.acked,
            "evictions": self.evictions,
            "keys_written": self.resp.keys_written if self.resp != NULL else 0,
            "bytes_sent": self.resp.bytes_sent if self.resp != NULL else 0,
        }


# --- a stateful NF at a chain position (the stage loop of cext/src/qs_chainrt.h) -------

cdef int _stage_poll(void *ctx) noexcept nogil:
    return (<StageState>ctx).core.poll()


cdef void stage_batch(void *ctx, qd_batch *b) noexcept nogil:
    (<StageState>ctx).batch(b)


cdef class StageState:
    """A :class:`cext.state.StatefulNF` at a chain position: pass it to
    ``cext.chainbuf.run_stage(..., state=...)``.  ``max_held`` bounds the slots
    held for unacknowledged writes (at most the region's); at the bound the
    stage takes only as many packets as there is room for."""

    def __init__(self, StatefulNF nf, store=None, int max_held=4096, int cache_entries=65536):
        if max_held < 1:
            raise ValueError(f"state.max_held: at least 1, got {max_held}")
        self.core = StateCore(nf, store, cache_entries)
        memset(&self.hook, 0, sizeof(qs_state_hook))
        self.hook.ctx = <void *>self
        self.hook.poll = _stage_poll
        self.hook.acked = &self.core.s.acked
        self.hook.issued = &self.core.s.issued
        self.hook.unheld = &self.core.s.unheld
        self.hook.max_held = max_held
        self.hook.held_off = <uint32_t *>PyMem_Malloc(max_held * sizeof(uint32_t))
        self.hook.held_seq = <uint64_t *>PyMem_Malloc(max_held * sizeof(uint64_t))
        self.hook.held_tsc = <uint64_t *>PyMem_Malloc(max_held * sizeof(uint64_t))
        self.hook.lat = <uint32_t *>PyMem_Malloc(LAT_SLOTS * sizeof(uint32_t))
        if not (self.hook.held_off and self.hook.held_seq and self.hook.held_tsc
                and self.hook.lat):
            raise MemoryError()

    cdef void batch(self, qd_batch *b) noexcept nogil:
        """The NF call: state in, the NF, the write group out, and every packet that
        must wait for Redis marked QS_HOLD with its group appended to hseq[]."""
        cdef qs_state_hook *hk = &self.hook
        cdef uint16_t i
        cdef uint8_t v
        cdef uint64_t q
        if hk.failed or self.core.begin(b.pkts, b.count):
            hk.failed = 1
            memset(b.verdicts, 1, b.count)  # never unacknowledged: dropped (QD_DROP)
            return
        self.core.snf.process(b)
        if self.core.commit():
            hk.failed = 1
        for i in range(b.count):
            v = b.verdicts[i]
            if v != QD_FORWARD and v != QD_HOLD:
                continue
            q = self.core.hold_seq(i, v)
            if q == QD_NO_HOLD:
                b.verdicts[i] = QD_FORWARD
            elif hk.nh < QS_HOOK_BATCH:
                b.verdicts[i] = QS_HOLD
                hk.hseq[hk.nh] = q
                hk.nh += 1
            else:  # cannot happen: a stage batch is at most QS_HOOK_BATCH packets
                b.verdicts[i] = 1
                self.core.s.unheld += 1

    def __dealloc__(self):
        PyMem_Free(self.hook.held_off)
        PyMem_Free(self.hook.held_seq)
        PyMem_Free(self.hook.held_tsc)
        PyMem_Free(self.hook.lat)

    @property
    def error(self):
        return self.core.error

    def held_latencies(self):
        """Cycles from arrival to release of the last held packets (at most LAT_RING)."""
        n = min(self.hook.lat_head, LAT_SLOTS)
        return [self.hook.lat[i] for i in range(n)]

    def counters(self):
        h = self.hook
        out = self.core.counters()
        out.update({
            "held": h.held_total, "released": h.released, "held_now": h.count,
            "held_dropped": h.held_dropped, "max_held": h.max_held,
            "max_held_seen": h.max_held_seen, "stalls": h.stalls,
        })
        return out
