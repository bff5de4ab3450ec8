"""The chaos run (``make chaos``) in small: the figures' arithmetic, and a fast run of the
daemon SIGKILLed at every step boundary under live traffic with every must-be-zero figure 0."""

from __future__ import annotations

from typing import Any

import pytest

from vault_rotator.engine.engine import BOUNDARIES
from vault_rotator.testing import chaos, chaos_figures
from vault_rotator.testing.chaos_figures import SecretVersion
from vault_rotator.testing.vault_server import VaultServer

VALUE = "lr_live_" + "a" * 40


def _key(key_id: str, name: str, *, deleted: bool = False) -> dict[str, Any]:
    return {"id": key_id, "name": name, "deleted": deleted}


def test_plan_hits_every_boundary_first_then_alternates_with_seeded_random_moments() -> None:
    """The first kills cover each boundary once, the rest alternate; one seed, one plan."""
    steps = chaos.plan(30, seed=5)
    assert [b for b, _ in steps[: len(BOUNDARIES)]] == list(BOUNDARIES)
    rest = steps[len(BOUNDARIES) :]
    assert all(b == "" and 0.3 <= s <= 4.0 for b, s in rest[::2])
    assert all(b in BOUNDARIES for b, _ in rest[1::2])
    assert steps == chaos.plan(30, seed=5) != chaos.plan(30, seed=6)


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
    delete of a foreign key are repeated work; attempts .1 and .2 of one rotation are not."""
    keys = [
        _key("old", "k0-original", deleted=True),
        _key("n1", "e-k0-d-r1.1", deleted=True),
        _key("n2", "e-k0-d-r1.2"),
    ]
    versions = [
        SecretVersion("k0", 1, "old", None, False),
        SecretVersion("k0", 2, "n2", "r1", False),
    ]
    clean = [{"route": "delete", "key_id": "n1"}, {"route": "delete", "key_id": "old"}]
    assert chaos_figures.repeated_work(keys, clean, versions, ["r1"]) == []
    dirty = [*clean, {"route": "delete", "key_id": "old"}, {"route": "delete", "key_id": "f"}]
    twice = [*keys, _key("n3", "e-k0-d-r1.2"), _key("f", "someone-else")]
    versions.append(SecretVersion("k0", 3, "n2", "r1", False))
    found = chaos_figures.repeated_work(twice, dirty, versions, ["r1"])
    assert len(found) == 4, found


def test_secret_hits_finds_known_secrets_and_provider_key_values() -> None:
    """An exact known secret and a key-shaped string the provider knows are hits; a label is not."""
    texts = ["token hvs.secret here", f"value {VALUE}", "label lr_live_aa...aaaa", "clean"]
    hits = chaos_figures.secret_hits(texts, ["hvs.secret"], lambda v: v == VALUE)
    assert hits == ["text 0: known secret", "text 1: key value"]


def test_figures_fail_on_any_must_be_zero_figure_or_no_rotation() -> None:
    """The run fails when a must-be-zero figure is not 0, or when nothing rotated."""
    figures = chaos_figures.Figures(seed=1, rotations=3)
    assert figures.failures() == []
    assert "result=ok" in figures.line()
    figures.secret_hits = 1
    assert figures.failures() == ["secret_hits"]
    assert chaos_figures.Figures(seed=1).failures() == ["rotations"]


@pytest.mark.slow
def test_fast_chaos_run_through_the_daemon_loses_nothing(vault: VaultServer) -> None:
    """Two keys under traffic, the daemon killed once at each step boundary and once at random:
    rotations complete and every must-be-zero figure is 0."""
    figures = chaos.run(kills=len(BOUNDARIES) + 1, seed=7, keys=2, vault=vault)
    assert figures.failures() == [], (figures.line(), figures.notes)
    assert figures.kills == len(BOUNDARIES) + 1
    assert figures.rotations >= 2
    assert figures.consumer_ok > 100
    assert figures.searched_texts > 20  # the debug logs, answers and consumer output were read
