"""The NF runtime's connection to Redis: one MGET per batch, pipelined writes, async acks.

:class:`RedisStore` is what ``cext.stateful.StatefulRuntime`` calls, from
Python, at most once per batch for each of:

* :meth:`fetch`: the keys a batch needs that the local cache lacks, as ONE
  ``MGET`` (one round trip; blocking: the NF cannot run without its state);
* :meth:`send`: the keys a batch changed, as one write group (``MSET`` of the
  set keys and ``DEL`` of the removed ones) written to a second connection
  without waiting for the replies;
* :meth:`poll`: replies read so far on the write connection, without
  blocking (``recv(MSG_DONTWAIT)``): returns how many write groups Redis
  acknowledged since the last call.  Replies come back in order, so the
  runtime releases held packets in order.

A key in Redis is ``<prefix>:<32 hex digits of the 16-byte qd_key>``; the
prefix is the NF instance's own, and its ACL user may touch nothing else
(worker/redis_server.py).  Any error reply (no permission, out of memory, a
read-only replica) raises :class:`StateStoreError`: the runtime stops rather
than release packets whose state is not stored (docs/state.rst).
"""

from __future__ import annotations

import socket
from collections import deque

FETCH_CHUNK = 4096


class StateStoreError(RuntimeError):
    pass


def _resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RedisStore:
    def __init__(
        self, host: str, port: int, user: str, password: str, prefix: str, timeout: float = 5.0
    ):
        import redis

        self.prefix = prefix.encode() + b":"
        self.reader = redis.Redis(
            host=host, port=port, username=user, password=password, socket_timeout=timeout
        )
        self.reader.ping()  # fail early: wrong credentials or no server
        self.wsock = socket.create_connection((host, port), timeout=timeout)
        self.wsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wsock.sendall(_resp(b"AUTH", user.encode(), password.encode()))
        reply = self._read_line_blocking()
        if reply != b"+OK":
            raise StateStoreError(f"state store: AUTH as {user!r} refused: {reply.decode()}")
        # Blocking mode from here: sendall blocks while the kernel buffer is full, and
        # recv(MSG_DONTWAIT) returns at once (with a timeout set, Python would poll first).
        self.wsock.settimeout(None)
        self.groups: deque[int] = deque()  # replies each outstanding write group waits for
        self.partial = 0  # replies received towards the oldest group
        self.buf = b""
        self.round_trips = 0
        self.keys_fetched = 0
        self.keys_written = 0

    def _read_line_blocking(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.wsock.recv(4096)
            if not chunk:
                raise StateStoreError("state store: connection closed")
            data += chunk
        return data[:-2]

    def name(self, key: bytes) -> bytes:
        return self.prefix + key.hex().encode()

    def fetch(self, keys: list[bytes]) -> list[bytes | None]:
        """Values of ``keys`` (qd_key bytes), one MGET: one round trip."""
        self.round_trips += 1
        self.keys_fetched += len(keys)
        try:
            return self.reader.execute_command("MGET", *[self.name(k) for k in keys])
        except Exception as exc:  # noqa: BLE001 - redis' own classes: say which store
            raise StateStoreError(f"state store: MGET of {len(keys)} keys failed: {exc}") from exc

    def fetch_many(self, keys: list[bytes]) -> list[bytes | None]:
        """:meth:`fetch` for any number of keys, in pipelined MGETs of FETCH_CHUNK."""
        out: list[bytes | None] = []
        pipe = self.reader.pipeline(transaction=False)
        for i in range(0, len(keys), FETCH_CHUNK):
            pipe.execute_command("MGET", *[self.name(k) for k in keys[i : i + FETCH_CHUNK]])
        for part in pipe.execute():
            out.extend(part)
        self.round_trips += 1
        return out

    def send(self, sets: list[tuple[bytes, bytes]], dels: list[bytes]) -> None:
        """One write group; :meth:`poll` counts it acknowledged when all its replies are in."""
        cmds, replies = [], 0
        if sets:
            args = [b"MSET"]
            for k, v in sets:
                args += (self.name(k), v)
            cmds.append(_resp(*args))
            replies += 1
        if dels:
            cmds.append(_resp(b"DEL", *[self.name(k) for k in dels]))
            replies += 1
        if not replies:
            replies = 1
            cmds.append(_resp(b"PING"))
        self.keys_written += len(sets) + len(dels)
        try:
            self.wsock.sendall(b"".join(cmds))
        except OSError as exc:
            raise StateStoreError(f"state store: write failed: {exc}") from exc
        self.groups.append(replies)

    def poll(self) -> int:
        """Write groups acknowledged since the last call (never blocks)."""
        try:
            data = self.wsock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise StateStoreError(f"state store: reading acks failed: {exc}") from exc
        if not data:
            raise StateStoreError("state store: connection closed with writes outstanding")
        data = self.buf + data
        lines = data.split(b"\r\n")
        self.buf = lines.pop()  # an incomplete last line, or b""
        done = 0
        for line in lines:
            if line[:1] == b"-":
                raise StateStoreError(f"state store: write refused: {line[1:].decode()}")
            # MSET replies +OK, DEL :<n>, PING +PONG: one line each
            self.partial += 1
            if self.partial == self.groups[0]:
                self.groups.popleft()
                self.partial = 0
                done += 1
        return done

    def close(self) -> None:
        self.reader.close()
        self.wsock.close()
