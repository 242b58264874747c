# cython: language_level=3
"""Example native NF for vendors (docs/writing-nfs.rst walks through it).

``PortBlockNF`` drops TCP and UDP packets to the destination ports in its
config, forwards everything else, and counts both.  Config::

    nf:
      type: native
      class: cext.nf_example:PortBlockNF
      config: {ports: [23, 445]}
"""

from libc.stdint cimport uint8_t, uint16_t
from libc.string cimport memset

from cext.nf cimport QD_DROP, NativeNF, qd_batch
from cext.pkt cimport QD_PARSE_BAD, QD_PARSE_OK, qd_flow, qd_parse

from cext.nf import NFConfigError


cdef class PortBlockNF(NativeNF):
    cdef uint8_t blocked[65536]          # 1 = drop this destination port
    cdef readonly unsigned long long dropped, passed

    def configure(self, config):
        # Runs once, from Python, before the first batch: validate, build tables.
        # This NF only sets verdicts, never moves a frame's data/len: saying so
        # lets the runtime skip checking every descriptor after process().
        self.in_place = True
        ports = (config or {}).get("ports")
        if not isinstance(ports, list) or not ports:
            raise NFConfigError("config.ports", "must be a non-empty list of port numbers")
        memset(self.blocked, 0, sizeof(self.blocked))
        for i, p in enumerate(ports):
            if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
                raise NFConfigError(f"config.ports[{i}]", f"not a port number: {p!r}")
            self.blocked[p] = 1

    def stats(self):
        # Read from Python between slices; shows up in the runtime's summary.
        return {"dropped": self.dropped, "passed": self.passed}

    cdef void process(self, qd_batch *batch) noexcept nogil:
        # Runs on the data core for every batch; no GIL, no Python objects.
        cdef uint16_t i
        cdef qd_flow f
        cdef int r
        for i in range(batch.count):
            r = qd_parse(&batch.pkts[i], &f)
            if r == QD_PARSE_BAD:
                batch.verdicts[i] = QD_DROP          # never act on a malformed header
                self.dropped += 1
            elif r == QD_PARSE_OK and f.has_ports and (f.proto == 6 or f.proto == 17) \
                    and self.blocked[f.dport]:
                batch.verdicts[i] = QD_DROP
                self.dropped += 1
            else:
                self.passed += 1                     # verdicts start as QD_FORWARD
