# cython: language_level=3
"""Base class of stateful native NFs (see ``cext/state.pxd`` and docs/state.rst)."""

from cext.pkt cimport QD_PARSE_OK, qd_flow, qd_parse


cdef class StatefulNF(NativeNF):
    """A native NF with per-flow state in Redis, cached by the runtime.

    The default key is the packet's 5-tuple (``bidirectional = 1``: the same
    key for both directions, lower address/port first).  Override ``key``
    for another key (the NAT keys inbound packets by their external port).
    """

    def __init__(self, name=None):
        super().__init__(name)
        self.state = NULL
        self.bidirectional = 0

    def restore(self, fetch):
        """Called once by the runtime before the first batch, from Python.

        ``fetch(keys)`` takes a list of :c:type:`qd_key` as 16-byte ``bytes``
        and returns their values from Redis (``bytes`` or ``None``), chunked
        into pipelined MGETs: rebuild local structures from Redis here (the
        NAT marks the ports its mappings hold).  The default does nothing.
        """

    cdef int key(self, const qd_pkt *pkt, qd_key *k) noexcept nogil:
        cdef qd_flow f
        if qd_parse(pkt, &f) != QD_PARSE_OK:
            return 0
        qd_key_init(k)
        k.proto = f.proto
        if self.bidirectional and (f.src > f.dst or (f.src == f.dst and f.sport > f.dport)):
            k.a = f.dst
            k.b = f.src
            k.pa = f.dport
            k.pb = f.sport
        else:
            k.a = f.src
            k.b = f.dst
            k.pa = f.sport
            k.pb = f.dport
        return 1


def key_bytes(uint32_t a, uint32_t b, uint16_t pa, uint16_t pb, uint8_t proto, uint8_t kind=0):
    """The 16 bytes of a :c:type:`qd_key` as Python sees them (tests, restore)."""
    cdef qd_key k
    qd_key_init(&k)
    k.a = a
    k.b = b
    k.pa = pa
    k.pb = pb
    k.proto = proto
    k.kind = kind
    return (<char *>&k)[:sizeof(qd_key)]
