# cython: language_level=3
"""An IPv4 longest-prefix-match table: DPDK's ``rte_lpm``, filled from Python.

Lookups are ``rte_lpm_lookup(table.lpm, ip, &hop)`` from nogil code (an inline
in ``rte_lpm.h``); next hops are 24-bit integers the NF maps to its actions.
"""

from libc.stdint cimport uint32_t

from cext.dpdk cimport SOCKET_ID_ANY, rte_errno, rte_lpm_add, rte_lpm_config, rte_lpm_create
from cext.dpdk cimport rte_lpm_free, rte_lpm_lookup

from cext.eal import EalError

_serial = 0


cdef class LpmTable:
    """``routes`` is a sequence of ``(network:int, depth:int 0..32, next_hop:int)``."""

    def __init__(self, str prefix, routes):
        global _serial
        cdef rte_lpm_config cfg
        # rte_lpm takes depths 1..32: a default route (/0) becomes 0/1 + 128/1, added
        # first so that an explicit /1 still overrides its half.
        expanded = []
        for net, depth, hop in routes:
            if depth == 0:
                expanded[:0] = [(0, 1, hop), (0x80000000, 1, hop)]
            else:
                expanded.append((net, depth, hop))
        long_prefixes = sum(1 for _, depth, _ in expanded if depth > 24)
        cfg.max_rules = max(1024, len(expanded))
        cfg.number_tbl8s = max(256, long_prefixes + 16)
        cfg.flags = 0
        _serial += 1
        self.name = f"{prefix[:16]}_{_serial}"
        self.lpm = rte_lpm_create(self.name.encode(), SOCKET_ID_ANY, &cfg)
        if self.lpm == NULL:
            raise EalError(f"rte_lpm_create({self.name!r}, {len(expanded)} routes)", rte_errno)
        for net, depth, hop in expanded:
            ret = rte_lpm_add(self.lpm, <uint32_t>net, depth, <uint32_t>hop)
            if ret < 0:
                raise EalError(f"rte_lpm_add({net:#010x}/{depth})", -ret)
        self.rules = len(routes)

    def lookup(self, uint32_t ip):
        """The next hop for ``ip`` (host order), or None (for tests and tools)."""
        cdef uint32_t hop
        if rte_lpm_lookup(self.lpm, ip, &hop) == 0:
            return hop
        return None

    def __dealloc__(self):
        if self.lpm != NULL:
            rte_lpm_free(self.lpm)
            self.lpm = NULL
