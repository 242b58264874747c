# cython: language_level=3
"""The single-NF burst loop (see cext/runtime.pyx for the seams)."""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from cext.dpdk cimport rte_mbuf
from cext.nf cimport NativeNF, qd_pkt


cdef extern from "src/qd_stats.h":
    cdef unsigned long long QD_STATS_MAGIC
    cdef int QD_STATS_VERSION
    cdef int QD_STATS_HIST_BUCKETS
    cdef int QD_STATS_SAMPLES
    cdef int QD_STATE_INIT
    cdef int QD_STATE_RUNNING
    cdef int QD_STATE_STOPPED

    cdef struct qd_sample:
        uint64_t tsc
        uint32_t cycles
        uint16_t pkts
        uint16_t pad

    cdef struct qd_stats:
        uint64_t magic
        uint32_t version
        uint32_t size
        uint64_t tsc_hz
        uint64_t start_tsc
        uint32_t pid
        uint32_t core
        uint32_t hist_buckets
        uint32_t sample_slots
        uint64_t state
        uint64_t seq
        uint64_t rx_packets
        uint64_t rx_bytes
        uint64_t tx_packets
        uint64_t tx_bytes
        uint64_t drops_nf
        uint64_t drops_tx
        uint64_t held
        uint64_t batches
        uint64_t empty_polls
        uint64_t busy_cycles
        uint64_t last_tsc
        uint64_t max_batch_cycles
        uint64_t sample_head
        uint64_t hist[128]
        qd_sample samples[1024]

    unsigned qd_hist_bucket(uint64_t c) nogil
    void qd_stats_begin(qd_stats *s) nogil
    void qd_stats_end(qd_stats *s) nogil
    void qd_stats_batch(qd_stats *st, uint16_t n, uint64_t rx_bytes, uint64_t sent,
                        uint64_t tx_bytes, uint64_t drops_nf, uint64_t drops_tx,
                        uint64_t held, uint64_t empty, uint64_t t0, uint64_t t1) nogil
    void qd_stats_idle(qd_stats *st, uint64_t empty, uint64_t tsc) nogil


cdef enum:
    QD_MAX_BURST = 256


cdef class Runtime:
    cdef NativeNF nf
    cdef uint16_t rx_port, rx_queue, tx_port, tx_queue, burst
    cdef qd_stats *st
    cdef object stats_buffer
    cdef rte_mbuf *rx_mbufs[QD_MAX_BURST]
    cdef rte_mbuf *out_mbufs[QD_MAX_BURST]
    cdef rte_mbuf *drop_mbufs[QD_MAX_BURST]
    cdef qd_pkt pkts[QD_MAX_BURST]
    cdef uint8_t verdicts[QD_MAX_BURST]
    cdef uint64_t pending_empty

    cdef uint16_t emit(self, rte_mbuf **mbufs, uint16_t n) noexcept nogil
    cdef int loop(self, uint64_t deadline, uint64_t max_rx) noexcept nogil
