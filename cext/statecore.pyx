# cython: language_level=3
"""The per-batch state machinery of a stateful NF (see ``cext/statecore.pxd``).

Redis is talked to directly from the NF's process (``worker/state_store.py``),
not through the agent: one hop less on the path every held packet waits for;
the agent only creates the NF's ACL user and hands it the credentials.

While Redis cannot be reached (its connection lost, a refused or timed-out
fetch, Redis answering ``-LOADING`` after a restart) the NF goes on: packets
whose state is in the cache are processed as usual; a packet that changes
state is held, its write group kept and sent again, in order, once a new
connection is up (``poll`` tries every ``retry_s``); a packet whose state
is not cached cannot be processed (its flow may have a mapping in Redis)
and is dropped, counted in ``unknown_dropped``.  Nothing is released before
Redis acknowledged its write.  What bounds an outage is ``max_held`` (the
held packets: back-pressure) and ``replay_bytes`` (the write groups kept:
when full, the NF stops as on any store failure).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from cext.dpdk cimport rte_get_tsc_hz, rte_rdtsc
from cext.nf cimport QD_DROP, QD_FORWARD, QD_HOLD, qd_batch, qd_pkt
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
from cext.state cimport QD_STATE_BATCH

LAT_RING = LAT_SLOTS

if QS_HOLD != QD_HOLD:
    raise ImportError("statecore: QS_HOLD (qs_statehook.h) must equal QD_HOLD (cext/nf.pxd)")
if QS_HOOK_LAT_SLOTS != LAT_SLOTS:
    raise ImportError("statecore: QS_HOOK_LAT_SLOTS (qs_statehook.h) must equal LAT_SLOTS")


cdef class StateCore:
    """The cache, the Redis write side and the write groups of one stateful NF.

    ``store`` is a :class:`worker.state_store.RedisStore` (or ``None``: state
    kept only in the local cache, every write acknowledged at once: the
    benchmark's baseline); ``cache_entries`` sizes the local cache;
    ``retry_s`` is how often a lost Redis is tried again, ``replay_bytes``
    how many bytes of unacknowledged writes are kept to send again.  Calls
    the NF's ``restore`` once, from Python, before any batch.
    """

    def __init__(self, StatefulNF nf, store=None, int cache_entries=65536,
                 double retry_s=0.05, int replay_bytes=16 << 20):
        cdef rte_hash_parameters hp
        if cache_entries < 4 * EVICT_MARGIN:
            raise ValueError(f"state.cache_entries: must be at least {4 * EVICT_MARGIN}")
        if not 0 < retry_s <= 60:
            raise ValueError(f"state.retry_s: more than 0, at most 60 s, got {retry_s}")
        if replay_bytes < 1 << 16:
            raise ValueError(f"state.replay_bytes: at least 65536, got {replay_bytes}")
        self.retry_cycles = <uint64_t>(retry_s * rte_get_tsc_hz())
        self.last_outage = None
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
            self._open_resp(store, replay_bytes)
            nf.restore(store.fetch_many)

    def _open_resp(self, store, int replay_bytes):
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
        # one group at most (every key of a batch changed), after the kept ones
        self.group_max = QD_STATE_MAX_DIRTY * qd_resp_item_max(self.resp, QD_STATE_VAL_MAX) + 4096
        self.resp.cap = replay_bytes + self.group_max
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

    @property
    def store_down(self):
        """True while Redis cannot be reached (reconnecting every ``retry_s``)."""
        return bool(self.down)

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
            if getattr(exc, "transient", False):  # Redis away: the misses stay unknown
                self.last_outage = str(exc)
                self._go_down()
                return 1
            return self._fail(exc)

    cdef void _go_down(self) noexcept with gil:
        """Redis cannot be reached: the write connection is dropped (what it had not
        acknowledged is kept in the buffer), fetches stop, ``poll`` reconnects."""
        cdef uint64_t now = rte_rdtsc()
        if self.resp.lost and self.resp.error[0]:
            self.last_outage = (<char *>self.resp.error).decode(errors="replace")
        self.down = 1
        self.s.store_down = 1
        self.outages += 1
        self.down_since = now
        self.retry_at = now + self.retry_cycles
        self.resp.lost = 1  # nothing is sent until the new connection's qd_resp_reset
        self.resp.fd = -1
        try:
            self.store.close_write()
        except BaseException:
            pass

    cdef int _reconnect(self) noexcept with gil:
        """One attempt at a new connection (0: up again, or still down and retried
        later; -1: refused for good, e.g. the NF's user is gone)."""
        cdef qd_state *s = self.s
        cdef uint64_t now
        try:
            fd = self.store.reconnect()
        except BaseException as exc:
            if getattr(exc, "transient", False):
                self.last_outage = str(exc)
                self.retry_at = rte_rdtsc() + self.retry_cycles
                return 0
            return self._fail(exc)
        now = rte_rdtsc()
        qd_resp_reset(self.resp, fd)
        self.groups_resent += s.issued - s.acked
        self.down = 0
        self.s.store_down = 0
        self.reconnects += 1
        self.down_cycles += now - self.down_since
        qd_resp_flush(self.resp)
        if self.resp.lost:  # lost again at once
            self._go_down()
        return 0

    cdef int _resp_failed(self) noexcept with gil:
        from worker.state_store import StateStoreError

        msg = (<char *>self.resp.error).decode(errors="replace") or "too many groups in flight"
        try:
            raise StateStoreError(f"state store: write refused or failed: {msg}")
        except StateStoreError as exc:
            return self._fail(exc)

    cdef int _replay_full(self) noexcept with gil:
        from worker.state_store import StateStoreError

        try:
            raise StateStoreError(
                f"state store: {self.s.issued - self.s.acked} write groups "
                f"({self.resp.len} bytes) not acknowledged fill state.replay_bytes"
                + (f" (Redis unreachable: {self.last_outage})" if self.down else "")
            )
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
        """Before the NF: every packet's key looked up, the misses fetched in ONE MGET.
        0; 1 if Redis could not be reached and some packets' state is unknown
        (``QD_POS_UNKNOWN``); -1 if the store failed for good."""
        cdef qd_state *s = self.s
        cdef qd_entry *e
        cdef qd_key k
        cdef int32_t pos
        cdef uint32_t j
        cdef uint16_t i
        cdef int r
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
            if self.has_store:
                r = 1 if self.down else self._fetch()
                if r < 0:
                    return -1
                if r > 0:
                    return self._unknown(n)
                self.fetch_round_trips += 1
            else:
                for j in range(s.nmisses):
                    s.entries[s.misses[j]].loading = 0
            s.fetched += s.nmisses
            self.fetch_batches += 1
        return 0

    cdef int _unknown(self, uint16_t n) noexcept nogil:
        """The misses could not be fetched: their packets are marked QD_POS_UNKNOWN
        and their keys leave the cache (fetched again on a later packet).  Returns 1."""
        cdef qd_state *s = self.s
        cdef uint32_t j
        cdef uint16_t i
        for i in range(n):
            if s.pos[i] >= 0 and s.entries[s.pos[i]].loading:
                s.pos[i] = QD_POS_UNKNOWN
        for j in range(s.nmisses):
            s.entries[s.misses[j]].loading = 0
            rte_hash_del_key(s.h, &s.entries[s.misses[j]].key)
        s.nmisses = 0
        return 1

    cdef int run(self, qd_batch *b) noexcept nogil:
        """The NF's call on batch ``b`` with its state: ``begin``, ``process``,
        ``commit``.  0, or -1 if the store failed for good (``error``)."""
        cdef int r = self.begin(b.pkts, b.count)
        if r < 0:
            return -1
        if r == 0:
            self.snf.process(b)
        else:
            self._process_known(b)
        return self.commit()

    cdef void _process_known(self, qd_batch *b) noexcept nogil:
        """``process`` on the packets whose state is known; the others are dropped.
        The NF sees a batch of only those (``s.pos``/``s.count`` follow), and its
        verdicts, rewrites and changes are put back at the packets' own places."""
        cdef qd_state *s = self.s
        cdef qd_pkt sub[QD_STATE_BATCH]
        cdef uint8_t sv[QD_STATE_BATCH]
        cdef uint8_t ch[QD_STATE_BATCH]
        cdef uint16_t at[QD_STATE_BATCH]
        cdef int32_t pos[QD_STATE_BATCH]
        cdef qd_batch sb
        cdef uint16_t i, j, m = 0, n = b.count
        memcpy(pos, s.pos, n * sizeof(int32_t))
        for i in range(n):
            if pos[i] == QD_POS_UNKNOWN:
                b.verdicts[i] = QD_DROP
                self.unknown_dropped += 1
                continue
            sub[m] = b.pkts[i]
            sv[m] = b.verdicts[i]
            s.pos[m] = pos[i]
            at[m] = i
            m += 1
        s.count = m
        if m:
            sb.pkts = sub
            sb.verdicts = sv
            sb.count = m
            sb.tsc = b.tsc
            self.snf.process(&sb)
        memcpy(ch, s.changed, m)
        memset(s.changed, 0, n)
        for i in range(n):
            s.pos[i] = -1
        for j in range(m):
            i = at[j]
            b.pkts[i] = sub[j]
            b.verdicts[i] = sv[j]
            s.changed[i] = ch[j]
            s.pos[i] = pos[i]
        s.count = n

    cdef int _send(self) noexcept nogil:
        """The batch's changes as one write group (MSET + DEL), sent, not waited for."""
        cdef qd_state *s = self.s
        cdef qd_resp *r = self.resp
        cdef qd_entry *e
        cdef uint32_t j, nset = 0, ndel = 0
        cdef uint8_t replies = 0
        if qd_resp_room(r, self.group_max):
            return self._replay_full()
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
        if qd_resp_end_group(r, replies):
            return self._resp_failed()
        qd_resp_flush(r)
        if r.lost and not self.down:
            self._go_down()
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
        """Acknowledgements that arrived, without blocking (advances ``s.acked``);
        while Redis is down, a reconnect once ``retry_s`` has passed."""
        cdef int64_t done
        if not self.has_store:
            return 0
        if self.down:
            if rte_rdtsc() < self.retry_at:
                return 0
            return self._reconnect()
        if self.s.acked >= self.s.issued:
            return 0
        done = qd_resp_poll(self.resp)
        if done < 0:
            return self._resp_failed()
        self.s.acked += <uint64_t>done
        if self.resp.lost:
            self._go_down()
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
            "store_down": bool(self.down), "outages": self.outages,
            "reconnects": self.reconnects, "unknown_dropped": self.unknown_dropped,
            "groups_resent": self.groups_resent,
            "bytes_resent": self.resp.bytes_resent if self.resp != NULL else 0,
            "down_ms": (self.down_cycles + (rte_rdtsc() - self.down_since if self.down else 0))
            * 1000.0 / rte_get_tsc_hz(),
            "last_outage": self.last_outage,
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

    def __init__(self, StatefulNF nf, store=None, int max_held=4096, int cache_entries=65536,
                 double retry_s=0.05, int replay_bytes=16 << 20):
        if max_held < 1:
            raise ValueError(f"state.max_held: at least 1, got {max_held}")
        self.core = StateCore(nf, store, cache_entries, retry_s, replay_bytes)
        memset(&self.hook, 0, sizeof(qs_state_hook))
        self.hook.ctx = <void *>self
        self.hook.poll = _stage_poll
        self.hook.acked = &self.core.s.acked
        self.hook.issued = &self.core.s.issued
        self.hook.unheld = &self.core.s.unheld
        self.hook.store_down = &self.core.down
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
        if hk.failed:
            memset(b.verdicts, QD_DROP, b.count)  # never unacknowledged: dropped
            return
        if self.core.run(b):
            hk.failed = 1
            memset(b.verdicts, QD_DROP, b.count)
            return
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
