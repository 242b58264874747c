# cython: language_level=3
"""The basic NFs without tables: ``empty`` (MAC swap) and ``tunnel`` (VLAN push)."""

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memmove

from cext.dpdk cimport rte_lpm_lookup
from cext.lpm cimport LpmTable
from cext.nf cimport QD_DROP, NativeNF, qd_batch, qd_pkt
from cext.pkt cimport QD_PARSE_BAD, QD_PARSE_OK, qd_flow, qd_parse

from worker.nf_tables import parse_tunnel


cdef extern from "src/qd_macswap.h" nogil:
    void qd_macswap(uint8_t *d, uint16_t len)


cdef class EmptyNF(NativeNF):
    """Swaps source and destination MAC; drops frames shorter than 14 bytes."""

    def __init__(self, name=None):
        super().__init__(name)
        self.in_place = True

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef qd_pkt *pkts = batch.pkts
        cdef uint16_t i, n = batch.count
        for i in range(n):
            if pkts[i].len < 14:
                batch.verdicts[i] = QD_DROP
            else:
                qd_macswap(pkts[i].data, pkts[i].len)


cdef inline bint push_vlan(qd_pkt *p, uint16_t tci) noexcept nogil:
    if p.headroom < 4:
        return False
    memmove(p.data - 4, p.data, 12)
    p.data -= 4
    p.len += 4
    p.headroom -= 4
    p.data[12] = 0x81
    p.data[13] = 0x00
    p.data[14] = tci >> 8
    p.data[15] = tci & 0xff
    return True


cdef class TunnelNF(NativeNF):
    """Pushes an 802.1Q tag: a fixed TCI, or one chosen by destination prefix.

    Malformed IPv4 frames are dropped.  With ``by_dst``, non-IPv4 frames and
    destinations without a matching prefix get ``default_vlan`` or, without
    one, leave untagged.
    """

    cdef LpmTable table
    cdef int fixed_tci     # -1: by destination
    cdef int default_tci   # -1: untagged

    def configure(self, config):
        cfg = parse_tunnel(config or {})
        self.fixed_tci = -1 if cfg.fixed_tci is None else cfg.fixed_tci
        self.default_tci = -1 if cfg.default_tci is None else cfg.default_tci
        self.table = LpmTable("qd_tunnel", cfg.routes) if cfg.routes else None

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef uint16_t i
        cdef qd_flow f
        cdef int r, tci
        cdef uint32_t hop
        for i in range(batch.count):
            r = qd_parse(&batch.pkts[i], &f)
            if r == QD_PARSE_BAD:
                batch.verdicts[i] = QD_DROP
                continue
            tci = self.fixed_tci
            if tci < 0:
                tci = self.default_tci
                if r == QD_PARSE_OK and rte_lpm_lookup(self.table.lpm, f.dst, &hop) == 0:
                    tci = hop
            if tci >= 0 and not push_vlan(&batch.pkts[i], <uint16_t>tci):
                batch.verdicts[i] = QD_DROP
