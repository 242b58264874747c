"""Tenants and their bearer tokens, from the file named by the ``tokens_file`` option.

The file (YAML)::

    tokens:
      - {token: "8c1f...long random...", tenant: acme}
      - {token: "41d9...long random...", tenant: ops, admin: true}
      - {token: "77aa...long random...", worker: w1}

A tenant token sees and changes only its tenant's chains; an admin token
sees everything and may use the admin-only endpoints.  A worker token is
the agent of that worker's, good for ``/v1/agents`` only (the REST API
refuses it, and a tenant token cannot open an agent session).  Tokens are compared by
their SHA-256 digest in a dict lookup, so the secrets are not kept around
and lookup time does not depend on how much of a guess matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import yaml

MIN_TOKEN_LEN = 16
_TENANT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class TokensError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Principal:
    tenant: str | None
    admin: bool = False
    worker: str | None = None  # set for an agent's token (then tenant is None)


class Tokens:
    def __init__(self, entries: dict[bytes, Principal]):
        self._by_digest = entries

    def lookup(self, token: str | None) -> Principal | None:
        if not token:
            return None
        return self._by_digest.get(hashlib.sha256(token.encode()).digest())

    def __len__(self):
        return len(self._by_digest)

    def worker_of(self, token: str | None) -> str | None:
        """The worker whose agent holds ``token``, if it is an agent's token."""
        principal = self.lookup(token)
        return principal.worker if principal is not None else None

    def workers(self) -> set[str]:
        return {p.worker for p in self._by_digest.values() if p.worker is not None}


def parse(data, source: str = "<string>") -> Tokens:
    def fail(path, reason):
        raise TokensError(f"{source}: {path}: {reason}")

    if not isinstance(data, dict) or set(data) != {"tokens"}:
        fail("tokens", "the file must be a mapping with exactly one key, tokens")
    items = data["tokens"]
    if not isinstance(items, list) or not items:
        fail("tokens", "must be a non-empty list")
    out: dict[bytes, Principal] = {}
    for i, item in enumerate(items):
        path = f"tokens[{i}]"
        if not isinstance(item, dict):
            fail(path, "must be a mapping {token, tenant, admin}")
        unknown = set(item) - {"token", "tenant", "admin", "worker"}
        if unknown:
            fail(
                f"{path}.{sorted(unknown)[0]}",
                "unknown key (allowed: admin, tenant, token, worker)",
            )
        if ("tenant" in item) == ("worker" in item):
            fail(path, "an entry names exactly one of tenant (a tenant's) or worker (an agent's)")
        token = item.get("token")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LEN:
            fail(f"{path}.token", f"must be a string of at least {MIN_TOKEN_LEN} characters")
        if any(c.isspace() for c in token):
            fail(f"{path}.token", "must not contain white space")
        admin = item.get("admin", False)
        if not isinstance(admin, bool):
            fail(f"{path}.admin", "must be true or false")
        if "worker" in item:
            worker = item["worker"]
            if not isinstance(worker, str) or not _TENANT_RE.match(worker):
                fail(f"{path}.worker", f"{worker!r} is not a worker name")
            if admin:
                fail(f"{path}.admin", "an agent's token cannot be an admin's")
            digest = hashlib.sha256(token.encode()).digest()
            if digest in out:
                fail(f"{path}.token", "duplicate token")
            out[digest] = Principal(None, False, worker)
            continue
        tenant = item.get("tenant")
        if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
            fail(f"{path}.tenant", f"{tenant!r} is not a tenant name (a-z, 0-9, _ or -)")
        digest = hashlib.sha256(token.encode()).digest()
        if digest in out:
            fail(f"{path}.token", "duplicate token")
        out[digest] = Principal(tenant, admin)
    return Tokens(out)


def load(path: str | Path) -> Tokens:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TokensError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TokensError(f"{path}: not valid YAML: {exc}") from None
    return parse(data, str(path))
