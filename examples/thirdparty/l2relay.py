"""A user-space third-party NF: relays every Ethernet frame from one interface to another.

    python3 l2relay.py IN OUT

Stands for an unmodified vendor binary that does its work in user space: it
knows nothing of Quadrant, it reads frames from ``IN`` and writes them to ``OUT``
with plain AF_PACKET sockets.  Standard library only.
"""

import socket
import sys

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def main() -> int:
    src, dst = sys.argv[1], sys.argv[2]
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    rx.bind((src, 0))
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((dst, 0))
    print(f"relaying {src} -> {dst}", flush=True)
    while True:
        frame, addr = rx.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING:  # what this host sent out of IN itself
            continue
        tx.send(frame)


if __name__ == "__main__":
    sys.exit(main())
