"""TCP connections as crafted frames, for the urlfilter tests and benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from scapy.all import IP, TCP, Ether, raw

CLI_MAC, SRV_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
CLI_IP, SRV_IP = "10.1.0.5", "10.2.0.9"
CLI_ISN, SRV_ISN = 1000, 500_000


@dataclass
class Conn:
    """One connection's frames; ``seg(off, data)`` is client data at stream offset ``off``."""

    sport: int
    dport: int = 80
    cli: str = CLI_IP
    srv: str = SRV_IP
    isn: int = CLI_ISN
    srv_isn: int = SRV_ISN

    def c2s(self, seq: int, flags: str, payload: bytes = b"", ack: int | None = None) -> bytes:
        ack = self.srv_isn + 1 if ack is None else ack
        return raw(
            Ether(src=CLI_MAC, dst=SRV_MAC)
            / IP(src=self.cli, dst=self.srv)
            / TCP(sport=self.sport, dport=self.dport, seq=seq, ack=ack, flags=flags, window=8192)
            / payload
        )

    def s2c(self, seq: int, flags: str, payload: bytes = b"", ack: int | None = None) -> bytes:
        ack = self.isn + 1 if ack is None else ack
        return raw(
            Ether(src=SRV_MAC, dst=CLI_MAC)
            / IP(src=self.srv, dst=self.cli)
            / TCP(sport=self.dport, dport=self.sport, seq=seq, ack=ack, flags=flags, window=8192)
            / payload
        )

    def handshake(self) -> list[bytes]:
        return [
            self.c2s(self.isn, "S", ack=0),
            self.s2c(self.srv_isn, "SA"),
            self.c2s(self.isn + 1, "A"),
        ]

    def seg(self, off: int, data: bytes, flags: str = "PA") -> bytes:
        return self.c2s(self.isn + 1 + off, flags, data)

    def fin(self, off: int) -> list[bytes]:
        return [
            self.c2s(self.isn + 1 + off, "FA"),
            self.s2c(self.srv_isn + 1, "FA", ack=self.isn + 2 + off),
        ]


def request(target: str, host: str = "www.example.com", extra: str = "") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test/1.0\r\n{extra}"
        "Accept: */*\r\n\r\n"
    ).encode()
