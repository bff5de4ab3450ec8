"""A hostile or odd provider never costs a key, an orphan or an account: regression tests."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterator

import pytest
from world import MANAGEMENT_KEY, assert_clean_end

from vault_rotator.engine import reasons
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import Command, Verb
from vault_rotator.errors import AmbiguousCreateError, ProviderRetryableError
from vault_rotator.provider.arouter import ARouterClient
from vault_rotator.provider.port import KeySpec
from vault_rotator.secret import Secret

FOREIGN_NAME = "someone\u0007elses key"


def strings_in(value: object) -> Iterator[str]:
    """Every string inside a captured log entry (keys and values, nested)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from strings_in(item)
    else:
        yield str(value)


def raw_controls(logs: list[dict[str, object]]) -> list[str]:
    """The log strings holding a raw control or format (bidi) character."""
    return [
        text
        for entry in logs
        for text in strings_in(entry)
        if any(unicodedata.category(c) in ("Cc", "Cf") for c in text)
    ]


# -- rate limits -----------------------------------------------------------------------------


def test_long_rate_limit_on_create_stalls_without_creating_again(world_for) -> None:
    """A 429 asking for a day on create stalls as rate-limited: one request, no key, same name."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.emulator.set_fault("create", status=429, retry_after=100000)

    progress = drive(world.engine(), world.policy, wait=True)

    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.RATE_LIMITED
    assert "86400" in progress.stalled.detail
    assert world.emulator.request_counts().get("create") == 1
    assert world.live_ids() == {old_id}
    record = world.record()
    assert record.rotation is not None
    assert record.rotation.attempt == 1
    assert record.provider_write is None

    world.emulator.clear_faults()
    resumed = drive(world.engine(), world.policy, wait=True, command=Command(verb=Verb.RESUME))
    assert resumed.outcome is not None
    assert resumed.outcome.outcome == reasons.SUCCEEDED
    assert world.served()["key_name"].endswith(f"{resumed.rotation_id}.1")
    assert_clean_end(world, old_id)


def test_short_rate_limits_on_create_retry_under_the_same_name(world_for) -> None:
    """Repeated short 429s on create are waited out pass after pass with the same attempt name."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.emulator.set_fault("create", status=429, count=10)

    progress = drive(world.engine(), world.policy, wait=True)

    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    assert world.emulator.request_counts().get("create") == 11
    assert world.served()["key_name"].endswith(f"{progress.rotation_id}.1")
    assert_clean_end(world, old_id)


# -- slow servers ----------------------------------------------------------------------------


def test_trickled_headers_end_a_list_call_within_its_bound(make_emulator) -> None:
    """Headers trickled a byte per 0.2 s (no read timeout fires) end within worst_case_seconds."""
    emulator = make_emulator(dialect="c")
    emulator.set_fault("list", trickle=0.2)
    with ARouterClient(
        emulator.base_url, Secret(MANAGEMENT_KEY), "c", timeout=1.0, max_attempts=1
    ) as client:
        started = time.monotonic()
        with pytest.raises(ProviderRetryableError, match="no complete answer within 3s"):
            client.list_keys()
        elapsed = time.monotonic() - started
        assert elapsed <= client.worst_case_seconds()


def test_trickled_create_answer_is_ambiguous_within_its_bound(make_emulator) -> None:
    """A create whose answer trickles is cut at the deadline and reported as maybe created."""
    emulator = make_emulator(dialect="c")
    emulator.set_fault("create", trickle=0.2)
    with ARouterClient(
        emulator.base_url, Secret(MANAGEMENT_KEY), "c", timeout=0.5, max_attempts=2, backoff_max=0.5
    ) as client:
        started = time.monotonic()
        with pytest.raises(AmbiguousCreateError) as info:
            client.create_key(KeySpec("trickled", allowed_providers=("openai",)))
        elapsed = time.monotonic() - started
        assert elapsed <= client.worst_case_seconds()
    assert info.value.key_name == "trickled"
    assert emulator.request_counts().get("create") == 1  # sent once, never blindly again
