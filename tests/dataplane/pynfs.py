"""Python NFs (the slow path) used by the tests, loaded with ``type: python``."""


class DropOddTTL:
    """Drops IPv4 frames with an odd TTL; overwrites byte 0 of the rest's payload
    end with 0xEE to show writes land in the packet (zero copy)."""

    def configure(self, config):
        self.mark = config.get("mark", 0xEE)
        self.seen = 0

    def process(self, packets, verdicts):
        self.seen += len(packets)
        for i, pkt in enumerate(packets):
            if len(pkt) >= 34 and pkt[12:14] == b"\x08\x00" and pkt[22] % 2:
                verdicts[i] = 1  # drop
            else:
                pkt[-1] = self.mark

    def stats(self):
        return {"seen": self.seen}


class Explodes:
    def process(self, packets, verdicts):
        raise ValueError("NF bug on purpose")


class DropTelnet:
    """The example of docs/writing-nfs.rst, verbatim."""

    def configure(self, config):  # optional; config = nf.config
        self.port = config.get("port", 23).to_bytes(2, "big")
        self.dropped = 0

    def process(self, packets, verdicts):
        for i, pkt in enumerate(packets):  # pkt: writable memoryview
            if pkt[12:14] == b"\x08\x00" and pkt[23] == 6 and pkt[36:38] == self.port:
                verdicts[i] = 1  # 0 forward (preset), 1 drop
                self.dropped += 1

    def stats(self):  # optional
        return {"dropped": self.dropped}
