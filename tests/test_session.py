"""Leases on the state record, against a real Vault."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from vault_rotator.engine.session import Session, StateStore
from vault_rotator.errors import LeaseHeldError, LeaseLostError
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer


@pytest.fixture
def store(vault: VaultServer) -> Iterator[StateStore]:
    """A state store under a fresh prefix."""
    conn = VaultConnection(vault.addr, vault.token)
    yield StateStore(conn.kv("secret"), f"s-{uuid.uuid4().hex}")
    conn.close()


def test_sleep_until_never_lets_the_lease_run_out(store: StateStore) -> None:
    """Waiting far longer than the TTL, the lease always outlives each sleep."""
    clock = FakeClock()
    session = Session.acquire(store, "e", "k", holder="h", clock=clock, ttl=30)
    lapses: list[float] = []

    def sleep(seconds: float) -> None:
        if session.expires_at < clock() + seconds:
            lapses.append(clock())
        clock.advance(seconds)

    session.sleep_until(clock() + 200, sleep)
    assert lapses == []
    assert session.expires_at > clock()


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(store: StateStore) -> None:
    """After expiry another process takes the lease; the first one's next save fails."""
    clock = FakeClock()
    first = Session.acquire(store, "e", "k", holder="a", clock=clock, ttl=30)
    with pytest.raises(LeaseHeldError, match="held by a"):
        Session.acquire(store, "e", "k", holder="b", clock=clock, ttl=30)
    clock.advance(31)
    second = Session.acquire(store, "e", "k", holder="b", clock=clock, ttl=30)
    assert second.record.fence == first.record.fence + 1
    with pytest.raises(LeaseLostError):
        first.save(first.record)
    second.release()
    assert store.read("e", "k")[0].lease is None


def test_hold_renews_a_running_low_lease_and_keeps_the_hand_off_it_names(
    store: StateStore,
) -> None:
    """hold() before a side effect renews a lease with little left (a paused process thus
    meets its loss before writing) and keeps the lease's pending_attempt, which ends it once
    the value is saved; with time left it writes nothing."""
    clock = FakeClock()
    session = Session.acquire(store, "e", "k", holder="h", clock=clock, ttl=5)
    session.before_provider_write("create", "name.1", 1.0, hand_off_at=1)
    writes = session.writes
    session.hold()
    assert session.writes == writes  # a fresh lease: no I/O
    clock.advance(3)
    session.hold()
    assert session.writes == writes + 1
    lease = store.read("e", "k")[0].lease
    assert lease is not None
    assert lease.pending_attempt == 1
    session.handed_off()  # the value is saved: the turn ends (asserted the hand-off is named)


def test_a_slow_write_before_a_create_keeps_the_hand_off_it_names(store: StateStore) -> None:
    """'About to create' takes long to write (a slow or rate-limiting Vault: 9 s of a 30 s TTL):
    the renewal right after it keeps the lease's pending_attempt, so the pass hands the lease
    off once the value is saved (it renewed without it, and the hand-off failed an assertion:
    a traceback from `rotate`, a failed key in the daemon)."""
    clock = FakeClock()
    session = Session.acquire(store, "e", "k", holder="h", clock=clock, ttl=30)
    real = store.kv.write

    def slow(path: str, data: Any, *, cas: int) -> int:
        version = real(path, data, cas=cas)
        clock.advance(9)  # the answer came back late
        return version

    store.kv.write = slow  # type: ignore[method-assign]
    session.before_provider_write("create", "name.1", 20.0, hand_off_at=1)  # a call's worst
    lease = store.read("e", "k")[0].lease
    assert lease is not None
    assert lease.pending_attempt == 1
    session.handed_off()
