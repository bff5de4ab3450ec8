"""The provider limiter: a 429 halves the bound and pauses; nobody fails for waiting."""

from __future__ import annotations

import threading

import pytest

from vault_rotator.errors import ProviderRetryableError, RateLimitedError
from vault_rotator.provider.limiter import Limiter
from vault_rotator.testing.clock import FakeClock


def test_a_429_halves_the_bound_and_answers_grow_it_back() -> None:
    """AIMD: halved by a 429 (never below one), one more after `limit` good answers."""
    limiter = Limiter(start=8, ceiling=10, clock=FakeClock())
    limiter.answered(429, None)
    assert limiter.limit == 4
    for _ in range(4):
        limiter.answered(200, None)
    assert limiter.limit == 5
    for _ in range(5):
        limiter.answered(429, None)
    assert limiter.limit == 1
    for _ in range(100):
        limiter.answered(201, None)
    assert limiter.limit == 10  # capped at the ceiling


def test_a_pause_longer_than_the_wait_is_not_sent_and_tried_again_later() -> None:
    """During a Retry-After pause a request is held back (not sent, no delay of its own: the
    engine tries again on a later pass); a Retry-After past a minute pauses nobody."""
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.answered(429, 30.0)
    with pytest.raises(RateLimitedError) as caught, limiter.slot("POST /v1/keys", 2.0):
        pass
    assert caught.value.reached_server is False
    assert caught.value.retry_after is None
    assert "30.0s more" in str(caught.value)
    clock.advance(31)
    with limiter.slot("POST /v1/keys", 2.0):
        assert limiter.in_flight == 1
    assert limiter.in_flight == 0
    limiter.answered(429, 86400.0)  # a day: the rotation that got it stalls; no pause here
    with limiter.slot("POST /v1/keys", 0.0):
        pass


def test_no_slot_within_the_wait_is_a_retryable_error_never_sent() -> None:
    """With the bound taken, a request that cannot get a slot in time is retryable, unsent."""
    limiter = Limiter(start=1, ceiling=1)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with limiter.slot("GET /v1/keys", 1.0):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    try:
        with pytest.raises(ProviderRetryableError) as caught, limiter.slot("DELETE /x", 0.05):
            pass
        assert caught.value.reached_server is False
        assert not isinstance(caught.value, RateLimitedError)
    finally:
        release.set()
        thread.join()
    with limiter.slot("DELETE /x", 0.05):  # free again
        pass
