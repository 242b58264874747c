# cython: language_level=3
"""Header parsing for native NFs: bounds-checked, inline, nogil.

:func:`qd_parse` reads Ethernet (with at most one 802.1Q/802.1ad tag), IPv4
and the TCP/UDP/SCTP ports of a frame into a :c:type:`qd_flow`.  It never
reads past ``pkt.len`` and rejects what a router must not act on: a frame
shorter than its headers, an IP version other than 4, IHL below 5 or beyond
the frame, a total length shorter than the header or longer than the frame.
Addresses and ports come out in host byte order.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t

from cext.nf cimport qd_pkt


cdef enum qd_parse_result:
    QD_PARSE_OK = 0
    QD_PARSE_NON_IP = 1     # a well-formed frame that is not IPv4 (ARP, IPv6, ...)
    QD_PARSE_BAD = 2        # truncated or malformed


ctypedef struct qd_flow:
    uint32_t src
    uint32_t dst
    uint16_t sport          # 0 unless TCP/UDP/SCTP and the first fragment
    uint16_t dport
    uint8_t proto
    uint8_t has_ports
    uint16_t l3_off         # offset of the IPv4 header in the frame
    uint16_t l4_off         # offset of the L4 header (l3_off + IHL * 4)


cdef inline uint16_t qd_rd16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline uint32_t qd_rd32(const uint8_t *p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline int qd_parse(const qd_pkt *pkt, qd_flow *f) noexcept nogil:
    cdef const uint8_t *d = pkt.data
    cdef uint32_t n = pkt.len
    cdef uint32_t l3 = 14
    cdef uint16_t et
    cdef uint32_t ihl, tot, frag
    if n < 14:
        return QD_PARSE_BAD
    et = qd_rd16(d + 12)
    if et == 0x8100 or et == 0x88a8:
        if n < 18:
            return QD_PARSE_BAD
        et = qd_rd16(d + 16)
        l3 = 18
    if et != 0x0800:
        return QD_PARSE_NON_IP
    if n < l3 + 20:
        return QD_PARSE_BAD
    if (d[l3] >> 4) != 4:
        return QD_PARSE_BAD
    ihl = (d[l3] & 0x0f) * 4
    if ihl < 20 or n < l3 + ihl:
        return QD_PARSE_BAD
    tot = qd_rd16(d + l3 + 2)
    if tot < ihl or l3 + tot > n:
        return QD_PARSE_BAD
    f.proto = d[l3 + 9]
    f.src = qd_rd32(d + l3 + 12)
    f.dst = qd_rd32(d + l3 + 16)
    f.l3_off = <uint16_t>l3
    f.l4_off = <uint16_t>(l3 + ihl)
    f.sport = 0
    f.dport = 0
    f.has_ports = 0
    frag = qd_rd16(d + l3 + 6) & 0x1fff
    if (f.proto == 6 or f.proto == 17 or f.proto == 132) and frag == 0:
        if tot < ihl + 4:
            return QD_PARSE_BAD
        f.sport = qd_rd16(d + l3 + ihl)
        f.dport = qd_rd16(d + l3 + ihl + 2)
        f.has_ports = 1
    return QD_PARSE_OK
