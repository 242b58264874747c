"""How an agent gives its stateful NFs their state store: one Redis ACL user per NF.

The agent holds the store's admin credentials (``--state-redis``,
``--state-admin-password-file``); the NFs never see them.  For every stateful
NF of an instance it prepares (:data:`STATEFUL_NF_TYPES`), it creates an ACL
user of that NF's own, allowed only the keys ``<prefix>:*``
(:func:`worker.redis_server.create_nf_user`), and hands the NF that user, its
password and the address in its ``state:`` section.

The prefix is the chain's NF, not the instance: ``c<chain id>n<position>``.
Every instance of one chain's NF (the one that replaces a failed one, the
ones a scale-out adds) reads and writes the same keys, which is what lets a
new instance find a flow's state in Redis; NFs of other positions or other
chains cannot touch them.  The NAT keeps instances apart by giving each its
own external addresses (the controller assigns them: docs/state.rst).
"""

from __future__ import annotations

import struct
import threading

from worker.redis_server import create_nf_user

STATEFUL_NF_TYPES = ("nat",)


class StateAccessError(RuntimeError):
    pass


def parse_address(text: str) -> tuple[str, int]:
    """``unix:/path/redis.sock`` or ``HOST:PORT`` -> (host or socket path, port)."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: a Unix socket's path must be absolute")
        return path, 0
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: must be HOST:PORT or unix:/PATH")
    return host, int(port)


class StateAccess:
    def __init__(self, address: str, admin_user: str, admin_password: str):
        self.host, self.port = parse_address(address)
        self.admin_user = admin_user
        self.admin_password = admin_password
        self._admin = None
        self._lock = threading.Lock()

    def _client(self):
        import redis

        if self._admin is None:
            where = (
                {"unix_socket_path": self.host}
                if self.host.startswith("/")
                else {"host": self.host, "port": self.port}
            )
            self._admin = redis.Redis(
                username=self.admin_user, password=self.admin_password, socket_timeout=5, **where
            )
        return self._admin

    def check(self) -> None:
        """Reach the store as admin now (the agent refuses to start otherwise)."""
        try:
            self._client().ping()
        except Exception as exc:  # noqa: BLE001 - redis' own classes: say where
            raise StateAccessError(f"state store {self.where}: {exc}") from None

    @property
    def where(self) -> str:
        return f"unix:{self.host}" if self.host.startswith("/") else f"{self.host}:{self.port}"

    def nf_state(self, chain_id: int, position: int, instance: int) -> dict:
        """The ``state:`` section of NF ``position`` of an instance of chain ``chain_id``."""
        prefix = f"c{chain_id}n{position}"
        try:
            with self._lock:
                creds = create_nf_user(
                    self._client(), prefix, self.host, self.port or 6379,
                    user=f"nf-{prefix}-i{instance}",
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            msg = f"state store {self.where}: creating {prefix}'s user: {exc}"
            raise StateAccessError(msg) from None
        return creds.as_config()

    def nat_handover(self, prefix: str, flows: list[tuple], owner=None, home=None) -> list:
        """The NAT mappings of outbound ``flows`` (``(proto, src, dst, sport, dport)``,
        IPv4 addresses as ints): ``(external address, port)`` or None each; with
        ``owner``, that instance is written as each mapping's owner (docs/state.rst,
        *Moving NAT flows*), or 0 for a mapping to ``home``, the owner's own address
        (0: whoever holds the address).  ``SET XX``: a mapping its connection ended
        meanwhile stays deleted."""
        names = [nat_out_key(prefix, *f) for f in flows]
        try:
            with self._lock:
                c = self._client()
                values = c.mget(names)
                out = []
                pipe = c.pipeline(transaction=True)  # all owners written, or none
                for name, v in zip(names, values, strict=True):
                    m = parse_nat_out(v)
                    out.append(m)
                    if m is not None and owner is not None:
                        who = 0 if m[0] == home else owner
                        pipe.set(name, nat_out_value(*m, who), xx=True)
                if owner is not None:
                    pipe.execute()
        except Exception as exc:  # noqa: BLE001 - redis' own classes: say where
            raise StateAccessError(f"state store {self.where}: NAT mappings: {exc}") from None
        return out

    def drop_user(self, chain_id: int, position: int, instance: int) -> None:
        """Remove an instance's NF user once the instance is gone (best effort)."""
        try:
            with self._lock:
                c = self._client()
                c.execute_command("ACL", "DELUSER", f"nf-c{chain_id}n{position}-i{instance}")
                c.execute_command("ACL", "SAVE")
        except Exception:  # noqa: BLE001 - best effort: only its dead NF knew the password
            pass

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


# The NAT's keys and values (cext/nf_nat.pyx): a qd_key is 16 bytes in host (little
# endian) order: a, b (u32), pa, pb (u16), proto, kind (u8), 2 bytes pad.
NAT_KIND_OUT = 1


def nat_out_key(prefix: str, proto: int, src: int, dst: int, sport: int, dport: int) -> bytes:
    """The Redis key of a NAT's ``out`` mapping for an outbound 5-tuple."""
    key = struct.pack("<IIHHBB2x", src, dst, sport, dport, proto, NAT_KIND_OUT)
    return f"{prefix}:{key.hex()}".encode()


def parse_nat_out(value: bytes | None) -> tuple[int, int] | None:
    """``(external address, port)`` of an ``out`` value (8 or 12 bytes), else None."""
    if value is None or len(value) not in (8, 12):
        return None
    addr, port = struct.unpack_from("<IH", value)
    return addr, port


def nat_out_value(addr: int, port: int, owner: int) -> bytes:
    return struct.pack("<IH2xI", addr, port, owner)
