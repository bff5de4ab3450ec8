"""The environment-wide emergency request without Vault: its stored schema, the pure per-key
decisions, the store's check-and-set (on MemoryKv), the progress view and the CLI's refusals."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault_rotator import cli
from vault_rotator.daemon.emergencies import Emergencies, open_request
from vault_rotator.daemon.notify import Notifier
from vault_rotator.engine import reasons
from vault_rotator.engine.emergency import (
    INLINE_SCHEMA,
    EmergencyRequest,
    KeyEntry,
    Step,
    emergency_path,
    new_request,
    resumed,
)
from vault_rotator.engine.emergency_codec import (
    MAX_DETAIL,
    as_stored,
    from_stored,
    header_doc,
    shard_docs,
    shard_path,
)
from vault_rotator.engine.emergency_decide import KeyAction, after_pass, decide_key, merged
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.emergency_view import (
    exit_code,
    line_of,
    progress_line,
    rate_and_eta,
    summary_lines,
    view,
    webhook_event,
)
from vault_rotator.engine.engine import Engine, Progress
from vault_rotator.engine.reasons import Phase
from vault_rotator.engine.state import Outcome, Rotation, Stall, StateRecord
from vault_rotator.errors import StoreError
from vault_rotator.policy import KeyPolicy, load_policies, vaultacl
from vault_rotator.ports.provider import NO_PERMISSIONS, KeyProvider
from vault_rotator.store.memory import MemoryKv
from vault_rotator.testing.clock import FakeClock

T0 = 1_800_000_000.0
WHERE = "secret/vault-rotator/emergency/prod"


def request(**changes: Any) -> EmergencyRequest:
    base = new_request(
        "req1", "prod", ["a", "b", "c"], by="alice@host", trigger="cli", revoke_old_now=False,
        now=T0,
    )  # fmt: skip
    return base.evolve(**changes)


def rotation(rid: str = "r1", **changes: Any) -> Rotation:
    return Rotation(
        id=rid, attempt=1, date="2027-01-15", policy={}, permissions=NO_PERMISSIONS,
        started_at=T0, start_version=1, **changes,
    )  # fmt: skip


def in_flight(phase: Phase = Phase.PUBLISHED, **changes: Any) -> StateRecord:
    return StateRecord.new("prod", "a").evolve(phase=phase, rotation=rotation(**changes))


def idle(*outcomes: Outcome) -> StateRecord:
    return StateRecord.new("prod", "a").evolve(outcomes=outcomes)


def outcome(name: str, *, rid: str = "r1", at: float = T0 + 60, trigger: str = "cli") -> Outcome:
    return Outcome(rotation_id=rid, outcome=name, at=at, trigger=trigger)


# -- the stored schema -------------------------------------------------------------------------


def test_a_request_survives_its_stored_form() -> None:
    """to_dict then from_dict gives the same request, empty key fields left out of the store."""
    req = request(revoke_old_now=True, settled_at=T0 + 5).with_keys(
        {"a": KeyEntry(Step.DONE, T0 + 3, T0, rotation_id="r1", outcome="succeeded-emergency")},
        T0 + 3,
    )
    stored = req.to_dict()
    assert stored["schema"] == INLINE_SCHEMA == 1
    assert stored["keys"]["b"] == {"step": "queued", "at": T0, "since": T0}
    assert EmergencyRequest.from_dict(stored, WHERE, version=4) == req.evolve(version=4)


def test_the_store_keeps_a_small_header_and_key_shards_and_reads_schema_1() -> None:
    """Schema 2: the header at the request's path holds no key, the keys sit in shards under
    the request's id; a schema-1 request is read and rewritten as schema 2 at its change."""
    kv = MemoryKv()
    store = EmergencyStore(kv, "vault-rotator")
    names = [f"k{i:04d}" for i in range(450)]
    req = new_request("req1", "prod", names, by="a", trigger="cli", revoke_old_now=False, now=T0)
    prior = KeyEntry(Step.ABORTING, T0 + 1, T0, prior="r0", detail="x" * 1000)
    req = req.with_keys({"k0001": prior}, T0 + 1)
    saved = store.update("prod", lambda _current: req)
    assert saved is not None
    assert saved.shard_versions == (1, 1, 1)
    header = kv.read(emergency_path("vault-rotator", "prod"))
    assert header is not None
    assert (header.data["schema"], header.data["shards"], "keys" in header.data) == (2, 3, False)
    back = store.read("prod")
    assert back is not None
    assert back.keys["k0001"] == dataclasses.replace(prior, detail="x" * MAX_DETAIL)
    assert back.keys.keys() == req.keys.keys()
    moved = {"k0300": KeyEntry(Step.CREATING, T0 + 2, T0, "r3")}
    again = store.update("prod", lambda current: current and current.with_keys(moved, T0 + 2))
    assert again is not None
    assert again.shard_versions == (1, 2, 1)  # only the shard that changed was written
    old = request(env="old")  # a request names the environment of its path
    kv.write(emergency_path("vault-rotator", "old"), old.to_dict(), cas=0)
    assert store.read("old") == old.evolve(version=1)
    short = {"a": dataclasses.replace(prior, detail="cut")}
    upgraded = store.update("old", lambda c: c and c.with_keys(short, T0 + 3))
    assert upgraded is not None
    assert store.read("old") == upgraded
    newer = kv.read(emergency_path("vault-rotator", "old"))
    assert newer is not None
    assert newer.data["schema"] == 2
    kv.write(emergency_path("vault-rotator", "old"), {**newer.data, "schema": 3}, cas=2)
    with pytest.raises(StoreError, match="newer vault-rotator \\(schema 3"):
        store.read("old")


def test_the_largest_record_of_a_10000_key_request_fits_default_openbao_limits() -> None:
    """At 10,000 keys, all done with long ids and details, no record holds more than 1000 JSON
    strings (a listener's max_request_json_strings) nor 512 KiB (raft's entry is 1 MiB)."""
    names = [f"tenant-{i:05d}-service-name" for i in range(10_000)]
    req = new_request("req1", "prod", names, by="a", trigger="cli", revoke_old_now=True, now=T0)
    done = KeyEntry(
        Step.STALLED, T0 + 123.456789, T0 + 0.123456, "mab13xyzab", reasons.SUCCEEDED_REVOKED,
        "pickup-timeout: " + "consumers never used the new key " * 20, "mab12prior",
    )  # fmt: skip
    req = req.with_keys(dict.fromkeys(names, done), T0 + 500)
    records = [header_doc(req), *shard_docs(req)]
    assert len(records) == 51
    for record in records:
        body = json.dumps({"data": record, "options": {"cas": 1}})
        assert _json_strings(json.loads(body)) < 1000
        assert len(body.encode()) < 512 * 1024


def _json_strings(value: Any) -> int:
    if isinstance(value, str):
        return 1
    if isinstance(value, dict):
        return sum(1 + _json_strings(v) for v in value.values())
    if isinstance(value, list):
        return sum(_json_strings(v) for v in value)
    return 0


def test_a_newer_schema_is_refused_in_one_line_naming_the_path() -> None:
    """A request written by a newer vault-rotator is neither read nor overwritten."""
    stored = {**request().to_dict(), "schema": 3}
    with pytest.raises(StoreError) as caught:
        EmergencyRequest.from_dict(stored, WHERE)
    message = str(caught.value)
    assert WHERE in message
    assert "newer vault-rotator (schema 3" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"schema": None}, "schema"),
        ({"schema": "1"}, "schema"),
        ({"id": ""}, "id"),
        ({"requested_at": "yesterday"}, "requested_at"),
        ({"requested_at": True}, "requested_at"),
        ({"revoke_old_now": "yes"}, "revoke_old_now"),
        ({"keys": {}}, "keys"),
        ({"keys": []}, "keys"),
        ({"keys": {"a": "queued"}}, "keys.a"),
        ({"keys": {"a": {"step": "flying", "at": 1, "since": 1}}}, "keys.a.step"),
        ({"keys": {"a": {"step": "done", "since": 1}}}, "at"),
        ({"keys": {"a": {"step": "done", "at": 1, "since": 1, "outcome": 3}}}, "keys.a"),
        ({"keys": {"a": {"step": "done", "at": 1, "since": 1, "detail": ["x"]}}}, "detail"),
        ({"settled_at": "soon"}, "settled_at"),
    ],
)
def test_a_malformed_request_is_a_one_line_store_error(change: dict[str, Any], named: str) -> None:
    """Each malformed field is one line naming the record's path and the field, no traceback."""
    stored = {**request().to_dict(), **change}
    with pytest.raises(StoreError) as caught:
        EmergencyRequest.from_dict(stored, WHERE)
    message = str(caught.value)
    assert message.startswith(f"emergency request at {WHERE} is malformed")
    assert named in message
    assert "\n" not in message


def test_the_policy_generator_grants_exactly_the_requests_path() -> None:
    """vault-policy's layout of the request path is the engine's."""
    assert vaultacl.emergency_path("some/prefix", "prod") == emergency_path("some/prefix", "prod")


# -- which rotation is the request's, and what each key needs (pure) ---------------------------


def test_an_idle_key_with_nothing_of_the_request_is_started() -> None:
    """No outcome of ours: start, even after a normal rotation that ended after the request."""
    req = request()
    normal_after = outcome(reasons.SUCCEEDED, at=T0 + 100)
    for record in (idle(), idle(normal_after)):
        action, entry = decide_key(req, req.keys["a"], record, T0 + 200)
        assert (action, entry.step) == (KeyAction.START, Step.QUEUED)


@pytest.mark.parametrize(
    ("entry_rid", "ended", "step"),
    [
        ("r1", outcome(reasons.SUCCEEDED_EMERGENCY), Step.DONE),
        ("r1", outcome(reasons.SUCCEEDED), Step.DONE),  # an upgraded rotation's id was kept
        (None, outcome(reasons.SUCCEEDED_EMERGENCY), Step.DONE),  # crash before the id was saved
        (None, outcome(reasons.SUCCEEDED_REVOKED), Step.DONE),
        (None, outcome(reasons.ABORTED, trigger="emergency:req1"), Step.ENDED),
        ("r1", outcome(reasons.FINISHED_KEEP_OLD), Step.ENDED),
        ("r1", outcome(reasons.FAILED_VERIFY), Step.FAILED),
        ("r1", outcome("some-newer-outcome"), Step.FAILED),
    ],
)
def test_a_rotation_of_the_request_that_ended_settles_the_key(
    entry_rid: str | None, ended: Outcome, step: Step
) -> None:
    """A rerun never starts a key whose request rotation ended: it records how it ended."""
    req = request()
    entry = dataclasses.replace(req.keys["a"], rotation_id=entry_rid)
    action, after = decide_key(req, entry, idle(ended), T0 + 200)
    assert (action, after.step, after.outcome) == (KeyAction.NONE, step, ended.outcome)


def test_endings_before_the_keys_since_or_of_another_rotation_are_not_the_requests() -> None:
    """An emergency success before the request, or of another rotation id, is not taken."""
    req = request()
    before = outcome(reasons.SUCCEEDED_EMERGENCY, at=T0 - 1)
    action, _ = decide_key(req, req.keys["a"], idle(before), T0 + 10)
    assert action == KeyAction.START
    entry = dataclasses.replace(req.keys["a"], rotation_id="r2", step=Step.AWAITING_PICKUP)
    action, after = decide_key(req, entry, idle(outcome(reasons.SUCCEEDED_EMERGENCY)), T0 + 10)
    assert (action, after.step) == (KeyAction.NONE, Step.FAILED)  # r2 ended unseen: say so
    assert "r2" in after.detail


@pytest.mark.parametrize(
    ("record", "revoke", "action", "step"),
    [
        (in_flight(Phase.INTENT), False, KeyAction.UPGRADE, Step.CREATING),
        (in_flight(mode=reasons.EMERGENCY), False, KeyAction.DRIVE, Step.AWAITING_PICKUP),
        (in_flight(mode=reasons.EMERGENCY), True, KeyAction.UPGRADE, Step.AWAITING_PICKUP),
        (in_flight(mode=reasons.EMERGENCY, pickup_at=T0), False, KeyAction.DRIVE, Step.DRAINING),
        (
            in_flight(mode=reasons.EMERGENCY, stalled=Stall("pickup-timeout", "no use", T0)),
            False,
            KeyAction.NONE,
            Step.STALLED,
        ),
        (  # a stalled normal rotation is upgraded (which clears its stall), as rotate --emergency
            in_flight(stalled=Stall("drain-timeout", "busy", T0)),
            False,
            KeyAction.UPGRADE,
            Step.STALLED,
        ),
    ],
)
def test_a_rotation_in_flight_is_upgraded_or_driven(
    record: StateRecord, revoke: bool, action: KeyAction, step: Step
) -> None:
    """In flight: normal (or short of --revoke-old-now) is upgraded, emergency driven, stalled
    left to an operator; the rotation's id becomes the request's for that key."""
    req = request(revoke_old_now=revoke)
    got, entry = decide_key(req, req.keys["a"], record, T0 + 5)
    assert (got, entry.step, entry.rotation_id) == (action, step, "r1")


def test_a_rotation_published_before_the_request_is_upgraded_then_followed_by_its_own() -> None:
    """A new key published before the request may have leaked too: the rotation in flight is
    upgraded as the key's prior, its success is not the request's, and a fresh one starts."""
    req = request()
    published = in_flight(published_at=T0 - 600, new_key_id="k-new")
    action, entry = decide_key(req, req.keys["a"], published, T0 + 5)
    assert (action, entry.rotation_id, entry.prior) == (KeyAction.UPGRADE, None, "r1")
    upgraded = in_flight(published_at=T0 - 600, mode=reasons.EMERGENCY)
    assert decide_key(req, entry, upgraded, T0 + 6)[0] == KeyAction.DRIVE
    done = outcome(reasons.SUCCEEDED_EMERGENCY, at=T0 + 60)
    passed = after_pass(entry, Progress("prod/a", Phase.IDLE, "r1", outcome=done), T0 + 60)
    assert (passed.step, passed.rotation_id, passed.prior) == (Step.QUEUED, None, "r1")
    action, entry = decide_key(req, passed, idle(done), T0 + 90)
    assert (action, entry.step) == (KeyAction.START, Step.QUEUED)
    after = in_flight(published_at=T0 + 30)  # published after the request: the request's
    assert decide_key(req, req.keys["a"], after, T0 + 31)[1].rotation_id == "r1"


@pytest.mark.parametrize(
    "record",
    [
        in_flight(Phase.ABORTING, aborted_at=T0 - 5),
        in_flight(Phase.ABORTING, mode=reasons.EMERGENCY),  # first seen aborting
        in_flight(Phase.CLEANUP),
        in_flight(Phase.PUBLISHED, aborted_at=T0 - 5),
    ],
)
def test_an_abort_in_progress_before_the_request_is_followed_by_a_fresh_rotation(
    record: StateRecord,
) -> None:
    """An abort that began before the request (or is under way when first seen) restores the
    leaked key: it is driven to its end, then the request starts its own rotation."""
    req = request()
    action, entry = decide_key(req, req.keys["a"], record, T0 + 5)
    assert (action, entry.rotation_id, entry.prior) == (KeyAction.DRIVE, None, "r1")
    aborted = outcome(reasons.ABORTED, at=T0 + 20)
    action, entry = decide_key(req, entry, idle(aborted), T0 + 30)
    assert (action, entry.step) == (KeyAction.START, Step.QUEUED)


def test_only_an_abort_of_the_requests_own_rotation_ends_the_key() -> None:
    """The request's rotation (its id recorded) aborted after requested_at: the key is ended."""
    req = request()
    entry = dataclasses.replace(req.keys["a"], rotation_id="r1", step=Step.AWAITING_PICKUP)
    aborting = in_flight(Phase.ABORTING, mode=reasons.EMERGENCY, aborted_at=T0 + 9)
    assert decide_key(req, entry, aborting, T0 + 10)[1].prior is None
    action, after = decide_key(req, entry, idle(outcome(reasons.ABORTED, at=T0 + 20)), T0 + 30)
    assert (action, after.step) == (KeyAction.NONE, Step.ENDED)


def test_the_requests_tag_is_checked_before_the_keys_since() -> None:
    """An outcome tagged with the request is its own even when another host's clock put it
    before requested_at; a rerun's requeued key does not take its earlier failed rotation."""
    req = request()
    skewed = outcome(reasons.SUCCEEDED_EMERGENCY, at=T0 - 2, trigger=req.tag)
    action, entry = decide_key(req, req.keys["a"], idle(skewed), T0 + 10)
    assert (action, entry.step) == (KeyAction.NONE, Step.DONE)
    failed = outcome(reasons.FAILED_VERIFY, at=T0 + 20, trigger=req.tag)
    requeued = KeyEntry(Step.QUEUED, T0 + 50, T0 + 50)
    assert decide_key(req, requeued, idle(failed), T0 + 51)[0] == KeyAction.START


def test_a_pass_moves_the_entry_to_its_step_or_ending() -> None:
    """after_pass reads the pass's progress: phase, stall, outcome."""
    entry = request().keys["a"]
    moved = after_pass(entry, Progress("prod/a", Phase.INTENT, "r1"), T0 + 1)
    assert (moved.step, moved.rotation_id, moved.at) == (Step.CREATING, "r1", T0 + 1)
    stalled = Progress("prod/a", Phase.PUBLISHED, "r1", stalled=Stall("pickup-timeout", "x", T0))
    assert after_pass(moved, stalled, T0 + 2).step == Step.STALLED
    done = Progress("prod/a", Phase.IDLE, "r1", outcome=outcome(reasons.SUCCEEDED_EMERGENCY))
    assert after_pass(moved, done, T0 + 3).step == Step.DONE
    assert after_pass(moved, Progress("prod/a", Phase.IDLE), T0 + 4) == moved


def test_merging_keeps_an_ending_another_writer_saw() -> None:
    """Over a concurrent write: a key it saw end stays ended; other changes are ours."""
    stored = request().with_keys({"a": KeyEntry(Step.DONE, T0 + 9, T0, "r1", "succeeded")}, T0)
    ours = {
        "a": KeyEntry(Step.AWAITING_PICKUP, T0 + 5, T0, "r1"),
        "b": KeyEntry(Step.CREATING, T0 + 5, T0, "r2"),
    }
    out = merged(stored, ours, T0 + 10)
    assert (out.keys["a"].step, out.keys["b"].step) == (Step.DONE, Step.CREATING)


def test_a_failed_key_waits_for_a_rerun_instead_of_being_retried_every_round() -> None:
    """A key whose start was refused stays failed in rounds; resumed (a rerun) starts it."""
    req = request()
    failed = KeyEntry(Step.FAILED, T0 + 1, T0, detail="the Vault token lacks ...")
    assert decide_key(req, failed, idle(), T0 + 30) == (KeyAction.NONE, failed)
    again = resumed(req.with_keys({"a": failed}, T0 + 1), revoke_old_now=False, now=T0 + 40)
    assert decide_key(again, again.keys["a"], idle(), T0 + 41)[0] == KeyAction.START


def test_a_rerun_queues_failed_keys_again_and_may_add_revoke_only() -> None:
    """resumed: failed keys get a fresh since; --revoke-old-now is added, never removed."""
    failed = KeyEntry(Step.FAILED, T0 + 1, T0, "r1", reasons.FAILED_VERIFY, "bad key")
    req = request(revoke_old_now=True).with_keys({"a": failed}, T0 + 1)
    again = resumed(req, revoke_old_now=False, now=T0 + 50)
    assert again.keys["a"] == KeyEntry(Step.QUEUED, T0 + 50, T0 + 50)
    assert again.revoke_old_now is True
    assert again.id == req.id


def test_a_rerun_that_requeues_keys_sends_the_requests_webhook_again() -> None:
    """A request whose webhook went out settled with a failure; a rerun requeues the key and
    clears notified_at and settled_at so its next settling is reported too."""
    failed = KeyEntry(Step.FAILED, T0 + 1, T0, "r1", reasons.FAILED_VERIFY, "bad key")
    req = request().with_keys({"a": failed, "b": failed, "c": failed}, T0 + 1)
    req = req.evolve(notified_at=T0 + 2)
    again = resumed(req, revoke_old_now=False, now=T0 + 50)
    assert (again.notified_at, again.settled_at) == (None, None)
    done = {n: KeyEntry(Step.DONE, T0 + 3, T0) for n in req.keys}
    settled = request().with_keys(done, T0 + 3).evolve(notified_at=T0 + 4)
    assert resumed(settled, revoke_old_now=True, now=T0 + 50).notified_at == T0 + 4


def test_settled_and_complete_follow_the_steps() -> None:
    """Settled when nothing moves (stalls and failures included); complete when all ended."""
    req = request()
    assert not req.settled
    stalled = req.with_keys(
        {n: KeyEntry(Step.STALLED if n == "a" else Step.DONE, T0 + 9, T0) for n in req.keys},
        T0 + 9,
    )
    assert (stalled.settled, stalled.complete, stalled.settled_at) == (True, False, T0 + 9)
    ended = stalled.with_keys({"a": KeyEntry(Step.ENDED, T0 + 20, T0)}, T0 + 20)
    assert (ended.complete, ended.completed_at, ended.settled_at) == (True, T0 + 20, T0 + 9)


# -- the store ------------------------------------------------------------------------------


def test_the_store_opens_resumes_and_renews_requests() -> None:
    """open saves a new request, resumes an open one, and makes a new one once it completed."""
    kv = MemoryKv()
    store = EmergencyStore(kv, "vault-rotator")
    first, again = store.open("prod", fresh=request, revoke_old_now=False, now=T0)
    assert (again, first.version) == (False, 1)
    assert store.read("prod") == first
    second, again = store.open(
        "prod", fresh=lambda: request(id="req2"), revoke_old_now=True, now=T0 + 1
    )
    assert (again, second.id, second.revoke_old_now) == (True, "req1", True)
    done = {n: KeyEntry(Step.DONE, T0 + 2, T0) for n in first.keys}
    store.update("prod", lambda current: current and current.with_keys(done, T0 + 2))
    third, again = store.open(
        "prod", fresh=lambda: request(id="req3"), revoke_old_now=False, now=T0 + 3
    )
    assert (again, third.id) == (False, "req3")
    assert kv.read(emergency_path("vault-rotator", "prod")) is not None


def test_a_lost_check_and_set_is_retried_on_what_the_other_wrote() -> None:
    """update re-reads after a conflicting write and applies its change to that."""
    kv = MemoryKv()
    store = EmergencyStore(kv, "vault-rotator")
    store.open("prod", fresh=request, revoke_old_now=False, now=T0)
    seen: list[int] = []

    def change(current: EmergencyRequest | None) -> EmergencyRequest | None:
        assert current is not None
        seen.append(current.version)
        if len(seen) == 1:  # another writer gets in between our read and our write
            other = current.with_keys({"b": KeyEntry(Step.CREATING, T0 + 1, T0, "r9")}, T0 + 1)
            kv.write(emergency_path("vault-rotator", "prod"), other.to_dict(), cas=current.version)
        return merged(current, {"a": KeyEntry(Step.CREATING, T0 + 2, T0, "r1")}, T0 + 2)

    saved = store.update("prod", change)
    assert saved is not None
    assert seen == [1, 2]
    assert (saved.keys["a"].step, saved.keys["b"].rotation_id) == (Step.CREATING, "r9")


# -- the view ---------------------------------------------------------------------------------


def _settled() -> EmergencyRequest:
    return request(revoke_old_now=True).with_keys(
        {
            "a": KeyEntry(Step.DONE, T0 + 30, T0, "r1", reasons.SUCCEEDED_REVOKED),
            "b": KeyEntry(Step.STALLED, T0 + 40, T0, "r2", None, "pickup-timeout: no use"),
            "c": KeyEntry(Step.SKIPPED, T0 + 1, T0, None, None, "old key unknown"),
        },
        T0 + 40,
    )


def test_the_progress_line_counts_steps_with_rate_and_eta() -> None:
    """Counts per step in order, keys settled per second, and the time left at that rate."""
    req = request().with_keys({"a": KeyEntry(Step.DONE, T0 + 10, T0, "r1", "succeeded")}, T0)
    line = progress_line(req, T0 + 10)
    assert line == "prod: emergency req1: 3 keys: queued 2, done 1; 0.10 keys/s; ETA 20s"
    assert line_of(view(req, T0 + 10)) == line
    assert "ETA unknown" in progress_line(request(), T0 + 10)


def test_the_summary_names_what_needs_an_operator_and_the_exit_code_says_so() -> None:
    """Stalled, skipped and revoked keys are listed with what to do; exit 1; event stalled."""
    req = _settled()
    doc = view(req, T0 + 50)
    text = "\n".join(summary_lines(doc, T0 + 50))
    assert "3 keys in 40s" in text
    assert "prod/b: pickup-timeout: no use" in text
    assert "skipped (1): not rotated" in text
    assert "revoked (1)" in text
    assert "prod/a" in text
    assert (exit_code(doc), webhook_event(req), doc["settled"]) == (1, "stalled", True)
    clean = req.with_keys({n: KeyEntry(Step.DONE, T0 + 50, T0) for n in req.keys}, T0 + 50)
    assert (exit_code(view(clean, T0 + 60)), webhook_event(clean)) == (0, "succeeded")


# -- the CLI refuses before touching anything --------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--env", "prod", "--emergency"], "add --yes to confirm"),
        (["--env", "prod", "--yes"], "--env needs --emergency"),
        (["--env", "prod", "--emergency", "--yes", "prod/a"], "not both"),
        (["--env", "Prod!", "--emergency", "--yes"], "not an environment name"),
        (["--yes", "prod/a"], "--yes goes with --env"),
        ([], "give ENV/NAME"),
    ],
)
def test_rotate_env_refuses_bad_flags_in_one_line_before_any_config(
    argv: list[str],
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    """Without --yes (or --emergency) nothing is read or written: exit 2, one line."""
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    code = cli.main(["rotate", *argv, "--config", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2
    assert says in err
    assert err.count("\n") == 1


def test_the_eta_counts_the_work_of_keys_still_moving() -> None:
    """A snapshot of a measured 1,000-key emergency (make bench's world), 12.5 s in: 171 keys
    done (98 of them at 7.6 s), 265 awaiting pickup, 564 being created; it ended 8.8 s later.
    The ETA is within 25 % of that (counting only the keys done said 24 s: they finish as a
    wave, not one by one)."""
    names = [f"k{i:04d}" for i in range(1000)]
    req = new_request("req1", "prod", names, by="", trigger="cli", revoke_old_now=False, now=T0)
    steps = [(98, Step.DONE, 7.6), (73, Step.DONE, 12.5), (265, Step.AWAITING_PICKUP, 12.0)]
    steps.append((564, Step.CREATING, 3.0))
    changes, at = {}, iter(names)
    for count, step, when in steps:
        for _ in range(count):
            changes[next(at)] = KeyEntry(
                step, T0 + when, T0, "r", "succeeded" if step == Step.DONE else None
            )
    _rate, eta = rate_and_eta(req.with_keys(changes, T0 + 12.5), T0 + 12.5)
    assert eta is not None
    assert 0.75 * 8.8 <= eta <= 1.25 * 8.8, eta


def test_a_key_whose_start_is_under_way_shows_creating_round_after_round(tmp_path: Path) -> None:
    """The daemon's emergency starts may outlive a tick: while a key's start is under way
    (busy), the ticks' rounds show it `creating`, never back to `queued`, and start it no
    second time; a start still waiting in the start pool's queue shows `queued` (so the pace
    and ETA count only work begun); once its pass has ended, its entry is the pass's."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    (tmp_path / "prod.yaml").write_text(
        "environment: prod\nprovider: {type: arouter, base_url: 'http://127.0.0.1:9'"
        ", management_key: {path: m}}\nvault: {kv_mount: secret, state_prefix: rot}\n"
        "require_spending_limit: false\nkeys:\n"
        "  - {name: a, secret_path: prod/a, allowed_providers: [openai]}\n"
        "  - {name: b, secret_path: prod/b, allowed_providers: [openai]}\n"
    )
    policies = load_policies(tmp_path)
    environment = policies.environments["prod"]
    engine = Engine(kv_for=lambda _m: kv, providers=_no_provider, clock=clock, sleep=clock.sleep)
    emergencies = Emergencies(engine, Notifier())
    request, _ = open_request(environment, lambda _m: kv, clock, by="ops", trigger="test",
                              revoke_old_now=False)  # fmt: skip

    def record_of(env: str, name: str) -> tuple[StateRecord, int]:
        return StateRecord.new(env, name), 0  # idle: the start has not reached the book yet

    busy = frozenset({"prod/a"})
    saved: EmergencyRequest | None = None
    for _ in range(2):
        work = emergencies.plan(policies, environment.keys, record_of, busy=busy)
        assert [job.name for _, job in work.jobs()] == ["b"]  # a: not started again
        assert emergencies.settle(work, record_of, busy=busy) == []
        saved = EmergencyStore(kv, "rot").read("prod")
        assert saved is not None
        assert (saved.keys["a"].step, saved.keys["b"].step) == (Step.CREATING, Step.QUEUED)
        clock.advance(30)
    assert saved is not None
    work = emergencies.plan(policies, environment.keys, record_of, busy=busy)
    both = frozenset({"prod/a", "prod/b"})  # b handed to the start pool too: still in its queue
    assert emergencies.settle(work, record_of, busy=both, begun=busy) == []
    saved = EmergencyStore(kv, "rot").read("prod")
    assert saved is not None
    assert (saved.keys["a"].step, saved.keys["b"].step) == (Step.CREATING, Step.QUEUED)
    work = emergencies.plan(policies, environment.keys, record_of, busy=busy)
    ended = saved.keys["a"].moved(Step.AWAITING_PICKUP, clock(), rotation_id="r1")
    emergencies.record(work.requests[0], "a", ended)
    emergencies.settle(work, record_of)
    saved = EmergencyStore(kv, "rot").read("prod")
    assert saved is not None
    assert saved.keys["a"] == ended
    assert request.id == saved.id


def _no_provider(_policy: KeyPolicy, _dialect: str | None) -> KeyProvider:
    raise AssertionError("no provider call in a round's plan or settle")


def test_a_settled_requests_pace_does_not_decay_with_time() -> None:
    """Once no key moves, the rate shown is the request's own (it kept falling as the minutes
    went by, in status and GET /v1/status)."""
    done = {n: KeyEntry(Step.DONE, T0 + 10, T0, "r", "succeeded") for n in ("a", "b", "c")}
    req = request().with_keys(done, T0 + 10)
    assert rate_and_eta(req, T0 + 10) == rate_and_eta(req, T0 + 3600)


def test_the_store_reads_the_shards_again_only_when_the_header_changed() -> None:
    """A read while the header keeps the version this store read or wrote reads only the
    header; a shard a crashed writer changed under an unchanged header is read at the next
    write (its check-and-set conflicts) and nothing is lost."""
    kv = MemoryKv()
    store = EmergencyStore(kv, "vault-rotator")
    names = [f"k{i:04d}" for i in range(450)]
    req = new_request("req1", "prod", names, by="a", trigger="cli", revoke_old_now=False, now=T0)
    assert store.update("prod", lambda _current: req) is not None
    reads: list[str] = []
    real = kv.read

    def counted(path: str, version: int | None = None) -> Any:
        reads.append(path)
        return real(path, version)

    kv.read = counted  # type: ignore[method-assign]
    first = store.read("prod")
    assert first is not None
    assert len(reads) == 1  # the header only: the shards as this store wrote them
    assert EmergencyStore(kv, "vault-rotator").read("prod") == first
    assert len(reads) == 5  # another store: the header and its three shards
    assert store.read("prod") == first
    assert len(reads) == 6  # the header only
    # a writer that crashed after its shard write: shard 1 changed, the header not
    header = real(emergency_path("vault-rotator", "prod"))
    assert header is not None
    crashed = first.with_keys({"k0300": KeyEntry(Step.CREATING, T0 + 2, T0, "r3")}, T0 + 2)
    shard = shard_path(emergency_path("vault-rotator", "prod"), "req1", 1)
    kv.write(shard, shard_docs(crashed)[1], cas=first.shard_versions[1])
    moved = {"k0301": KeyEntry(Step.CREATING, T0 + 3, T0, "r4")}
    saved = store.update("prod", lambda current: current and current.with_keys(moved, T0 + 3))
    assert saved is not None
    back = EmergencyStore(kv, "vault-rotator").read("prod")
    assert back is not None
    assert back.keys["k0300"].step == Step.CREATING  # the crashed writer's shard, kept
    assert back.keys["k0301"].step == Step.CREATING


def test_requests_open_at_once_share_the_starts_in_turn(tmp_path: Path) -> None:
    """Three environments' requests opened at once: their starts are taken one of each in
    turn, not one request's all first (each request moves at a steady pace; its ETA holds),
    and the room left in the account goes to each request alike."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    sizes = {"a": 3, "b": 1, "c": 2}
    for env, size in sizes.items():
        keys = "".join(
            f"  - {{name: k{i}, secret_path: {env}/k{i}, allowed_providers: [openai]}}\n"
            for i in range(size)
        )
        (tmp_path / f"{env}.yaml").write_text(
            f"environment: {env}\nprovider: {{type: arouter, base_url: 'http://127.0.0.1:9'"
            f", management_key: {{path: m}}}}\nvault: {{kv_mount: secret, state_prefix: rot}}\n"
            f"require_spending_limit: false\nkeys:\n{keys}"
        )
    policies = load_policies(tmp_path)
    engine = Engine(kv_for=lambda _m: kv, providers=_no_provider, clock=clock, sleep=clock.sleep)
    emergencies = Emergencies(engine, Notifier())
    for environment in policies.environments.values():
        open_request(environment, lambda _m: kv, clock, by="ops", trigger="test",
                     revoke_old_now=False)  # fmt: skip
    every = tuple(p for p in policies)
    work = emergencies.plan(policies, every, lambda env, name: (StateRecord.new(env, name), 0))
    order = [f"{found.env}/{job.name}" for found, job in work.jobs()]
    assert order == ["a/k0", "b/k0", "c/k0", "a/k1", "c/k1", "a/k2"]


@settings(max_examples=80, deadline=None)
@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from(list(Step)),
            st.integers(0, 10**6) | st.floats(0, 1e6),
            st.sampled_from(["", "r1", "r1.2"]),
            st.sampled_from(["", "succeeded", "failed"]),
            st.just("") | st.text(max_size=8) | st.text(min_size=MAX_DETAIL - 2, max_size=400),
            st.sampled_from(["", "p0"]),
        ),
        min_size=1,
        max_size=450,
    ),
    settled=st.none() | st.integers(0, 10),
)
def test_what_a_writer_keeps_is_what_reading_it_back_gives(
    entries: list[tuple[Step, float, str, str, str, str]], settled: int | None
) -> None:
    """The store keeps what it wrote instead of reading it back: it must be exactly what a
    read decodes (numbers as floats, the detail cut, empty texts as None, keys in order)."""
    keys = {
        f"k{len(entries) - i:04d}": KeyEntry(  # names not in order
            step, at, at, rid or None, outcome or None, detail, prior or None
        )
        for i, (step, at, rid, outcome, detail, prior) in enumerate(entries)
    }
    req = request(keys=keys, requested_at=int(T0), settled_at=settled)
    back = from_stored(header_doc(req), shard_docs(req), "here", 0)
    kept = as_stored(req)
    assert kept == back
    assert list(kept.keys) == list(back.keys)
    assert all(type(a) is type(b) for a, b in zip(astuple(kept), astuple(back), strict=True))


def test_the_pace_and_eta_are_those_of_the_requests_latest_change() -> None:
    """A daemon saves a request's progress once per poll, and a poll of 10,000 keys in flight
    lasts a minute: the view of the request as saved, 30 s after its latest change, shows the
    pace up to that change and the time left from it (the pace counted up to now fell between
    two saves and the ETA rose: twice the time actually left in make bench)."""
    names = [f"k{i:04d}" for i in range(100)]
    req = new_request("req1", "prod", names, by="", trigger="cli", revoke_old_now=False, now=T0)
    changes = {n: KeyEntry(Step.DONE, T0 + 60, T0, "r", "succeeded") for n in names[:30]}
    changes |= {n: KeyEntry(Step.AWAITING_PICKUP, T0 + 50, T0, "r") for n in names[30:50]}
    saved = req.with_keys(changes, T0 + 60)  # worked: 30 + 0.7 x 20 = 44 keys in 60 s
    rate, eta = rate_and_eta(saved, T0 + 90)
    assert rate == pytest.approx(44 / 60)
    assert eta == pytest.approx(56 / (44 / 60) - 30)
    assert rate_and_eta(saved, T0 + 60)[1] == pytest.approx(56 / (44 / 60))
    late = rate_and_eta(saved, T0 + 10_000)[1]
    assert late == 0.0  # past the time it should have taken: nothing is left to count down
    ahead = req.with_keys({names[0]: KeyEntry(Step.DONE, T0 + 500, T0, "r", "succeeded")}, T0)
    assert rate_and_eta(ahead, T0 + 100)[0] == pytest.approx(1 / 100)  # a clock ahead: now
