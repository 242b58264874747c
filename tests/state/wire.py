"""A test's end of a veth pair, run inside the test's network namespace.

``python -m tests.state.wire IFACE`` opens a raw packet socket on IFACE and
answers one JSON command per stdin line with one JSON line:

``{"send": [hex frames]}``
    sends them, in order; answers ``{"sent": n}``;
``{"collect": n, "timeout": s}``
    waits until ``n`` frames arrived since the last collect (or ``timeout``
    seconds passed, or with ``n`` 0: ``timeout`` of quiet), and answers
    ``{"got": [hex frames]}`` in arrival order.

Frames the socket sends itself are not collected.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def main(iface: str) -> int:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    got: list[str] = []
    cond = threading.Condition()

    def rx() -> None:
        while True:
            data, addr = s.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            with cond:
                got.append(data.hex())
                cond.notify_all()

    threading.Thread(target=rx, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if "send" in cmd:
            for f in cmd["send"]:
                s.send(bytes.fromhex(f))
            print(json.dumps({"sent": len(cmd["send"])}), flush=True)
        elif "collect" in cmd:
            want, timeout = cmd["collect"], cmd.get("timeout", 5.0)
            end = time.monotonic() + timeout
            with cond:
                while (want == 0 or len(got) < want) and time.monotonic() < end:
                    before = len(got)
                    cond.wait(min(0.2, max(0.0, end - time.monotonic())))
                    if want == 0 and len(got) == before:
                        break  # quiet for a while: nothing more is coming
                out = got[:]
                got.clear()
            print(json.dumps({"got": out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
