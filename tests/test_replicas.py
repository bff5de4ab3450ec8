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


def test_the_renewal_job_keeps_the_lease_across_polls_longer_than_the_ttl(
    accounts: dict,  # type: ignore[type-arg]
) -> None:
    """With a 60 s poll and a 30 s lease, renewing between ticks keeps the account with its
    holder: the other replica's ticks find it held every time."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one, two = _replicas(kv, clock, "one"), _replicas(kv, clock, "two")
    account, keys = next(iter(accounts.items()))
    assert one.may_tick(account, keys)
    for _ in range(20):  # 20 polls of 60 s, the renewal job every 10 s
        for _ in range(6):
            clock.advance(10)
            one.renew_held()
        assert not two.may_tick(account, keys)
        assert one.may_tick(account, keys)


def test_a_replica_whose_ticks_fail_steps_back_and_another_takes_over(
    accounts: dict,  # type: ignore[type-arg]
) -> None:
    """step_back gives the lease away at once and keeps this replica out for the period."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one, two = _replicas(kv, clock, "one"), _replicas(kv, clock, "two")
    account, keys = next(iter(accounts.items()))
    assert one.may_tick(account, keys)
    one.step_back(account, 120)
    assert two.may_tick(account, keys)
    two.release_all()
    assert not one.may_tick(account, keys)  # resting, even with the lease free
    clock.advance(121)
    assert one.may_tick(account, keys)


def test_an_account_forgotten_by_a_reload_stops_its_running_tick(
    accounts: dict,  # type: ignore[type-arg]
) -> None:
    """After a reload drops the account, a tick still running on it is told to stop, and a
    replica with no keys for an account never claims it."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one = _replicas(kv, clock, "one")
    account, keys = next(iter(accounts.items()))
    assert one.may_tick(account, keys)
    one.forget(set())
    assert not one.still_holds(account)
    assert not one.may_tick(account, ())
