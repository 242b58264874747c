"""The NF runtime's two connections to Redis, authenticated as the NF's own ACL user.

* the *read* connection (redis-py): :meth:`RedisStore.fetch`, called by
  ``cext.stateful.StatefulRuntime`` from Python once per batch that has
  misses, asks for all of them in ONE ``MGET`` (one round trip; blocking: the
  NF cannot run without its state); :meth:`fetch_many` for the NF's
  ``restore`` at start;
* the *write* connection (a plain socket, :attr:`wsock`): after ``AUTH`` here
  the runtime drives it from C without the GIL (``cext/src/qd_resp.h``): one
  write group per batch with changes (``MSET`` of the set keys, ``DEL`` of
  the removed ones), sent without waiting, replies read with
  ``recv(MSG_DONTWAIT)`` at the next loop turns.  Replies come back in
  order, so held packets are released in order.

A key in Redis is ``<prefix>:<32 hex digits of the 16-byte qd_key>``; the
prefix is the NF instance's own, and its ACL user may touch nothing else
(worker/redis_server.py).  Any error (an error reply: no permission, out of
memory, a read-only replica; a closed connection) is a
:class:`StateStoreError`: the runtime stops rather than release packets
whose state is not stored (docs/state.rst).
"""

from __future__ import annotations

import socket

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
        where = {"unix_socket_path": host} if host.startswith("/") else {"host": host, "port": port}
        self.reader = redis.Redis(username=user, password=password, socket_timeout=timeout, **where)
        self.reader.ping()  # fail early: wrong credentials or no server
        if host.startswith("/"):  # a Unix socket: reachable from any network namespace
            self.wsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.wsock.settimeout(timeout)
            self.wsock.connect(host)
        else:
            self.wsock = socket.create_connection((host, port), timeout=timeout)
            self.wsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wsock.sendall(_resp(b"AUTH", user.encode(), password.encode()))
        reply = self._read_line_blocking()
        if reply != b"+OK":
            raise StateStoreError(f"state store: AUTH as {user!r} refused: {reply.decode()}")
        # Blocking mode from here: send blocks while the kernel buffer is full, and
        # recv(MSG_DONTWAIT) returns at once (the runtime's C code uses the descriptor).
        self.wsock.settimeout(None)
        self.round_trips = 0
        self.keys_fetched = 0

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

    def close(self) -> None:
        self.reader.close()
        self.wsock.close()
