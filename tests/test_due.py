"""When a key is due: schedules, jitter, windows, max_age, restarts and freezes.

The schedule tests step a fake clock through months of time and "rotate" whenever a key is due,
as the daemon would; the freeze tests run against the real Vault.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from vault_rotator.daemon import due as d
from vault_rotator.daemon.due import Due, due, jitter_offset, next_due, next_slot
from vault_rotator.daemon.freeze import FrozenSet, freeze, frozen, frozen_path, unfreeze
from vault_rotator.errors import ConfigError, StoreError
from vault_rotator.policy import KeyPolicy, ManagementKeyRef, ProviderPolicy, parse_schedule
from vault_rotator.ports.kv import KvStore
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.vault_server import VaultServer

HOUR, DAY = 3600.0, 86400.0


def ts(text: str) -> float:
    """Epoch seconds of an ISO time in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def policy(name: str = "app", **fields: Any) -> KeyPolicy:
    provider = ProviderPolicy(
        base_url="http://127.0.0.1:9", management_key=ManagementKeyRef(path="arouter/mgmt")
    )
    return KeyPolicy(
        env="prod", name=name, secret_path=f"arouter/prod/{name}", provider=provider, **fields
    )


def simulate(
    pol: KeyPolicy, start: float, days: float, *, last: float | None, step: float = HOUR
) -> list[tuple[float, str]]:
    """Step a clock from ``start``; rotate (last = now) whenever due; return (time, reason)s."""
    rotations: list[tuple[float, str]] = []
    now = start
    while now < start + days * DAY:
        verdict = due(
            pol, last_success_at=last, rotated_at=None, in_flight=False, frozen=False, now=now
        )
        if verdict.due:
            rotations.append((now, verdict.reason))
            last = now
        now += step
    return rotations


# -- schedules ------------------------------------------------------------------------------


def test_monthly_cron_fires_once_per_month_over_a_year() -> None:
    """Stepping hourly through 2027, @monthly rotates exactly 12 times, at 00:00 on each 1st."""
    rotations = simulate(
        policy(schedule="@monthly"), ts("2027-01-01T00:00"), 365, last=ts("2026-12-20T00:00")
    )
    assert len(rotations) == 12
    assert [utc(t).month for t, _ in rotations] == list(range(1, 13))
    assert all(utc(t).day == 1 and utc(t).hour == 0 for t, _ in rotations)
    assert {reason for _, reason in rotations} == {d.SCHEDULE}


def test_monthly_cron_with_jitter_still_fires_once_per_month() -> None:
    """A 6h jitter moves each monthly rotation into the first 6 hours of the 1st, still 12."""
    rotations = simulate(
        policy(schedule="@monthly", jitter_s=6 * HOUR),
        ts("2027-01-01T00:00"),
        365,
        last=ts("2026-12-20T00:00"),
    )
    assert len(rotations) == 12
    assert all(utc(t).day == 1 and utc(t).hour < 7 for t, _ in rotations)
    assert len({utc(t).hour for t, _ in rotations}) > 1


def test_weekly_alias_fires_on_sundays() -> None:
    """@weekly is crontab's Sunday 00:00: ten rotations in ten weeks, all on Sundays."""
    rotations = simulate(
        policy(schedule="@weekly"), ts("2027-01-04T00:00"), 70, last=ts("2027-01-03T12:00")
    )
    assert len(rotations) == 10
    assert all(utc(t).weekday() == 6 and utc(t).hour == 0 for t, _ in rotations)


def test_every_30d_counts_from_the_last_rotation() -> None:
    """``every 30d`` rotates 30 days after the previous rotation: 12 times in 365 days."""
    start = ts("2027-03-10T13:00")
    rotations = simulate(policy(schedule="every 30d"), start, 365, last=start)
    assert [t for t, _ in rotations] == [start + 30 * DAY * k for k in range(1, 13)]


@pytest.mark.parametrize(
    ("cron", "weekday"), [("0 6 * * 1", 0), ("0 6 * * 0", 6), ("0 6 * * 7", 6), ("0 6 * * 5", 4)]
)
def test_cron_weekdays_follow_crontab(cron: str, weekday: int) -> None:
    """Crontab weekday numbers (1 = Monday, 0 and 7 = Sunday) land on the right day at 06:00."""
    slot = next_slot(parse_schedule(cron), ts("2027-01-06T12:00"))  # a Wednesday
    assert slot is not None
    assert utc(slot).weekday() == weekday
    assert utc(slot).hour == 6
    assert ts("2027-01-06T12:00") < slot <= ts("2027-01-13T12:00")


def test_next_slot_is_strictly_after_a_rotation_on_the_firing() -> None:
    """A rotation made exactly at a firing is not due again until the next firing."""
    assert next_slot(parse_schedule("@daily"), ts("2027-01-06T00:00")) == ts("2027-01-07T00:00")


# -- restarts, first run, max_age ------------------------------------------------------------


def test_missed_schedule_fires_once_after_a_restart() -> None:
    """Down from January to 10 April, @monthly rotates once on restart, then waits for May."""
    last = ts("2027-01-01T00:00")
    restart = ts("2027-04-10T12:00")
    for max_age in (45 * DAY, 365 * DAY):
        pol = policy(schedule="@monthly", max_age_s=max_age)
        on_restart = due(
            pol, last_success_at=last, rotated_at=None, in_flight=False, frozen=False, now=restart
        )
        assert on_restart == Due(due=True, at=ts("2027-02-01T00:00"), reason=d.SCHEDULE)
        rotations = simulate(pol, restart, 25, last=last)
        assert [t for t, _ in rotations] == [restart, ts("2027-05-01T00:00")]


def test_never_rotated_key_is_due_at_once() -> None:
    """Neither a record nor a rotated_at: due now, whatever the schedule or window."""
    pol = policy(schedule="@yearly", window="Sat 00:00-01:00")
    verdict = due(
        pol, last_success_at=None, rotated_at=None, in_flight=False, frozen=False, now=1e9
    )
    assert verdict == Due(due=True, at=1e9, reason=d.FIRST_RUN)


def test_max_age_counts_from_rotated_at_without_a_record() -> None:
    """With no record, max_age runs from the secret's rotated_at (Z or offset form)."""
    pol = policy(schedule="@yearly", max_age_s=45 * DAY)
    rotated = "2027-02-10T08:00:00Z"
    start = ts("2027-02-10T08:00")
    kwargs: dict[str, Any] = {"last_success_at": None, "in_flight": False, "frozen": False}
    before = due(pol, rotated_at=rotated, now=start + 44 * DAY, **kwargs)
    assert before == Due(due=False, at=start + 45 * DAY, reason=d.NOT_YET)
    after = due(pol, rotated_at="2027-02-10T09:00:00+01:00", now=start + 45 * DAY, **kwargs)
    assert after == Due(due=True, at=start + 45 * DAY, reason=d.MAX_AGE)


def test_record_wins_over_rotated_at_and_bad_rotated_at_counts_as_absent() -> None:
    """last_success_at beats rotated_at; an unreadable rotated_at is treated as never rotated."""
    pol = policy(schedule="every 10d", max_age_s=45 * DAY)
    assert next_due(pol, last_success_at=0.0, rotated_at="2027-01-01T00:00Z", now=5.0) == 10 * DAY
    verdict = due(
        pol, last_success_at=None, rotated_at="yesterday", in_flight=False, frozen=False, now=5.0
    )
    assert verdict.reason == d.FIRST_RUN


# -- jitter ----------------------------------------------------------------------------------


def test_jitter_is_stable_and_differs_per_key() -> None:
    """The offset depends only on key and slot: equal on every call, different between keys."""
    slot = ts("2027-06-01T00:00")
    first = jitter_offset("prod/a", slot, 6 * HOUR)
    assert first == jitter_offset("prod/a", slot, 6 * HOUR)
    assert first == pytest.approx(1480.58, abs=0.01)  # pinned: changing it moves every key
    assert first != jitter_offset("prod/b", slot, 6 * HOUR)
    assert first != jitter_offset("prod/a", slot + 30 * DAY, 6 * HOUR)
    assert jitter_offset("prod/a", slot, 0.0) == 0.0


def test_jitter_spreads_keys_across_the_range() -> None:
    """Fifty keys on one schedule get distinct offsets inside [0, jitter), spread over it."""
    slot = ts("2027-06-01T00:00")
    offsets = [jitter_offset(f"prod/key-{i}", slot, HOUR) for i in range(50)]
    assert len(set(offsets)) == 50
    assert all(0 <= o < HOUR for o in offsets)
    assert max(offsets) - min(offsets) > HOUR / 2
    times = {
        name: next_due(
            policy(name, schedule="@monthly", jitter_s=HOUR),
            last_success_at=ts("2027-05-01T00:00"),
            rotated_at=None,
            now=ts("2027-05-02T00:00"),
        )
        for name in ("one", "two")
    }
    assert times["one"] != times["two"]


def test_jitter_never_delays_past_max_age() -> None:
    """With the slot 1h before max_age and a 1d jitter, no key is due after last + max_age."""
    last = ts("2027-01-01T00:00")
    reasons = set()
    for i in range(50):
        pol = policy(f"key-{i}", schedule="every 30d", max_age_s=30 * DAY + HOUR, jitter_s=DAY)
        at = next_due(pol, last_success_at=last, rotated_at=None, now=last)
        assert last + 30 * DAY <= at <= last + 30 * DAY + HOUR
        verdict = due(
            pol, last_success_at=last, rotated_at=None, in_flight=False, frozen=False, now=at
        )
        assert verdict.due
        reasons.add(verdict.reason)
    assert reasons == {d.SCHEDULE, d.MAX_AGE}


# -- windows ---------------------------------------------------------------------------------


def test_window_moves_rotations_into_it() -> None:
    """A daily 02:00 schedule with a Mon-Fri 09-17 window rotates at 09:00 on weekdays only."""
    pol = policy(schedule="0 2 * * *", window="Mon-Fri 09:00-17:00")
    rotations = simulate(
        pol, ts("2027-01-04T00:00"), 14, last=ts("2027-01-03T09:00"), step=900
    )  # from a Monday
    assert len(rotations) == 10
    assert all(utc(t).weekday() < 5 and utc(t).hour == 9 for t, _ in rotations)


def test_due_outside_the_window_waits_for_it_to_open() -> None:
    """Due on a Sunday with a weekday window: not due yet, due when Monday's window opens."""
    pol = policy(schedule="every 30d", window="Mon-Fri 09:00-17:00", max_age_s=32 * DAY)
    last = ts("2027-01-01T00:00")  # a Friday; the slot is Sunday 31 January 00:00
    kwargs: dict[str, Any] = {"last_success_at": last, "rotated_at": None}
    sunday = due(pol, in_flight=False, frozen=False, now=ts("2027-01-31T10:00"), **kwargs)
    assert sunday == Due(due=False, at=ts("2027-02-01T09:00"), reason=d.WINDOW_WAIT)
    assert next_due(pol, now=last, **kwargs) == ts("2027-02-01T09:00")
    monday = due(pol, in_flight=False, frozen=False, now=ts("2027-02-01T09:00"), **kwargs)
    assert monday.due
    assert monday.reason == d.SCHEDULE


def test_window_never_waits_past_max_age() -> None:
    """When the window opens only after last + max_age, the key is due at its slot anyway."""
    pol = policy(schedule="every 30d", window="Mon-Fri 09:00-17:00", max_age_s=30.5 * DAY)
    last = ts("2027-01-01T00:00")
    kwargs: dict[str, Any] = {"last_success_at": last, "rotated_at": None}
    assert next_due(pol, now=last, **kwargs) == ts("2027-01-31T00:00")
    verdict = due(pol, in_flight=False, frozen=False, now=ts("2027-01-31T00:00"), **kwargs)
    assert verdict == Due(due=True, at=ts("2027-01-31T00:00"), reason=d.MAX_AGE)


def test_restart_outside_the_window_waits_unless_max_age_passed() -> None:
    """A slot missed while down waits for the window, but not once max_age has passed."""
    pol = policy(schedule="@monthly", window="Mon-Fri 09:00-17:00", max_age_s=45 * DAY)
    kwargs: dict[str, Any] = {"rotated_at": None, "in_flight": False, "frozen": False}
    saturday = ts("2027-02-06T03:00")
    waiting = due(pol, last_success_at=ts("2027-01-01T10:00"), now=saturday, **kwargs)
    assert waiting == Due(due=False, at=ts("2027-02-08T09:00"), reason=d.WINDOW_WAIT)
    overdue = due(pol, last_success_at=ts("2026-12-01T10:00"), now=saturday, **kwargs)
    assert overdue.due
    assert overdue.reason == d.MAX_AGE


# -- frozen, in flight -----------------------------------------------------------------------


def test_frozen_key_is_never_due() -> None:
    """A frozen key is not due even a year overdue; ``at`` still says when it would be."""
    pol = policy(schedule="@daily")
    for last in (None, 0.0):
        verdict = due(
            pol, last_success_at=last, rotated_at=None, in_flight=False, frozen=True, now=400 * DAY
        )
        assert verdict.due is False
        assert verdict.reason == d.FROZEN
    assert verdict.at == DAY


def test_in_flight_rotation_is_not_due_again() -> None:
    """While a rotation is in flight (frozen or not) no new one is due; in-flight is the reason."""
    pol = policy(schedule="@daily")
    for is_frozen in (False, True):
        verdict = due(
            pol, last_success_at=0.0, rotated_at=None, in_flight=True, frozen=is_frozen, now=9 * DAY
        )
        assert verdict == Due(due=False, at=DAY, reason=d.IN_FLIGHT)


# -- freezes in Vault ------------------------------------------------------------------------


@pytest.fixture
def kv(vault: VaultServer) -> Iterator[VaultKv]:
    """The real Vault's KV v2 mount `secret/`."""
    conn = VaultConnection(vault.addr, vault.token)
    yield conn.kv("secret")
    conn.close()


@pytest.fixture
def prefix() -> str:
    """A fresh state prefix per test."""
    return f"freeze-test/{uuid.uuid4().hex}"


def test_nothing_is_frozen_at_first(kv: VaultKv, prefix: str) -> None:
    """With no freeze record in Vault, nothing is covered and the version is 0."""
    state = frozen(kv, prefix)
    assert state == FrozenSet()
    assert not state.covers("prod", "app")


def test_freezing_an_environment_covers_its_keys_only(kv: VaultKv, prefix: str) -> None:
    """A frozen environment covers each of its keys, not another environment's; Vault agrees."""
    result = freeze(kv, prefix, "prod", "alice@host", at=100.0, reason="incident 42")
    assert result.covers("prod", "app")
    assert result.covers("prod", "other")
    assert not result.covers("staging", "app")
    again = frozen(kv, prefix)
    assert again == result
    assert again.why("prod", "app") is not None
    assert again.by["prod"].reason == "incident 42"
    stored = kv.read(frozen_path(prefix))
    assert stored is not None
    assert stored.data["env"] == ["prod"]
    assert stored.data["by"]["prod"] == {"by": "alice@host", "at": 100.0, "reason": "incident 42"}


def test_key_freeze_outlives_its_environment_unfreeze(kv: VaultKv, prefix: str) -> None:
    """Unfreezing an environment leaves a separately frozen key in it frozen, until unfrozen."""
    freeze(kv, prefix, "prod", "alice", at=1.0)
    freeze(kv, prefix, "prod/app", "bob", at=2.0)
    after_env = unfreeze(kv, prefix, "prod")
    assert after_env.covers("prod", "app")
    assert not after_env.covers("prod", "other")
    assert after_env.why("prod", "app") == after_env.by["prod/app"]
    assert not unfreeze(kv, prefix, "prod/app").covers("prod", "app")
    assert frozen(kv, prefix).keys == frozenset()


def test_repeated_freeze_and_unfreeze_write_nothing(kv: VaultKv, prefix: str) -> None:
    """Freezing a frozen target or unfreezing a free one leaves the Vault version unchanged."""
    path = frozen_path(prefix)
    assert unfreeze(kv, prefix, "prod").version == 0
    freeze(kv, prefix, "prod", "alice", at=1.0)
    freeze(kv, prefix, "prod", "bob", at=2.0)
    assert kv.current_version(path) == 1
    assert frozen(kv, prefix).by["prod"].by == "alice"


class RacingKv:
    """A KvStore that lets another writer freeze ``env`` just before our first write."""

    def __init__(self, inner: VaultKv, other: VaultKv, prefix: str) -> None:
        self.inner, self.other, self.prefix = inner, other, prefix
        self.raced = False
        self.mount = inner.mount

    def read(self, path: str, version: int | None = None) -> Any:
        return self.inner.read(path, version)

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        if not self.raced:
            self.raced = True
            freeze(self.other, self.prefix, "staging", "rival", at=5.0)
        return self.inner.write(path, data, cas=cas)


def test_lost_check_and_set_is_retried_and_keeps_both_freezes(
    vault: VaultServer, kv: VaultKv, prefix: str
) -> None:
    """When another writer wins the check-and-set, freeze re-reads and keeps both targets."""
    other = VaultConnection(vault.addr, vault.token)
    try:
        racing = RacingKv(kv, other.kv("secret"), prefix)
        # RacingKv has only what freeze uses of a KvStore: read, write and mount.
        result = freeze(cast("KvStore", racing), prefix, "prod", "alice", at=6.0)
    finally:
        other.close()
    assert racing.raced
    assert result.envs == frozenset({"prod", "staging"})
    assert result.version == 2
    assert frozen(kv, prefix) == result


def test_freezing_leaves_a_state_record_in_flight_alone(kv: VaultKv, prefix: str) -> None:
    """A freeze writes only its own record: the state record of a rotation in flight is intact."""
    state_path = f"{prefix}/state/prod/app"
    kv.write(state_path, {"phase": "published", "rotation": {"id": "r1"}}, cas=0)
    freeze(kv, prefix, "prod", "alice", at=1.0)
    record = kv.read(state_path)
    assert record is not None
    assert record.version == 1
    assert record.data == {"phase": "published", "rotation": {"id": "r1"}}


def test_bad_target_and_malformed_record_are_clear_errors(kv: VaultKv, prefix: str) -> None:
    """A target that is not ENV or ENV/NAME is a ConfigError; a garbled record a StoreError."""
    with pytest.raises(ConfigError, match="ENV or ENV/NAME"):
        freeze(kv, prefix, "Prod/App/x", "alice", at=1.0)
    kv.write(frozen_path(prefix), {"schema": 1, "env": "prod"}, cas=0)
    with pytest.raises(StoreError, match=r"freeze record at secret/.*malformed"):
        frozen(kv, prefix)


def test_a_cron_that_never_fires_is_due_at_max_age() -> None:
    """A stored cron with no firing (31 February) neither crashes nor stops max_age rotating."""
    pol = policy(schedule="0 0 31 2 *", max_age_s=30 * DAY)
    last = ts("2027-01-01T00:00:00")
    assert next_slot(parse_schedule(pol.schedule), last) is None
    assert next_due(pol, last_success_at=last, rotated_at=None, now=last) == last + 30 * DAY
    early = due(pol, last_success_at=last, rotated_at=None, in_flight=False, frozen=False, now=last)
    assert early == Due(due=False, at=last + 30 * DAY, reason=d.NOT_YET)
    late = due(
        pol,
        last_success_at=last,
        rotated_at=None,
        in_flight=False,
        frozen=False,
        now=last + 31 * DAY,
    )
    assert late == Due(due=True, at=last + 30 * DAY, reason=d.MAX_AGE)


def test_a_cron_firing_after_max_age_is_not_searched_past_it() -> None:
    """A cron's next firing is searched only up to max_age; past it, max_age decides."""
    pol = policy(schedule="@yearly", max_age_s=45 * DAY)
    last = ts("2027-01-02T00:00:00")
    assert next_due(pol, last_success_at=last, rotated_at=None, now=last) == last + 45 * DAY
    assert next_slot(parse_schedule("@yearly"), last) == ts("2028-01-01T00:00:00")
