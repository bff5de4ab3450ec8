"""The chaos run (``make chaos``) in small: the figures' arithmetic, and a fast run of the
daemon SIGKILLed at every step boundary under live traffic with every must-be-zero figure 0."""

from __future__ import annotations

from typing import Any

import pytest

from vault_rotator.engine.engine import BOUNDARIES
from vault_rotator.testing import chaos, chaos_daemon, chaos_figures
from vault_rotator.testing.chaos_figures import SecretVersion
from vault_rotator.testing.vault_server import VaultServer

VALUE = "lr_live_" + "a" * 40


def _key(key_id: str, name: str, *, deleted: bool = False) -> dict[str, Any]:
    return {"id": key_id, "name": name, "deleted": deleted}


def test_plan_hits_every_boundary_first_then_alternates_with_seeded_random_moments() -> None:
    """The first kills cover each boundary once, the rest alternate; one seed, one plan."""
    steps = chaos_daemon.plan(30, seed=5)
    assert [b for b, _ in steps[: len(BOUNDARIES)]] == list(BOUNDARIES)
    rest = steps[len(BOUNDARIES) :]
    assert all(b == "" and 0.3 <= s <= 4.0 for b, s in rest[::2])
    assert all(b in BOUNDARIES for b, _ in rest[1::2])
    assert steps == chaos_daemon.plan(30, seed=5) != chaos_daemon.plan(30, seed=6)


def test_consumer_calls_counts_ok_and_failed_lines() -> None:
    """Only the shipped consumer's 'call N: HTTP S' lines count; 200 is ok, anything else failed."""
    lines = ["using key fp:1", "call 1: HTTP 200 with fp:1 (0)", "call 2: HTTP 401 with fp:1 (1)"]
    assert chaos_figures.consumer_calls(lines) == (1, 1)


def test_orphans_and_lost_compare_live_keys_with_served_ones() -> None:
    """A live key nobody serves is an orphan; a served id that is not live is lost."""
    keys = [_key("a", "x"), _key("b", "y"), _key("c", "z", deleted=True)]
    assert chaos_figures.orphans_and_lost(keys, ["a", "c"]) == (1, 1)


def test_repeated_work_counts_each_kind_but_not_a_new_attempt() -> None:
    """A name created twice, a second delete, a second secret version in one rotation and a
    delete of a foreign key are repeated work; attempts .1 and .2 of one rotation, a retry of a
    delete refused with 500, and a version someone else wrote are not."""
    keys = [
        _key("old", "k0-original", deleted=True),
        _key("n1", "e-k0-d-r1.1", deleted=True),
        _key("n2", "e-k0-d-r1.2"),
    ]
    versions = [
        SecretVersion("k0", 1, "old", None, False),
        SecretVersion("k0", 2, "n2", "r1", False),
    ]
    clean = [
        {"route": "delete", "key_id": "n1", "status": 500},  # refused: did nothing
        {"route": "delete", "key_id": "n1", "status": 204},
        {"route": "delete", "key_id": "old", "status": 204},
    ]
    assert chaos_figures.repeated_work(keys, clean, versions, ["r1"]) == []
    dirty = [
        *clean,
        {"route": "delete", "key_id": "old", "status": 404},  # found it gone: a repeat
        {"route": "delete", "key_id": "f", "status": 204},
    ]
    twice = [*keys, _key("n3", "e-k0-d-r1.2"), _key("f", "someone-else")]
    versions.append(SecretVersion("k0", 3, "n2", "r1", False, outside=True))
    assert chaos_figures.repeated_work(keys, clean, versions, ["r1"]) == []
    versions.append(SecretVersion("k0", 4, "n2", "r1", False))
    found = chaos_figures.repeated_work(twice, dirty, versions, ["r1"])
    assert len(found) == 4, found


def test_a_retry_after_a_lost_answer_is_no_repeat_but_a_second_one_is() -> None:
    """A delete the daemon logged as unanswered (a timeout) may be sent once more; a delete
    sent a third time, or twice with every answer received, is repeated work."""
    keys = [_key("old", "k0-original", deleted=True)]
    versions = [SecretVersion("k0", 1, "old", None, False)]
    twice: list[dict[str, Any]] = [
        {"route": "delete", "key_id": "old", "status": s} for s in (204, 404)
    ]
    events: list[dict[str, Any]] = [
        {"event": "arouter.request", "method": "DELETE", "route": "/api/v1/keys/old",
         "status": None, "error": "ProviderRetryableError"},
        {"event": "arouter.request", "method": "DELETE", "route": "/api/v1/keys/old",
         "status": 404},
        {"event": "arouter.request", "method": "GET", "route": "/api/v1/keys", "status": None},
    ]  # fmt: skip
    unanswered = chaos_figures.unanswered_writes(events)
    assert unanswered == {("delete", "old"): 1}
    assert chaos_figures.repeated_work(keys, twice, versions, [], unanswered) == []
    assert chaos_figures.repeated_work(keys, twice, versions, []) == ["delete repeated: old x2"]
    thrice = [*twice, {"route": "delete", "key_id": "old", "status": 404}]
    found = chaos_figures.repeated_work(keys, thrice, versions, [], unanswered)
    assert found == ["delete repeated: old x3"]


def test_secret_hits_finds_known_secrets_and_provider_key_values() -> None:
    """An exact known secret, a key-shaped string the provider knows and a Vault-token-shaped
    string are hits; a label, a fingerprint and a dotted name are not."""
    texts = ["token hvs.secret here", f"value {VALUE}", "label lr_live_aa...aaaa", "clean"]
    texts += ["issued s." + "T0k3n" * 5, "fp:0123456789abcdef keys.abcdefghijklmnopqrstuvwxyz"]
    hits = chaos_figures.secret_hits(texts, ["hvs.secret"], lambda v: v == VALUE)
    assert hits == ["text 0: known secret", "text 1: key value", "text 4: Vault token"]


def test_figures_fail_on_any_must_be_zero_figure_or_no_rotation() -> None:
    """The run fails when a must-be-zero figure is not 0, or when nothing rotated."""
    figures = chaos_figures.Figures(seed=1, rotations=3)
    assert figures.failures() == []
    assert "result=ok" in figures.line()
    figures.secret_hits = 1
    assert figures.failures() == ["secret_hits"]
    assert chaos_figures.Figures(seed=1).failures() == ["rotations"]


def _request(route: str, at: float, *, retry_after: float | None = None) -> dict[str, Any]:
    return {"route": route, "at": at, "answered": at + 0.01, "retry_after": retry_after}


def test_a_request_before_retry_after_elapsed_in_the_same_life_is_hammering() -> None:
    """After a Retry-After of 3 s, a list 0.5 s later in the same life is early; one after 3 s,
    one from the next life, one already on its way (within the grace) and another route's
    are not."""
    lives = [(0.0, 10.0), (10.0, 20.0)]
    told = _request("list", 1.0, retry_after=3.0)
    fine = [told, _request("list", 1.02), _request("create", 1.5), _request("list", 4.1)]
    assert chaos_figures.early_requests(fine, lives) == []
    across = [_request("list", 9.0, retry_after=3.0), _request("list", 10.5)]
    assert chaos_figures.early_requests(across, lives) == []
    early = [*fine, _request("list", 1.5)]
    found = chaos_figures.early_requests(early, lives)
    assert len(found) == 1
    assert "list asked again 0.49s after Retry-After 3s" in found[0]


def test_a_route_asked_more_than_the_limit_in_one_second_is_hammering() -> None:
    """The busiest second per route is counted; past RPS_LIMIT it is a sign of hammering."""
    calm = [_request("list", n * 0.2) for n in range(20)]
    assert chaos_figures.busiest_second(calm)["list"] == 5
    assert chaos_figures.hammering(calm, [(0.0, 100.0)]) == ([], 5)
    limit = chaos_figures.RPS_LIMIT
    storm = [_request("delete", 50 + n * 0.9 / limit) for n in range(limit + 1)]
    signs, busiest = chaos_figures.hammering([*calm, *storm], [(0.0, 100.0)])
    assert busiest == limit + 1
    assert signs == [f"delete: {limit + 1} requests in one second"]


def test_foreign_keys_written_deleted_or_disabled_are_counted() -> None:
    """A mutation of a foreign key, or one found deleted or disabled, counts; ours do not."""
    keys = [_key("f1", "odd"), _key("f2", "odder"), _key("k", "ours", deleted=True)]
    keys[1]["disabled"] = True
    mutations = [{"route": "delete", "key_id": "k"}, {"route": "update", "key_id": "f1"}]
    found = chaos_figures.foreign_touched(mutations, keys, ["f1", "f2"])
    assert found == ["update of foreign key f1", "foreign key f2 is disabled"]


@pytest.mark.slow
def test_fast_chaos_run_through_the_daemon_loses_nothing(vault: VaultServer) -> None:
    """Two keys under traffic, the daemon killed once at each step boundary and once at random,
    every third life after a provider fault, foreign keys with odd names on the account:
    rotations complete, every must-be-zero figure is 0 (no hammering, foreign keys untouched)."""
    figures = chaos.run(kills=len(BOUNDARIES) + 1, seed=7, keys=2, vault=vault, provider_groups=())
    assert figures.failures() == [], (figures.line(), figures.notes)
    assert figures.kills == len(BOUNDARIES) + 1
    assert figures.rotations >= 2
    assert figures.provider_faults == (len(BOUNDARIES) + 1) // 3
    assert figures.consumer_ok > 100
    assert figures.searched_texts > 20  # the debug logs, answers and consumer output were read
