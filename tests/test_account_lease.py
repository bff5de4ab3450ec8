"""The account lease: one replica ticks an account; take-over only after expiry; fenced."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from vault_rotator.engine.account_lease import (
    ACCOUNT_LEASE_SCHEMA,
    AccountLease,
    AccountLeases,
    lease_path,
)
from vault_rotator.errors import StoreError
from vault_rotator.policy import Account
from vault_rotator.ports.kv import KvStore, Versioned
from vault_rotator.store.memory import MemoryKv
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

ACCOUNT = Account(
    base_url="https://arouter.example", kv_mount="secret", management_key_path="ops/admin"
).lease_id
TTL = 30.0


def _replica(
    kv: KvStore, clock: FakeClock, name: str, prefixes: tuple[str, ...] = ("rot",)
) -> AccountLeases:
    return AccountLeases(kv, prefixes, ACCOUNT, "acct", holder=name, clock=clock, ttl=TTL)


def _id(base_url: str, path: str, mount: str = "secret") -> str:
    return Account(base_url=base_url, kv_mount=mount, management_key_path=path).lease_id


def test_account_lease_id_is_stable_and_depends_on_url_and_management_path() -> None:
    """The id is the same for the same account and differs for another URL or key path."""
    assert _id("https://a", "p") == _id("https://a", "p") == _id("https://a", "p", "kv2")
    assert _id("https://a", "p") != _id("https://b", "p")
    assert _id("https://a", "p") != _id("https://a", "q")


def test_only_one_replica_holds_until_the_lease_expires() -> None:
    """A second replica is refused while the first's lease lives, and takes over after it
    expires with a bumped fence."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one, two = _replica(kv, clock, "one"), _replica(kv, clock, "two")
    assert one.hold()
    assert not two.hold()
    clock.advance(TTL + 1)  # one was paused past its lease
    assert two.hold()
    assert not one.hold()
    assert not one.holds
    stored = AccountLease.from_dict(kv.read(lease_path("rot", ACCOUNT)).data, "x")  # type: ignore[union-attr]
    assert (stored.holder, stored.fence) == ("two", 2)


def test_holding_costs_no_io_until_half_the_ttl_then_one_renewal() -> None:
    """While more than half the TTL is left, hold() writes nothing; past it, one CAS renews."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one = _replica(kv, clock, "one")
    assert one.hold()
    writes = sum(kv.write_count.values())
    for _ in range(10):
        clock.advance(1)
        assert one.hold()
    assert sum(kv.write_count.values()) == writes
    clock.advance(TTL / 2)
    assert one.hold()
    assert sum(kv.write_count.values()) == writes + 1


def test_a_paused_holder_finds_its_lease_taken_and_steps_back() -> None:
    """A replica whose lease lapsed and was taken over does not keep ticking on its cache."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one, two = _replica(kv, clock, "one"), _replica(kv, clock, "two")
    assert one.hold()
    clock.advance(TTL + 1)
    assert two.hold()
    assert not one.holds
    assert not one.hold()
    assert two.hold()


def test_release_lets_another_replica_take_at_once() -> None:
    """A replica shutting down gives the lease back; another takes it without waiting."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one, two = _replica(kv, clock, "one"), _replica(kv, clock, "two")
    assert one.hold()
    one.release()
    assert two.hold()


def test_every_prefix_must_be_held_and_replicas_sharing_one_prefix_exclude_each_other() -> None:
    """With keys under two state prefixes, a replica holds both or none; a replica whose
    configuration names only one of them (mid rolling change) is still excluded."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    both = _replica(kv, clock, "both", ("rot-a", "rot-b"))
    only_b = _replica(kv, clock, "only-b", ("rot-b",))
    assert both.hold()
    assert not only_b.hold()
    both.release()
    assert only_b.hold()
    assert not both.hold()
    # "both" gave back rot-a when rot-b was taken: nothing of it stays held
    assert not both.held
    assert kv.read(lease_path("rot-a", ACCOUNT)).data["expires_at"] <= clock()  # type: ignore[union-attr]


def test_a_newer_schema_lease_is_refused_and_left_alone() -> None:
    """A lease written by a newer daemon makes this one step back with a clear problem."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    newer = {"schema": ACCOUNT_LEASE_SCHEMA + 1, "holder": "new", "shape": "unknown"}
    kv.write(lease_path("rot", ACCOUNT), newer, cas=0)
    one = _replica(kv, clock, "one")
    assert not one.hold()
    assert one.problem is not None
    assert "newer vault-rotator" in one.problem
    assert kv.read(lease_path("rot", ACCOUNT)).data == newer  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [{"schema": 1}, {"schema": "1"}, {"schema": 1, "account": "a", "holder": "h", "fence": "7",
                                       "expires_at": 1.0, "renewed_at": 1.0}],
)  # fmt: skip
def test_a_malformed_lease_is_a_one_line_problem_not_a_take_over(data: dict[str, object]) -> None:
    """Garbage at the lease path stops this replica from ticking, with a one-line reason."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    kv.write(lease_path("rot", ACCOUNT), data, cas=0)
    one = _replica(kv, clock, "one")
    assert not one.hold()
    assert one.problem is not None
    assert "malformed" in one.problem
    assert "\n" not in one.problem
    with pytest.raises(StoreError):
        AccountLease.from_dict(data, "x")


class _ReadThenRival:
    """A KvStore that lets a rival replica act right after each read (the race window)."""

    def __init__(self, kv: KvStore, rival: Callable[[], object]) -> None:
        self.kv, self.rival = kv, rival

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        got = self.kv.read(path, version)
        self.rival()
        return got


def test_two_replicas_race_on_a_real_vault_and_exactly_one_wins(vault: VaultServer) -> None:
    """On OpenBao, the CAS decides: a replica that read the free lease loses to a rival that
    wrote between its read and its write."""
    clock = FakeClock()
    kv = VaultConnection(vault.addr, vault.token).kv("secret")
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    one = _replica(kv, clock, "one", (prefix,))
    two = _replica(_ReadThenRival(kv, one.hold), clock, "two", (prefix,))
    assert not two.hold()
    assert [one.holds, two.holds] == [True, False]
    clock.advance(TTL + 1)
    assert not two.hold()  # one's renewal after two's read wins again
    two.kv = kv
    clock.advance(TTL + 1)
    assert two.hold()
    assert not one.hold()


def test_an_expired_lease_of_a_newer_schema_is_taken_over() -> None:
    """After a roll-back, a newer daemon's lease is respected only while it lives."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    newer = {"schema": ACCOUNT_LEASE_SCHEMA + 1, "holder": "new", "expires_at": clock() + 10}
    kv.write(lease_path("rot", ACCOUNT), newer, cas=0)
    one = _replica(kv, clock, "one")
    assert not one.hold()
    clock.advance(11)
    assert one.hold()


def test_a_lease_lost_and_retaken_through_a_deleted_record_gets_a_new_fence() -> None:
    """A -> B -> A across a deleted record: A notices it lost the lease (holder and fence are
    compared, not the fence alone) and takes it anew."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    one, two = _replica(kv, clock, "one"), _replica(kv, clock, "two")
    assert one.hold()
    kv.destroy(lease_path("rot", ACCOUNT))
    assert two.hold()
    clock.advance(TTL + 1)
    with capture_logs() as logs:
        assert one.hold()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["account lease lost"]
    stored = kv.read(lease_path("rot", ACCOUNT))
    assert stored is not None
    assert (stored.data["holder"], stored.data["fence"]) == ("one", 2)
