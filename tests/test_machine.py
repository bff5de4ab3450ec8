"""The state machine as a table: each phase's pure decision for each class of what it observed
(no Vault, no provider), the table's coverage, and the record's transitions."""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vault_rotator.engine import reasons
from vault_rotator.engine.decide import (
    AbortAction,
    AbortingFacts,
    Observation,
    PublishedAction,
    PublishedFacts,
    Timing,
    decide_aborting_pass,
    decide_published_pass,
)
from vault_rotator.engine.decide_create import (
    CreateAction,
    CreationFacts,
    IdleAction,
    IdleFacts,
    Listing,
    decide_creation,
    decide_idle,
)
from vault_rotator.engine.decide_end import (
    CleanupAction,
    CleanupFacts,
    decide_cleanup,
    keep_old_ending,
    success_ending,
    unpublished_ending,
)
from vault_rotator.engine.machine import ACTIONS, TABLE
from vault_rotator.engine.reasons import OutcomeName, Phase
from vault_rotator.engine.state import (
    NEXT_PHASES,
    Pending,
    ProviderWrite,
    Rotation,
    StateRecord,
    UseMark,
)
from vault_rotator.errors import EngineError, RateLimitedError
from vault_rotator.ports.kv import Versioned
from vault_rotator.ports.provider import KeyRecord, Permissions

T0 = 1_800_000_000.0
LAG = 60.0
TIMING = Timing(usage_lag=LAG, pickup_timeout=3600, drain_period=600, drain_timeout=7200)
NAME = "test-app-r1.1"


def stamp(offset: float) -> datetime:
    return datetime.fromtimestamp(T0 + offset, UTC)


def rotation(**changes: Any) -> Rotation:
    return Rotation(
        id="r1",
        attempt=1,
        date="2027-01-15",
        policy={},
        permissions=Permissions(allowed_providers=("openai",), spending_limit=25.0),
        started_at=T0,
        start_version=1,
        old_key_id="old",
    ).evolve(**changes)


# -- IDLE ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stale", "start", "action"),
    [
        (False, False, IdleAction.REST),
        (False, True, IdleAction.START),
        (True, False, IdleAction.DROP_STALE_PENDING),
        (True, True, IdleAction.DROP_STALE_PENDING),  # tidied first, started next turn
    ],
)
def test_idle(stale: bool, start: bool, action: IdleAction) -> None:
    """An idle record drops a stale pending record before anything, and starts only if asked."""
    assert decide_idle(IdleFacts(stale_pending=stale, start=start)).action == action


# -- INTENT --------------------------------------------------------------------------------

PENDING = Pending("r1", 1, "new", NAME, "lr_live_value", None, 1)
VERIFIED = {"verified_at": T0, "verified_attempt": 1}


def new_key(**fields: Any) -> KeyRecord:
    perms = Permissions(allowed_providers=fields.pop("allowed_providers", ("openai",)))
    values: dict[str, Any] = {"id": "new", "name": NAME, "permissions": perms}
    return KeyRecord(**(values | fields))


def listing(*keys: KeyRecord, asked_at: float = T0 + LAG) -> Listing:
    return Listing(Observation.of(list(keys), asked_at), asked_at)


def creation(rot: Rotation | None = None, **facts: Any) -> CreationFacts:
    base: dict[str, Any] = {
        "rotation": rot or rotation(),
        "now": T0,
        "usage_lag": LAG,
        "poll_interval": 30.0,
        "attempt_name": NAME,
    }
    return CreationFacts(**(base | facts))


def write(action: str, target: str) -> ProviderWrite:
    return ProviderWrite(action, target, fence=1, at=T0)


CREATION_CASES: list[tuple[str, CreationFacts, CreateAction]] = [
    ("nothing created yet", creation(), CreateAction.CREATE),
    (
        "a create of this name was cut",
        creation(write=write("create", NAME)),
        CreateAction.NEW_ATTEMPT,
    ),
    ("a create of an earlier name", creation(write=write("create", "x.1")), CreateAction.CREATE),
    ("a delete was recorded last", creation(write=write("delete", NAME)), CreateAction.CREATE),
    ("attempts exhausted", creation(rotation(attempt=6)), CreateAction.FAIL),
    (
        "429, no wait asked",
        creation(rate_limited=RateLimitedError("429")),
        CreateAction.RETRY_LATER,
    ),
    (
        "429, a wait within a poll",
        creation(rate_limited=RateLimitedError("429", retry_after=10)),
        CreateAction.RETRY_LATER,
    ),
    (
        "429, a wait past a poll",
        creation(rate_limited=RateLimitedError("429", retry_after=3600)),
        CreateAction.STALL,
    ),
    (
        "published by a crashed pass",
        creation(pending=PENDING, published=True),
        CreateAction.RECOVER_PUBLISH,
    ),
    ("value saved, not verified", creation(pending=PENDING), CreateAction.VERIFY),
    (
        "verified an earlier attempt",
        creation(rotation(verified_at=T0, verified_attempt=0), pending=PENDING),
        CreateAction.VERIFY,
    ),
    ("verify refused", creation(pending=PENDING, verify_failure="401"), CreateAction.FAIL),
    (
        "within usage_lag",
        creation(rotation(**VERIFIED), pending=PENDING, now=T0 + 10),
        CreateAction.WAIT,
    ),
    (
        "usage_lag over, not listed yet",
        creation(rotation(**VERIFIED), pending=PENDING, now=T0 + LAG),
        CreateAction.TAKE_BASELINE,
    ),
    (
        "listed without the new key",
        creation(rotation(**VERIFIED), pending=PENDING, now=T0 + LAG, listing=listing()),
        CreateAction.FAIL,
    ),
    (
        "the new key listed unreadable",
        creation(
            rotation(**VERIFIED),
            pending=PENDING,
            now=T0 + LAG,
            listing=listing(KeyRecord(id="new", name="", problem="bad type")),
        ),
        CreateAction.FAIL,
    ),
    (
        "the new key listed with other permissions",
        creation(
            rotation(**VERIFIED),
            pending=PENDING,
            now=T0 + LAG,
            listing=listing(new_key(allowed_providers=("mistral",))),
        ),
        CreateAction.FAIL,
    ),
    (
        "no last_used_at yet (dialect B): one more usage_lag",
        creation(rotation(**VERIFIED), pending=PENDING, now=T0 + LAG, listing=listing(new_key())),
        CreateAction.WAIT,
    ),
    (
        "no last_used_at in dialect A: the baseline as is",
        creation(
            rotation(**VERIFIED),
            pending=PENDING,
            now=T0 + LAG,
            listing=listing(new_key()),
            dialect_a=True,
        ),
        CreateAction.PUBLISH,
    ),
    (
        "the verify shows",
        creation(
            rotation(**VERIFIED),
            pending=PENDING,
            now=T0 + LAG,
            listing=listing(new_key(last_used_at=stamp(1))),
        ),
        CreateAction.PUBLISH,
    ),
    (
        "still unseen after two usage_lags",
        creation(
            rotation(**VERIFIED),
            pending=PENDING,
            now=T0 + 2 * LAG,
            listing=listing(new_key(), asked_at=T0 + 2 * LAG),
        ),
        CreateAction.PUBLISH,
    ),
]


@pytest.mark.parametrize(
    ("facts", "action"), [(f, a) for _, f, a in CREATION_CASES], ids=[c[0] for c in CREATION_CASES]
)
def test_creation(facts: CreationFacts, action: CreateAction) -> None:
    """INTENT: create, a new attempt after a possibly lost create, verify, wait, baseline,
    publish, fail, or recover a publish, from the facts alone."""
    decision = decide_creation(facts)
    assert decision.action == action
    assert decision.reason
    if action == CreateAction.PUBLISH:
        assert decision.mark is not None


def test_a_long_rate_limit_stalls_naming_the_wait() -> None:
    """A 429 asking for an hour stalls as rate-limited, saying until when (UTC)."""
    decision = decide_creation(creation(rate_limited=RateLimitedError("429", retry_after=3600)))
    assert decision.reason == reasons.RATE_LIMITED
    assert "3600s" in decision.detail
    assert "nothing was created" in decision.detail


# -- PUBLISHED -----------------------------------------------------------------------------

PUBLISHED_ROT = rotation(
    new_key_id="new",
    published_version=2,
    published_at=T0,
    pickup_deadline=T0 + 3600,
    baseline=UseMark(stamp(0).isoformat()),
)
OURS = Versioned({"key_id": "new"}, 2)
OLD = KeyRecord(id="old", name="orig", last_used_at=stamp(-10))
NEW_USED = new_key(last_used_at=stamp(30))
PICKED = {"pickup_at": T0 + 60, "drain_deadline": T0 + 7200}


def published(
    rot: Rotation = PUBLISHED_ROT,
    *keys: KeyRecord,
    now: float = T0 + 100,
    secret: Versioned | None = OURS,
    **facts: Any,
) -> PublishedFacts:
    base: dict[str, Any] = {
        "rotation": rot,
        "write": None,
        "secret": secret,
        "obs": Observation.of(list(keys), now),
        "unreadable": {},
        "names": frozenset({NAME, "test-app-r1.2"}),
        "timing": TIMING,
        "now": now,
    }
    return PublishedFacts(**(base | facts))


QUIET = {"old_mark": UseMark(stamp(-10).isoformat()), "old_mark_since": T0}
PUBLISHED_CASES: list[tuple[str, PublishedFacts, PublishedAction]] = [
    (
        "the secret moved on",
        published(secret=Versioned({"key_id": "new"}, 3)),
        PublishedAction.STALL,
    ),
    (
        "the secret serves another key",
        published(secret=Versioned({"key_id": "x"}, 2)),
        PublishedAction.STALL,
    ),
    ("the secret is gone", published(secret=None), PublishedAction.STALL),
    (
        "a delete of the old key was cut, the key still listed",
        published(PUBLISHED_ROT, OLD, write=write("delete", "old")),
        PublishedAction.DELETE_OLD,
    ),
    (
        "a delete of the old key was cut, the key listed unreadable",
        published(write=write("delete", "old"), unreadable={"old": "bad name"}),
        PublishedAction.DELETE_OLD,
    ),
    (
        "a delete of the old key was cut after it went through: not redone",
        published(write=write("delete", "old")),
        PublishedAction.OLD_GONE,
    ),
    (
        "a stray of an earlier attempt",
        published(PUBLISHED_ROT, KeyRecord(id="stray", name="test-app-r1.2"), OLD),
        PublishedAction.SWEEP,
    ),
    (
        "the old key deleted",
        published(PUBLISHED_ROT.evolve(old_deleted=True)),
        PublishedAction.FINISH,
    ),
    (
        "no old key (first run)",
        published(PUBLISHED_ROT.evolve(old_key_id=None)),
        PublishedAction.FINISH,
    ),
    (
        "revoke-old-now",
        published(PUBLISHED_ROT.evolve(revoke_old_now=True)),
        PublishedAction.DELETE_OLD,
    ),
    (
        "no use beyond the baseline yet",
        published(PUBLISHED_ROT, OLD, new_key()),
        PublishedAction.WAIT,
    ),
    (
        "no pickup by the deadline",
        published(PUBLISHED_ROT, OLD, new_key(), now=T0 + 3600),
        PublishedAction.STALL,
    ),
    (
        "picked up: the old key starts draining",
        published(PUBLISHED_ROT, OLD, NEW_USED),
        PublishedAction.WAIT,
    ),
    (
        "picked up in an emergency",
        published(PUBLISHED_ROT.evolve(mode=reasons.EMERGENCY), OLD, NEW_USED),
        PublishedAction.DELETE_OLD,
    ),
    (
        "old key quiet long enough",
        published(PUBLISHED_ROT.evolve(**PICKED, **QUIET), OLD, NEW_USED, now=T0 + 700),
        PublishedAction.DELETE_OLD,
    ),
    (
        "old key quiet, disable first",
        published(
            PUBLISHED_ROT.evolve(**PICKED, **QUIET),
            OLD,
            NEW_USED,
            now=T0 + 700,
            timing=replace(TIMING, disable_before_delete=600),
        ),
        PublishedAction.DISABLE_OLD,
    ),
    (
        "old key quiet but not in this pass",
        published(PUBLISHED_ROT.evolve(**PICKED, **QUIET), NEW_USED, now=T0 + 700),
        PublishedAction.WAIT,
    ),
    (
        "disabled, waiting to delete",
        published(
            PUBLISHED_ROT.evolve(**PICKED, old_disabled_at=T0 + 700),
            OLD,
            now=T0 + 800,
            timing=replace(TIMING, disable_before_delete=600),
        ),
        PublishedAction.WAIT,
    ),
    (
        "disabled long enough",
        published(
            PUBLISHED_ROT.evolve(**PICKED, old_disabled_at=T0 + 700),
            OLD,
            now=T0 + 1300,
            timing=replace(TIMING, disable_before_delete=600),
        ),
        PublishedAction.DELETE_OLD,
    ),
    (
        "the old key still used at the drain deadline",
        published(
            PUBLISHED_ROT.evolve(**PICKED),
            KeyRecord(id="old", name="orig", last_used_at=stamp(7199)),
            now=T0 + 7200,
        ),
        PublishedAction.STALL,
    ),
]


@pytest.mark.parametrize(
    ("facts", "action"),
    [(f, a) for _, f, a in PUBLISHED_CASES],
    ids=[c[0] for c in PUBLISHED_CASES],
)
def test_published(facts: PublishedFacts, action: PublishedAction) -> None:
    """PUBLISHED: the secret first, a cut delete redone, then sweep, pickup, drain, delete."""
    assert decide_published_pass(facts).action == action


def test_a_stall_while_a_judged_key_is_unreadable_says_so() -> None:
    """A deadline passing while the new key is listed unreadable stalls with a note saying so."""
    facts = published(PUBLISHED_ROT, OLD, now=T0 + 3600, unreadable={"new": "bad type"})
    decision = decide_published_pass(facts)
    assert (decision.action, decision.reason) == (PublishedAction.STALL, reasons.PICKUP_TIMEOUT)
    assert "new is listed unreadable (bad type)" in decision.detail


# -- ABORTING ------------------------------------------------------------------------------

ABORT_ROT = PUBLISHED_ROT.evolve(aborted_at=T0 + 100)
RESTORED = ABORT_ROT.evolve(republished_version=3, abort_deadline=T0 + 7300)
NEW_QUIET = {"new_mark": UseMark(stamp(30).isoformat()), "new_mark_since": T0 + 100}


def aborting(rot: Rotation, *keys: KeyRecord, now: float = T0 + 200, **facts: Any) -> AbortingFacts:
    base: dict[str, Any] = {
        "rotation": rot,
        "write": None,
        "obs": Observation.of(list(keys), now),
        "unreadable": {},
        "names": frozenset({NAME}),
        "timing": TIMING,
        "now": now,
    }
    return AbortingFacts(**(base | facts))


ABORTING_CASES: list[tuple[str, AbortingFacts, AbortAction]] = [
    ("the old secret not back yet", aborting(ABORT_ROT), AbortAction.REPUBLISH),
    (
        "a delete of the new key was cut, the key still listed",
        aborting(RESTORED, new_key(), write=write("delete", "new")),
        AbortAction.REDO_DELETE_NEW,
    ),
    (
        "a delete of the new key was cut, the key listed unreadable",
        aborting(RESTORED, write=write("delete", "new"), unreadable={"new": "bad name"}),
        AbortAction.REDO_DELETE_NEW,
    ),
    (
        "a delete of the new key was cut after it went through: not redone",
        aborting(RESTORED, write=write("delete", "new")),
        AbortAction.NEW_GONE,
    ),
    ("the new key still used", aborting(RESTORED, NEW_USED), AbortAction.WAIT),
    (
        "the new key quiet long enough",
        aborting(RESTORED.evolve(**NEW_QUIET), NEW_USED, now=T0 + 800),
        AbortAction.DELETE_NEW,
    ),
    (
        "the new key still used at the deadline",
        aborting(RESTORED, new_key(last_used_at=stamp(7299)), now=T0 + 7300),
        AbortAction.STALL,
    ),
    (
        "new key deleted, a key of this rotation still listed",
        aborting(RESTORED.evolve(new_deleted=True), new_key()),
        AbortAction.SWEEP,
    ),
    (
        "new key deleted, nothing left",
        aborting(RESTORED.evolve(new_deleted=True)),
        AbortAction.FINISH,
    ),
]


@pytest.mark.parametrize(
    ("facts", "action"), [(f, a) for _, f, a in ABORTING_CASES], ids=[c[0] for c in ABORTING_CASES]
)
def test_aborting(facts: AbortingFacts, action: AbortAction) -> None:
    """ABORTING: republish, drain the new key, delete it, sweep, finish."""
    assert decide_aborting_pass(facts).action == action


# -- CLEANUP and the outcomes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "created", "action"),
    [
        ((new_key(),), "", CleanupAction.DELETE_KEYS),
        ((KeyRecord(id="new", name="garbled\x00"),), "new", CleanupAction.DELETE_KEYS),
        ((KeyRecord(id="other", name="someone-else"),), "new", CleanupAction.FINISH),
        ((), "", CleanupAction.FINISH),
    ],
    ids=["by name", "by the id the create answered", "only others' keys", "nothing listed"],
)
def test_cleanup(keys: tuple[KeyRecord, ...], created: str, action: CleanupAction) -> None:
    """CLEANUP: every key of this rotation (by name or by its created id) goes, then finish."""
    facts = CleanupFacts(rotation(), Observation.of(list(keys), T0), frozenset({NAME}), created)
    assert decide_cleanup(facts).action == action


def test_cleanup_never_deletes_the_key_the_consumer_secret_serves() -> None:
    """CLEANUP whose key is served after all (a publish no record caught) stalls, deleting none."""
    facts = CleanupFacts(
        rotation(), Observation.of([new_key()], T0), frozenset({NAME}), "new", served="new"
    )
    decision = decide_cleanup(facts)
    assert decision.action == CleanupAction.STALL
    assert decision.sweep_ids == ()
    assert decision.reason == reasons.SECRET_CHANGED


@pytest.mark.parametrize(
    ("changes", "outcome"),
    [
        ({}, OutcomeName.SUCCEEDED),
        ({"old_missing": True, "old_key_id": None}, OutcomeName.SUCCEEDED_ATTENTION),
        ({"old_key_id": None}, OutcomeName.SUCCEEDED_OLD_UNKNOWN),
        ({"old_key_id": None, "start_version": 0}, OutcomeName.SUCCEEDED),
        ({"mode": reasons.EMERGENCY, "revoke_old_now": True}, OutcomeName.SUCCEEDED_REVOKED),
        ({"mode": reasons.EMERGENCY}, OutcomeName.SUCCEEDED_EMERGENCY),
    ],
)
def test_success_outcome(changes: dict[str, Any], outcome: OutcomeName) -> None:
    """The outcome of a published rotation done is chosen from the rotation alone."""
    assert success_ending(PUBLISHED_ROT.evolve(**changes)).outcome == outcome


def test_unpublished_and_operator_outcomes() -> None:
    """Before publish: aborted if an operator asked, else failed-verify; keep-old says why."""
    assert unpublished_ending(rotation(failure="401")).outcome == OutcomeName.FAILED_VERIFY
    aborted = unpublished_ending(rotation(failure="aborted", aborted_at=T0))
    assert aborted.outcome == OutcomeName.ABORTED
    kept = keep_old_ending(PUBLISHED_ROT)
    assert kept.outcome == OutcomeName.FINISHED_KEEP_OLD
    assert "old still exists" in kept.detail


# -- the table itself ----------------------------------------------------------------------


def test_the_table_covers_every_phase_and_each_row_decides_its_own_actions() -> None:
    """Every Phase has a row; each row's decide function returns that row's Action enum."""
    assert set(TABLE) == set(Phase)
    assert {row.actions for row in TABLE.values()} == set(ACTIONS)
    for row in TABLE.values():
        returned = typing.get_type_hints(row.decide)["return"]
        assert typing.get_args(returned) == (row.actions,)


def test_every_action_is_handled_by_its_rows_effects() -> None:
    """Each row's apply matches every member of its Action enum, ending in assert_never (so a
    new action nobody handles also fails mypy --strict)."""
    for phase, row in TABLE.items():
        source = inspect.getsource(row.apply)
        assert "assert_never(decision.action)" in source, phase
        handled = set(re.findall(rf"(?:case|\|) {row.actions.__name__}\.(\w+)", source))
        assert handled == {member.name for member in row.actions}, phase


def test_transitions_are_the_records_methods_and_refuse_the_rest() -> None:
    """A phase changes only through the record's named transitions, along NEXT_PHASES."""
    idle = StateRecord.new("e", "k")
    intent = idle.start(rotation(), dialect="b")
    assert intent.phase == Phase.INTENT
    assert intent.publish(new_key_id="new").phase == Phase.PUBLISHED
    assert intent.begin_cleanup("why").phase == Phase.CLEANUP
    assert intent.publish().begin_abort(T0).phase == Phase.ABORTING
    with pytest.raises(EngineError):
        idle.publish()
    with pytest.raises(EngineError):
        intent.begin_abort(T0)
    assert set(NEXT_PHASES) == set(Phase)


def test_no_phase_changes_outside_the_record() -> None:
    """No module of the engine but state.py sets a phase by hand."""
    engine = Path(__file__).resolve().parents[1] / "vault_rotator"
    offenders = [
        str(path)
        for path in engine.rglob("*.py")
        if path.name != "state.py" and re.search(r"evolve\([^)]*phase=", path.read_text())
    ]
    assert offenders == []
