"""Leases that cannot be held forever (issue 20 item 5): a forged, corrupt or abandoned account
lease is taken over once it has stayed unchanged past its capped term; one that keeps
renewing, of whatever schema, is left alone; a replica says when an account has no holder
that ticks."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from vault_rotator.engine.account_lease import (
    NEWER_EXPIRED,
    NOT_RENEWED,
    AccountLeases,
    judge,
    lease_path,
)
from vault_rotator.policy import Account
from vault_rotator.ports.kv import KvStore
from vault_rotator.store.memory import MemoryKv
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

EXAMPLES = Path(__file__).resolve().parents[1] / "config"
TTL = 30.0
CAP = 10 * TTL  # the longest a lease may stay unchanged and still be respected
POLL = 5.0
ACCOUNT = Account(
    base_url="https://arouter.example", kv_mount="secret", management_key_path="ops/admin"
).lease_id

# What someone with write on the state prefix can leave at a lease path: the three
# records, none of which any replica renews.
FORGED: dict[str, dict[str, Any]] = {
    "expires_at 1e308": {
        "schema": 1,
        "account": "acct",
        "holder": "mallory",
        "fence": 7,
        "expires_at": 1e308,
        "renewed_at": 0,
    },
    "schema 99": {"schema": 99, "holder": "future", "fence": 7, "shape": "unknown"},
    "no schema": {"holder": "mallory", "expires_at": "never", "fence": 1e308},
}
FENCE_AFTER = {"expires_at 1e308": 8, "schema 99": 8, "no schema": 1}


def _leases(kv: KvStore, clock: FakeClock, name: str, prefix: str = "rot") -> AccountLeases:
    return AccountLeases(kv, (prefix,), ACCOUNT, "acct", holder=name, clock=clock, ttl=TTL)


def _stored(kv: KvStore, prefix: str = "rot") -> dict[str, Any]:
    got = kv.read(lease_path(prefix, ACCOUNT))
    assert got is not None
    return dict(got.data)


def _first_held(leases: AccountLeases, clock: FakeClock, until: float) -> float | None:
    """Poll every POLL seconds until ``until`` seconds from now; when it was first held."""
    start = clock()
    while clock() - start <= until:
        if leases.hold():
            return clock() - start
        clock.advance(POLL)
    return None


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_forged_lease_is_taken_over_once_its_capped_term_has_passed_and_not_before(
    case: str,
) -> None:
    """A record nobody renews is left alone for ten local TTLs from when this replica first
    saw it, then taken over at the next poll, with a fence above the record's own where that
    one is readable, whatever its expires_at or schema says."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    kv.write(lease_path("rot", ACCOUNT), FORGED[case], cas=0)
    one = _leases(kv, clock, "one")
    taken = _first_held(one, clock, until=CAP + 3 * POLL)
    assert taken == CAP + POLL  # left alone through CAP itself; taken at the poll after
    stored = _stored(kv)
    assert (stored["holder"], stored["fence"], stored["schema"]) == ("one", FENCE_AFTER[case], 1)
    assert stored["expires_at"] == clock() + TTL
    clock.advance(TTL)
    assert one.hold()  # and kept as any lease is


def test_a_forged_lease_is_taken_over_on_a_real_vault(vault: VaultServer) -> None:
    """On OpenBao: expires_at 1e308 is respected for the capped term, then taken over."""
    clock = FakeClock()
    conn = VaultConnection(vault.addr, vault.token)
    try:
        kv = conn.kv("secret")
        prefix = f"forged-{uuid.uuid4().hex[:8]}"
        kv.write(lease_path(prefix, ACCOUNT), FORGED["expires_at 1e308"], cas=0)
        one = _leases(kv, clock, "one", prefix)
        assert _first_held(one, clock, until=CAP + 3 * POLL) == CAP + POLL
        assert (_stored(kv, prefix)["holder"], _stored(kv, prefix)["fence"]) == ("one", 8)
    finally:
        conn.close()


def test_the_term_a_lease_states_is_respected_up_to_the_cap_whatever_its_clock_says() -> None:
    """A record stating a 3-TTL term (a replica with a longer TTL) whose clock runs an hour
    ahead, and which stops being renewed, is taken over after its own term as this replica
    counts it, not after the local TTL, nor the cap, nor the hour its expires_at claims."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    ahead = clock() + 3600
    record = dict(FORGED["expires_at 1e308"], renewed_at=ahead, expires_at=ahead + 3 * TTL)
    kv.write(lease_path("rot", ACCOUNT), record, cas=0)
    assert _first_held(_leases(kv, clock, "one"), clock, until=CAP) == 3 * TTL + POLL


def test_a_huge_or_odd_fence_neither_crashes_nor_wraps() -> None:
    """A fence beyond 2**53 - 1, negative or fractional makes the record malformed: it is taken
    over after the cap and the fence starts again at 1; the largest readable one is followed
    by 1 too, never by a number a JSON reader rounds."""
    for fence in (2**60, -3, 7.5, 2**53 - 1):
        clock = FakeClock()
        kv = MemoryKv(clock=clock)
        record = dict(FORGED["expires_at 1e308"], fence=fence)
        kv.write(lease_path("rot", ACCOUNT), record, cas=0)
        assert _first_held(_leases(kv, clock, "one"), clock, until=CAP + POLL) == CAP + POLL
        assert _stored(kv)["fence"] == 1, fence


NOW = 1_800_000_000.0
LIVE = {"schema": 1, "account": "a", "holder": "two", "fence": 3, "renewed_at": NOW - 10}


@pytest.mark.parametrize(
    ("data", "unchanged_for", "take", "why", "unrenewed"),
    [
        (dict(LIVE, expires_at=NOW + 20), 10, False, None, False),
        (dict(LIVE, expires_at=NOW - 1), 0, True, None, False),
        (dict(LIVE, expires_at=NOW + 20), TTL + 1, True, NOT_RENEWED, True),
        (FORGED["expires_at 1e308"], TTL + 1, False, None, True),
        (FORGED["expires_at 1e308"], CAP, False, None, True),
        (FORGED["expires_at 1e308"], CAP + 1, True, NOT_RENEWED, True),
        (FORGED["no schema"], TTL, False, None, False),
        (FORGED["no schema"], CAP + 1, True, NOT_RENEWED, True),
        ({"schema": 2, "expires_at": NOW - 1}, 0, True, NEWER_EXPIRED, False),
        ({"schema": 2, "expires_at": NOW + 1}, TTL + 1, False, None, True),
    ],
)  # fmt: skip
def test_judge_decides_from_what_this_replica_saw_not_from_the_record_clock(
    data: dict[str, Any], unchanged_for: float, take: bool, why: str | None, unrenewed: bool
) -> None:
    """The takeover rule as a table: a record is taken when it expired or has stayed unchanged
    past its capped term, and reported unrenewed once unchanged past its stated term."""
    verdict = judge(data, "x", holder="one", unchanged_for=unchanged_for, now=NOW, ttl=TTL)
    assert (verdict.take, verdict.why) == (take, why)
    if not take:
        assert verdict.unrenewed == unrenewed
        assert verdict.problem is None or "\n" not in verdict.problem
