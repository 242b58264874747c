# cython: language_level=3
"""Example stateful native NF: tags every packet with its flow's number (docs/state.rst).

The first packet of a flow the store does not know draws the next number
and stores it (``qd_state_update``: the runtime holds that packet until
Redis acknowledged the write); every packet of the flow, in this instance
or in any later one with the same key prefix, gets the stored number in
the last four bytes of its Ethernet source MAC.  Config::

    nf:
      type: native
      class: cext.nf_flowtag:FlowTagNF
      config: {first: 1, bidirectional: false}
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from cext.nf cimport QD_DROP, qd_batch
from cext.state cimport (
    StatefulNF,
    qd_state,
    qd_state_get,
    qd_state_update,
    qd_val,
)

from cext.nf import NFConfigError


cdef class FlowTagNF(StatefulNF):
    cdef uint32_t next_id
    cdef readonly uint64_t new_flows, known_packets, no_key, errors

    def configure(self, config):
        config = dict(config or {})
        first = config.pop("first", 1)
        if isinstance(first, bool) or not isinstance(first, int) or not 0 < first < 1 << 32:
            raise NFConfigError("config.first", f"must be an integer 1..2^32-1, got {first!r}")
        bidi = config.pop("bidirectional", False)
        if not isinstance(bidi, bool):
            raise NFConfigError("config.bidirectional", f"must be true or false, got {bidi!r}")
        if config:
            raise NFConfigError(f"config.{sorted(config)[0]}", "unknown option")
        self.next_id = first
        self.bidirectional = bidi

    def stats(self):
        return {"new_flows": self.new_flows, "known_packets": self.known_packets,
                "no_key": self.no_key, "errors": self.errors}

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef qd_state *s = self.state
        cdef const qd_val *v
        cdef uint16_t i
        cdef uint32_t tag
        cdef uint8_t *d
        for i in range(batch.count):
            if s.pos[i] < 0:           # no key (not IPv4 or malformed): pass it untagged
                self.no_key += 1
                continue
            v = qd_state_get(s, i)
            if v == NULL or v.len != 4:
                tag = self.next_id
                if qd_state_update(s, i, &s.entries[s.pos[i]].key, &tag, 4) != 0:
                    batch.verdicts[i] = QD_DROP
                    self.errors += 1
                    continue
                self.next_id += 1
                self.new_flows += 1
            else:
                memcpy(&tag, v.data, 4)
                self.known_packets += 1
            d = batch.pkts[i].data
            d[8] = <uint8_t>(tag >> 24)
            d[9] = <uint8_t>(tag >> 16)
            d[10] = <uint8_t>(tag >> 8)
            d[11] = <uint8_t>tag
