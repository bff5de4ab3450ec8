"""Edge cases of the ARouter client against httpx.MockTransport: no network, no sleeping."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypedDict, Unpack

import httpx
import pytest
import structlog
from world import ClientOptions, as_dialect

from vault_rotator.errors import (
    AmbiguousCreateError,
    AmbiguousCreateResponseError,
    ConfigError,
    KeyNotFoundError,
    ProviderAuthError,
    ProviderError,
    ProviderForbiddenError,
    ProviderPermanentError,
    ProviderResponseError,
    ProviderRetryableError,
    RateLimitedError,
)
from vault_rotator.ports.provider import Dialect, KeyProvider, KeySpec, Permissions
from vault_rotator.provider.arouter import ARouterClient, InferenceClient
from vault_rotator.provider.retry import Backoff, server_delay
from vault_rotator.secret import Secret

BASE = "http://arouter.test"
MGMT_TEXT = "lr_mgmt_unit_0123456789abcdef"
MGMT = Secret(MGMT_TEXT)
VALUE_TEXT = "lr_live_unit_abcdefghijklmnop"
NOW = 1_700_000_000.0

Item = Callable[[httpx.Request], httpx.Response]


class ReplyOptions(TypedDict, total=False):
    """What a test sets of a fake answer besides its status and JSON payload."""

    content: bytes
    headers: dict[str, str]


class ResponseOptions(ReplyOptions, total=False):
    """The keyword arguments of ``httpx.Response`` that the tests use."""

    json: object


class MakeClient(Protocol):
    """The ``make`` fixture: a client on the fake server (``dialect`` as in a policy file)."""

    def __call__(self, dialect: str = ..., **options: Unpack[ClientOptions]) -> ARouterClient: ...


def reply(status: int = 200, payload: object = None, **kwargs: Unpack[ReplyOptions]) -> Item:
    """A response factory (httpx mutates responses, so each request gets a fresh one)."""

    def build(request: httpx.Request) -> httpx.Response:
        if payload is not None:
            return httpx.Response(status, json=payload, **kwargs)
        return httpx.Response(status, **kwargs)

    return build


def fail(kind: type[httpx.TransportError]) -> Item:
    """A transport failure raised for the request."""

    def build(request: httpx.Request) -> httpx.Response:
        raise kind("simulated failure", request=request)

    return build


class FakeServer:
    """Routes (method, path) to queued replies; the last reply repeats. Unknown routes 404."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], list[Item]] = {}

    def on(self, method: str, path: str, *items: Item) -> FakeServer:
        self.routes[(method, path)] = list(items)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(404, json={"error": {"message": "no route", "type": "nf"}})
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        return item(request)

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if (r.method, r.url.path) == (method, path))


def rec_a(i: int, **extra: object) -> dict[str, object]:
    return {
        "hash": f"a{i:04d}",
        "name": f"key-{i}",
        "label": "lr-...abcd",
        "key_type": "api",
        "disabled": False,
        "usage": 1.5,
        "usage_daily": 0.5,
        "limit": 10,
        "limit_reset": "monthly",
        "allowed_providers": ["openai"],
        "allowed_models": None,
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": "2025-01-01T00:00:00Z",
        "expires_at": None,
        **extra,
    }


def rec_b(i: int, **extra: object) -> dict[str, object]:
    return {
        "hash": f"b{i:04d}",
        "name": f"key-{i}",
        "label": None,
        "created_at": "2025-01-01T02:00:00+02:00",
        "last_used_at": "2025-01-02T00:00:00Z",
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "cost": 0.25},
        "limit_usd": 5,
        "allowed_models": ["openai/gpt-4o"],
        "allowed_providers": None,
        "rate_limit": {"requests_per_minute": 60},
        **extra,
    }


def rec_c(i: int, **extra: object) -> dict[str, object]:
    return {
        "id": f"key_{i:04d}",
        "name": f"key-{i}",
        "created_at": "2025-01-01T00:00:00",
        "last_used_at": None,
        "allowed_providers": ["anthropic"],
        "spending_limit": 3.5,
        **extra,
    }


@pytest.fixture
def server() -> FakeServer:
    """A fresh fake ARouter."""
    return FakeServer()


@pytest.fixture
def sleeps() -> list[float]:
    """Every delay the client asked to sleep."""
    return []


@pytest.fixture
def make(server: FakeServer, sleeps: list[float]) -> Iterator[MakeClient]:
    """Build clients on the fake server with injected sleep/rng/clock; all closed afterwards."""
    clients: list[ARouterClient] = []

    def factory(dialect: str = "auto", **options: Unpack[ClientOptions]) -> ARouterClient:
        options.setdefault("sleep", sleeps.append)
        options.setdefault("rng", lambda: 1.0)
        options.setdefault("clock", lambda: NOW)
        options.setdefault("transport", httpx.MockTransport(server))
        client = ARouterClient(BASE, MGMT, as_dialect(dialect), **options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


# -- detection -----------------------------------------------------------------------------


def _port_members() -> dict[str, object]:
    """KeyProvider's own members (properties and methods), by name."""
    return {n: m for n, m in vars(KeyProvider).items() if not n.startswith("_")}


def test_implements_the_port(make: MakeClient) -> None:
    """ARouterClient structurally satisfies the KeyProvider port."""
    client = make("a")
    provider: KeyProvider = client  # the static half: mypy (make lint) checks every member
    members = _port_members()
    assert set(members) >= {"dialect", "list_keys", "create_key", "delete_key", "verify_key"}
    for name, member in members.items():  # the run-time half: same kinds, same parameters
        implemented = inspect.getattr_static(ARouterClient, name)
        if isinstance(member, property):
            assert isinstance(implemented, property), name
        else:
            assert callable(member), name
            assert callable(implemented), name
            parameters = inspect.signature(implemented).parameters
            assert list(parameters) == list(inspect.signature(member).parameters), name
    assert provider.dialect is Dialect.A


def test_detects_dialect_a_from_records(server: FakeServer, make: MakeClient) -> None:
    """Numeric usage and `limit` on /api/v1/keys mean dialect A."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_a(1)]}))
    client = make()
    assert client.detected_dialect is None
    assert client.dialect is Dialect.A
    assert client.detected_dialect is Dialect.A


def test_detects_dialect_b_from_records(server: FakeServer, make: MakeClient) -> None:
    """A usage object, `limit_usd` and `last_used_at` mean dialect B."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_b(1)]}))
    client = make()
    assert client.list_keys()[0].usage_tokens == 7
    assert client.detected_dialect is Dialect.B


def test_detects_dialect_c_from_path(server: FakeServer, make: MakeClient) -> None:
    """A 404 on /api/v1/keys and an answer on /v1/keys mean dialect C."""
    server.on("GET", "/v1/keys", reply(payload={"data": []}))
    client = make()
    assert client.detect() is Dialect.C
    assert [r.url.path for r in server.requests] == ["/api/v1/keys", "/v1/keys"]


def test_empty_account_stays_ambiguous_until_create(server: FakeServer, make: MakeClient) -> None:
    """With no keys A/B stays open (cap sent under both names) until a flat create answer says B."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": []}))
    server.on("POST", "/api/v1/keys", reply(201, {"key": VALUE_TEXT, "hash": "b1", "name": "n"}))
    client = make()
    assert client.list_keys() == []
    assert client.detected_dialect is None
    assert client.dialect is Dialect.A  # provisional
    created = client.create_key(KeySpec("n", Permissions(spending_limit=4.0)))
    body = json.loads(server.requests[-1].read())
    assert (body["limit"], body["limit_usd"]) == (4.0, 4.0)
    assert client.detected_dialect is Dialect.B
    assert created.record.spending_limit == 4.0


@pytest.mark.parametrize(("accepted", "requests"), [("limit", 2), ("limit_usd", 3)])
def test_strict_server_gets_its_cap_field(
    server: FakeServer, make: MakeClient, accepted: str, requests: int
) -> None:
    """While A/B is open, a server that 400s unknown fields still gets the cap under its name."""

    def strict(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.read())
        unknown = {"limit", "limit_usd"} - {accepted}
        if unknown & set(body):
            return httpx.Response(400, json={"error": {"message": "unknown field"}})
        return httpx.Response(201, json={"key": VALUE_TEXT, "hash": "h1", "name": body["name"]})

    server.on("GET", "/api/v1/keys", reply(payload={"data": []}))
    server.on("POST", "/api/v1/keys", strict)
    created = make().create_key(KeySpec("n", Permissions(spending_limit=2.0)))
    posts = [json.loads(r.read()) for r in server.requests if r.method == "POST"]
    assert len(posts) == requests
    assert posts[-1] == {"name": "n", accepted: 2.0}
    assert created.record.spending_limit == 2.0


def test_bad_create_fails_after_every_cap_variant(server: FakeServer, make: MakeClient) -> None:
    """A 400 for another reason is raised after the three cap variants, nothing else retried."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": []}))
    server.on("POST", "/api/v1/keys", reply(400, {"error": {"message": "name taken"}}))
    with pytest.raises(ProviderPermanentError, match="name taken"):
        make().create_key(KeySpec("n", Permissions(spending_limit=1.0)))
    assert server.count("POST", "/api/v1/keys") == 3


def test_nested_create_answer_detects_a(server: FakeServer, make: MakeClient) -> None:
    """A create answer with nested `data` settles an open A/B question as A."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": []}))
    server.on("POST", "/api/v1/keys", reply(201, {"data": rec_a(9, name="n"), "key": VALUE_TEXT}))
    client = make()
    created = client.create_key(KeySpec("n"))
    assert client.detected_dialect is Dialect.A
    assert created.record.id == "a0009"
    assert created.value.reveal() == VALUE_TEXT


def test_no_key_api_anywhere(server: FakeServer, make: MakeClient) -> None:
    """Both collection paths answering 404 is a clear permanent error, not KeyNotFoundError."""
    with pytest.raises(ProviderPermanentError, match="no ARouter key-management API") as info:
        make().list_keys()
    assert not isinstance(info.value, KeyNotFoundError)


def _dialect_warnings(logs: Sequence[Mapping[str, object]]) -> list[Mapping[str, object]]:
    return [e for e in logs if e["event"] == "arouter.dialect_changed"]


def test_wrong_saved_hint_parses_and_is_corrected_by_the_create_answer(
    server: FakeServer, make: MakeClient
) -> None:
    """A saved "a" on a B account lists fine, creates with B's cap after a 400, then knows B."""

    def strict_b(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.read())
        if "limit" in body:
            return httpx.Response(400, json={"error": {"message": "unknown field limit"}})
        return httpx.Response(201, json={"key": VALUE_TEXT, "hash": "b0009", "name": body["name"]})

    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_b(1)]}))
    server.on("POST", "/api/v1/keys", strict_b)
    client = make(hint=Dialect.A)
    with structlog.testing.capture_logs() as logs:
        assert client.list_keys()[0].usage_tokens == 7  # one B record does not overturn a hint
        assert client.detected_dialect is None  # the hint is not confirmed, so not saved
        assert client.dialect is Dialect.A  # ... but still what the client goes by
        created = client.create_key(KeySpec("n", Permissions(spending_limit=2.0)))
    posts = [json.loads(r.read()) for r in server.requests if r.method == "POST"]
    assert posts == [
        {"name": "n", "limit": 2.0, "limit_usd": 2.0},  # a lenient server would keep its own
        {"name": "n", "limit": 2.0},
        {"name": "n", "limit_usd": 2.0},
    ]
    assert created.record.spending_limit == 2.0
    assert client.detected_dialect is Dialect.B
    assert [(e["was"], e["now"]) for e in _dialect_warnings(logs)] == [("a", "b")]


def test_clear_majority_of_records_overturns_a_known_dialect(
    server: FakeServer, make: MakeClient
) -> None:
    """Two or more records voting B, and more than vote A, switch a hinted A to B (one warning)."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_b(1), rec_b(2), rec_a(3)]}))
    client = make(hint=Dialect.A)
    with structlog.testing.capture_logs() as logs:
        client.list_keys()
        client.list_keys()
    assert client.detected_dialect is Dialect.B
    assert len(_dialect_warnings(logs)) == 1


@pytest.mark.parametrize(("odd", "cost"), [(rec_a(7), 1.5), (rec_a(7, usage=3, limit=None), 3.0)])
def test_one_foreign_record_neither_flips_nor_breaks_an_account(
    server: FakeServer, make: MakeClient, odd: dict[str, object], cost: float
) -> None:
    """A known B account with one A-shaped key someone else made stays B and lists every key."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_b(1)]}))
    client = make()
    client.list_keys()
    assert client.detected_dialect is Dialect.B
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_b(1), odd]}))
    with structlog.testing.capture_logs() as logs:
        listed = {r.id: r for r in client.list_keys()}
    assert client.detected_dialect is Dialect.B
    assert set(listed) == {"b0001", "a0007"}
    assert (listed["a0007"].usage_cost, listed["b0001"].usage_tokens) == (cost, 7)
    assert _dialect_warnings(logs) == []


@pytest.mark.parametrize(
    ("hint", "gone", "answers", "now"),
    [
        (Dialect.C, "/v1/keys", "/api/v1/keys", Dialect.B),
        (Dialect.B, "/api/v1/keys", "/v1/keys", Dialect.C),
    ],
)
def test_saved_collection_answering_404_is_probed_again(
    server: FakeServer,
    make: MakeClient,
    hint: Dialect,
    gone: str,
    answers: str,
    now: Dialect,
) -> None:
    """A hinted collection path that now answers 404 is detected again, with one warning."""
    record = rec_c(1) if now is Dialect.C else rec_b(1)
    server.on("GET", answers, reply(payload={"data": [record]}))
    client = make(hint=hint)
    with structlog.testing.capture_logs() as logs:
        assert len(client.list_keys()) == 1
    assert client.detected_dialect is now
    assert server.count("GET", gone) == 1
    assert len(_dialect_warnings(logs)) == 1


def test_configured_dialect_is_never_probed_again(server: FakeServer, make: MakeClient) -> None:
    """A dialect set in the policy is trusted: a 404 on its path is an error, not a re-probe."""
    server.on("GET", "/v1/keys", reply(payload={"data": [rec_c(1)]}))
    with pytest.raises(ProviderPermanentError, match="no ARouter key-management API"):
        make("b").list_keys()
    assert server.count("GET", "/v1/keys") == 0


# -- normalisation -------------------------------------------------------------------------


def test_normalises_dialect_a(server: FakeServer, make: MakeClient) -> None:
    """Dialect A: usage number → cost, no tokens, `limit` → cap, no last use, aware UTC times."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_a(1)]}))
    record = make("a").list_keys()[0]
    assert (record.id, record.name, record.label) == ("a0001", "key-1", "lr-...abcd")
    assert (record.usage_cost, record.usage_tokens) == (1.5, None)
    assert (record.spending_limit, record.limit_reset) == (10.0, "monthly")
    assert record.last_used_at is None
    assert record.expires_at is None
    assert record.allowed_providers == ("openai",)
    assert record.allowed_models is None
    assert record.created_at == datetime(2025, 1, 1, tzinfo=UTC)


def test_normalises_dialect_b(server: FakeServer, make: MakeClient) -> None:
    """Dialect B: usage object → cost and prompt+completion tokens, `limit_usd` → cap."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_b(1)]}))
    record = make("b").list_keys()[0]
    assert (record.id, record.usage_cost, record.usage_tokens) == ("b0001", 0.25, 7)
    assert record.spending_limit == 5.0
    assert record.created_at == datetime(2025, 1, 1, tzinfo=UTC)
    assert record.last_used_at == datetime(2025, 1, 2, tzinfo=UTC)
    assert record.allowed_models == ("openai/gpt-4o",)


def test_normalises_dialect_c(server: FakeServer, make: MakeClient) -> None:
    """Dialect C: `id`, `spending_limit`, no usage; a naive timestamp is read as UTC."""
    server.on("GET", "/v1/keys", reply(payload={"data": [rec_c(1)]}))
    record = make("c").list_keys()[0]
    assert (record.id, record.spending_limit) == ("key_0001", 3.5)
    assert (record.usage_cost, record.usage_tokens, record.disabled) == (None, None, False)
    assert record.created_at is not None
    assert record.created_at.tzinfo is UTC


# -- paging --------------------------------------------------------------------------------


def test_follows_page_tokens(server: FakeServer, make: MakeClient) -> None:
    """Tokens are followed to the end; page_size and include_disabled go with every request."""
    server.on(
        "GET",
        "/api/v1/keys",
        reply(payload={"data": [rec_a(i) for i in range(3)], "next_page_token": "t1"}),
        reply(payload={"data": [rec_a(i) for i in range(3, 6)], "next_page_token": "t2"}),
        reply(payload={"data": [rec_a(6)], "next_page_token": None}),
    )
    records = make("a", page_size=3).list_keys()
    assert [r.id for r in records] == [f"a{i:04d}" for i in range(7)]
    params = [dict(r.url.params) for r in server.requests]
    assert [p.get("page_token") for p in params] == [None, "t1", "t2"]
    assert all(p["include_disabled"] == "true" and p["page_size"] == "3" for p in params)


def test_offset_paging_dedupes_shifted_pages(server: FakeServer, make: MakeClient) -> None:
    """Offset paging continues while pages are full; a key shifted by a create counts once."""
    server.on(
        "GET",
        "/api/v1/keys",
        reply(payload={"data": [rec_a(0), rec_a(1)]}),
        reply(payload={"data": [rec_a(1), rec_a(2)]}),  # a key created meanwhile shifted it
        reply(payload={"data": [rec_a(3)]}),
    )
    records = make("a", page_size=2).list_keys()
    assert [r.id for r in records] == ["a0000", "a0001", "a0002", "a0003"]
    assert [r.url.params.get("offset") for r in server.requests] == [None, "2", "4"]


def test_repeated_token_is_refused(server: FakeServer, make: MakeClient) -> None:
    """A server that hands back the same token forever is an error, not an endless loop."""
    page = {"data": [rec_a(1)], "next_page_token": "same"}
    server.on("GET", "/api/v1/keys", reply(payload=page))
    with pytest.raises(ProviderResponseError, match="repeats"):
        make("a").list_keys()
    assert len(server.requests) == 2


def test_offset_ignored_is_refused(server: FakeServer, make: MakeClient) -> None:
    """A full offset page with no new key (the server ignores offset) is an error."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_a(0), rec_a(1)]}))
    with pytest.raises(ProviderResponseError, match="offset"):
        make("a", page_size=2).list_keys()


def test_endless_server_hits_page_cap(server: FakeServer, make: MakeClient) -> None:
    """A server that keeps inventing full pages is cut off at 100,000/page_size + 10 pages."""
    counter = itertools.count()

    def endless(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [rec_a(next(counter)) for _ in range(100)]})

    server.on("GET", "/api/v1/keys", endless)
    with pytest.raises(ProviderResponseError, match="more than 1010 pages"):
        make("a").list_keys()
    assert len(server.requests) == 1010


# -- hostile and malformed answers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (rec_a(1, name=7), "name: expected a string, got number"),
        (rec_a(1, limit=-5), "limit: out of range"),
        (rec_a(1, limit=True), "limit: expected a number, got boolean"),
        (rec_a(1, usage={"cost": 1}), "usage: expected a number, got object"),
        (rec_a(1, name="x" * 2000), "name: longer than 1024"),
        (rec_a(1, label="evil\nINFO forged"), "label: contains control characters"),
        (rec_a(1, allowed_providers="openai"), "allowed_providers: expected an array"),
        (rec_a(1, allowed_models=[1]), "allowed_models[0]"),
        (rec_a(1, created_at="yesterday"), "created_at: not an ISO-8601"),
        (rec_a(1, disabled="no"), "disabled: expected a boolean"),
        (rec_a(1, limit_reset="every full moon"), "limit_reset"),
    ],
)
def test_a_bad_field_leaves_the_record_incomplete_naming_it(
    server: FakeServer, make: MakeClient, record: object, needle: str
) -> None:
    """A bad field never fails the listing: the record is listed by id alone, the field named."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_a(0), record]}))
    with structlog.testing.capture_logs() as logs:
        listed = {key.id: key for key in make("a").list_keys()}
    assert listed["a0000"].problem is None
    odd = listed["a0001"]
    assert odd.problem is not None
    assert needle in odd.problem
    assert (odd.usage_cost, odd.spending_limit, odd.allowed_providers) == (None, None, None)
    warned = [line for line in logs if line["event"] == "arouter.record_incomplete"]
    assert [line["key_id"] for line in warned] == ["a0001"]


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (rec_a(1, hash=12), "data[1]: hash: expected a string"),
        (rec_a(1, hash="../admin"), "hash: not an id"),
        ("not-an-object", "data[1]: expected an object"),
    ],
)
def test_an_item_without_a_usable_id_is_skipped(
    server: FakeServer, make: MakeClient, record: object, needle: str
) -> None:
    """An item that cannot be addressed is left out with a warning; the other keys are listed."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_a(0), record]}))
    with structlog.testing.capture_logs() as logs:
        assert [key.id for key in make("a").list_keys()] == ["a0000"]
    warned = [line for line in logs if line["event"] == "arouter.record_skipped"]
    assert len(warned) == 1
    assert needle in warned[0]["problem"]


def test_a_listing_mostly_without_ids_is_garbage(server: FakeServer, make: MakeClient) -> None:
    """Items without a usable id outnumbering the keys fail the listing: nothing is concluded."""
    junk = [rec_a(1, hash=None, id=None), "x"]
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_a(0), *junk]}))
    with pytest.raises(ProviderResponseError, match="2 listed items have no usable id"):
        make("a").list_keys()


def test_a_name_is_data_kept_exact_and_shown_escaped(server: FakeServer, make: MakeClient) -> None:
    """A name with a newline or a bidi override is kept as listed and displayed escaped."""
    name = "evil\nINFO forged \u202e"
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_a(1, name=name)]}))
    [key] = make("a").list_keys()
    assert key.problem is None
    assert key.name == name
    assert key.display_name == "evil\\nINFO forged \\u202e"


def test_b_usage_tokens_checked(server: FakeServer, make: MakeClient) -> None:
    """Nested usage fields are validated too (a negative token count leaves the record odd)."""
    bad = rec_b(1, usage={"prompt_tokens": -1, "completion_tokens": 2, "cost": 0})
    server.on("GET", "/api/v1/keys", reply(payload={"data": [bad]}))
    [key] = make("b").list_keys()
    assert key.problem is not None
    assert key.problem.startswith("usage: prompt_tokens: out of range")
    assert key.usage_tokens is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"content": b"{not json"}, "not valid JSON"),
        ({"content": b"<html>oops</html>", "headers": {"content-type": "text/html"}}, "text/html"),
        ({"json": {"data": {"a": 1}}}, "data: expected an array, got object"),
        ({"json": ["data"]}, "answer: expected an object, got array"),
        ({"content": b"[" * 100_000 + b"]" * 100_000}, "not valid JSON"),
        ({"json": {"data": [], "next_page_token": 5}}, "next_page_token: expected a string"),
    ],
)
def test_garbage_answers(
    server: FakeServer, make: MakeClient, kwargs: ResponseOptions, needle: str
) -> None:
    """Non-JSON, HTML, deeply nested or mistyped envelopes are ProviderResponseErrors."""
    server.on("GET", "/api/v1/keys", lambda r: httpx.Response(200, **kwargs))
    with pytest.raises(ProviderResponseError, match=needle):
        make("a").list_keys()
    assert len(server.requests) == 1  # garbage is not retried


def test_oversized_body_is_cut(server: FakeServer, make: MakeClient) -> None:
    """A body past max_response_bytes, streamed without Content-Length, is refused unread."""
    chunks = (b" " * 1024 for _ in range(10_000))  # 10 MB if read to the end
    server.on("GET", "/api/v1/keys", lambda r: httpx.Response(200, content=chunks))
    with pytest.raises(ProviderResponseError, match="larger than 65536 bytes"):
        make("a", max_response_bytes=65536).list_keys()
    assert next(chunks, None) is not None  # the rest was never read


def test_declared_length_over_cap(server: FakeServer, make: MakeClient) -> None:
    """A Content-Length over the cap is refused without reading the body."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_a(i) for i in range(50)]}))
    with pytest.raises(ProviderResponseError, match="larger than"):
        make("a", max_response_bytes=100).list_keys()


def test_slow_body_hits_attempt_deadline(server: FakeServer, make: MakeClient) -> None:
    """A body still trickling in 3 x timeout after the start is abandoned as a retryable error."""
    ticks = itertools.count(step=5.0)
    server.on("GET", "/api/v1/keys", lambda r: httpx.Response(200, content=iter([b"{"] * 10)))
    client = make("a", timeout=2.0, max_attempts=1, monotonic=lambda: next(ticks))
    with pytest.raises(ProviderRetryableError, match="still arriving"):
        client.list_keys()


# -- error mapping and retries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ProviderPermanentError),
        (401, ProviderAuthError),
        (402, ProviderForbiddenError),
        (403, ProviderForbiddenError),
        (404, KeyNotFoundError),
        (409, ProviderPermanentError),
        (429, RateLimitedError),
        (500, ProviderRetryableError),
        (502, ProviderRetryableError),
        (503, ProviderRetryableError),
    ],
)
def test_status_mapping(
    server: FakeServer, make: MakeClient, status: int, kind: type[Exception]
) -> None:
    """Each status maps to its error class, with method, path, status and server message."""
    body = {"error": {"message": f"echo {MGMT_TEXT} went wrong", "type": "some_type"}}
    server.on("PATCH", "/api/v1/keys/a1", reply(status, body))
    with pytest.raises(kind) as info:
        make("a", max_attempts=1).update_key("a1", disabled=True)
    text = str(info.value)
    assert f"PATCH /api/v1/keys/a1: HTTP {status} some_type: echo <redacted fp:" in text
    assert MGMT_TEXT not in text
    assert "\n" not in text
    assert isinstance(info.value, ProviderError)
    assert info.value.status == status


def test_server_message_is_one_printable_line(server: FakeServer, make: MakeClient) -> None:
    """Control and bidi characters in a server's error message are escaped, never passed on."""
    message = "no\u0007 such\r\nkey \u202e(Authorization: Bearer lr_live_echoed_0123456789)"
    server.on("GET", "/api/v1/keys", reply(403, {"error": {"message": message}}))
    with pytest.raises(ProviderForbiddenError) as info:
        make("a").list_keys()
    text = str(info.value)
    assert text.isprintable()
    assert "no\\x07 such key \\u202e(Authorization: Bearer <redacted fp:" in text
    assert text.endswith(">)")
    assert "lr_live_echoed" not in text


def test_flat_error_body(server: FakeServer, make: MakeClient) -> None:
    """A flat {code, message} error body is read too, and long messages are truncated."""
    server.on("DELETE", "/v1/keys/key_1", reply(400, {"code": "bad", "message": "m" * 500}))
    with pytest.raises(ProviderPermanentError, match="HTTP 400 bad: mmm") as info:
        make("c").delete_key("key_1")
    assert len(str(info.value)) <= 200


def test_retry_after_is_honoured(server: FakeServer, make: MakeClient, sleeps: list[float]) -> None:
    """A 429 with Retry-After: 2 makes the client sleep exactly 2 s, then succeed."""
    server.on(
        "GET",
        "/api/v1/keys",
        reply(
            429,
            {"error": {"message": "slow", "type": "rate_limit_error"}},
            headers={"Retry-After": "2"},
        ),
        reply(payload={"data": []}),
    )
    assert make("a").list_keys() == []
    assert sleeps == [2.0]


def test_ratelimit_reset_is_honoured(
    server: FakeServer, make: MakeClient, sleeps: list[float]
) -> None:
    """A 503 with X-RateLimit-Reset three seconds after the injected clock waits 3 s."""
    server.on(
        "DELETE",
        "/api/v1/keys/a1",
        reply(503, headers={"X-RateLimit-Reset": str(int(NOW) + 3)}),
        reply(204),
    )
    assert make("a").delete_key("a1") is True
    assert sleeps == [3.0]


def test_long_retry_after_gives_up_at_once(
    server: FakeServer, make: MakeClient, sleeps: list[float]
) -> None:
    """A server asking for more than backoff_max is not waited for: RateLimitedError at once."""
    server.on("GET", "/api/v1/keys", reply(429, headers={"Retry-After": "600"}))
    with pytest.raises(RateLimitedError, match="more than backoff_max 20s") as info:
        make("a").list_keys()
    assert info.value.retry_after == 600.0
    assert sleeps == []
    assert len(server.requests) == 1


def test_gives_up_after_max_attempts(
    server: FakeServer, make: MakeClient, sleeps: list[float]
) -> None:
    """Four 503s: three jittered waits (0.5, 1, 2 with rng=1), then 'gave up after 4 attempts'."""
    server.on("GET", "/api/v1/keys", reply(503, {"error": {"message": "down"}}))
    with pytest.raises(ProviderRetryableError, match=r"^gave up after 4 attempts: GET") as info:
        make("a").list_keys()
    assert info.value.status == 503
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(server.requests) == 4


def test_backoff_is_capped(server: FakeServer, make: MakeClient, sleeps: list[float]) -> None:
    """Exponential waits stop growing at backoff_max."""
    server.on("GET", "/api/v1/keys", fail(httpx.ReadTimeout))
    with pytest.raises(ProviderRetryableError, match="timed out"):
        make("a", max_attempts=6, backoff_max=3.0).list_keys()
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_no_retry_on_client_errors(
    server: FakeServer, make: MakeClient, sleeps: list[float], status: int
) -> None:
    """4xx answers are raised after one request and no sleep."""
    server.on("PATCH", "/api/v1/keys/a1", reply(status, {"error": {"message": "no"}}))
    with pytest.raises(ProviderPermanentError):
        make("a").update_key("a1", disabled=False)
    assert len(server.requests) == 1
    assert sleeps == []


# -- create --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "path", "cap"),
    [
        ("a", "/api/v1/keys", "limit"),
        ("b", "/api/v1/keys", "limit_usd"),
        ("c", "/v1/keys", "spending_limit"),
    ],
)
def test_create_body_per_dialect(
    server: FakeServer, make: MakeClient, dialect: str, path: str, cap: str
) -> None:
    """Create sends the dialect's cap field, ISO-8601 Z expiry, and never `disabled`."""
    server.on(
        "POST", path, reply(201, {"key": VALUE_TEXT, "id": "key_1", "hash": "h1", "name": "n"})
    )
    spec = KeySpec(
        "n",
        Permissions(
            allowed_providers=("openai",),
            spending_limit=2.5,
            limit_reset="daily",
            expires_at=datetime(2030, 1, 1, tzinfo=UTC),
        ),
    )
    make(dialect).create_key(spec)
    body = json.loads(server.requests[-1].read())
    assert body == {
        "name": "n",
        "allowed_providers": ["openai"],
        cap: 2.5,
        "limit_reset": "daily",
        "expires_at": "2030-01-01T00:00:00Z",
    }
    assert server.requests[-1].headers["authorization"] == f"Bearer {MGMT_TEXT}"


def test_flat_create_answer_filled_from_spec(server: FakeServer, make: MakeClient) -> None:
    """B's flat {key, hash, name} answer gives a record whose missing fields come from the spec."""
    server.on("POST", "/api/v1/keys", reply(200, {"key": VALUE_TEXT, "hash": "h1", "name": "n"}))
    created = make("b").create_key(
        KeySpec("n", Permissions(allowed_models=("m",), spending_limit=1.0))
    )
    assert created.record.id == "h1"
    assert created.record.allowed_models == ("m",)
    assert created.record.spending_limit == 1.0
    assert created.value == Secret(VALUE_TEXT)


@pytest.mark.parametrize(
    "item",
    [
        reply(503),
        reply(502),
        reply(500),
        fail(httpx.ReadTimeout),
        fail(httpx.WriteTimeout),
        fail(httpx.RemoteProtocolError),
        fail(httpx.ReadError),
    ],
)
def test_create_is_never_retried_once_sent(
    server: FakeServer, make: MakeClient, item: Item
) -> None:
    """A create that may have reached the server is sent once and raises AmbiguousCreateError."""
    server.on("POST", "/api/v1/keys", item)
    with pytest.raises(AmbiguousCreateError, match="'rot-1' may have been created") as info:
        make("a").create_key(KeySpec("rot-1"))
    assert info.value.key_name == "rot-1"
    assert server.count("POST", "/api/v1/keys") == 1


@pytest.mark.parametrize("item", [fail(httpx.ConnectError), fail(httpx.ConnectTimeout), reply(429)])
def test_create_retried_when_never_processed(
    server: FakeServer, make: MakeClient, sleeps: list[float], item: Item
) -> None:
    """A refused connection or a 429 is retried: the server did not create anything."""
    answer = reply(201, {"data": rec_a(1, name="rot-1"), "key": VALUE_TEXT})
    server.on("POST", "/api/v1/keys", item, answer)
    created = make("a").create_key(KeySpec("rot-1"))
    assert created.record.name == "rot-1"
    assert server.count("POST", "/api/v1/keys") == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"hash": "h1", "name": "n"}, "key: missing"),
        ({"key": 42, "hash": "h1"}, "key: not a key value"),
        ({"key": "", "hash": "h1"}, "key: not a key value"),
        ({"key": "lr_mgmt_0123456789abc", "hash": "h1"}, "management-key prefix"),
        ({"key": VALUE_TEXT, "data": [1]}, "data: expected an object"),
        ({"key": VALUE_TEXT, "name": "n"}, "hash: missing"),
    ],
)
def test_unreadable_create_answer_is_ambiguous(
    server: FakeServer, make: MakeClient, payload: object, needle: str
) -> None:
    """A 2xx create answer without a usable value or id is both a response error and ambiguous."""
    server.on("POST", "/api/v1/keys", reply(201, payload))
    with pytest.raises(AmbiguousCreateResponseError, match=needle) as info:
        make("b").create_key(KeySpec("n"))
    assert isinstance(info.value, ProviderResponseError)
    assert info.value.key_name == "n"
    assert "lr_mgmt_0123456789abc" not in str(info.value)


def test_create_non_json_is_ambiguous(server: FakeServer, make: MakeClient) -> None:
    """A 201 with an HTML body leaves the key probably created: AmbiguousCreateResponseError."""
    server.on("POST", "/v1/keys", lambda r: httpx.Response(201, content=b"<html>"))
    with pytest.raises(AmbiguousCreateResponseError, match="not valid JSON"):
        make("c").create_key(KeySpec("n"))


def test_create_rejected_is_permanent(server: FakeServer, make: MakeClient) -> None:
    """A 400 on create means nothing was created: a plain permanent error, not ambiguous."""
    server.on("POST", "/api/v1/keys", reply(400, {"error": {"message": "bad name"}}))
    with pytest.raises(ProviderPermanentError, match="bad name") as info:
        make("a").create_key(KeySpec("n"))
    assert not isinstance(info.value, AmbiguousCreateError)


# -- update, delete, verify ----------------------------------------------------------------


def test_update_sends_patch(server: FakeServer, make: MakeClient) -> None:
    """update_key PATCHes the item path with only {"disabled": ...}."""
    server.on("PATCH", "/v1/keys/key_7", reply(200, {"id": "key_7"}))
    make("c").update_key("key_7", disabled=True)
    assert server.requests[-1].read() == b'{"disabled":true}'


@pytest.mark.parametrize(
    ("item", "expected"),
    [(reply(204), True), (reply(200, {"data": {"deleted": True}}), True), (reply(404), False)],
)
def test_delete_outcomes(server: FakeServer, make: MakeClient, item: Item, expected: bool) -> None:
    """delete_key is True on 200/204 and False on 404 (already gone)."""
    server.on("DELETE", "/api/v1/keys/a1", item)
    assert make("a").delete_key("a1") is expected


def test_refuses_non_id(make: MakeClient, server: FakeServer) -> None:
    """An id that is not id-shaped is refused before any request."""
    with pytest.raises(ProviderPermanentError, match="not an id"):
        make("a").delete_key("../../admin")
    assert server.requests == []


def test_verify_key(server: FakeServer, make: MakeClient) -> None:
    """verify_key calls /v1/models with the key's own bearer value and accepts a data list."""
    server.on("GET", "/v1/models", reply(200, {"object": "list", "data": [{"id": "m"}]}))
    make("a").verify_key(Secret(VALUE_TEXT))
    assert server.requests[-1].headers["authorization"] == f"Bearer {VALUE_TEXT}"


@pytest.mark.parametrize(
    ("item", "kind"),
    [
        (reply(401, {"error": {"message": f"bad key {VALUE_TEXT}"}}), ProviderAuthError),
        (reply(403), ProviderForbiddenError),
        (reply(200, {"object": "list"}), ProviderResponseError),
    ],
)
def test_verify_key_failures(
    server: FakeServer, make: MakeClient, item: Item, kind: type[Exception]
) -> None:
    """A dead key or a models answer without a data list raises, never showing the value."""
    server.on("GET", "/v1/models", item)
    with pytest.raises(kind) as info:
        make("a").verify_key(Secret(VALUE_TEXT))
    assert VALUE_TEXT not in str(info.value)
    assert len(server.requests) == 1


def test_worst_case_seconds(make: MakeClient) -> None:
    """The lease budget is attempts x 4 timeouts plus every capped wait."""
    client = make("a", timeout=2.0, max_attempts=3, backoff_max=5.0)
    assert client.worst_case_seconds() == 3 * 4 * 2.0 + 2 * 5.0


def test_bad_configuration(server: FakeServer) -> None:
    """A non-http base URL or an unknown dialect is a ConfigError at construction."""
    with pytest.raises(ConfigError, match="base URL") as info:
        ARouterClient("ftp://user:hunter2@x", MGMT)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="dialect"):
        ARouterClient(BASE, MGMT, "z")  # type: ignore[arg-type]  # an unknown dialect on purpose


# -- secrecy -------------------------------------------------------------------------------


def test_no_secret_in_logs_or_errors(server: FakeServer, make: MakeClient) -> None:
    """Debug logs and exception texts of a session hold neither key value nor management key."""
    server.on("GET", "/api/v1/keys", reply(503), reply(payload={"data": [rec_a(1)]}))
    server.on("POST", "/api/v1/keys", reply(201, {"data": rec_a(2), "key": VALUE_TEXT}))
    server.on("GET", "/v1/models", reply(401, {"error": {"message": f"{VALUE_TEXT} {MGMT_TEXT}"}}))
    server.on("DELETE", "/api/v1/keys/a0001", fail(httpx.RemoteProtocolError), reply(404))
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            client = make()
            client.list_keys()
            created = client.create_key(KeySpec("key-2"))
            with pytest.raises(ProviderAuthError) as info:
                client.verify_key(created.value)
            assert client.delete_key("a0001") is False
    finally:
        structlog.reset_defaults()
    assert any(line.get("log_level") == "debug" for line in logs)
    assert any(line.get("fingerprint") == created.value.fingerprint for line in logs)
    texts = [repr(line) for line in logs] + [str(info.value), repr(info.value)]
    for text in texts:
        assert VALUE_TEXT not in text
        assert MGMT_TEXT not in text
        assert "authorization" not in text.lower()


# -- inference helper and retry policy -----------------------------------------------------


def test_inference_client_returns_statuses(server: FakeServer) -> None:
    """The inference helper returns statuses (401 included) and sends OpenAI-shaped bodies."""
    server.on("GET", "/v1/models", reply(200, {"data": []}))
    server.on("POST", "/v1/chat/completions", reply(401))
    server.on("POST", "/v1/embeddings", reply(200, {"data": []}))
    value = Secret(VALUE_TEXT)
    with InferenceClient(BASE, transport=httpx.MockTransport(server)) as client:
        assert client.models(value) == 200
        assert client.chat(value, model="m") == 401
        assert client.embeddings(value) == 200
    assert b'"model":"m"' in server.requests[1].read()


def test_inference_client_connection_error(server: FakeServer) -> None:
    """A refused connection is a ProviderRetryableError that never reached the server."""
    server.on("GET", "/v1/models", fail(httpx.ConnectError))
    with (
        InferenceClient(BASE, transport=httpx.MockTransport(server)) as client,
        pytest.raises(ProviderRetryableError) as info,
    ):
        client.models(Secret(VALUE_TEXT))
    assert info.value.reached_server is False


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, 10.0),
        ({"x-ratelimit-reset": str(int(NOW * 1000) + 4000)}, 4.0),
        ({"x-ratelimit-reset": str(int(NOW) - 50)}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_server_delay(headers: dict[str, str], expected: float | None) -> None:
    """Retry-After (seconds or HTTP date) and X-RateLimit-Reset (s or ms) become a delay."""
    assert server_delay(headers, NOW) == expected


def test_backoff_rejects_nonsense() -> None:
    """Zero attempts is a configuration error, not a silent no-op."""
    with pytest.raises(ConfigError, match="max_attempts"):
        Backoff(max_attempts=0)


def test_a_lenient_server_never_loses_the_cap_under_a_learnt_dialect(
    server: FakeServer, make: MakeClient
) -> None:
    """A saved 'a' on a B server that ignores unknown fields: both cap names go first, so the
    server keeps its own and the key is created capped."""
    kept: list[object] = []

    def lenient_b(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.read())
        kept.append(body.get("limit_usd"))  # what a B server stores; "limit" it ignores
        return httpx.Response(201, json={"key": VALUE_TEXT, "hash": "b0009", "name": body["name"]})

    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_b(1)]}))
    server.on("POST", "/api/v1/keys", lenient_b)
    client = make(hint=Dialect.A)
    client.list_keys()
    client.create_key(KeySpec("n", Permissions(spending_limit=7.0)))
    assert kept == [7.0]


def test_a_hint_the_listing_agrees_with_becomes_known(server: FakeServer, make: MakeClient) -> None:
    """A saved hint is reported as known only once the server's records agree with it."""
    server.on("GET", "/api/v1/keys", reply(payload={"data": []}))
    client = make(hint=Dialect.B)
    client.list_keys()
    assert client.detected_dialect is None
    server.on("GET", "/api/v1/keys", reply(payload={"data": [rec_b(1)]}))
    client.list_keys()
    assert client.detected_dialect is Dialect.B
