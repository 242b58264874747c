# cython: language_level=3
"""``ipforward``: IPv4 longest-prefix match (``rte_lpm``), next-hop MAC, TTL.

Per packet: parse; drop what is not well-formed IPv4, has TTL <= 1 or matches
no route; otherwise set the destination MAC to the route's next hop (and the
source MAC to ``src_mac`` if configured), decrement the TTL and update the
header checksum incrementally (RFC 1624, eqn. 3).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from cext.dpdk cimport rte_lpm_lookup
from cext.lpm cimport LpmTable
from cext.nf cimport QD_DROP, NativeNF, qd_batch
from cext.pkt cimport QD_PARSE_OK, qd_flow, qd_parse

from worker.nf_tables import parse_ipforward


cdef inline void dec_ttl(uint8_t *ip) noexcept nogil:
    # HC' = ~(~HC + ~m + m'); m = TTL<<8 | proto, m' = m - 0x100, so ~m + m' = 0xfeff.
    cdef uint32_t s = (~((ip[10] << 8) | ip[11])) & 0xffff
    s += 0xfeff
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    s = (~s) & 0xffff
    ip[8] -= 1
    ip[10] = s >> 8
    ip[11] = s & 0xff


cdef class IpForwardNF(NativeNF):
    cdef LpmTable table
    cdef uint8_t *hops          # 6 bytes per next hop index
    cdef uint8_t src_mac[6]
    cdef bint set_src
    cdef readonly unsigned long long no_route, ttl_expired, malformed

    def configure(self, config):
        cdef int idx
        cfg = parse_ipforward(config or {}, self.base_dir)
        self.in_place = True  # rewrites in place: never moves a frame's window
        macs = {}
        routes = []
        for net, depth, mac in cfg.routes:
            routes.append((net, depth, macs.setdefault(mac, len(macs))))
        self.hops = <uint8_t *>malloc(6 * len(macs))
        if self.hops == NULL:
            raise MemoryError()
        for mac, idx in macs.items():
            memcpy(self.hops + 6 * idx, <const char *>mac, 6)
        self.table = LpmTable("qd_ipfwd", routes)
        self.set_src = cfg.src_mac is not None
        if self.set_src:
            memcpy(self.src_mac, <const char *>cfg.src_mac, 6)

    def stats(self):
        return {"no_route": self.no_route, "ttl_expired": self.ttl_expired,
                "malformed": self.malformed}

    def __dealloc__(self):
        free(self.hops)

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef uint16_t i
        cdef qd_flow f
        cdef uint32_t hop
        cdef uint8_t *d
        for i in range(batch.count):
            if qd_parse(&batch.pkts[i], &f) != QD_PARSE_OK:
                self.malformed += 1
                batch.verdicts[i] = QD_DROP
                continue
            d = batch.pkts[i].data
            if d[f.l3_off + 8] <= 1:
                self.ttl_expired += 1
                batch.verdicts[i] = QD_DROP
                continue
            if rte_lpm_lookup(self.table.lpm, f.dst, &hop) != 0:
                self.no_route += 1
                batch.verdicts[i] = QD_DROP
                continue
            memcpy(d, self.hops + 6 * hop, 6)
            if self.set_src:
                memcpy(d + 6, self.src_mac, 6)
            dec_ttl(d + f.l3_off)
