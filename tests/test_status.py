"""Status is derived from the record alone: stalled shows even when nothing is running."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from vault_rotator.commands import status_cmd
from vault_rotator.daemon.status_rows import collect
from vault_rotator.engine import reasons
from vault_rotator.engine.state import Outcome, Rotation, Stall, StateRecord
from vault_rotator.engine.status import derive_state, key_status
from vault_rotator.policy import (
    EnvironmentPolicy,
    KeyPolicy,
    ManagementKeyRef,
    PolicySet,
    ProviderPolicy,
)
from vault_rotator.ports.kv import Versioned
from vault_rotator.ports.provider import Permissions
from vault_rotator.runtime import Runtime

NOW = 1_800_000_000.0
GRACE = 91.0  # past the 3 polls (30 s by default) a daemon is given to judge a deadline


def published(**changes: object) -> StateRecord:
    rotation = Rotation(
        id="r1",
        attempt=1,
        date="2027-01-15",
        policy={},
        permissions=Permissions(allowed_providers=("openai",)),
        started_at=NOW - 100,
        start_version=1,
        old_key_id="old",
        new_key_id="new",
        published_at=NOW - 50,
        pickup_deadline=NOW + 3600,
    ).evolve(**changes)
    return StateRecord.new("prod", "app").evolve(phase=reasons.PUBLISHED, rotation=rotation)


def test_awaiting_pickup_before_the_deadline() -> None:
    """Before pickup_timeout passes, a published rotation awaits pickup."""
    assert derive_state(published(), NOW) == ("awaiting-pickup", [])


def test_pickup_deadline_passed_reads_as_stalled_without_a_process() -> None:
    """Once pickup_deadline is behind us, status says stalled even though no stall was saved."""
    state, passed = derive_state(published(), NOW + 3600 + GRACE)
    assert state == f"stalled:{reasons.PICKUP_TIMEOUT}"
    assert passed == [reasons.PICKUP_TIMEOUT]


def test_a_deadline_just_passed_is_listed_but_not_yet_a_stall() -> None:
    """A daemon back from a crash judges a passed deadline on its next poll: until then (three
    polls, at least a minute) the rotation keeps its step, the deadline listed as passed."""
    assert derive_state(published(), NOW + 3601) == ("awaiting-pickup", [reasons.PICKUP_TIMEOUT])
    polls = published().with_rotation(policy={"provider": {"poll_interval_s": 120.0}})
    assert derive_state(polls, NOW + 3600 + 300)[0] == "awaiting-pickup"
    assert derive_state(polls, NOW + 3600 + 361)[0] == f"stalled:{reasons.PICKUP_TIMEOUT}"


def test_drain_deadline_counts_only_while_the_old_key_lives() -> None:
    """drain_deadline passed with the old key alive is stalled; after its deletion it is not."""
    rec = published(pickup_at=NOW - 10, drain_deadline=NOW - 1)
    assert derive_state(rec, NOW + GRACE)[0] == f"stalled:{reasons.DRAIN_TIMEOUT}"
    assert (
        derive_state(published(pickup_at=NOW - 10, drain_deadline=NOW - 1, old_deleted=True), NOW)[
            0
        ]
        == "draining"
    )


def test_saved_stall_wins_and_row_carries_detail_and_history() -> None:
    """A saved stall is reported with its detail; the last outcomes list who triggered them."""
    rec = published(stalled=Stall(reasons.SECRET_CHANGED, "someone wrote it", NOW)).evolve(
        outcomes=(Outcome("r0", reasons.SUCCEEDED, NOW - 86400, "schedule", "daemon"),),
        last_success_at=NOW - 86400,
    )
    row = key_status(
        ref="prod/app", max_age_s=45 * 86400, next_due_at=NOW + 5, record=rec, secret=None, now=NOW
    )
    assert row["state"] == f"stalled:{reasons.SECRET_CHANGED}"
    assert row["stall_detail"] == "someone wrote it"
    assert row["age_s"] == 86400
    assert row["next_due_at"] == NOW + 5
    assert row["last_outcomes"][0]["by"] == "daemon"


def test_never_rotated_key_uses_the_secret_rotated_at() -> None:
    """With no record yet, age comes from the consumer secret's rotated_at field."""
    row = key_status(
        ref="prod/app",
        max_age_s=100.0,
        record=StateRecord.new("prod", "app"),
        secret={"key_id": "k1", "rotated_at": "2027-01-15T08:00:00+00:00"},
        now=NOW,
    )
    assert row["state"] == "never-rotated"
    assert row["current_key_id"] == "k1"
    assert row["age_s"] is not None


def test_an_abort_in_progress_is_not_reported_as_a_pickup_stall() -> None:
    """Deadlines of the forward path do not count while aborting; the abort's own one does."""
    rec = published().evolve(phase=reasons.ABORTING)
    assert derive_state(rec, NOW + 3601) == ("aborting", [])
    late = rec.with_rotation(abort_deadline=NOW + 10)
    assert derive_state(late, NOW + 10 + GRACE)[0] == f"stalled:{reasons.DRAIN_TIMEOUT}"


def test_the_disable_wait_is_not_a_drain_stall() -> None:
    """Once the old key is disabled the rotation is committed: no drain-timeout stall."""
    rec = published(pickup_at=NOW - 10, drain_deadline=NOW - 1, old_disabled_at=NOW - 5)
    assert derive_state(rec, NOW)[0] == "draining"


class _Kv:
    """Just enough of a KV store for ``status``: one consumer secret, no state records."""

    mount = "secret"

    def __init__(self, secrets: dict[str, dict[str, object]]) -> None:
        self.secrets = secrets

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        data = self.secrets.get(path)
        return None if data is None else Versioned(data=data, version=1)

    def current_version(self, path: str) -> int:
        return 1 if path in self.secrets else 0

    def list(self, prefix: str) -> list[str]:
        return []


class _Runtime:
    def __init__(self, kv: _Kv) -> None:
        self._kv = kv

    def kv(self, mount: str) -> _Kv:
        return self._kv


def test_status_of_a_key_whose_cron_never_fires() -> None:
    """A rotated key whose stored cron never fires shows its max_age due time, not a crash."""
    provider = ProviderPolicy(
        base_url="http://127.0.0.1:9", management_key=ManagementKeyRef(path="arouter/mgmt")
    )
    key = KeyPolicy(
        env="prod",
        name="app",
        secret_path="arouter/prod/app",
        provider=provider,
        schedule="0 0 31 2 *",
        max_age_s=86400.0,
    )
    env = EnvironmentPolicy(
        environment="prod",
        source=Path("prod.yaml"),
        provider=provider,
        require_spending_limit=False,
        keys=(key,),
    )
    rotated = datetime.fromtimestamp(NOW - 3600, UTC).isoformat()
    kv = _Kv({"arouter/prod/app": {"key_id": "k1", "rotated_at": rotated}})
    runtime = cast("Runtime", _Runtime(kv))  # a stub: status only asks the runtime for kv()
    (row,) = collect(PolicySet({"prod": env}), runtime, NOW)
    assert row["state"] == "never-rotated"
    assert row["next_due_at"] == NOW - 3600 + 86400.0


def _acks_row(instances: int, problems: int = 0) -> dict[str, object]:
    """A status row whose ``acks`` object lists ``instances`` present instances."""
    rows = [
        {"instance": f"web-{n:04d}", "kind": "app", "version": 2, "key_id": "new",
         "age_s": 30.0, "gone": False, "current": True}
        for n in range(instances)
    ]  # fmt: skip
    refused = [{"instance": "bad-0", "problem": "kind is neither agent nor app"}] * problems
    acks = {
        "require_acks": 2,
        "drain_on_acks": False,
        "ack_ttl_s": 604800.0,
        "version": 2,
        "acknowledged": instances,
        "ignored": None,
        "instances": rows,
        "problems": refused,
    }
    return {"key": "prod/app", "acks": acks}


def test_status_names_at_most_20_ack_instances_per_key_then_how_many_more() -> None:
    """Issue 20 item 9: 1,017 present instances are not one 1,017-name line: the first 20 are
    named (as the stall detail does), then "and 997 more"; --json still lists every one."""
    lines = status_cmd.ack_lines([_acks_row(1017, problems=7)])
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("prod/app: acks 1017 of 2 required for version 2: web-0000 (app, v2, ")
    assert "web-0019 (app, v2, 30s) and 997 more instances (status --json lists every one)" in line
    assert "web-0020" not in line
    assert line.endswith("; ignored: " + "; ".join(["bad-0: kind is neither agent nor app"] * 5)
                         + " and 2 more")  # fmt: skip
    assert len(line) < 2000


def test_status_names_every_instance_up_to_20() -> None:
    """Twenty instances or fewer are all named, with no "more"."""
    (line,) = status_cmd.ack_lines([_acks_row(20)])
    assert "web-0019 (app, v2, 30s)" in line
    assert "more" not in line


def test_text_from_records_is_escaped_in_the_table() -> None:
    """A forged outcome's `by` holding a terminal escape and a newline is shown escaped in its
    cell, never sent to the operator's terminal as is."""
    row = {
        "key": "prod/a", "state": "idle", "current_key_id": "key_\x1b]0;pwned\x07",
        "age_s": None, "next_due_at": None, "in_policy": True,
        "last_outcomes": [{"outcome": "succeeded", "by": "x\x1b[2J\ny", "trigger": "cli"}],
    }  # fmt: skip
    text = status_cmd.table([row])
    assert "\x1b" not in text
    assert "\\x1b[2J\\ny" in text
    assert text.count("\n") == 1  # the header and one row
