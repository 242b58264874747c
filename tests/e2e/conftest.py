"""Fixtures of the chain-instance tests (``sched``, ``work``: tests/e2e/chain_fixtures.py)."""

from tests.e2e.chain_fixtures import sched, work  # noqa: F401
