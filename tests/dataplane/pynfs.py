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
