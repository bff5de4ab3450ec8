"""The ARouter emulator: every dialect's shapes, paging, traffic evidence, faults, persistence.

Real HTTP (httpx) against in-process emulators, plus the CLI as a subprocess.
"""

from __future__ import annotations

import json
import math
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from vault_rotator.emulator import Emulator
from vault_rotator.secret import fingerprint
from vault_rotator.testing.clock import FakeClock

MANAGEMENT_KEY = "lr_mgmt_test_0123456789abcdef"  # conftest's make_emulator default
COLLECTION = {"a": "/api/v1/keys", "b": "/api/v1/keys", "c": "/v1/keys"}
ID_FIELD = {"a": "hash", "b": "hash", "c": "id"}
CAP_FIELD = {"a": "limit", "b": "limit_usd", "c": "spending_limit"}
RECORD_FIELDS = {
    "a": {
        "hash", "name", "label", "key_type", "disabled", "allowed_providers", "allowed_models",
        "limit", "limit_reset", "usage", "usage_daily", "usage_weekly", "usage_monthly",
        "created_at", "updated_at", "expires_at",
    },
    "b": {
        "hash", "name", "label", "created_at", "allowed_models", "allowed_providers",
        "limit_usd", "usage", "last_used_at", "rate_limit", "disabled",
    },
    "c": {
        "id", "name", "created_at", "last_used_at", "spending_limit", "allowed_providers",
        "allowed_models", "disabled",
    },
}  # fmt: skip
VALUE_PATTERN = re.compile(r"lr_live_[A-Za-z0-9_-]{40}")
ID_PATTERN = {"a": r"[0-9a-f]{64}", "b": r"[0-9a-f]{64}", "c": r"key_[a-z0-9]{12}"}
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z

# The emulator speaks plain HTTP, but httpx builds a TLS context (~60 ms) per client: share one.
TLS = ssl.create_default_context()

Factory = Callable[..., Emulator]
ClientFactory = Callable[..., httpx.Client]


@pytest.fixture
def client() -> Iterator[ClientFactory]:
    """httpx clients on an emulator (management key by default), all closed after the test."""
    opened: list[httpx.Client] = []

    def make(emu: Emulator, key: str | None = MANAGEMENT_KEY, **options: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(options.pop("headers", {}))
        options.setdefault("timeout", 5.0)
        made = httpx.Client(base_url=emu.base_url, headers=headers, verify=TLS, **options)
        opened.append(made)
        return made

    yield make
    for made in opened:
        made.close()


def create(http: httpx.Client, dialect: str, name: str, **fields: Any) -> tuple[str, str]:
    """Create a key over the API; return (id, value)."""
    response = http.post(COLLECTION[dialect], json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body = response.json()
    record = body["data"] if dialect == "a" else body
    return record[ID_FIELD[dialect]], body["key"]


def listed(http: httpx.Client, dialect: str, **params: Any) -> list[dict[str, Any]]:
    response = http.get(COLLECTION[dialect], params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def record_of(http: httpx.Client, dialect: str, key_id: str) -> dict[str, Any]:
    keys = listed(http, dialect, include_disabled="true", page_size=100)
    return next(key for key in keys if key[ID_FIELD[dialect]] == key_id)


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    return dict(error)


# -- management shapes --------------------------------------------------------------------


def test_create_answers_in_the_dialect_shape(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """A create answers 201 with the dialect's own body, a well-formed id and a fresh value."""
    http = client(make_emulator(dialect=dialect))
    body = {"name": "svc", "allowed_providers": ["openai"], CAP_FIELD[dialect]: 5}
    response = http.post(COLLECTION[dialect], json=body)
    assert response.status_code == 201
    created = response.json()
    if dialect == "a":
        assert set(created) == {"data", "key"}
        assert set(created["data"]) == RECORD_FIELDS["a"]
        assert created["data"]["limit"] == 5.0
    elif dialect == "b":
        assert set(created) == {"key", "hash", "name"}
    else:
        assert set(created) == RECORD_FIELDS["c"] | {"key"}
        assert created["spending_limit"] == 5.0
    record = created.get("data", created)
    assert re.fullmatch(ID_PATTERN[dialect], record[ID_FIELD[dialect]])
    assert VALUE_PATTERN.fullmatch(created["key"])


def test_list_records_carry_exactly_the_dialect_fields(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """Listed records have the spec's fields for the dialect, and only dialect A lacks last use."""
    http = client(make_emulator(dialect=dialect))
    create(http, dialect, "svc")
    (record,) = listed(http, dialect)
    assert set(record) == RECORD_FIELDS[dialect]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", record["created_at"])
    assert ("last_used_at" in record) == (dialect != "a")


def test_value_is_shown_only_in_the_create_answer(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """The value never appears again: not in lists, item reads, all_keys or /_emulator/keys."""
    emu = make_emulator(dialect=dialect)
    http = client(emu)
    key_id, value = create(http, dialect, "svc")
    seen = [
        http.get(COLLECTION[dialect]).text,
        http.get(f"{COLLECTION[dialect]}/{key_id}").text,
        json.dumps(emu.all_keys()),
        http.get("/_emulator/keys").text,
    ]
    assert all(value not in text and value[8:] not in text for text in seen)
    assert emu.all_keys()[0]["value_fingerprint"] == fingerprint(value)
    assert emu.key_id_for_value(value) == key_id


@pytest.mark.parametrize("dialect", ["a", "b"])
def test_label_shows_the_first_ten_and_last_four_characters(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """Dialects A and B label a key with a short display form that matches its value."""
    http = client(make_emulator(dialect=dialect))
    key_id, value = create(http, dialect, "svc")
    assert record_of(http, dialect, key_id)["label"] == f"{value[:10]}...{value[-4:]}"


def test_update_changes_given_fields_and_null_clears(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """PATCH changes named fields, clears explicit nulls and leaves omitted ones alone."""
    http = client(make_emulator(dialect=dialect))
    cap = CAP_FIELD[dialect]
    key_id, _ = create(http, dialect, "old", allowed_providers=["openai"], **{cap: 9.5})
    patch = {"name": "new", cap: None, "allowed_models": ["openai/gpt-4o"]}
    response = http.patch(f"{COLLECTION[dialect]}/{key_id}", json=patch)
    assert response.status_code == 200
    answered = response.json()["data"] if dialect == "a" else response.json()
    assert answered == record_of(http, dialect, key_id)
    assert (answered["name"], answered[cap]) == ("new", None)
    assert answered["allowed_providers"] == ["openai"]
    assert answered["allowed_models"] == ["openai/gpt-4o"]


def test_delete_answers_per_dialect_and_a_second_delete_is_404(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """Delete answers A {"data": {"deleted": true}}, B 204, C {"id", "deleted"}; then 404."""
    emu = make_emulator(dialect=dialect)
    http = client(emu)
    key_id, _ = create(http, dialect, "gone")
    response = http.delete(f"{COLLECTION[dialect]}/{key_id}")
    expected = {
        "a": (200, {"data": {"deleted": True}}),
        "b": (204, None),
        "c": (200, {"id": key_id, "deleted": True}),
    }[dialect]
    assert (response.status_code, response.json() if response.content else None) == expected
    again = http.delete(f"{COLLECTION[dialect]}/{key_id}")
    assert again.status_code == 404
    assert error_of(again)["type"] == "not_found_error"
    assert http.get(f"{COLLECTION[dialect]}/{key_id}").status_code == 404
    assert listed(http, dialect, include_disabled="true") == []
    (gone,) = emu.all_keys()
    assert gone["deleted"]
    assert gone["deleted_at"] is not None
    assert emu.live_keys() == []


def test_item_read_nests_under_data_only_in_dialect_a(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """GET on an item answers the record, nested under "data" in dialect A only."""
    http = client(make_emulator(dialect=dialect))
    key_id, _ = create(http, dialect, "svc")
    body = http.get(f"{COLLECTION[dialect]}/{key_id}").json()
    record = body["data"] if dialect == "a" else body
    assert record == record_of(http, dialect, key_id)


def test_paths_of_other_dialects_are_404_with_the_error_body(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """A dialect serves only its own paths; others get 404, other methods 405."""
    http = client(make_emulator(dialect=dialect))
    other = "/v1/keys" if dialect != "c" else "/api/v1/keys"
    response = http.get(other)
    assert response.status_code == 404
    assert error_of(response)["type"] == "not_found_error"
    assert http.put(COLLECTION[dialect], json={}).status_code == 405


# -- management auth and validation ---------------------------------------------------------


def test_management_routes_refuse_strangers_and_api_keys(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """No or unknown key is 401 authentication_error; a live API key is 403 permission_error."""
    emu = make_emulator(dialect="a")
    _, live = emu.seed_key("consumer")
    cases = [
        (client(emu, key=None), 401, "authentication_error"),
        (client(emu, key="lr_mgmt_nope"), 401, "authentication_error"),
        (client(emu, key=live), 403, "permission_error"),
        (client(emu, key=None, headers={"X-Api-Key": MANAGEMENT_KEY}), 401, "authentication_error"),
    ]
    for http, status, kind in cases:
        response = http.get("/api/v1/keys")
        assert (response.status_code, error_of(response)["type"]) == (status, kind)
    assert emu.request_counts()["list"] == 4


def test_allow_live_management_lets_live_api_keys_manage(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """With allow_live_management a live key manages keys; disabled 403, deleted 401."""
    emu = make_emulator(dialect="c", management_keys=[], allow_live_management=True)
    _, manager = emu.seed_key("manager")
    _, disabled = emu.seed_key("disabled", disabled=True)
    http = client(emu, key=manager)
    other_id, other = create(http, "c", "other")
    assert client(emu, key=disabled).get("/v1/keys").status_code == 403
    assert http.delete(f"/v1/keys/{other_id}").status_code == 200
    assert client(emu, key=other).get("/v1/keys").status_code == 401


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({}, "'name' is required"),
        ({"name": ""}, "'name'"),
        ({"name": "k", "limit": "5"}, "'limit'"),
        ({"name": "k", "limit": -1}, "'limit'"),
        ({"name": "k", "limit_usd": 5}, "unknown field 'limit_usd'"),
        ({"name": "k", "limit_reset": "hourly"}, "'limit_reset'"),
        ({"name": "k", "expires_at": "tomorrow"}, "'expires_at'"),
        ({"name": "k", "expires_at": "2030-01-01T00:00:00+02:00"}, "'expires_at'"),
        ({"name": "k", "allowed_providers": "openai"}, "'allowed_providers'"),
        (["name"], "JSON object"),
    ],
)
def test_malformed_create_bodies_are_400(
    make_emulator: Factory, client: ClientFactory, body: Any, complaint: str
) -> None:
    """A create body with a missing, mistyped or foreign field is a 400 naming the field."""
    emu = make_emulator(dialect="a")
    response = client(emu).post("/api/v1/keys", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert complaint in error["message"]
    assert emu.all_keys() == []


def test_malformed_update_and_json_are_400(make_emulator: Factory, client: ClientFactory) -> None:
    """Null name, non-boolean disabled, expires_at in an update and broken JSON are 400."""
    emu = make_emulator(dialect="c")
    http = client(emu)
    key_id, _ = create(http, "c", "svc")
    for patch in ({"name": None}, {"disabled": "yes"}, {"expires_at": None}):
        assert http.patch(f"/v1/keys/{key_id}", json=patch).status_code == 400
    broken = http.post("/v1/keys", content=b'{"name": ', headers={"Content-Type": "x"})
    assert broken.status_code == 400
    assert http.patch("/v1/keys/key_000000000000", json={}).status_code == 404
    assert [key["name"] for key in emu.all_keys()] == ["svc"]


def test_oversized_body_is_413(make_emulator: Factory, client: ClientFactory) -> None:
    """A request body over 1 MiB is refused with 413 and creates nothing."""
    emu = make_emulator(dialect="c")
    response = client(emu).post("/v1/keys", json={"name": "x" * (2 * 1024 * 1024)})
    assert response.status_code == 413
    assert emu.all_keys() == []


# -- listing --------------------------------------------------------------------------------


def seed_names(emu: Emulator, clock: FakeClock, count: int, prefix: str = "k") -> list[str]:
    """Seed keys one second apart; return their names oldest first."""
    names = [f"{prefix}{index:03d}" for index in range(count)]
    for name in names:
        emu.seed_key(name)
        clock.advance(1)
    return names


def test_token_paging_walks_every_key_newest_first(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """next_page_token walks 45 keys in pages of 20, 20 and 5, newest first, then stops."""
    clock = FakeClock(START)
    emu = make_emulator(dialect=dialect, clock=clock)
    names = seed_names(emu, clock, 45)
    http = client(emu)
    pages, params = [], {"page_size": 20}
    while True:
        body = http.get(COLLECTION[dialect], params=params).json()
        pages.append([key["name"] for key in body["data"]])
        if "next_page_token" not in body:
            break
        params = {"page_size": 20, "page_token": body["next_page_token"]}
    assert [len(page) for page in pages] == [20, 20, 5]
    assert [name for page in pages for name in page] == names[::-1]


def test_token_cursor_stays_put_while_keys_are_created(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """Keys created between pages do not shift a token cursor: no key is skipped or repeated."""
    clock = FakeClock(START)
    emu = make_emulator(dialect="b", clock=clock)
    names = seed_names(emu, clock, 25)
    http = client(emu)
    first = http.get("/api/v1/keys", params={"page_size": 10}).json()
    seed_names(emu, clock, 5, prefix="new")
    second = http.get(
        "/api/v1/keys", params={"page_size": 10, "page_token": first["next_page_token"]}
    )
    walked = [key["name"] for key in first["data"] + second.json()["data"]]
    assert walked == names[::-1][:20]


def test_offset_paging_mode_sends_no_token_and_honours_offset(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """In offset paging only offset moves through 45 keys; no next_page_token is ever sent."""
    clock = FakeClock(START)
    emu = make_emulator(dialect=dialect, clock=clock, paging="offset")
    names = seed_names(emu, clock, 45)
    http = client(emu)
    walked = []
    for offset in (0, 20, 40):
        body = http.get(COLLECTION[dialect], params={"page_size": 20, "offset": offset}).json()
        assert "next_page_token" not in body
        walked += [key["name"] for key in body["data"]]
    assert walked == names[::-1]
    assert emu.request_counts()["list"] == 3


def test_offset_also_works_in_token_mode(make_emulator: Factory, client: ClientFactory) -> None:
    """Token paging still honours offset, and says whether more keys follow."""
    clock = FakeClock(START)
    emu = make_emulator(dialect="a", clock=clock)
    names = seed_names(emu, clock, 30)
    body = client(emu).get("/api/v1/keys", params={"offset": 25}).json()
    assert [key["name"] for key in body["data"]] == names[::-1][25:]
    assert "next_page_token" not in body


def test_page_size_defaults_to_20_and_is_clamped_to_100(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """Pages hold 20 keys by default and at most 100; bad paging parameters are 400."""
    clock = FakeClock(START)
    emu = make_emulator(dialect="c", clock=clock)
    seed_names(emu, clock, 130)
    http = client(emu)
    assert len(listed(http, "c")) == 20
    assert len(listed(http, "c", page_size=500)) == 100
    for params in ({"page_size": 0}, {"offset": -1}, {"page_token": "junk"}, {"page_size": "x"}):
        assert http.get("/v1/keys", params=params).status_code == 400


def test_disabled_keys_are_listed_only_with_include_disabled(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """A disabled key disappears from the default list and comes back with include_disabled."""
    emu = make_emulator(dialect=dialect)
    http = client(emu)
    key_id, _ = create(http, dialect, "off")
    create(http, dialect, "on")
    http.patch(f"{COLLECTION[dialect]}/{key_id}", json={"disabled": True})
    assert [key["name"] for key in listed(http, dialect)] == ["on"]
    everything = listed(http, dialect, include_disabled="true")
    assert [(key["name"], key["disabled"]) for key in everything] == [
        ("on", False),
        ("off", True),
    ]


# -- traffic evidence -----------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["b", "c"])
def test_models_moves_last_used_but_only_billable_calls_move_usage(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """GET /v1/models sets last_used_at; only chat and embeddings add cost and tokens."""
    clock = FakeClock(START)
    emu = make_emulator(dialect=dialect, clock=clock)
    http = client(emu)
    key_id, value = emu.seed_key("svc")
    assert record_of(http, dialect, key_id)["last_used_at"] is None
    clock.advance(10)
    assert emu.call(value, "models") == 200
    after_models = record_of(http, dialect, key_id)
    assert after_models["last_used_at"] == "2027-01-15T08:00:10Z"
    assert emu.all_keys()[0]["usage_tokens"] == 0
    assert (emu.call(value, "chat"), emu.call(value, "embeddings")) == (200, 200)
    truth = emu.all_keys()[0]
    assert truth["usage_cost"] > 0
    assert truth["usage_tokens"] > 0
    if dialect == "b":
        assert after_models["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0}
        usage = record_of(http, dialect, key_id)["usage"]
        assert usage["cost"] == pytest.approx(truth["usage_cost"])
        assert usage["prompt_tokens"] + usage["completion_tokens"] == truth["usage_tokens"]


def test_dialect_a_shows_usage_but_no_last_used(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """Dialect A never shows last_used_at; its usage numbers rise on chat, not on models."""
    emu = make_emulator(dialect="a")
    http = client(emu)
    key_id, value = emu.seed_key("svc")
    emu.call(value, "models")
    record = record_of(http, "a", key_id)
    assert "last_used_at" not in record
    assert record["usage"] == 0
    assert emu.all_keys()[0]["last_used_at"] is not None
    emu.call(value, "chat")
    record = record_of(http, "a", key_id)
    assert record["usage"] > 0
    assert record["usage"] == record["usage_daily"] == record["usage_monthly"]


def test_last_used_is_rounded_down_to_the_granularity(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """With a 60 s granularity last_used_at shows the minute; all_keys keeps the true time."""
    clock = FakeClock(START + 59.5)
    emu = make_emulator(dialect="c", clock=clock, last_used_granularity=60)
    key_id, value = emu.seed_key("svc")
    emu.call(value, "models")
    assert record_of(client(emu), "c", key_id)["last_used_at"] == "2027-01-15T08:00:00Z"
    assert emu.all_keys()[0]["last_used_at"] == "2027-01-15T08:00:59.500Z"


def test_usage_lag_hides_a_use_until_it_has_passed(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """With a 30 s lag a use shows in neither last_used_at nor usage until 30 s later."""
    clock = FakeClock(START)
    emu = make_emulator(dialect="b", clock=clock, usage_lag=30)
    http = client(emu)
    key_id, value = emu.seed_key("svc")
    emu.call(value, "chat")
    assert emu.all_keys()[0]["usage_tokens"] > 0
    clock.advance(29)
    hidden = record_of(http, "b", key_id)
    assert hidden["last_used_at"] is None
    assert hidden["usage"]["cost"] == 0
    clock.advance(1)
    shown = record_of(http, "b", key_id)
    assert shown["last_used_at"] == "2027-01-15T08:00:00Z"
    assert shown["usage"]["cost"] > 0


def test_clock_offset_skews_every_provider_timestamp(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """A provider clock 90 s behind ours stamps created_at and last_used_at 90 s early."""
    clock = FakeClock(START)
    emu = make_emulator(dialect="c", clock=clock, clock_offset=-90)
    key_id, value = emu.seed_key("svc")
    emu.call(value, "models")
    record = record_of(client(emu), "c", key_id)
    assert record["created_at"] == record["last_used_at"] == "2027-01-15T07:58:30Z"


# -- inference ------------------------------------------------------------------------------


def test_inference_refuses_unknown_deleted_disabled_and_expired_keys(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """Unknown, deleted and management keys get 401; disabled and expired keys get 403."""
    clock = FakeClock(START)
    emu = make_emulator(dialect="c", clock=clock)
    _, live = emu.seed_key("live")
    deleted_id, deleted = emu.seed_key("deleted")
    _, disabled = emu.seed_key("disabled", disabled=True)
    _, expired = emu.seed_key("expired", expires_at=START - 1)
    client(emu).delete(f"/v1/keys/{deleted_id}")
    statuses = {
        value: emu.call(value, "models")
        for value in ("lr_live_unknown", deleted, MANAGEMENT_KEY, disabled, expired, live)
    }
    assert list(statuses.values()) == [401, 401, 401, 403, 403, 200]
    bare = client(emu, key=None, headers={"X-Api-Key": live}).get("/v1/models")
    assert bare.status_code == 200


def test_inference_enforces_allowed_providers_models_and_spending_limit(
    make_emulator: Factory,
) -> None:
    """A model outside allowed providers or models is 403; a spent cap is 402."""
    emu = make_emulator(dialect="a")
    _, scoped = emu.seed_key("scoped", allowed_providers=["openai"], allowed_models=["gpt-4o"])
    assert emu.call(scoped, model="anthropic/claude-3-5-sonnet") == 403
    assert emu.call(scoped, model="openai/gpt-4o-mini") == 403
    assert emu.call(scoped, model="openai/gpt-4o") == 200
    assert emu.call(scoped, model="no-such-model") == 400
    _, capped = emu.seed_key("capped", spending_limit=0.00001, limit_reset="daily")
    assert [emu.call(capped), emu.call(capped)] == [200, 402]


def test_inference_answers_are_openai_shaped(make_emulator: Factory, client: ClientFactory) -> None:
    """/v1/models lists models, chat answers a completion with usage, embeddings vectors."""
    emu = make_emulator(dialect="b")
    _, value = emu.seed_key("svc")
    http = client(emu, key=value)
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    assert set(models["data"][0]) == {"id", "object", "created", "owned_by"}
    chat = http.post(
        "/v1/chat/completions",
        json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    ).json()
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["total_tokens"] == chat["usage"]["prompt_tokens"] + 8
    embedded = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["a"]})
    assert len(embedded.json()["data"][0]["embedding"]) == 8


def test_inference_log_records_every_answer(make_emulator: Factory, client: ClientFactory) -> None:
    """Each inference answer is logged with its key id (deleted keys too; None when unknown)."""
    emu = make_emulator(dialect="c")
    key_id, value = emu.seed_key("svc")
    emu.call(value, "chat")
    client(emu).delete(f"/v1/keys/{key_id}")
    emu.call(value, "models")
    emu.call("lr_live_never_issued", "embeddings")
    log = [(entry["key_id"], entry["route"], entry["status"]) for entry in emu.inference_log()]
    assert log == [(key_id, "chat", 200), (key_id, "models", 401), (None, "embeddings", 401)]


def test_call_without_start_goes_straight_to_the_handler() -> None:
    """An emulator that is not started still answers call() in process, and has no URL."""
    emu = Emulator(dialect="c", management_keys=[MANAGEMENT_KEY])
    _, value = emu.seed_key("svc")
    assert emu.call(value, "models") == 200
    with pytest.raises(RuntimeError):
        _ = emu.base_url


# -- faults ---------------------------------------------------------------------------------


def test_status_fault_with_a_count_is_spent_after_that_many_requests(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """A 503 fault with count=2 answers twice without creating anything, then is spent."""
    emu = make_emulator(dialect="b")
    emu.set_fault("create", status=503, count=2)
    http = client(emu)
    statuses = [http.post("/api/v1/keys", json={"name": f"k{i}"}) for i in range(3)]
    assert [r.status_code for r in statuses] == [503, 503, 201]
    assert error_of(statuses[0])["type"] == "server_error"
    assert [key["name"] for key in emu.all_keys()] == ["k2"]
    assert emu.request_counts()["create"] == 3


def test_rate_limit_fault_carries_the_rate_limit_headers(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """A 429 fault sends rate_limit_error with X-RateLimit-* and Retry-After headers."""
    clock = FakeClock(START + 0.25)
    emu = make_emulator(dialect="a", clock=clock)
    emu.set_fault("list", status=429, count=1, retry_after=7)
    response = client(emu).get("/api/v1/keys")
    assert response.status_code == 429
    assert error_of(response)["type"] == "rate_limit_error"
    headers = response.headers
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("600", "0")
    assert headers["X-RateLimit-Reset"] == str(math.ceil(START + 7.25))
    assert headers["Retry-After"] == "7"


def test_drop_after_commit_creates_the_key_but_never_answers(
    make_emulator: Factory, client: ClientFactory, dialect: str
) -> None:
    """A create dropped after commit leaves the client with no answer and the key in the store."""
    emu = make_emulator(dialect=dialect)
    emu.set_fault("create", drop_after_commit=True, count=1)
    http = client(emu)
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(COLLECTION[dialect], json={"name": "orphan"})
    assert [key["name"] for key in emu.live_keys()] == ["orphan"]
    assert [key["name"] for key in listed(http, dialect)] == ["orphan"]


def test_drop_after_commit_on_delete_deletes(make_emulator: Factory, client: ClientFactory) -> None:
    """A delete dropped after commit has still deleted the key."""
    emu = make_emulator(dialect="c")
    key_id, _ = emu.seed_key("svc")
    emu.set_fault("delete", drop_after_commit=True)
    with pytest.raises(httpx.RemoteProtocolError):
        client(emu).delete(f"/v1/keys/{key_id}")
    assert emu.live_keys() == []


@pytest.mark.parametrize("garbage", ["json", "types", "huge", "html"])
def test_garbage_faults_spoil_the_answer(
    make_emulator: Factory, client: ClientFactory, garbage: str
) -> None:
    """Garbage faults answer broken JSON, mistyped fields, a 5 MiB body or an HTML page."""
    emu = make_emulator(dialect="c")
    emu.seed_key("svc")
    emu.set_fault("list", garbage=garbage, count=1)
    http = client(emu)
    response = http.get("/v1/keys")
    if garbage == "json":
        with pytest.raises(json.JSONDecodeError):
            response.json()
    elif garbage == "types":
        (record,) = response.json()["data"]
        assert not isinstance(record["id"], str)
        assert not isinstance(record["disabled"], bool)
    elif garbage == "huge":
        assert len(response.content) > 5_000_000
    else:
        assert (response.status_code, response.headers["content-type"][:9]) == (200, "text/html")
    assert isinstance(http.get("/v1/keys").json()["data"], list)


def test_garbage_on_create_still_commits(make_emulator: Factory, client: ClientFactory) -> None:
    """A create whose answer is mistyped has still created the key (its value is lost)."""
    emu = make_emulator(dialect="a")
    emu.set_fault("create", garbage="types")
    body = client(emu).post("/api/v1/keys", json={"name": "garbled"}).json()
    assert not isinstance(body["key"], str)
    assert [key["name"] for key in emu.live_keys()] == ["garbled"]


def test_latency_fault_outlasts_a_client_timeout(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """A slow answer trips the client's read timeout; after clear_faults answers are prompt."""
    emu = make_emulator(dialect="a")
    emu.set_fault("list", latency=2.0)
    http = client(emu, timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        http.get("/api/v1/keys")
    emu.clear_faults()
    assert http.get("/api/v1/keys").status_code == 200


def test_trickle_fault_dribbles_the_headers_past_every_read_timeout(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """trickle sends the head a byte at a time: no read timeout fires, the whole takes long."""
    emu = make_emulator(dialect="a")
    emu.set_fault("list", trickle=0.01, count=1)
    http = client(emu, timeout=0.5)
    started = time.monotonic()
    answer = http.get("/api/v1/keys")
    assert answer.status_code == 200
    assert answer.json() == {"data": []}
    assert time.monotonic() - started > 0.5  # some 90 bytes of head, 10 ms apart
    with pytest.raises(ValueError, match="trickle"):
        emu.set_fault("list", trickle=-1)


def test_trickle_body_fault_streams_the_body_slowly_but_whole(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """trickle_body sends the body 64 bytes at a time: each read is prompt, the whole is slow,
    and the body arrives intact."""
    emu = make_emulator(dialect="a")
    for n in range(4):
        emu.seed_key(f"svc-{n}")
    emu.set_fault("list", trickle_body=0.05, count=1)
    http = client(emu, timeout=0.5)
    started = time.monotonic()
    answer = http.get("/api/v1/keys")
    slow = time.monotonic() - started
    assert answer.status_code == 200
    assert len(answer.json()["data"]) == 4
    assert slow > 0.05 * (len(answer.content) // 64)
    with pytest.raises(ValueError, match="trickle_body"):
        emu.set_fault("list", trickle_body=-1)


def test_request_log_records_each_request_with_its_fault_and_retry_after(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """Every spec-route request is logged with its status, times, the fault that fired and the
    Retry-After answered; over HTTP too."""
    emu = make_emulator(dialect="a")
    emu.set_fault("list", status=429, retry_after=1.5, count=1)
    emu.set_fault("list", latency=0.1, count=1)
    http = client(emu)
    statuses = [http.get("/api/v1/keys").status_code for _ in range(3)]
    assert statuses == [429, 200, 200]
    log = emu.request_log()
    assert [(e["route"], e["status"], e["fault"], e["retry_after"]) for e in log] == [
        ("list", 429, "status 429", 1.5),
        ("list", 200, "latency 0.1", None),
        ("list", 200, None, None),
    ]
    assert log[1]["answered"] - log[1]["at"] >= 0.1
    assert log[0]["at"] <= log[1]["at"] <= log[2]["at"]
    assert http.get("/_emulator/request-log").json()["data"] == emu.request_log()


def test_error_rate_is_random_but_reproducible_with_a_seed(make_emulator: Factory) -> None:
    """error_rate=0.5 fails some calls, and the same seed fails the same ones."""
    runs = []
    for _ in range(2):
        emu = make_emulator(dialect="c", seed=7)
        _, value = emu.seed_key("svc")
        emu.set_fault("models", status=502, error_rate=0.5)
        runs.append([emu.call(value, "models") for _ in range(30)])
    assert runs[0] == runs[1]
    assert {200, 502} == set(runs[0])


def test_faults_queue_in_order_and_bad_ones_are_refused(make_emulator: Factory) -> None:
    """Faults on a route fire in the order set; invalid fault arguments raise ValueError."""
    emu = make_emulator(dialect="c")
    _, value = emu.seed_key("svc")
    emu.set_fault("chat", status=429, count=1)
    emu.set_fault("chat", status=503, count=1)
    assert [emu.call(value) for _ in range(3)] == [429, 503, 200]
    bad: list[dict[str, Any]] = [
        {"route": "nope", "status": 500},
        {"route": "list", "status": 200},
        {"route": "list", "drop_after_commit": True},
        {"route": "list"},
        {"route": "list", "status": 500, "garbage": "json"},
        {"route": "list", "garbage": "xml"},
    ]
    for arguments in bad:
        with pytest.raises(ValueError, match="fault on"):
            emu.set_fault(**arguments)


def test_request_counts_count_every_list_page(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """Each list page is one request in request_counts, whatever its answer."""
    clock = FakeClock(START)
    emu = make_emulator(dialect="a", clock=clock)
    seed_names(emu, clock, 5)
    http = client(emu)
    token = http.get("/api/v1/keys", params={"page_size": 2}).json()["next_page_token"]
    http.get("/api/v1/keys", params={"page_size": 2, "page_token": token})
    client(emu, key=None).get("/api/v1/keys")
    assert emu.request_counts()["list"] == 3


# -- persistence, HTTP inspection, concurrency, CLI -----------------------------------------


def test_keys_survive_a_restart_and_still_authenticate(
    make_emulator: Factory, client: ClientFactory, tmp_path: Any
) -> None:
    """A restarted emulator with the same persist_path lists its keys and accepts their values."""
    path = tmp_path / "state.json"
    first = make_emulator(dialect="b", persist_path=path)
    key_id, value = create(client(first), "b", "kept")
    gone_id, gone = first.seed_key("gone")
    client(first).delete(f"/api/v1/keys/{gone_id}")
    first.call(value, "chat")
    first.stop()
    assert value not in path.read_text()
    second = make_emulator(dialect="b", persist_path=path)
    record = record_of(client(second), "b", key_id)
    assert record["name"] == "kept"
    assert record["usage"]["cost"] > 0
    assert (second.call(value, "models"), second.call(gone, "models")) == (200, 401)
    assert [key["deleted"] for key in second.all_keys()] == [False, True]
    _, newer = second.seed_key("newer")
    assert newer != value
    assert newer != gone


def test_state_saved_by_another_dialect_is_refused(make_emulator: Factory, tmp_path: Any) -> None:
    """Loading a state file written for another dialect fails instead of mixing id formats."""
    path = tmp_path / "state.json"
    make_emulator(dialect="a", persist_path=path).seed_key("svc")
    with pytest.raises(ValueError, match="dialect"):
        Emulator(dialect="c", management_keys=[MANAGEMENT_KEY], persist_path=path)


def test_emulator_routes_inspect_and_drive_it_over_http(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """/_emulator/ seeds keys, sets and clears faults, and reports keys, log and counts."""
    emu = make_emulator(dialect="c")
    http = client(emu, key=None)
    seeded = http.post("/_emulator/keys", json={"name": "svc", "created_at": START})
    assert seeded.status_code == 201
    key_id, value = seeded.json()["id"], seeded.json()["key"]
    fault = {"route": "models", "status": 503, "count": 1}
    assert http.post("/_emulator/faults", json=fault).status_code == 204
    assert [emu.call(value, "models"), emu.call(value, "models")] == [503, 200]
    assert http.post("/_emulator/faults", json={"route": "list", "status": 503}).status_code == 204
    assert http.delete("/_emulator/faults").status_code == 204
    assert http.post("/_emulator/faults", json={"route": "x"}).status_code == 400
    (key,) = http.get("/_emulator/keys").json()["data"]
    assert (key["id"], key["created_at"]) == (key_id, "2027-01-15T08:00:00Z")
    log = http.get("/_emulator/inference-log").json()["data"]
    assert [entry["status"] for entry in log] == [503, 200]
    assert http.get("/_emulator/requests").json()["data"]["models"] == 2
    assert client(emu).get("/v1/keys").status_code == 200


def test_concurrent_creates_get_distinct_ids_and_values(
    make_emulator: Factory, client: ClientFactory
) -> None:
    """Eight threads creating keys at once get 160 distinct ids and values."""
    emu = make_emulator(dialect="c")
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(number: int, http: httpx.Client) -> None:
        made = [create(http, "c", f"t{number}-{i}") for i in range(20)]
        with lock:
            results.extend(made)

    threads = [threading.Thread(target=worker, args=(n, client(emu))) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({key_id for key_id, _ in results}) == len({v for _, v in results}) == 160
    assert len(emu.live_keys()) == 160


def test_cli_serves_until_sigterm_and_never_prints_the_management_key() -> None:
    """`vault-rotator emulator` prints its URL, serves the dialect, and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "vault_rotator", "emulator", "--port", "0"]
    command += ["--dialect", "c", "--management-key", MANAGEMENT_KEY]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(
            r"emulator listening on (http://127\.0\.0\.1:\d+) \(dialect c\)\n", line
        )
        assert match, line
        headers = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
        with httpx.Client(base_url=match.group(1), headers=headers, timeout=5, verify=TLS) as http:
            assert http.post("/v1/keys", json={"name": "cli"}).status_code == 201
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert MANAGEMENT_KEY not in line + out + err


def test_cli_without_a_management_key_is_a_usage_error() -> None:
    """Without --management-key or its environment variable the CLI exits 2 at once."""
    command = [sys.executable, "-m", "vault_rotator", "emulator", "--port", "0"]
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 2
    assert "AROUTER_EMULATOR_MANAGEMENT_KEY" in done.stderr
