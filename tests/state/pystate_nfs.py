"""Python stateful NFs for the tests (the slow path of the state API)."""

from __future__ import annotations

import struct


class PyFlowTag:
    """cext.nf_flowtag in Python: a number per flow, stored once, stamped into the MAC."""

    stateful = True

    def configure(self, config):
        self.next = config.get("first", 1)
        self.new = 0

    def process(self, packets, verdicts, state):
        for i, pkt in enumerate(packets):
            key = state.key(i)
            if key is None:
                continue
            v = state.get(i)
            if v is None:
                v = struct.pack("<I", self.next)
                state.update(key, v, pkt=i)  # packet i waits for Redis
                self.next += 1
                self.new += 1
            pkt[8:12] = struct.unpack("<I", v)[0].to_bytes(4, "big")

    def stats(self):
        return {"new_flows": self.new}


class PyDstCounter:
    """Own key function: one key per destination address; counts its packets in the
    state (every packet changes it: every packet is held)."""

    stateful = True

    def key(self, pkt):
        if len(pkt) < 34 or pkt[12:14] != b"\x08\x00":
            return None
        return bytes(pkt[30:34]) + bytes(12)

    def process(self, packets, verdicts, state):
        for i in range(len(packets)):
            key = state.key(i)
            if key is None:
                verdicts[i] = 1
                continue
            n = int.from_bytes(state.get(i) or b"\0", "little") + 1
            state.update(key, n.to_bytes(4, "little"), pkt=i)
