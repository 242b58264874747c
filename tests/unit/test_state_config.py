"""The runtime config's ``state:`` section (pure)."""

from __future__ import annotations

import pytest

from worker.nf_config import parse_config
from worker.nf_errors import NFConfigError

BASE = {
    "name": "nat0",
    "core": 1,
    "ports": {"rx": {"vdev": "net_null0"}},
    "mempool": {"size": 4095},
    "nf": {"type": "nat", "config": {}},
}
REDIS = {"port": 6400, "user": "nf-nat0-a", "password": "pw", "prefix": "nat0-a"}


def state(**over):
    return parse_config({**BASE, "state": {**REDIS, **over}}).state


def test_defaults_and_mempool_bound():
    s = state()
    assert (s.store, s.host, s.port, s.user, s.prefix) == (
        "redis",
        "127.0.0.1",
        6400,
        "nf-nat0-a",
        "nat0-a",
    )
    assert s.max_held == 2047 and s.cache_entries == 65536 and s.drain_s == 1.0
    assert (s.timeout_s, s.retry_s, s.replay_bytes) == (0.5, 0.05, 16 << 20)
    assert parse_config(BASE).state is None


def test_outage_settings():
    s = state(timeout_s=2, retry_s=0.2, replay_bytes=1 << 20)
    assert (s.timeout_s, s.retry_s, s.replay_bytes) == (2.0, 0.2, 1 << 20)


def test_local_store_needs_no_credentials():
    s = parse_config({**BASE, "state": {"store": "local"}}).state
    assert s.store == "local"


def test_password_file(tmp_path):
    (tmp_path / "pw").write_text("secret\n")
    raw = {**BASE, "state": {**REDIS, "password_file": "pw"}}
    raw["state"].pop("password")
    assert parse_config(raw, tmp_path).state.password == "secret"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"store": "memcached"}, "state.store"),
        ({"prefix": "a*b"}, "state.prefix"),
        ({"prefix": "a:b"}, "state.prefix"),
        ({"user": ""}, "state.user"),
        ({"password": ""}, "state.password"),
        ({"max_held": 16}, "state.max_held"),  # less than a batch
        ({"max_held": 3000}, "state.max_held"),  # more than half the mempool
        ({"cache_entries": 10}, "state.cache_entries"),
        ({"timeout_s": 0}, "state.timeout_s"),
        ({"timeout_s": 61}, "state.timeout_s"),
        ({"retry_s": -1}, "state.retry_s"),
        ({"retry_s": 120}, "state.retry_s"),
        ({"replay_bytes": 1000}, "state.replay_bytes"),  # less than 64 KiB
        ({"port": 0}, "state.port"),
        ({"drain_s": -1}, "state.drain_s"),
        ({"password_file": "/nonexistent/pw"}, "state.password_file"),
        ({"colour": "red"}, "state.colour"),
    ],
)
def test_errors_name_the_field(over, field):
    with pytest.raises(NFConfigError) as exc:
        state(**over)
    assert exc.value.field == field
