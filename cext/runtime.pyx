# cython: language_level=3
"""The NF runtime's burst loop: RX -> NF(batch) -> TX, nogil, one core.

One iteration of :meth:`Runtime.loop`:

1. **RX** ``rte_eth_rx_burst`` into a preallocated mbuf array;
2. **describe** each mbuf as a :c:type:`qd_pkt` (data, len, head/tailroom),
   prefetching the frame's first cache line, in one pass; the verdict
   array already holds ``QD_FORWARD`` (kept so between batches);
3. **NF** ``nf.process(&batch)``: one call per batch, no GIL (a Python NF
   takes the GIL once per batch inside its own ``process``);
4. **sync**: if every verdict is FORWARD (one OR over 8-byte words) and
   the NF is ``in_place`` (it never moves a frame's window), the received
   mbufs go on as they are; otherwise forwarded descriptors are synced back
   into their mbufs (data_off, lengths), dropped and held ones freed, and the
   verdicts restored to FORWARD;
5. **emit** the forwarded mbufs: :meth:`Runtime.emit`.  THIS IS THE SEAM.
   For a single-NF chain (this module) ``emit`` is ``rte_eth_tx_burst`` on the
   TX port and frees what the queue did not take.  A chain's first NF
   replaces it (subclass ``Runtime`` in Cython and override ``emit``; it is
   declared in ``cext/runtime.pxd``) with "copy these frames into the chain
   packet buffer and enqueue their slot offsets on the SPSC ring to NF2",
   returning how many it took; the loop, counters and NF call stay as they
   are.  Later NFs of a chain reuse steps 2-4 over chain-buffer slots, as the
   descriptors carry no DPDK type;
6. **count** once per batch into the shared counter block (``qd_stats``,
   layout in ``cext/src/qd_stats.h`` and docs/dataplane.rst), inside a
   sequence lock, with the batch's TSC cycle count in the histogram and the
   sample ring.  One TSC read per batch: the end of one batch (or of the
   last empty poll) is the start of the next.

:meth:`Runtime.run` runs the loop for a slice of time (or until a packet
count is reached, or the NF sets ``halt``) and returns to Python, which
checks signals and control between slices: Python runs per slice, never per
packet.
"""

import os

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libc.string cimport memset

from cext.dpdk cimport (
    rte_eth_rx_burst,
    rte_eth_tx_burst,
    rte_get_tsc_hz,
    rte_mbuf,
    rte_pktmbuf_free_bulk,
    rte_prefetch0,
    rte_rdtsc,
)
from cext.nf cimport QD_FORWARD, QD_HOLD, NativeNF, qd_batch, qd_pkt


cdef extern from "src/qd_burst.h" nogil:
    int qd_all_forward(const uint8_t *v, unsigned n)

STATS_SIZE = sizeof(qd_stats)
STATS_MAGIC = QD_STATS_MAGIC
STATS_VERSION = QD_STATS_VERSION
MAX_BURST = QD_MAX_BURST


def hist_bucket(uint64_t cycles):
    """The histogram bucket the data core files ``cycles`` under."""
    return qd_hist_bucket(cycles)


def tsc_hz():
    return rte_get_tsc_hz()


cdef class Runtime:
    """Runs ``nf`` between ``rx_port`` and ``tx_port`` (queue 0 each)."""

    def __init__(self, NativeNF nf, int rx_port, int tx_port, stats_buffer, int burst=32,
                 int core=0, int rx_queue=0, int tx_queue=0):
        cdef Py_buffer view
        if not 1 <= burst <= QD_MAX_BURST:
            raise ValueError(f"burst: must be 1..{QD_MAX_BURST}, got {burst}")
        PyObject_GetBuffer(stats_buffer, &view, PyBUF_WRITABLE)
        try:
            if view.len < <Py_ssize_t>sizeof(qd_stats):
                raise ValueError(f"stats buffer: {view.len} bytes, need {sizeof(qd_stats)}")
            self.st = <qd_stats *>view.buf
        finally:
            # The caller keeps the mapping alive (we hold a reference to it).
            PyBuffer_Release(&view)
        self.stats_buffer = stats_buffer
        self.nf = nf
        self.rx_port = rx_port
        self.tx_port = tx_port
        self.rx_queue = rx_queue
        self.tx_queue = tx_queue
        self.burst = burst
        self.pending_empty = 0
        memset(self.verdicts, QD_FORWARD, QD_MAX_BURST)  # kept so between batches
        memset(self.st, 0, sizeof(qd_stats))
        self.st.version = QD_STATS_VERSION
        self.st.size = sizeof(qd_stats)
        self.st.tsc_hz = rte_get_tsc_hz()
        self.st.start_tsc = rte_rdtsc()
        self.st.pid = os.getpid()
        self.st.core = core
        self.st.hist_buckets = QD_STATS_HIST_BUCKETS
        self.st.sample_slots = QD_STATS_SAMPLES
        self.st.state = QD_STATE_INIT
        # magic last: a reader that sees it sees a complete header
        self.st.magic = QD_STATS_MAGIC

    def run(self, double seconds, uint64_t max_rx_packets=0):
        """Run the loop for ``seconds`` (a slice), or until ``max_rx_packets``
        packets were received in total (0: no limit), or the NF halts.

        Returns ``"slice"``, ``"max_packets"`` or ``"halt"``.
        """
        cdef uint64_t deadline = rte_rdtsc() + <uint64_t>(seconds * rte_get_tsc_hz())
        cdef int why
        self.st.state = QD_STATE_RUNNING
        with nogil:
            why = self.loop(deadline, max_rx_packets)
        return ("slice", "max_packets", "halt")[why]

    def stop(self):
        self.st.state = QD_STATE_STOPPED

    def counters(self):
        """This process's own view of the counters (the monitor uses the block)."""
        s = self.st
        return {
            "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes,
            "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
            "drops_nf": s.drops_nf, "drops_tx": s.drops_tx, "held": s.held,
            "batches": s.batches, "empty_polls": s.empty_polls,
            "busy_cycles": s.busy_cycles, "max_batch_cycles": s.max_batch_cycles,
        }

    cdef uint16_t emit(self, rte_mbuf **mbufs, uint16_t n) noexcept nogil:
        """Hand ``n`` forwarded mbufs on; returns how many were taken (the
        loop frees the rest and counts them in ``drops_tx``).  The seam a
        chain's first NF overrides."""
        if n == 0:
            return 0
        return rte_eth_tx_burst(self.tx_port, self.tx_queue, mbufs, n)

    cdef int loop(self, uint64_t deadline, uint64_t max_rx) noexcept nogil:
        cdef qd_stats *st = self.st
        cdef bint in_place = self.nf.in_place
        cdef rte_mbuf **rx = self.rx_mbufs
        cdef rte_mbuf **out
        cdef qd_pkt *pkts = self.pkts
        cdef uint8_t *verdicts = self.verdicts
        cdef uint16_t port = self.rx_port, queue = self.rx_queue, burst = self.burst
        cdef qd_batch batch
        cdef rte_mbuf *m
        cdef qd_pkt *p
        cdef uint8_t *base
        cdef uint8_t *data
        cdef uint16_t n, i, nout, ndrop, sent, off, dlen, blen
        cdef uint64_t t0, t1, rx_bytes, tx_bytes, drops_nf, held, empty = 0
        cdef uint8_t v
        cdef bint moved
        batch.pkts = pkts
        batch.verdicts = verdicts
        # The verdict array is all QD_FORWARD between batches (set up in
        # __cinit__, restored below after a batch that had other verdicts), so
        # there is no preset pass.  One TSC read per batch: the end of one
        # batch (or the last empty poll) is the start of the next.
        t0 = rte_rdtsc()
        while t0 < deadline:
            n = rte_eth_rx_burst(port, queue, rx, burst)
            if n == 0:
                empty += 1
                t0 = rte_rdtsc()
                continue
            # describe and prefetch in one pass (mbuf fields loaded before the
            # descriptor is stored, so the stores do not force reloads)
            rx_bytes = 0
            for i in range(n):
                m = rx[i]
                base = <uint8_t *>m.buf_addr
                off = m.data_off
                dlen = m.data_len
                blen = m.buf_len
                rx_bytes += m.pkt_len
                data = base + off
                rte_prefetch0(data)
                p = &pkts[i]
                p.data = data
                p.len = dlen
                p.headroom = off
                p.tailroom = blen - off - dlen
                p.port = m.port
            batch.count = n
            batch.tsc = t0
            self.nf.process(&batch)
            if qd_all_forward(verdicts, n) and in_place:
                # the common case: everything goes out as received
                out = rx
                nout = n
                ndrop = 0
                drops_nf = 0
                held = 0
                tx_bytes = rx_bytes
            else:
                out = self.out_mbufs
                nout = 0
                ndrop = 0
                drops_nf = 0
                held = 0
                tx_bytes = 0
                for i in range(n):
                    m = rx[i]
                    p = &pkts[i]
                    v = verdicts[i]
                    base = <uint8_t *>m.buf_addr
                    if v == QD_FORWARD:
                        moved = p.data != base + m.data_off or p.len != m.data_len
                        if moved and not in_place:
                            # the NF pushed/popped or trimmed: move the mbuf's window
                            if (p.data < base or p.len == 0
                                    or p.data + p.len > base + m.buf_len):
                                drops_nf += 1  # outside the buffer: refuse to send it
                                self.drop_mbufs[ndrop] = m
                                ndrop += 1
                                continue
                            m.pkt_len = m.pkt_len - m.data_len + p.len
                            m.data_len = p.len
                            m.data_off = <uint16_t>(p.data - base)
                        tx_bytes += m.pkt_len
                        out[nout] = m
                        nout += 1
                    else:
                        if v == QD_HOLD:
                            held += 1
                        else:
                            drops_nf += 1
                        self.drop_mbufs[ndrop] = m
                        ndrop += 1
                memset(verdicts, QD_FORWARD, QD_MAX_BURST)
            sent = self.emit(out, nout)
            if sent < nout:
                for i in range(sent, nout):
                    tx_bytes -= out[i].pkt_len
                rte_pktmbuf_free_bulk(out + sent, nout - sent)
            if ndrop:
                rte_pktmbuf_free_bulk(self.drop_mbufs, ndrop)
            t1 = rte_rdtsc()
            qd_stats_batch(st, n, rx_bytes, sent, tx_bytes, drops_nf, nout - sent, held, empty,
                           t0, t1)
            empty = 0
            t0 = t1
            if self.nf.halt:
                return 2
            if max_rx and st.rx_packets >= max_rx:
                return 1
        if empty:
            qd_stats_idle(st, empty, t0)
        return 0
