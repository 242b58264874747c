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

The state steps (4, 6, 7) are :class:`cext.statecore.StateCore`'s, shared with
the chain stage loop, and so is riding out a Redis outage (cached flows go on,
writes are kept and sent again on reconnect, packets whose state cannot be
fetched are dropped); what is this module's is the loop and its held mbufs.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

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
    Runtime,
    qd_stats,
    qd_stats_batch,
    qd_stats_begin,
    qd_stats_end,
    qd_stats_idle,
)
from cext.state cimport StatefulNF, qd_state
from cext.statecore cimport LAT_SLOTS, QD_NO_HOLD, StateCore

LAT_RING = LAT_SLOTS


cdef class StatefulRuntime(Runtime):
    """Runs a :class:`cext.state.StatefulNF` with its state in ``store``.

    ``store`` is a :class:`worker.state_store.RedisStore` (or ``None``: state
    kept only in the local cache, every write acknowledged at once: the
    benchmark's baseline).  ``max_held`` bounds the held packets (at least
    one batch); ``cache_entries`` sizes the local cache.
    """

    cdef StatefulNF snf
    cdef StateCore core
    cdef qd_state *s
    cdef uint32_t max_held, held_head, held_count
    cdef rte_mbuf **held_m
    cdef uint64_t *held_seq
    cdef uint64_t *held_tsc
    cdef uint32_t *lat
    cdef uint64_t lat_head
    cdef rte_mbuf *rel_mbufs[QD_MAX_BURST]
    # counters
    cdef uint64_t held_total, released, held_dropped, stalls, max_held_seen

    def __init__(self, StatefulNF nf, int rx_port, int tx_port, stats_buffer, store=None,
                 int burst=32, int core=0, int max_held=4096, int cache_entries=65536,
                 double retry_s=0.05, int replay_bytes=16 << 20):
        super().__init__(nf, rx_port, tx_port, stats_buffer, burst=burst, core=core)
        if max_held < burst:
            raise ValueError(f"state.max_held: must be at least the batch ({burst}): {max_held}")
        self.snf = nf
        self.max_held = max_held
        self.held_m = <rte_mbuf **>PyMem_Malloc(max_held * sizeof(rte_mbuf *))
        self.held_seq = <uint64_t *>PyMem_Malloc(max_held * sizeof(uint64_t))
        self.held_tsc = <uint64_t *>PyMem_Malloc(max_held * sizeof(uint64_t))
        self.lat = <uint32_t *>PyMem_Malloc(LAT_SLOTS * sizeof(uint32_t))
        if not (self.held_m and self.held_seq and self.held_tsc and self.lat):
            raise MemoryError()
        self.core = StateCore(nf, store, cache_entries, retry_s, replay_bytes)
        self.s = self.core.s

    @property
    def error(self):
        return self.core.error

    def __dealloc__(self):
        if self.held_m != NULL and self.held_count:
            # packets still held at teardown: never acknowledged, never sent
            for i in range(self.held_count):
                rte_pktmbuf_free_bulk(&self.held_m[(self.held_head + i) % self.max_held], 1)
        PyMem_Free(self.held_m)
        PyMem_Free(self.held_seq)
        PyMem_Free(self.held_tsc)
        PyMem_Free(self.lat)

    # -- data core -----------------------------------------------------------------------

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
        self.s.unheld += n
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
        cdef uint8_t *base
        cdef uint16_t n, i, nout, ndrop, sent
        cdef uint64_t t0, t1, rx_bytes, tx_bytes, drops_nf, held, empty = 0, q
        cdef uint32_t h
        cdef uint8_t v
        batch.pkts = self.pkts
        batch.verdicts = self.verdicts
        while True:
            t0 = rte_rdtsc()
            if t0 >= deadline:
                break
            if self.core.poll():
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
            # keys (cache lookups, misses fetched in one round trip), the NF, and the
            # batch's writes as one group; packets whose state Redis could not give
            # come back dropped
            memset(self.verdicts, QD_FORWARD, n)
            batch.count = n
            batch.tsc = t0
            if self.core.run(&batch):
                return 2
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
                    q = self.core.hold_seq(i, v)
                    if q != QD_NO_HOLD:
                        h = (self.held_head + self.held_count) % self.max_held
                        self.held_m[h] = m
                        self.held_seq[h] = q
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
            qd_stats_batch(st, n, rx_bytes, sent, tx_bytes, drops_nf, nout - sent, held, empty,
                           t0, t1)
            empty = 0
            if self.snf.halt:
                return 2
            if max_rx and st.rx_packets >= max_rx:
                return 1
        if empty:
            qd_stats_idle(st, empty, rte_rdtsc())
        return 0

    def drain(self, double timeout):
        """After the last slice: wait up to ``timeout`` s for outstanding acks and
        release what they free; packets still held then are freed, never sent
        (their state is not known to be in Redis), and counted in ``held_dropped``."""
        import time

        end = time.monotonic() + timeout
        while self.held_count:
            if self.core.poll():
                break
            if not self._release(rte_rdtsc()):
                if time.monotonic() > end:
                    break
                time.sleep(0.001)
        self.held_dropped += self.held_count
        self.s.unheld += self.held_count
        while self.held_count:
            rte_pktmbuf_free_bulk(&self.held_m[self.held_head], 1)
            self.held_head = (self.held_head + 1) % self.max_held
            self.held_count -= 1

    def held_latencies(self):
        """Cycles from RX to release of the last held packets (at most LAT_RING)."""
        n = min(self.lat_head, LAT_SLOTS)
        return [self.lat[i] for i in range(n)]

    def state_counters(self):
        out = self.core.counters()
        out.update({
            "held": self.held_total, "released": self.released,
            "held_now": self.held_count, "held_dropped": self.held_dropped,
            "max_held": self.max_held, "max_held_seen": self.max_held_seen,
            "stalls": self.stalls,
        })
        return out
