"""Contract suite: the ARouter client against the in-process emulator, in every dialect."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable, Iterator
from typing import Protocol, Unpack

import pytest
import structlog
from world import MANAGEMENT_KEY, ClientOptions, EmulatorFactory, as_dialect

from vault_rotator.emulator import Emulator
from vault_rotator.errors import (
    AmbiguousCreateError,
    AmbiguousCreateResponseError,
    KeyNotFoundError,
    ProviderAuthError,
    ProviderForbiddenError,
    ProviderResponseError,
    ProviderRetryableError,
    RateLimitedError,
)
from vault_rotator.ports.provider import Dialect, KeyRecord, KeySpec, Permissions
from vault_rotator.provider.arouter import ARouterClient, InferenceClient
from vault_rotator.secret import Secret


class ClientFactory(Protocol):
    """The ``connect`` fixture: an auto-detecting (or given ``dialect``) client on an emulator."""

    def __call__(
        self,
        server: Emulator,
        key: str = ...,
        dialect: str = ...,
        **options: Unpack[ClientOptions],
    ) -> ARouterClient: ...


@pytest.fixture
def emulator(make_emulator: EmulatorFactory, dialect: str) -> Emulator:
    """An emulator serving the dialect under test, with token paging."""
    return make_emulator(dialect=dialect)


@pytest.fixture
def sleeps() -> list[float]:
    """Every delay a client asked to sleep (nobody really sleeps)."""
    return []


@pytest.fixture
def connect(sleeps: list[float]) -> Iterator[ClientFactory]:
    """Open auto-detecting clients on an emulator; all are closed after the test."""
    clients: list[ARouterClient] = []

    def factory(
        server: Emulator,
        key: str = MANAGEMENT_KEY,
        dialect: str = "auto",
        **options: Unpack[ClientOptions],
    ) -> ARouterClient:
        options.setdefault("sleep", sleeps.append)
        options.setdefault("rng", lambda: 0.0)
        client = ARouterClient(server.base_url, Secret(key), as_dialect(dialect), **options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def names(records: Iterable[KeyRecord]) -> set[str]:
    return {record.name for record in records}


def test_detects_dialect_from_listed_keys(
    emulator: Emulator, connect: ClientFactory, dialect: str
) -> None:
    """With one key on the server, auto-detection finds the dialect it serves."""
    emulator.seed_key("existing")
    client = connect(emulator)
    assert client.dialect is Dialect(dialect)
    assert client.detected_dialect is Dialect(dialect)


def test_detects_dialect_on_empty_account(
    emulator: Emulator, connect: ClientFactory, dialect: str
) -> None:
    """With no keys, the first create's answer settles the dialect (C already from its path)."""
    client = connect(emulator)
    assert client.list_keys() == []
    assert client.detected_dialect is (Dialect.C if dialect == "c" else None)
    created = client.create_key(KeySpec("first", Permissions(spending_limit=3.0)))
    assert client.detected_dialect is Dialect(dialect)
    listed = {record.id: record for record in client.list_keys()}
    assert listed[created.record.id].spending_limit == 3.0


def test_round_trip(emulator: Emulator, connect: ClientFactory, dialect: str) -> None:
    """Create, list, verify, disable, delete and delete again behave as the port promises."""
    client = connect(emulator)
    spec = KeySpec("rot-1", Permissions(allowed_providers=("openai",), spending_limit=5.0))
    created = client.create_key(spec)
    assert created.value.reveal().startswith("lr_live_")
    assert (created.record.name, created.record.spending_limit) == ("rot-1", 5.0)
    client.verify_key(created.value)
    record = next(r for r in client.list_keys() if r.id == created.record.id)
    assert record.allowed_providers == ("openai",)
    assert record.spending_limit == 5.0
    assert record.created_at is not None
    assert (record.usage_cost is None) is (dialect == "c")
    client.update_key(created.record.id, disabled=True)
    assert next(r for r in client.list_keys() if r.id == created.record.id).disabled
    assert client.delete_key(created.record.id) is True
    assert created.record.id not in {r.id for r in client.list_keys()}
    assert client.delete_key(created.record.id) is False
    with pytest.raises(ProviderAuthError):
        client.verify_key(created.value)


def test_traffic_shows_in_listing(emulator: Emulator, connect: ClientFactory, dialect: str) -> None:
    """A consumer's chat call moves last_used_at (B, C) or usage (A, B) in the next listing."""
    key_id, value = emulator.seed_key("used")
    assert emulator.call(value, route="chat") == 200
    record = next(r for r in connect(emulator).list_keys() if r.id == key_id)
    if dialect in ("b", "c"):
        assert record.last_used_at is not None
    if dialect in ("a", "b"):
        assert record.usage_cost is not None
        assert record.usage_cost > 0


@pytest.mark.parametrize("paging", ["token", "offset"])
def test_lists_many_pages(
    make_emulator: EmulatorFactory, connect: ClientFactory, dialect: str, paging: str
) -> None:
    """250 keys come back complete and unique in three pages of 100, token or offset paging;
    the before-page hook (the engine's lease renewal) runs before each page's request."""
    server = make_emulator(dialect=dialect, paging=paging)
    for index in range(250):
        server.seed_key(f"bulk-{index}")
    hooks: list[int] = []
    client = connect(server, dialect=dialect)
    records = client.list_keys(before_page=lambda: hooks.append(server.request_counts()["list"]))
    assert len(records) == 250
    assert names(records) == {f"bulk-{index}" for index in range(250)}
    assert server.request_counts()["list"] == 3
    assert hooks == [0, 1, 2]


def test_disabled_keys_are_listed(emulator: Emulator, connect: ClientFactory) -> None:
    """include_disabled is always sent: a disabled key still shows up, marked disabled."""
    key_id, _ = emulator.seed_key("off")
    client = connect(emulator)
    client.update_key(key_id, disabled=True)
    assert [r.disabled for r in client.list_keys() if r.id == key_id] == [True]


def test_retries_429_honouring_retry_after(
    emulator: Emulator, connect: ClientFactory, sleeps: list[float]
) -> None:
    """Two 429s with Retry-After 1.5 are waited out for exactly 1.5 s each, then the list works."""
    emulator.seed_key("k")
    client = connect(emulator)
    client.detect()
    emulator.set_fault("list", status=429, count=2, retry_after=1.5)
    assert names(client.list_keys()) == {"k"}
    assert sleeps == [1.5, 1.5]


def test_retries_503_honouring_retry_after(
    emulator: Emulator, connect: ClientFactory, sleeps: list[float]
) -> None:
    """A 503 with Retry-After on delete is retried after the server's delay."""
    key_id, _ = emulator.seed_key("k")
    client = connect(emulator)
    client.detect()
    emulator.set_fault("delete", status=503, count=1, retry_after=2)
    assert client.delete_key(key_id) is True
    assert sleeps == [2.0]
    assert emulator.request_counts()["delete"] == 2


def test_a_wait_not_waited_holds_every_call_until_it_has_passed(
    emulator: Emulator, connect: ClientFactory, sleeps: list[float]
) -> None:
    """After a 429 asking for longer than backoff_max, the client sends nothing to the server
    (any route) until that wait has passed, raising RateLimitedError with the time left; then
    it asks again. The chaos run saw the daemon list again 0.5 s after a Retry-After of 3 s."""
    now = [100.0]
    client = connect(emulator, backoff_max=1.0, monotonic=lambda: now[0])
    client.detect()
    emulator.set_fault("list", status=429, retry_after=30, count=1)
    with pytest.raises(RateLimitedError):
        client.list_keys()
    sent = emulator.request_counts()
    now[0] += 10
    with pytest.raises(RateLimitedError, match="not sent") as held:
        client.list_keys()
    assert held.value.retry_after == pytest.approx(20.0)
    with pytest.raises(RateLimitedError, match="not sent"):
        client.delete_key("any")
    assert emulator.request_counts() == sent
    now[0] += 20
    assert client.list_keys() == []
    assert emulator.request_counts()["list"] == sent["list"] + 1
    assert sleeps == []


def test_gives_up_after_the_bound(
    emulator: Emulator, connect: ClientFactory, sleeps: list[float]
) -> None:
    """A server that keeps answering 503 gets max_attempts requests, then a clear error."""
    client = connect(emulator, max_attempts=3)
    client.detect()
    before = emulator.request_counts().get("list", 0)
    emulator.set_fault("list", status=503)
    with pytest.raises(ProviderRetryableError, match="gave up after 3 attempts") as info:
        client.list_keys()
    assert info.value.status == 503
    assert emulator.request_counts()["list"] - before == 3
    assert len(sleeps) == 2


def test_long_rate_limit_is_not_waited(
    emulator: Emulator, connect: ClientFactory, sleeps: list[float]
) -> None:
    """A 429 asking for longer than backoff_max raises at once, carrying the server's delay."""
    client = connect(emulator, backoff_max=5.0)
    client.detect()
    emulator.set_fault("list", status=429, retry_after=60)
    with pytest.raises(RateLimitedError) as info:
        client.list_keys()
    assert info.value.retry_after == 60.0
    assert sleeps == []


def test_no_retry_on_401(emulator: Emulator, connect: ClientFactory, sleeps: list[float]) -> None:
    """An unknown management key is refused after exactly one request, without sleeping."""
    client = connect(emulator, key="lr_mgmt_wrong_0123456789abcdef")
    with pytest.raises(ProviderAuthError) as info:
        client.list_keys()
    assert emulator.request_counts()["list"] == 1
    assert sleeps == []
    assert "lr_mgmt_wrong_0123456789abcdef" not in str(info.value)


def test_no_retry_on_403(emulator: Emulator, connect: ClientFactory, sleeps: list[float]) -> None:
    """An API key used as a management key gets 403 once, and the client does not insist."""
    _, value = emulator.seed_key("live")
    with pytest.raises(ProviderForbiddenError) as info:
        connect(emulator, key=value).list_keys()
    assert emulator.request_counts()["list"] == 1
    assert sleeps == []
    assert value not in str(info.value)


def test_create_dropped_after_commit_is_ambiguous(
    emulator: Emulator, connect: ClientFactory
) -> None:
    """A create whose answer is lost raises AmbiguousCreateError, and the key does exist by name."""
    client = connect(emulator)
    client.detect()
    emulator.set_fault("create", drop_after_commit=True, count=1)
    with pytest.raises(AmbiguousCreateError) as info:
        client.create_key(KeySpec("lost-1"))
    assert info.value.key_name == "lost-1"
    assert emulator.request_counts()["create"] == 1
    assert "lost-1" in {key["name"] for key in emulator.all_keys()}
    assert "lost-1" in names(client.list_keys())


def test_create_on_503_is_ambiguous_and_not_retried(
    emulator: Emulator, connect: ClientFactory, sleeps: list[float]
) -> None:
    """A 503 on create is never retried blindly: one request, AmbiguousCreateError."""
    client = connect(emulator)
    client.detect()
    emulator.set_fault("create", status=503, retry_after=1)
    with pytest.raises(AmbiguousCreateError, match="'rot-2' may have been created"):
        client.create_key(KeySpec("rot-2"))
    assert emulator.request_counts()["create"] == 1
    assert sleeps == []


def test_create_on_429_is_retried(
    emulator: Emulator, connect: ClientFactory, sleeps: list[float]
) -> None:
    """A 429 on create is safe to retry (nothing was created): one key results."""
    client = connect(emulator)
    client.detect()
    emulator.set_fault("create", status=429, count=1, retry_after=0.25)
    created = client.create_key(KeySpec("rot-3"))
    assert sleeps == [0.25]
    assert emulator.request_counts()["create"] == 2
    assert [key["name"] for key in emulator.live_keys()] == ["rot-3"]
    assert created.record.name == "rot-3"


@pytest.mark.parametrize(
    ("garbage", "needle"),
    [
        ("json", "not valid JSON"),
        ("types", "expected"),
        ("huge", "larger than"),
        ("html", "text/html"),
    ],
)
def test_garbage_list_answers(
    emulator: Emulator, connect: ClientFactory, garbage: str, needle: str
) -> None:
    """Truncated, mistyped, oversized or HTML list answers are clear ProviderResponseErrors."""
    emulator.seed_key("k")
    client = connect(emulator)
    client.detect()
    emulator.set_fault("list", garbage=garbage)
    with pytest.raises(ProviderResponseError, match=needle) as info:
        client.list_keys()
    assert str(info.value).startswith("GET /")


@pytest.mark.parametrize("garbage", ["json", "types", "html"])
def test_garbage_create_answer_is_ambiguous(
    emulator: Emulator, connect: ClientFactory, garbage: str
) -> None:
    """An unreadable create answer is a response error that also flags the key as maybe created."""
    client = connect(emulator)
    client.detect()
    emulator.set_fault("create", garbage=garbage, count=1)
    with pytest.raises(AmbiguousCreateResponseError) as info:
        client.create_key(KeySpec("garbled"))
    assert isinstance(info.value, ProviderResponseError)
    assert info.value.key_name == "garbled"
    assert "garbled" in {key["name"] for key in emulator.all_keys()}


def test_read_timeout_is_retried_for_list(
    emulator: Emulator, connect: ClientFactory, sleeps: list[float]
) -> None:
    """A list answer slower than the client's timeout is retried and then succeeds."""
    emulator.seed_key("k")
    client = connect(emulator, timeout=0.1)
    client.detect()
    emulator.set_fault("list", latency=0.3, count=1)
    assert names(client.list_keys()) == {"k"}
    assert len(sleeps) == 1


def test_read_timeout_on_create_is_ambiguous(emulator: Emulator, connect: ClientFactory) -> None:
    """A create answer slower than the client's timeout is ambiguous and not retried."""
    client = connect(emulator, timeout=0.1)
    client.detect()
    emulator.set_fault("create", latency=0.3, count=1)
    with pytest.raises(AmbiguousCreateError, match="timed out"):
        client.create_key(KeySpec("slow-1"))
    assert emulator.request_counts()["create"] == 1


def test_update_unknown_key(emulator: Emulator, connect: ClientFactory, dialect: str) -> None:
    """Updating a key that does not exist is KeyNotFoundError; deleting it is False."""
    client = connect(emulator)
    missing = "key_000000000000" if dialect == "c" else "0" * 64
    with pytest.raises(KeyNotFoundError):
        client.update_key(missing, disabled=True)
    assert client.delete_key(missing) is False


def test_inference_client(emulator: Emulator, connect: ClientFactory) -> None:
    """The inference helper reports 200 for a live key and 401 (not an exception) once deleted."""
    key_id, value = emulator.seed_key("consumer")
    secret = Secret(value)
    with InferenceClient(emulator.base_url) as consumer:
        assert consumer.chat(secret) == 200
        assert consumer.models(secret) == 200
        assert consumer.embeddings(secret) == 200
        assert connect(emulator).delete_key(key_id) is True
        assert consumer.chat(secret) == 401
    assert len(emulator.inference_log()) == 4


def test_no_connection_outlives_a_call(emulator: Emulator) -> None:
    """Connections close with each answer, so even a client nobody closes leaks no socket."""
    client = ARouterClient(emulator.base_url, Secret(MANAGEMENT_KEY))
    assert client.list_keys() == []
    del client
    gc.collect()  # an open pooled socket would raise ResourceWarning here (warnings are errors)
    assert emulator.request_counts()["list"] >= 1


def test_no_secret_in_logs_or_errors(emulator: Emulator, connect: ClientFactory) -> None:
    """Debug logs and exception texts of a full session hold no key value and no management key."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    errors: list[str] = []
    try:
        with structlog.testing.capture_logs() as logs:
            client = connect(emulator)
            created = client.create_key(KeySpec("secretive"))
            client.verify_key(created.value)
            client.list_keys()
            client.update_key(created.record.id, disabled=True)
            with pytest.raises(ProviderForbiddenError) as forbidden:
                connect(emulator, key=created.value.reveal()).list_keys()
            client.delete_key(created.record.id)
            with pytest.raises(ProviderAuthError) as unauthorized:
                client.verify_key(created.value)
            errors += [str(forbidden.value), str(unauthorized.value), repr(unauthorized.value)]
    finally:
        structlog.reset_defaults()
    assert any(line["log_level"] == "debug" for line in logs)
    assert any(line.get("key_id") == created.record.id for line in logs)
    for text in [repr(line) for line in logs] + errors:
        assert created.value.reveal() not in text
        assert MANAGEMENT_KEY not in text
        assert "Bearer" not in text
