"""GET /v1/status keeps each row's JSON between drawings (:class:`HeldRows`, issue 19): what it
sends must be, at every drawing, exactly the row drawn afresh and encoded whole (sorted keys,
redacted), however the clock moves (ages, deadlines passing, leases ending, due dates in and
out of windows) and whatever the books change (a new record, a secret read again, a policy
reloaded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vault_rotator.daemon.book import Entry, SecretSeen
from vault_rotator.daemon.due import next_due
from vault_rotator.daemon.status_rows import HeldRows, encode_row, secret_facts
from vault_rotator.display import redact_text
from vault_rotator.engine import reasons
from vault_rotator.engine.state import Lease, Outcome, Rotation, Stall, StateRecord
from vault_rotator.engine.status import key_status
from vault_rotator.policy import KeyPolicy, load_policies
from vault_rotator.ports.provider import Permissions
from vault_rotator.store.memory import MemoryKv

NOW = 1_800_000_000.0
POLICIES: list[KeyPolicy] = list(load_policies(Path(__file__).resolve().parents[1] / "config"))


class Runtime:
    """What the drawing asks of the runtime: a KV mount (ack folders, all empty here)."""

    def __init__(self) -> None:
        self.mounts: dict[str, MemoryKv] = {}

    def kv(self, mount: str) -> MemoryKv:
        return self.mounts.setdefault(mount, MemoryKv(mount))


def runtime() -> Any:
    return Runtime()


def fresh(policy: KeyPolicy, entry: Entry, now: float) -> dict[str, Any]:
    """The row drawn from nothing kept (``acks`` left for the caller to set)."""
    record, facts = entry.record, secret_facts(entry)
    due_at = next_due(
        policy, last_success_at=record.last_success_at, rotated_at=facts["rotated_at"], now=now
    )
    return key_status(
        ref=policy.ref,
        max_age_s=policy.max_age_s,
        next_due_at=due_at,
        record=record,
        secret=facts,
        now=now,
    )


def rotation(**changes: Any) -> Rotation:
    base = Rotation(
        id="r1", attempt=1, date="2027-01-15", policy={}, permissions=Permissions(),
        started_at=NOW, start_version=1, old_key_id="key_old", new_key_id="key_new",
    )  # fmt: skip
    return base.evolve(**changes)


def records(name: str) -> list[StateRecord]:
    """Records of every kind a row shows: idle (never, rotated), leased (live, handed off),
    in flight with deadlines about to pass, stalled, with outcomes whose detail holds a token."""
    idle = StateRecord.new("dev", name)
    done = Outcome("r0", "succeeded", NOW - 86_400, "schedule", "daemon", "a", "b", "hvs.x")
    rotated = idle.evolve(current_key_id="key_a", last_success_at=NOW - 3600, outcomes=(done,))
    lease = Lease("daemon-1", NOW + 30, 1)
    published = rotation(published_version=2, published_at=NOW - 10, pickup_deadline=NOW + 20)
    return [
        idle,
        rotated,
        rotated.evolve(current_key_id="key_b", outcomes=(done, done)),  # the clock shows no change
        rotated.evolve(last_success_at=NOW - 40 * 86_400),  # due: a window's due date moves
        rotated.evolve(lease=lease),
        rotated.evolve(lease=Lease("daemon-2", NOW + 30, 1, pending_attempt=1)),
        rotated.evolve(phase=reasons.INTENT, rotation=rotation(), lease=lease),
        rotated.evolve(phase=reasons.PUBLISHED, rotation=published),
        rotated.evolve(
            phase=reasons.PUBLISHED,
            rotation=published.evolve(pickup_at=NOW - 5, drain_deadline=NOW + 50),
        ),
        rotated.evolve(
            phase=reasons.PUBLISHED,
            rotation=published.evolve(stalled=Stall("pickup-timeout", "Bearer sk-leak", NOW)),
        ),
    ]


RECORDS = {p.name: records(p.name) for p in POLICIES}  # the same objects each time: kept rows
SEEN = [
    None,
    SecretSeen("key_a", None),
    SecretSeen("key_a", datetime.fromtimestamp(NOW - 7200, UTC).isoformat()),
]


def assert_same(drawer: HeldRows, entries: list[Entry], now: float) -> None:
    keys = [e.policy for e in entries]
    rows, encoded = drawer.draw(keys, {e.ref: e for e in entries}, runtime(), now)
    assert len(rows) == len(encoded) == len(entries)
    for entry, row, line in zip(entries, rows, encoded, strict=True):
        want = fresh(entry.policy, entry, now)
        want["acks"] = row["acks"]  # read for rotations in flight only (empty folders here)
        assert row == want, entry.ref
        assert line == redact_text(json.dumps(want, sort_keys=True)).encode(), entry.ref
        assert line == encode_row(row)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 1.0, 9.99, 10.0, 20.0, 29.9, 30.0, 60.0, 80.0, -5.0])
            | st.floats(min_value=-100, max_value=200_000),  # the clock moves this far
            st.integers(0, 9),  # ... and this key's record changes to this one
            st.integers(0, 2),  # ... and its secret as last read
            st.integers(0, len(POLICIES) - 1),  # ... the key changed
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_drawing_sends_what_drawing_afresh_sends(
    steps: list[tuple[float, int, int, int]],
) -> None:
    picked = POLICIES
    assert any(p.window for p in picked), "the shipped config has a key with a window"
    entries = [
        Entry(policy, RECORDS[policy.name][i % 10], 3, secret=SEEN[i % 3])
        for i, policy in enumerate(picked)
    ]
    drawer, now = HeldRows(), NOW
    assert_same(drawer, entries, now)
    for moved, kind, seen, which in steps:
        now += moved
        entry = entries[which]
        entry.record = RECORDS[entry.policy.name][kind]
        entry.secret = SEEN[seen]
        assert_same(drawer, entries, now)
        assert_same(drawer, entries, now)  # nothing changed: every row kept


def test_the_clock_alone_moves_state_lease_and_age() -> None:
    """A row kept from one drawing still shows the lease ending, a deadline passing and the
    key ageing at the next: the clock is read at every drawing."""
    policy = POLICIES[0]
    base = records(policy.name)
    leased = Entry(policy, base[4], 3)
    flying = Entry(POLICIES[1], base[7].evolve(name=POLICIES[1].name), 3)
    drawer, keys, held = HeldRows(), [policy, POLICIES[1]], {e.ref: e for e in (leased, flying)}
    rows, _ = drawer.draw(keys, held, runtime(), NOW)
    assert rows[0]["lease_holder"] == "daemon-1"
    assert rows[1]["deadlines_passed"] == []
    later, _ = drawer.draw(keys, held, runtime(), NOW + 31)
    assert later[0]["lease_holder"] is None
    assert later[1]["deadlines_passed"] == [reasons.PICKUP_TIMEOUT]
    assert later[0]["age_s"] == rows[0]["age_s"] + 31
