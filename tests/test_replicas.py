"""Replicas in one process: the account lease decides which daemon ticks an account."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from vault_rotator.daemon.replicas import Replicas
from vault_rotator.policy import load_policies
from vault_rotator.store.memory import MemoryKv
from vault_rotator.testing.clock import FakeClock

EXAMPLES = Path(__file__).resolve().parents[1] / "config"
TTL = 30.0


@pytest.fixture
def accounts() -> dict:  # type: ignore[type-arg]
    return load_policies(EXAMPLES).accounts()


def _replicas(kv: MemoryKv, clock: FakeClock, holder: str) -> Replicas:
    return Replicas(lambda _mount: kv, holder=holder, clock=clock, ttl=TTL)


def test_one_of_two_replicas_ticks_each_account_and_the_other_takes_over_after_expiry(
    accounts: dict,  # type: ignore[type-arg]
) -> None:
    """While one replica holds an account the other skips it; when the holder goes silent
    past the TTL the other takes over."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one, two = _replicas(kv, clock, "one"), _replicas(kv, clock, "two")
    for account, keys in accounts.items():
        assert one.may_tick(account, keys)
        assert not two.may_tick(account, keys)
        assert one.holds(account)
        assert not two.holds(account)
    clock.advance(TTL + 1)
    for account, keys in accounts.items():
        assert two.may_tick(account, keys)
        assert not one.still_holds(account)


def test_shutdown_hands_every_account_over_at_once(accounts: dict) -> None:  # type: ignore[type-arg]
    """release_all gives the leases back: another replica ticks without waiting for a TTL."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one, two = _replicas(kv, clock, "one"), _replicas(kv, clock, "two")
    for account, keys in accounts.items():
        assert one.may_tick(account, keys)
    one.release_all()
    assert all(two.may_tick(account, keys) for account, keys in accounts.items())


def test_a_vault_policy_without_the_lease_path_ticks_unleased_and_says_so_once(
    accounts: dict,  # type: ignore[type-arg]
) -> None:
    """A token generated before HA (no lease path) keeps the daemon ticking, with one warning
    naming the fix, instead of silently never ticking."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock, policy={"nothing/*": ["read"]})
    one = _replicas(kv, clock, "one")
    account, keys = next(iter(accounts.items()))
    with capture_logs() as logs:
        assert one.may_tick(account, keys)
        assert one.may_tick(account, keys)
        assert one.still_holds(account)
    warned = [e for e in logs if e["event"].startswith("account lease denied")]
    assert len(warned) == 1
    assert one.holds(account)
