"""Property tests: whatever a provider answers, the ARouter client ends cleanly.

For every route (list, create, update, delete, models) and every dialect (a, b, c, auto), a
server built from hypothesis answers (arbitrary JSON, plausible records with odd fields,
arbitrary bytes, wrong content types, deep nesting, bodies near the size cap, any status and
rate-limit headers) is served through httpx.MockTransport. The outcome must be the project's
own error (a VaultRotatorError subclass) with a one-line printable message and no secret, or a
correct result; never another exception, never a raw control character in a log line.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs
from world import as_dialect

from vault_rotator.errors import VaultRotatorError
from vault_rotator.ports.provider import CreatedKey, KeyRecord, KeySpec, Permissions
from vault_rotator.provider.arouter import ARouterClient
from vault_rotator.secret import Secret

MGMT_TEXT = "lr_mgmt_property_0123456789abcdef"
VALUE_TEXT = "lr_live_property_0123456789abcdef"
MAX_BYTES = 16 * 1024
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,255}")
ROUTES = ("list", "create", "update", "delete", "models")
DIALECTS = ("a", "b", "c", "auto")
FIELDS = (
    "hash", "id", "name", "label", "usage", "usage_daily", "key_type", "limit", "limit_usd",
    "spending_limit", "limit_reset", "disabled", "allowed_providers", "allowed_models",
    "created_at", "last_used_at", "expires_at", "prompt_tokens", "completion_tokens", "cost",
)  # fmt: skip

# -- answers -------------------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["", "a0001", "key_0001", "monthly", "2025-01-01T00:00:00Z", VALUE_TEXT])
    | st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "\u202e\x07"])
)
_json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def json_value(draw: st.DrawFn) -> object:
    """Any JSON value (small; a short repr keeps hypothesis' reports readable)."""
    return draw(_json_values)


json_values = json_value()


MONEY_ODD = [10**400, -(10**400), 2**63, 1e308, -1, 0.5, float("nan"), float("inf"), True, "5"]
TIME_ODD = [
    "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2025-13-01", "yesterday", "",
    10**400, 253_402_300_800, 1e20, -1, float("nan"), True, "x" * 100,
]  # fmt: skip
TEXT_ODD = ["", "x" * 1100, "\x07", "\u202e", "a\nb", "../x", "lr_live_in_field_0123456789", 7]
LIST_ODD = [[], ["a"] * 1001, ["x" * 300], [None], [""], ["\x07"], "openai", {}]
USAGE_ODD = [
    {"cost": 10**400}, {"cost": -1}, {"prompt_tokens": 1e300, "completion_tokens": -1},
    {"prompt_tokens": True}, {"prompt_tokens": 10**400}, {"prompt_tokens": 1.5}, [], "1",
    *MONEY_ODD,
]  # fmt: skip
ODD_FOR = {
    "hash": [*TEXT_ODD, 12, None], "id": [*TEXT_ODD, 12, None], "name": TEXT_ODD,
    "label": TEXT_ODD, "limit_reset": ["fortnightly", "MONTHLY", "", 1], "key_type": TEXT_ODD,
    "usage": USAGE_ODD, "usage_daily": MONEY_ODD, "limit": MONEY_ODD, "limit_usd": MONEY_ODD,
    "spending_limit": MONEY_ODD, "disabled": ["no", 0, 1, None], "allowed_providers": LIST_ODD,
    "allowed_models": LIST_ODD, "created_at": TIME_ODD, "last_used_at": TIME_ODD,
    "expires_at": TIME_ODD, "prompt_tokens": MONEY_ODD, "completion_tokens": MONEY_ODD,
    "cost": MONEY_ODD,
}  # fmt: skip
VALID: list[dict[str, object]] = [
    {"hash": "a0001", "name": "key-a", "label": "lr_live_ab...wxyz", "key_type": "api",
     "disabled": False, "usage": 1.5, "usage_daily": 0.5, "limit": 10, "limit_reset": "monthly",
     "allowed_providers": ["openai"], "allowed_models": None, "created_at": "2025-01-01T00:00:00Z",
     "expires_at": None},
    {"hash": "b0002", "name": "key-b", "label": None, "created_at": "2025-01-01T02:00:00+02:00",
     "last_used_at": "2025-01-02T00:00:00Z", "limit_usd": 5, "allowed_models": ["openai/gpt-4o"],
     "usage": {"prompt_tokens": 3, "completion_tokens": 4, "cost": 0.25}},
    {"id": "key_0003", "name": "key-c", "created_at": 1_700_000_000, "last_used_at": None,
     "allowed_providers": ["anthropic"], "spending_limit": 3.5},
]  # fmt: skip


@st.composite
def _plausible_record(draw: st.DrawFn) -> dict[str, object]:
    """A valid record of some dialect with up to three fields made odd, or dropped."""
    base: dict[str, object] = dict(draw(st.sampled_from(VALID)))
    for field in draw(st.lists(st.sampled_from(sorted(base)), max_size=3, unique=True)):
        odd = st.sampled_from(ODD_FOR[field])
        base[field] = draw(st.one_of(odd, odd, odd, json_values))
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True)):
        if draw(st.booleans()):
            base.pop(field, None)
        else:
            base[field] = draw(st.sampled_from(ODD_FOR[field]))
    return base


_records = _plausible_record() | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4)


@st.composite
def record(draw: st.DrawFn) -> object:
    """A key record: plausible ids and names with any other fields, of any type."""
    return draw(_records)


records = record()
envelopes = st.fixed_dictionaries(
    {"data": st.lists(records | records | json_values, max_size=4)},
    optional={"next_page_token": st.none() | st.text(max_size=6) | json_values},
)
keys = st.sampled_from([VALUE_TEXT, VALUE_TEXT, MGMT_TEXT, "short", ""]) | json_values


@st.composite
def created_answer(draw: st.DrawFn) -> object:
    """A create answer: A's nested one, B's flat one or C's, odd in a few places, or any."""
    record = draw(records)
    value = draw(keys)
    shape = draw(st.sampled_from(["nested", "flat", "any"]))
    if shape == "nested":
        return {"data": record, "key": value}
    if shape == "flat" and isinstance(record, dict):
        return {**record, "key": value}
    others = draw(st.dictionaries(st.sampled_from((*FIELDS, "data")), json_values, max_size=4))
    return {"key": value, **others}


created = created_answer()
errors = st.fixed_dictionaries(
    {"error": st.fixed_dictionaries({}, optional={"message": json_values, "type": json_values})}
) | st.fixed_dictionaries({}, optional={"code": json_values, "message": json_values})
documents = envelopes | created | errors | json_values


def _encoded(document: object) -> bytes:
    return json.dumps(document).encode()  # NaN and Infinity included, as Python writes them


_bodies = (
    documents.map(_encoded)
    | st.binary(max_size=64)
    | st.integers(1, 50_000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(1, 20_000).map(lambda n: b'{"data": ' * n + b"[]" + b"}" * n)
    | st.integers(MAX_BYTES - 16, MAX_BYTES + 16).map(lambda n: b'{"data": [' + b" " * n + b"]}")
    | documents.map(lambda document: json.dumps(document).encode("utf-16"))
    | st.sampled_from([b"", b"null", b'{"data": "\xff\xfe"}', b"<html>busy</html>", b"1" * 5000])
)


@st.composite
def body(draw: st.DrawFn) -> bytes:
    """Any body: JSON documents, bytes, deep nesting, sizes at the cap, UTF-16, odd bytes."""
    return draw(_bodies)


bodies = body()
statuses = st.sampled_from([200, 201, 204, 301, 400, 401, 402, 403, 404, 409, 429, 500, 502, 503])
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/problem+json",
        "text/html",
        "text/plain",
        "",
    ]
)
delays = st.sampled_from(
    ["0", "1", "100000", "-5", "nan", "1e400", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"]
)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer the fake server gives."""

    status: int
    content_type: str
    body: bytes
    retry_after: str | None
    reset: str | None

    def response(self) -> httpx.Response:
        headers = {"content-type": self.content_type} if self.content_type else {}
        if self.retry_after is not None:
            headers["retry-after"] = self.retry_after
        if self.reset is not None:
            headers["x-ratelimit-reset"] = self.reset
        return httpx.Response(self.status, headers=headers, content=self.body)


any_answers = st.builds(
    Answer,
    status=statuses | st.integers(100, 599),
    content_type=content_types,
    body=bodies,
    retry_after=st.none() | delays,
    reset=st.none() | delays,
)
plausible_answers = st.builds(
    Answer,
    status=st.sampled_from([200, 201]),
    content_type=st.just("application/json"),
    body=(envelopes | created).map(_encoded),
    retry_after=st.none(),
    reset=st.none(),
)
answers = plausible_answers | any_answers
conversations = st.lists(answers, min_size=1, max_size=4)

# -- the client under test -------------------------------------------------------------------


def serving(conversation: list[Answer]) -> httpx.MockTransport:
    """A server answering every request with the next answer, the list repeating."""
    served = iter(range(10**6))

    def handle(_request: httpx.Request) -> httpx.Response:
        return conversation[next(served) % len(conversation)].response()

    return httpx.MockTransport(handle)


def client_for(dialect: str, conversation: list[Answer]) -> ARouterClient:
    return ARouterClient(
        "http://arouter.test",
        Secret(MGMT_TEXT),
        as_dialect(dialect),
        transport=serving(conversation),
        max_attempts=2,
        backoff_max=1.0,
        max_response_bytes=MAX_BYTES,
        page_size=2,
        sleep=lambda _seconds: None,
        rng=lambda: 0.5,
        clock=lambda: 1_700_000_000.0,
    )


def _printable_line(text: str) -> bool:
    return text.isprintable() and "\n" not in text


def check_record(record: KeyRecord) -> None:
    assert ID.fullmatch(record.id)
    assert _printable_line(record.display_name)
    assert record.problem is None or _printable_line(record.problem)
    if record.problem is not None:  # incomplete: nothing but id and name
        assert record == KeyRecord(id=record.id, name=record.name, problem=record.problem)


def check_list(client: ARouterClient) -> None:
    listed = client.list_keys()
    assert len({record.id for record in listed}) == len(listed)
    for record in listed:
        check_record(record)


def check_create(client: ARouterClient) -> None:
    spec = KeySpec("new-key", Permissions(allowed_providers=("openai",), spending_limit=5.0))
    result = client.create_key(spec)
    assert isinstance(result, CreatedKey)
    assert isinstance(result.value, Secret)
    assert not result.value.reveal().startswith(("lr_mgmt_", "lr_admin_"))
    check_record(result.record)


def check_update(client: ARouterClient) -> None:
    # The annotation says None; the test checks what the call returns at run time.
    assert client.update_key("a0001", disabled=True) is None  # type: ignore[func-returns-value]


def check_delete(client: ARouterClient) -> None:
    assert client.delete_key("a0001") in (True, False)


def check_models(client: ARouterClient) -> None:
    # The annotation says None; the test checks what the call returns at run time.
    assert client.verify_key(Secret(VALUE_TEXT)) is None  # type: ignore[func-returns-value]


CHECKS: dict[str, Callable[[ARouterClient], None]] = {
    "list": check_list,
    "create": check_create,
    "update": check_update,
    "delete": check_delete,
    "models": check_models,
}


def strings_in(value: object) -> Iterator[str]:
    """Every string inside a captured log entry."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings_in(item)


def assert_clean(text: str) -> None:
    """One printable line, holding neither the management key nor the key value."""
    assert text
    assert _printable_line(text), text
    assert MGMT_TEXT not in text
    assert VALUE_TEXT not in text


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("route", ROUTES)
@given(conversation=conversations)
def test_any_answer_ends_in_a_result_or_a_clean_error(
    route: str, dialect: str, conversation: list[Answer]
) -> None:
    """Any answers on any route and dialect: a correct result or a one-line project error."""
    with capture_logs() as logs, client_for(dialect, conversation) as client:
        try:
            CHECKS[route](client)
        except VaultRotatorError as exc:
            assert_clean(str(exc))
    for entry in logs:
        for text in strings_in(entry):
            assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in text), entry
            assert MGMT_TEXT not in text


def outcome(call: Callable[[], object]) -> object:
    """The call's result, or its error once checked to be the project's, clean and one line."""
    try:
        return call()
    except VaultRotatorError as exc:
        assert_clean(str(exc))
        return exc


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_odd_value_in_every_field_of_every_shape(dialect: str) -> None:
    """Each odd value in each field of each dialect's record, listed or created: never a crash."""
    for base in VALID:
        for field in FIELDS:
            for value in ODD_FOR[field]:
                record = {**base, field: value}
                listing = [
                    Answer(200, "application/json", _encoded({"data": [record]}), None, None)
                ]
                with client_for(dialect, listing) as client:
                    listed = outcome(client.list_keys)
                if isinstance(listed, list):
                    for item in listed:
                        check_record(item)
                for answer in ({"data": record, "key": VALUE_TEXT}, {**record, "key": VALUE_TEXT}):
                    body = _encoded(answer)
                    with client_for(dialect, [Answer(201, "", body, None, None)]) as client:
                        made = outcome(functools.partial(check_create, client))
                    assert made is None or isinstance(made, VaultRotatorError)
