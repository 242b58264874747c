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
(worker/redis_server.py).  Errors are :class:`StateStoreError`; those that
say Redis cannot be reached *now* (a refused, closed or timed-out connection,
Redis still loading its data after a restart) are ``transient``: the runtime
rides them out, reconnecting (:meth:`RedisStore.reconnect`) and sending its
unacknowledged writes again (cext/statecore.pyx).  Any other (an error reply:
no permission, out of memory, a read-only replica; AUTH refused) stops the
runtime rather than release packets whose state is not stored
(docs/state.rst).
"""

from __future__ import annotations

import socket

FETCH_CHUNK = 4096


class StateStoreError(RuntimeError):
    """A state store failure; ``transient``: Redis could not be reached, try again."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def _transient(exc: BaseException) -> bool:
    """Redis cannot be reached now (redis-py's BusyLoadingError, Redis answering
    -LOADING after a restart, is a ConnectionError)."""
    import redis

    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            OSError))  # fmt: skip


def _resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RedisStore:
    def __init__(
        self, host: str, port: int, user: str, password: str, prefix: str, timeout: float = 0.5
    ):
        """``timeout``: how long a fetch, a connect or the AUTH may wait for Redis
        before the NF takes it as unreachable (the data core waits that long)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.prefix = prefix.encode() + b":"
        self._where = (host, port, user, password, timeout)
        where = {"unix_socket_path": host} if host.startswith("/") else {"host": host, "port": port}
        self.reader = redis.Redis(
            username=user,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # no retries of its own (redis-py's default backs off for seconds): on
            # the data core a failed fetch must come back at once; the runtime
            # retries every state.retry_s while going on with cached flows
            retry=Retry(NoBackoff(), 0),
            **where,
        )
        self.reader.ping()  # fail early: wrong credentials or no server
        self.wsock: socket.socket | None = None
        self._open_write()
        self.round_trips = 0
        self.keys_fetched = 0
        self.reconnects = 0

    def _open_write(self) -> None:
        host, port, user, password, timeout = self._where
        if host.startswith("/"):  # a Unix socket: reachable from any network namespace
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(host)
            except OSError:
                sock.close()
                raise
            sock.settimeout(timeout)
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wsock = sock
        try:
            sock.sendall(_resp(b"AUTH", user.encode(), password.encode()))
            reply = self._read_line_blocking()
        except OSError:
            self.close_write()
            raise
        if reply != b"+OK":
            self.close_write()
            raise StateStoreError(
                f"state store: AUTH as {user!r} refused: {reply.decode(errors='replace')}",
                transient=reply.startswith(b"-LOADING"),
            )
        # Blocking mode from here: send blocks while the kernel buffer is full, and
        # recv(MSG_DONTWAIT) returns at once (the runtime's C code uses the descriptor).
        sock.settimeout(None)

    def close_write(self) -> None:
        """Drop the write connection (Redis lost: :meth:`reconnect` opens another)."""
        if self.wsock is not None:
            self.wsock.close()
            self.wsock = None

    def reconnect(self) -> int:
        """A new write connection once Redis answers again (the read side reconnects
        by itself); returns its descriptor.  :class:`StateStoreError`, ``transient``
        while Redis cannot be reached yet."""
        self.close_write()
        try:
            self.reader.ping()
            self._open_write()
        except StateStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - redis' own classes and OSError: say which
            raise StateStoreError(
                f"state store: reconnect failed: {exc}", transient=_transient(exc)
            ) from exc
        self.reconnects += 1
        return self.wsock.fileno()

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
            raise StateStoreError(
                f"state store: MGET of {len(keys)} keys failed: {exc}", transient=_transient(exc)
            ) from exc

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
        self.close_write()
