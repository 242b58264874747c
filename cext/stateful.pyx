# cython: language_level=3
"""The burst loop of a stateful NF: keys, one Redis round trip, NF, update-then-release.

:class:`StatefulRuntime` is a :class:`cext.runtime.Runtime` whose ``loop`` adds,
per batch (the single-NF fast path of ``cext/runtime.pyx`` stays as it is for
stateless NFs):

1. **acks**: if writes are outstanding, read Redis' replies without blocking
   and release the held packets whose writes are acknowledged (in order);
2. **bound**: if the held packets could pass ``max_held`` with one more
   batch, receive nothing this round (back-pressure: the RX queue fills, then
   the NIC drops and counts ``imissed``); counted in ``stalls``;
3. **RX** and describe, as the base loop;
4. **keys**: ``nf.key()`` per packet, looked up in the local cache
   (``rte_hash``); keys the cache lacks are fetched from Redis in ONE MGET
   (Python, once per batch with misses);
5. **NF** ``process(batch)`` with ``nf.state`` set;
6. **writes**: the keys the batch changed go to Redis as one write group
   (MSET + DEL, pipelined, not waited for);
7. **verdicts**: a packet that changed state, or whose key has an
   unacknowledged write, or that the NF marked ``QD_HOLD``, is held until its
   write group is acknowledged; the rest is forwarded as usual.

Redis is talked to directly from the runtime (``worker/state_store.py``), not
through the agent: one hop less on the path every held packet waits for; the
agent only creates the NF's ACL user and hands it the credentials.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from cext.dpdk cimport (
    rte_eth_rx_burst,
    rte_mbuf,
    rte_pktmbuf_free_bulk,
    rte_prefetch0,
    rte_rdtsc,
)
from cext.nf cimport QD_FORWARD, QD_HOLD, qd_batch, qd_pkt
from cext.runtime cimport (
    QD_MAX_BURST,
    QD_STATS_SAMPLES,
    Runtime,
    qd_hist_bucket,
    qd_stats,
    qd_stats_begin,
    qd_stats_end,
)
from cext.state cimport (
    QD_STATE_MAX_DIRTY,
    QD_STATE_VAL_MAX,
    StatefulNF,
    qd_entry,
    qd_key,
    qd_state,
    rte_hash_count,
    rte_hash_create,
    rte_hash_crc,
    rte_hash_del_key,
    rte_hash_free,
    rte_hash_lookup,
    rte_hash_parameters,
    rte_hash_add_key,
)

cdef extern from "src/qd_resp.h":
    cdef int QD_RESP_ERR

    cdef struct qd_resp:
        int fd
        uint8_t prefix[80]
        uint32_t prefix_len
        uint8_t *buf
        uint32_t cap, len
        uint64_t head, tail
        int line_start
        int failed
        char error[201]
        uint64_t bytes_sent, keys_written

    uint32_t qd_resp_item_max(const qd_resp *r, uint32_t vmax) nogil
    void qd_resp_cmd(qd_resp *r, uint32_t nargs, const char *name) nogil
    void qd_resp_key(qd_resp *r, const uint8_t *key16) nogil
    void qd_resp_bulk(qd_resp *r, const void *p, uint32_t n) nogil
    int qd_resp_end_group(qd_resp *r, uint8_t replies) nogil
    int qd_resp_flush(qd_resp *r) nogil
    int64_t qd_resp_poll(qd_resp *r) nogil


cdef enum:
    LAT_SLOTS = 65536   # ring of release latencies (cycles) of held packets
    # free cache entries kept before a batch: its keys (256) and its changes (1024) fit
    EVICT_MARGIN = 2048

LAT_RING = LAT_SLOTS


cdef class StatefulRuntime(Runtime):
    """Runs a :class:`cext.state.StatefulNF` with its state in ``store``.

    ``store`` is a :class:`worker.state_store.RedisStore` (or ``None``: state
    kept only in the local cache, every write acknowledged at once: the
    benchmark's baseline).  ``max_held`` bounds the held packets (at least
    one batch); ``cache_entries`` sizes the local cache.
    """

    cdef StatefulNF snf
    cdef qd_state *s
    cdef object store
    cdef int has_store
    cdef qd_resp *resp
    cdef object _hash_name
    cdef uint32_t max_held, held_head, held_count
    cdef rte_mbuf **held_m
    cdef uint64_t *held_seq
    cdef uint64_t *held_tsc
    cdef uint32_t *lat
    cdef uint64_t lat_head
    cdef rte_mbuf *rel_mbufs[QD_MAX_BURST]
    # counters
    cdef uint64_t fetch_round_trips, fetch_batches, write_groups, held_total, released
    cdef uint64_t held_dropped, stalls, evictions, max_held_seen
    cdef uint64_t evict_acked
    cdef public object error

    def __init__(self, StatefulNF nf, int rx_port, int tx_port, stats_buffer, store=None,
                 int burst=32, int core=0, int max_held=4096, int cache_entries=65536):
        cdef rte_hash_parameters hp
        super().__init__(nf, rx_port, tx_port, stats_buffer, burst=burst, core=core)
        if max_held < burst:
            raise ValueError(f"state.max_held: must be at least the batch ({burst}): {max_held}")
        if cache_entries < 4 * EVICT_MARGIN:
            raise ValueError(f"state.cache_entries: must be at least {4 * EVICT_MARGIN}")
        self.snf = nf
        self.store = store
        self.has_store = store is not None
        self.error = None
        self.max_held = max_held
        self.evict_acked = <uint64_t>-1
        self.s = <qd_state *>PyMem_Malloc(sizeof(qd_state))
        self.held_m = <rte_mbuf **>PyMem_Malloc(max_held * sizeof(rte_mbuf *))
        self.held_seq = <uint64_t *>PyMem_Malloc(max_held * sizeof(uint64_t))
        self.held_tsc = <uint64_t *>PyMem_Malloc(max_held * sizeof(uint64_t))
        self.lat = <uint32_t *>PyMem_Malloc(LAT_SLOTS * sizeof(uint32_t))
        if not (self.s and self.held_m and self.held_seq and self.held_tsc and self.lat):
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
        if self.held_m != NULL and self.held_count:
            # packets still held at teardown: never acknowledged, never sent
            for i in range(self.held_count):
                rte_pktmbuf_free_bulk(&self.held_m[(self.held_head + i) % self.max_held], 1)
        if self.resp != NULL:
            PyMem_Free(self.resp.buf)
            PyMem_Free(self.resp)
        if self.s != NULL:
            if self.s.h != NULL:
                rte_hash_free(self.s.h)
            PyMem_Free(self.s.entries)
            PyMem_Free(self.s)
        PyMem_Free(self.held_m)
        PyMem_Free(self.held_seq)
        PyMem_Free(self.held_tsc)
        PyMem_Free(self.lat)

    # -- Python side: once per batch with misses / writes / outstanding acks ----------------

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

    cdef int _poll(self) noexcept nogil:
        cdef int64_t done = qd_resp_poll(self.resp)
        if done < 0:
            return self._resp_failed()
        self.s.acked += <uint64_t>done
        return 0

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
        self.nf.halt = 1
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
                if e.pending > s.acked or e.loading or e.present != present:
                    continue
                if rte_hash_lookup(s.h, &e.key) == <int32_t>p:
                    rte_hash_del_key(s.h, &e.key)
                    freed += 1
        self.evictions += freed
        return freed

    cdef uint16_t _release(self, uint64_t now) noexcept nogil:
        """Send held packets whose writes are acknowledged, oldest first; returns how many."""
        cdef uint16_t n = 0, sent, i
        cdef uint32_t h
        cdef uint64_t c
        while self.held_count and n < QD_MAX_BURST:
            h = self.held_head
            if self.held_seq[h] > self.s.acked:
                break
            self.rel_mbufs[n] = self.held_m[h]
            c = now - self.held_tsc[h]
            if c > 0xffffffffULL:
                c = 0xffffffffULL
            self.lat[self.lat_head & (LAT_SLOTS - 1)] = <uint32_t>c
            self.lat_head += 1
            n += 1
            self.held_head = (h + 1) % self.max_held
            self.held_count -= 1
        if n == 0:
            return 0
        sent = self.emit(self.rel_mbufs, n)
        if sent < n:
            rte_pktmbuf_free_bulk(self.rel_mbufs + sent, n - sent)
        self.released += n
        qd_stats_begin(self.st)
        self.st.tx_packets += sent
        for i in range(sent):
            self.st.tx_bytes += self.rel_mbufs[i].pkt_len
        self.st.drops_tx += n - sent
        qd_stats_end(self.st)
        return n

    cdef int loop(self, uint64_t deadline, uint64_t max_rx) noexcept nogil:
        cdef qd_stats *st = self.st
        cdef qd_state *s = self.s
        cdef qd_batch batch
        cdef rte_mbuf *m
        cdef qd_pkt *p
        cdef qd_entry *e
        cdef qd_key k
        cdef uint8_t *base
        cdef uint16_t n, i, nout, ndrop, sent
        cdef uint64_t t0, t1, cyc, rx_bytes, tx_bytes, drops_nf, held, empty = 0
        cdef uint32_t slot, j, h
        cdef int32_t pos
        cdef uint8_t v
        batch.pkts = self.pkts
        batch.verdicts = self.verdicts
        while True:
            t0 = rte_rdtsc()
            if t0 >= deadline:
                break
            if s.acked < s.issued and self.has_store:
                if self._poll():
                    return 2
            if self.held_count:
                self._release(t0)
            if self.held_count + self.burst > self.max_held:
                self.stalls += 1
                continue
            n = rte_eth_rx_burst(self.rx_port, self.rx_queue, self.rx_mbufs, self.burst)
            if n == 0:
                empty += 1
                continue
            rx_bytes = 0
            for i in range(n):
                m = self.rx_mbufs[i]
                base = <uint8_t *>m.buf_addr
                rte_prefetch0(base + m.data_off)
                p = &self.pkts[i]
                p.data = base + m.data_off
                p.len = m.data_len
                p.headroom = m.data_off
                p.tailroom = m.buf_len - m.data_off - m.data_len
                p.port = m.port
                rx_bytes += m.pkt_len
            # keys: cache lookups, misses fetched in one round trip
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
                if not self.snf.key(&self.pkts[i], &k):
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
                e.val.len = 0
                s.misses[s.nmisses] = <uint32_t>pos
                s.nmisses += 1
                s.pos[i] = pos
            if s.nmisses:
                s.fetched += s.nmisses
                if self.has_store:
                    if self._fetch():
                        return 2
                    self.fetch_round_trips += 1
                else:
                    for j in range(s.nmisses):
                        s.entries[s.misses[j]].loading = 0
                self.fetch_batches += 1
            memset(self.verdicts, QD_FORWARD, n)
            batch.count = n
            batch.tsc = t0
            self.snf.process(&batch)
            # writes: one group per batch
            if s.ndirty:
                s.issued += 1
                for j in range(s.ndirty):
                    s.entries[s.dirty[j]].pending = s.issued
                self.write_groups += 1
                if self.has_store:
                    if self._send():
                        return 2
                else:
                    s.acked = s.issued
            nout = 0
            ndrop = 0
            drops_nf = 0
            held = 0
            tx_bytes = 0
            for i in range(n):
                m = self.rx_mbufs[i]
                p = &self.pkts[i]
                v = self.verdicts[i]
                base = <uint8_t *>m.buf_addr
                if v == QD_FORWARD or v == QD_HOLD:
                    if p.data != base + m.data_off or p.len != m.data_len:
                        if p.data < base or p.len == 0 or p.data + p.len > base + m.buf_len:
                            drops_nf += 1
                            self.drop_mbufs[ndrop] = m
                            ndrop += 1
                            continue
                        m.pkt_len = m.pkt_len - m.data_len + p.len
                        m.data_len = p.len
                        m.data_off = <uint16_t>(p.data - base)
                    pos = s.pos[i]
                    if (v == QD_HOLD or s.changed[i]
                            or (pos >= 0 and s.entries[pos].pending > s.acked)):
                        if s.acked < s.issued:
                            h = (self.held_head + self.held_count) % self.max_held
                            self.held_m[h] = m
                            # its own write group, or its key's last one (FIFO release:
                            # it may still wait behind an older packet of a newer group)
                            if v == QD_HOLD or s.changed[i] or pos < 0:
                                self.held_seq[h] = s.issued
                            else:
                                self.held_seq[h] = s.entries[pos].pending
                            self.held_tsc[h] = t0
                            self.held_count += 1
                            held += 1
                            continue
                    tx_bytes += m.pkt_len
                    self.out_mbufs[nout] = m
                    nout += 1
                else:
                    drops_nf += 1
                    self.drop_mbufs[ndrop] = m
                    ndrop += 1
            self.held_total += held
            if self.held_count > self.max_held_seen:
                self.max_held_seen = self.held_count
            sent = self.emit(self.out_mbufs, nout)
            if sent < nout:
                for i in range(sent, nout):
                    tx_bytes -= self.out_mbufs[i].pkt_len
                rte_pktmbuf_free_bulk(self.out_mbufs + sent, nout - sent)
            if ndrop:
                rte_pktmbuf_free_bulk(self.drop_mbufs, ndrop)
            t1 = rte_rdtsc()
            if self.held_count and s.acked >= s.issued:
                self._release(t1)  # local store (or acks already in): released this batch
            cyc = t1 - t0
            qd_stats_begin(st)
            st.rx_packets += n
            st.rx_bytes += rx_bytes
            st.tx_packets += sent
            st.tx_bytes += tx_bytes
            st.drops_nf += drops_nf
            st.drops_tx += nout - sent
            st.held += held
            st.batches += 1
            st.empty_polls += empty
            st.busy_cycles += cyc
            st.last_tsc = t1
            if cyc > st.max_batch_cycles:
                st.max_batch_cycles = cyc
            st.hist[qd_hist_bucket(cyc)] += 1
            slot = st.sample_head & (QD_STATS_SAMPLES - 1)
            st.samples[slot].tsc = t1
            st.samples[slot].cycles = <uint32_t>(cyc if cyc < 0xffffffffULL else 0xffffffffULL)
            st.samples[slot].pkts = n
            st.sample_head += 1
            qd_stats_end(st)
            empty = 0
            if self.snf.halt:
                return 2
            if max_rx and st.rx_packets >= max_rx:
                return 1
        if empty:
            qd_stats_begin(st)
            st.empty_polls += empty
            st.last_tsc = rte_rdtsc()
            qd_stats_end(st)
        return 0

    def drain(self, double timeout):
        """After the last slice: wait up to ``timeout`` s for outstanding acks and
        release what they free; packets still held then are freed, never sent
        (their state is not known to be in Redis), and counted in ``held_dropped``."""
        import time

        end = time.monotonic() + timeout
        while self.held_count:
            if self.has_store and self.s.acked < self.s.issued:
                if self._poll():
                    break
            if not self._release(rte_rdtsc()):
                if time.monotonic() > end:
                    break
                time.sleep(0.001)
        self.held_dropped += self.held_count
        while self.held_count:
            rte_pktmbuf_free_bulk(&self.held_m[self.held_head], 1)
            self.held_head = (self.held_head + 1) % self.max_held
            self.held_count -= 1

    def held_latencies(self):
        """Cycles from RX to release of the last held packets (at most LAT_RING)."""
        n = min(self.lat_head, LAT_SLOTS)
        return [self.lat[i] for i in range(n)]

    def state_counters(self):
        s = self.s
        return {
            "hits": s.hits, "fetched": s.fetched, "updates": s.updates,
            "cache_full": s.cache_full, "cache_used": rte_hash_count(s.h),
            "fetch_round_trips": self.fetch_round_trips, "fetch_batches": self.fetch_batches,
            "write_groups": self.write_groups, "acked_groups": s.acked,
            "held": self.held_total, "released": self.released,
            "held_now": self.held_count, "held_dropped": self.held_dropped,
            "max_held": self.max_held, "max_held_seen": self.max_held_seen,
            "stalls": self.stalls, "evictions": self.evictions,
            "keys_written": self.resp.keys_written if self.resp != NULL else 0,
            "bytes_sent": self.resp.bytes_sent if self.resp != NULL else 0,
        }
