"""The real redis-server the tests start: durability settings, and each NF's own ACL user."""

from __future__ import annotations

import pytest
import redis

from worker.redis_server import RedisServer, nf_acl_rules


def test_server_has_aof_acl_and_no_default_user(redis_server):
    admin = redis_server.client()
    assert admin.config_get("appendonly") == {"appendonly": "yes"}
    assert admin.config_get("appendfsync") == {"appendfsync": "always"}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_server.port, socket_timeout=5).ping()


def test_nf_user_is_limited_to_its_prefix(redis_server):
    a = redis_server.add_nf_user("nat0-a1")
    b = redis_server.add_nf_user("nat1-b2")
    ra = redis.Redis(port=a.port, username=a.user, password=a.password, socket_timeout=5)
    rb = redis.Redis(port=b.port, username=b.user, password=b.password, socket_timeout=5)
    ra.set(b"nat0-a1:k", b"mine")
    assert ra.mget([b"nat0-a1:k", b"nat0-a1:missing"]) == [b"mine", None]
    rb.set(b"nat1-b2:k", b"theirs")
    # another NF's prefix: refused by Redis itself, for reads and writes alike
    for call in (
        lambda: ra.get(b"nat1-b2:k"),
        lambda: ra.set(b"nat1-b2:k", b"stolen"),
        lambda: ra.mget([b"nat0-a1:k", b"nat1-b2:k"]),
        lambda: ra.delete(b"nat1-b2:k"),
        lambda: ra.get(b"nat0-a1"),  # the prefix without its separator is not its key space
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    # nor listing keys (SCAN/KEYS would show other NFs' key names) or server-wide commands
    refused = [("SCAN", 0), ("KEYS", "*"), ("FLUSHALL",), ("CONFIG", "GET", "dir"), ("ACL", "LIST")]
    for cmd in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            ra.execute_command(*cmd)
    assert rb.get(b"nat1-b2:k") == b"theirs"


def test_users_survive_a_restart(tmp_path):
    srv = RedisServer(tmp_path / "r")
    srv.start()
    try:
        creds = srv.add_nf_user("fw0-c3")
        r = redis.Redis(port=srv.port, username=creds.user, password=creds.password)
        r.set(b"fw0-c3:x", b"1")
        r.close()
        srv.stop(remove=False)
        srv.start()
        r = redis.Redis(port=srv.port, username=creds.user, password=creds.password)
        assert r.get(b"fw0-c3:x") == b"1"  # from the append-only file
        r.close()
    finally:
        srv.stop(remove=True)


def test_prefix_with_glob_characters_is_refused():
    for bad in ("", "a*", "a:b", "a?", "x y"):
        with pytest.raises(ValueError, match="prefix"):
            nf_acl_rules("u", "p", bad)
