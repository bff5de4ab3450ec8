"""ARouter's three key-management dialects as pure data: paths, request bodies, answer parsing.

No I/O and no httpx here: :mod:`vault_rotator.provider.arouter` sends what this module builds
and hands back the decoded JSON for it to validate. Every malformed answer raises
:class:`~vault_rotator.errors.ProviderResponseError` whose one-line message names the endpoint,
the record and the field, e.g. ``GET /api/v1/keys: key 3f2a…: usage: expected a number, got
object``.

One odd record never fails a listing (a key someone else created with an odd name or field
would otherwise take a whole account down), and a listing leaves out only what it cannot name:

- a broken envelope (not an object, ``data`` not an array, a bad ``next_page_token``) fails the
  answer;
- an item that cannot be addressed (not an object, no usable id) is skipped and reported in
  :attr:`Page.skipped` (the client logs each once, escaped, with its name if it has one): with
  no id it can be neither acted on nor confused with a key the engine knows. Such items
  outnumbering the keys make the answer garbage (:mod:`vault_rotator.provider.paging`);
- a record with a usable id whose other fields cannot be read is listed as an *incomplete*
  :class:`~vault_rotator.ports.provider.KeyRecord`: its id, its name (``""`` if that is the
  unreadable field) and ``problem``, the field and what is wrong with it (e.g. ``usage:
  expected a number, got object``); nothing else. The engine never takes it as complete: a
  key it depends on (its new key, the old key it will delete) listed so makes it refuse, fail
  or wait (see :mod:`vault_rotator.engine.decide_create` and :mod:`vault_rotator.engine.decide`),
  never think the key absent;
- a create answer with a usable id and value is a created key even if other fields are odd
  (incomplete as above, named as sent when its name is unreadable), since the engine only needs
  those two; without them it stays an ambiguous create.

Decisions where the spec is silent:

- ``dialect=None`` means "A or B, not told" (``/api/v1/keys`` answered, but no record and no
  create answer has shown its shape, or the dialect was learnt rather than configured). Parsing
  is then led by value types (``usage`` number or object, ``limit`` or ``limit_usd``), so a
  record of the other shape (a key someone else created, a provider changing its API) parses
  too. A create with a cap, while A/B is open, sends it as both ``limit`` and ``limit_usd``, and
  after a 400 (nothing created) as ``limit`` alone, then ``limit_usd`` alone: a strict server
  refuses the name it does not know, a lenient one keeps its own, so the cap is never dropped
  silently (see :func:`cap_variants`).
- A/B is voted per record (:func:`record_vote`, :class:`Tally`): a listing's majority decides an
  open question; overturning a dialect already known takes a clear majority of at least two
  records, so one odd record never flips an account.
- Ids come from the dialect's field (``hash`` for A/B, ``id`` for C), falling back to the other
  one when absent. An id must match ``[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}``: ids are put in URL
  paths and log lines.
- Bounds on hostile records: names, labels 1,024 characters; list entries 256 characters and
  1,000 entries; no control characters in any string (log injection) except the name, which
  is kept exact (the engine matches keys by the name it sent) and shown escaped
  (:attr:`~vault_rotator.ports.provider.KeyRecord.display_name`); money is a finite number in
  ``[0, 1e12]``; token counts integers in ``[0, 1e15]``; booleans are never numbers.
- ``last_used_at`` and ``expires_at`` are parsed whenever a record carries them, whatever the
  dialect (A simply never does); ``disabled`` missing or null means enabled (B and C omit it).
- Timestamps: ISO-8601 strings (a naive one is read as UTC) or Unix seconds (OpenAI style),
  returned as aware UTC datetimes.
- A create answer's record fields that are missing (B answers only ``key``, ``hash``, ``name``)
  are filled from the spec we sent. The one-time value must be a token-shaped string of 8 to
  1,024 characters; a value shaped like a management key (``lr_mgmt_``/``lr_admin_``) is refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import NoReturn
from urllib.parse import quote

from vault_rotator.display import shown
from vault_rotator.errors import ProviderPermanentError, ProviderResponseError
from vault_rotator.ports.provider import (
    PERMISSION_FIELDS,
    CreatedKey,
    Dialect,
    KeyRecord,
    KeySpec,
    Permissions,
)
from vault_rotator.secret import Secret

MODERN_COLLECTION = "/api/v1/keys"
GUIDE_COLLECTION = "/v1/keys"
COLLECTION_PATHS = {Dialect.A: MODERN_COLLECTION, Dialect.B: MODERN_COLLECTION}
COLLECTION_PATHS[Dialect.C] = GUIDE_COLLECTION
# Auto-detection tries these in order; a 404 on one moves on to the next.
CANDIDATE_COLLECTIONS = (MODERN_COLLECTION, GUIDE_COLLECTION)
MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MAX_PAGE_SIZE = 100  # the spec's server maximum

ID_FIELD = {Dialect.A: "hash", Dialect.B: "hash", Dialect.C: "id"}
CAP_FIELD = {Dialect.A: "limit", Dialect.B: "limit_usd", Dialect.C: "spending_limit"}

MAX_TEXT = 1024
MAX_LIST_ITEM = 256
MAX_LIST_LEN = 1000
MAX_MONEY = 1e12
MAX_TOKENS = 10**15
MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MIN_OVERTURNING_VOTES = 2  # records it takes to overturn a known A/B dialect

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LIMIT_RESET = re.compile(r"[a-z_]{1,32}")
_KEY_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{7,1023}")
_MANAGEMENT_PREFIXES = ("lr_mgmt_", "lr_admin_")


def collection_for(dialect: Dialect) -> str:
    """The collection path a dialect serves."""
    return COLLECTION_PATHS[dialect]


def dialect_of_collection(path: str) -> Dialect | None:
    """C if the path is the rotation guide's, else None (A or B: the records must tell)."""
    return Dialect.C if path == GUIDE_COLLECTION else None


def id_field_for(collection: str) -> str:
    """Which field holds a key's id on this collection path."""
    return ID_FIELD[Dialect.C] if collection == GUIDE_COLLECTION else ID_FIELD[Dialect.A]


def item_path(collection: str, key_id: str) -> str:
    """The item path of one key; refuses ids that are not id-shaped."""
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise ProviderPermanentError(f"refusing to address key {key_id!r:.80}: not an id")
    return f"{collection}/{quote(key_id, safe='')}"


def clamp_page_size(page_size: int) -> int:
    """Page sizes the spec's server honours: 1 to 100."""
    return max(1, min(MAX_PAGE_SIZE, page_size))


def list_params(
    page_size: int, *, page_token: str | None = None, offset: int = 0
) -> dict[str, str]:
    """Query parameters of one list page; ``include_disabled=true`` is always sent."""
    params = {"page_size": str(page_size), "include_disabled": "true"}
    if page_token is not None:
        params["page_token"] = page_token
    elif offset:
        params["offset"] = str(offset)
    return params


def cap_variants(
    dialect: Dialect | None, spec: KeySpec, *, configured: bool = True
) -> tuple[tuple[str, ...], ...]:
    """The spending-cap field sets to try in turn, each after a 400 on the one before.

    One set when the dialect is configured (or C, known by its path) or no cap is asked for.
    Otherwise (A/B open, or learnt from the server, which may have changed its API): both names
    first, so that a lenient server, which ignores a name it does not know, keeps its own and
    the cap is never dropped silently; then, after a 400 (which creates nothing) from a strict
    server refusing the unknown name, the learnt dialect's name alone, then the other's.
    """
    if spec.permissions.spending_limit is None:
        return ((),)
    if dialect is not None and (configured or dialect is Dialect.C):
        return ((CAP_FIELD[dialect],),)
    a_cap, b_cap = CAP_FIELD[Dialect.A], CAP_FIELD[Dialect.B]
    own, other = (b_cap, a_cap) if dialect is Dialect.B else (a_cap, b_cap)
    return ((a_cap, b_cap), (own,), (other,))


def iso_utc(moment: datetime) -> str:
    """``2025-01-02T03:04:05Z``; refuses naive datetimes (their zone is a guess)."""
    if moment.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def create_body(spec: KeySpec, caps: Sequence[str]) -> dict[str, object]:
    """The JSON body of a create: ``name`` plus every set permission; never ``disabled``.

    Each permission goes under its own name, but the cap under each of ``caps`` (the
    dialect's name for it); lists as arrays, the expiry as ISO 8601 UTC.
    """
    body: dict[str, object] = {"name": spec.name}
    for field, value in spec.permissions.set_fields().items():
        if field == "spending_limit":
            body.update(dict.fromkeys(caps, value))
        elif isinstance(value, datetime):
            body[field] = iso_utc(value)
        else:
            body[field] = list(value) if isinstance(value, tuple) else value
    return body


def update_body(*, disabled: bool) -> dict[str, object]:
    """The JSON body of an enable/disable PATCH."""
    return {"disabled": disabled}


_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "number"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _kind(value: object) -> str:
    """A JSON-ish type name for messages."""
    if value is None:
        return "null"
    return next((name for cls, name in _KINDS if isinstance(value, cls)), type(value).__name__)


def _finite(value: float) -> bool:
    """A number is finite; an int of any size is (``math.isfinite`` overflows past 1e308)."""
    return isinstance(value, int) or math.isfinite(value)


class Fields:
    """Typed, bounded reads of one JSON object; every failure names endpoint, record and field."""

    def __init__(self, endpoint: str, where: str, raw: object) -> None:
        self.endpoint = endpoint
        self.where = where
        if not isinstance(raw, dict):
            self._raise(f"{where}: expected an object, got {_kind(raw)}")
        self.raw: dict[str, object] = raw

    def _raise(self, text: str) -> NoReturn:
        raise ProviderResponseError(f"{self.endpoint}: {text}", endpoint=self.endpoint)

    def fail(self, field: str, problem: str) -> NoReturn:
        """Raise ProviderResponseError for ``field`` of this record."""
        self._raise(f"{self.where}: {field}: {problem}")

    def has(self, field: str) -> bool:
        return field in self.raw

    def _expect(self, field: str, wanted: str) -> NoReturn:
        self.fail(field, f"expected {wanted}, got {_kind(self.raw[field])}")

    def text(self, field: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
        """A string field without control characters, at most ``limit`` characters."""
        value = self.raw.get(field)
        if value is None:
            if required:
                self.fail(field, "missing")
            return None
        if not isinstance(value, str):
            self._expect(field, "a string")
        if len(value) > limit:
            self.fail(field, f"longer than {limit} characters ({len(value)})")
        if _CONTROL.search(value):
            self.fail(field, "contains control characters")
        return value

    def money(self, field: str) -> float | None:
        """A finite, non-negative amount of USD."""
        value = self.raw.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._expect(field, "a number")
        if not _finite(value) or not 0 <= value <= MAX_MONEY:
            self.fail(field, f"out of range [0, {MAX_MONEY:g}]: {value!r:.40}")
        return float(value)

    def count(self, field: str) -> int | None:
        """A non-negative integer counter (a float with no fraction is accepted)."""
        value = self.raw.get(field)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._expect(field, "an integer")
        if not 0 <= value <= MAX_TOKENS:
            self.fail(field, f"out of range [0, {MAX_TOKENS}]: {value}")
        return value

    def flag(self, field: str) -> bool | None:
        value = self.raw.get(field)
        if value is not None and not isinstance(value, bool):
            self._expect(field, "a boolean")
        return value

    def moment(self, field: str) -> datetime | None:
        """An ISO-8601 string (naive = UTC) or Unix seconds, as an aware UTC datetime."""
        value = self.raw.get(field)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not _finite(value) or not 0 <= value <= MAX_UNIX_SECONDS:
                self.fail(field, f"Unix time out of range: {value!r:.40}")
            return datetime.fromtimestamp(value, UTC)
        text = self.text(field, limit=64)
        try:
            parsed = datetime.fromisoformat(text or "")
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except (ValueError, OverflowError):  # not ISO-8601, or out of range once in UTC
            self.fail(field, f"not an ISO-8601 timestamp within years 1-9999 UTC: {text!r}")

    def names(self, field: str) -> tuple[str, ...] | None:
        """A list of short strings (providers, models) as a tuple."""
        value = self.raw.get(field)
        if value is None:
            return None
        if not isinstance(value, list):
            self._expect(field, "an array of strings")
        if len(value) > MAX_LIST_LEN:
            self.fail(field, f"more than {MAX_LIST_LEN} entries")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item or len(item) > MAX_LIST_ITEM:
                self.fail(f"{field}[{index}]", f"expected a string of 1-{MAX_LIST_ITEM} chars")
            if _CONTROL.search(item):
                self.fail(f"{field}[{index}]", "contains control characters")
        return tuple(value)

    def key_id(self, field: str) -> str:
        """The record's id from ``field`` (or the other id field when absent), id-shaped."""
        other = "id" if field == "hash" else "hash"
        name = field if self.raw.get(field) is not None else other
        value = self.raw.get(name)
        if value is None:
            self.fail(field, "missing")
        if not isinstance(value, str):
            self._expect(name, "a string")
        if not _ID.fullmatch(value):
            self.fail(name, f"not an id: {value[:40]!r}")
        return value


@dataclass(frozen=True, slots=True)
class Page:
    """One list page: its records (objects, not yet typed), the next-page token, and why any
    item could not be a record at all (not an object, no usable id: see :func:`unaddressable`).
    """

    records: tuple[Fields, ...]
    next_page_token: str | None
    skipped: tuple[str, ...] = ()


def parse_page(endpoint: str, payload: object) -> Page:
    """Check a list answer's envelope: ``{"data": [objects], "next_page_token"?: str|null}``.

    A broken envelope fails the answer; an item of ``data`` that is not an object is skipped
    (noted in :attr:`Page.skipped`), so one odd item never hides the others.
    """
    envelope = Fields(endpoint, "answer", payload)
    data = envelope.raw.get("data")
    if not isinstance(data, list):
        envelope.fail("data", f"expected an array, got {_kind(data)}")
    token = envelope.text("next_page_token", limit=MAX_TEXT)
    records: list[Fields] = []
    skipped: list[str] = []
    for index, raw in enumerate(data):
        if isinstance(raw, dict):
            records.append(Fields(endpoint, f"data[{index}]", raw))
        else:
            skipped.append(f"{endpoint}: data[{index}]: expected an object, got {_kind(raw)}")
    return Page(tuple(records), token or None, tuple(skipped))


def unaddressable(record: Fields, id_field: str) -> str | None:
    """Why ``record`` has no usable id (it cannot be named in a URL or a log), or None."""
    try:
        record.key_id(id_field)
    except ProviderResponseError as exc:
        name = record.raw.get("name")
        return f"{exc} (named '{shown(name, 80)}')" if isinstance(name, str) else str(exc)
    return None


def record_vote(record: Fields) -> Dialect | None:
    """Which of A and B one record's fields point to; None when they do not tell.

    A: ``usage`` a number, ``limit``, ``usage_daily``/``key_type``. B: ``usage`` an object,
    ``limit_usd``, ``last_used_at``. A record with as many signals of each votes for neither.
    """
    raw = record.raw
    usage = raw.get("usage")
    votes_a = (
        (isinstance(usage, int | float) and not isinstance(usage, bool))
        + ("limit" in raw)
        + ("usage_daily" in raw or "key_type" in raw)
    )
    votes_b = isinstance(usage, dict) + ("limit_usd" in raw) + ("last_used_at" in raw)
    if votes_a == votes_b:
        return None
    return Dialect.A if votes_a > votes_b else Dialect.B


@dataclass(frozen=True, slots=True)
class Tally:
    """How the records of one listing voted between A and B."""

    a: int = 0
    b: int = 0

    @classmethod
    def of(cls, records: Sequence[Fields]) -> Tally:
        votes = [record_vote(record) for record in records]
        return cls(a=votes.count(Dialect.A), b=votes.count(Dialect.B))

    @property
    def majority(self) -> Dialect | None:
        """A or B when more records vote for it than for the other; None on a tie."""
        if self.a == self.b:
            return None
        return Dialect.A if self.a > self.b else Dialect.B

    def overturns(self, known: Dialect) -> Dialect | None:
        """The other of A/B if a clear majority contradicts ``known``, else None.

        Clear: more records vote for the other than for ``known``, and at least two of them,
        so one odd or foreign record (a key someone else created) never flips an account.
        """
        other = {Dialect.A: Dialect.B, Dialect.B: Dialect.A}.get(known)
        if other is None:
            return None
        against, for_known = (self.b, self.a) if other is Dialect.B else (self.a, self.b)
        return other if against > for_known and against >= MIN_OVERTURNING_VOTES else None


def detect_from_records(records: Sequence[Fields]) -> Dialect | None:
    """A or B by a majority of the records' votes; None when none votes or on a tie."""
    return Tally.of(records).majority


def _usage(record: Fields, dialect: Dialect | None) -> tuple[float | None, int | None]:
    """(cost, tokens): A a number, B an object, C not reported."""
    if dialect is Dialect.C or record.raw.get("usage") is None:
        return None, None
    usage = record.raw["usage"]
    if isinstance(usage, dict) and dialect is not Dialect.A:
        nested = Fields(record.endpoint, f"{record.where}: usage", usage)
        prompt, completion = nested.count("prompt_tokens"), nested.count("completion_tokens")
        tokens = (
            None if prompt is None and completion is None else (prompt or 0) + (completion or 0)
        )
        return nested.money("cost"), tokens
    if dialect is Dialect.B:
        record.fail("usage", f"expected an object, got {_kind(usage)}")
    if isinstance(usage, dict):
        record.fail("usage", "expected a number, got object")
    return record.money("usage"), None


def _cap(record: Fields, dialect: Dialect | None) -> float | None:
    if dialect is not None:
        return record.money(CAP_FIELD[dialect])
    return record.money("limit") if record.has("limit") else record.money("limit_usd")


def _limit_reset(record: Fields) -> str | None:
    value = record.text("limit_reset", limit=32)
    if value is not None and not _LIMIT_RESET.fullmatch(value):
        record.fail("limit_reset", f"not a period name: {value!r}")
    return value


def _name(record: Fields) -> str:
    """The exact name: any string of at most MAX_TEXT characters (shown escaped, never raw)."""
    value = record.raw.get("name")
    if value is None:
        record.fail("name", "missing")
    if not isinstance(value, str):
        record.fail("name", f"expected a string, got {_kind(value)}")
    if len(value) > MAX_TEXT:
        record.fail("name", f"longer than {MAX_TEXT} characters ({len(value)})")
    return value


def parse_record(record: Fields, dialect: Dialect | None, id_field: str) -> KeyRecord:
    """Normalise one listed (or created) key into a :class:`KeyRecord`.

    The id must be usable (ProviderResponseError otherwise; a listing filters such records out
    first with :func:`unaddressable`). Any other field that cannot be read makes the record
    incomplete: only its id and name, with :attr:`KeyRecord.problem` saying which field and why.
    """
    key_id = record.key_id(id_field)
    record.where = f"key {key_id}"
    try:
        return _complete_record(record, key_id, dialect)
    except ProviderResponseError as exc:
        problem = shown(str(exc).removeprefix(f"{record.endpoint}: {record.where}: "), 200)
        try:
            name = _name(record)
        except ProviderResponseError:
            name = ""
        return KeyRecord(id=key_id, name=name, problem=problem)


def _complete_record(record: Fields, key_id: str, dialect: Dialect | None) -> KeyRecord:
    name = _name(record)
    cost, tokens = _usage(record, dialect)
    return KeyRecord(
        id=key_id,
        name=name,
        label=record.text("label"),
        created_at=record.moment("created_at"),
        last_used_at=record.moment("last_used_at"),
        usage_cost=cost,
        usage_tokens=tokens,
        disabled=bool(record.flag("disabled")),
        permissions=Permissions(
            allowed_providers=record.names("allowed_providers"),
            allowed_models=record.names("allowed_models"),
            spending_limit=_cap(record, dialect),
            limit_reset=_limit_reset(record),
            expires_at=record.moment("expires_at"),
        ),
    )


def shape_of_created(payload: object, collection: str) -> Dialect | None:
    """Which dialect a create answer looks like: nested ``data`` A, flat ``hash`` B, C by path."""
    if not isinstance(payload, dict):
        return None
    if collection == GUIDE_COLLECTION:
        return Dialect.C
    if isinstance(payload.get("data"), dict):
        return Dialect.A
    return Dialect.B if "hash" in payload else None


def parse_key_value(answer: Fields) -> Secret:
    """The one-time key value: token-shaped, never a management key."""
    value = answer.raw.get("key")
    if value is None:
        answer.fail("key", "missing: the new key's value was not in the answer")
    if not isinstance(value, str) or not _KEY_VALUE.fullmatch(value):
        answer.fail("key", f"not a key value ({_kind(value)}, 8-1024 token characters expected)")
    if value.startswith(_MANAGEMENT_PREFIXES):
        answer.fail("key", "has a management-key prefix; refusing it as an API key")
    return Secret(value)


# Where a create answer may show each permission (the cap under any dialect's name).
_ANSWER_FIELDS = {"spending_limit": tuple(CAP_FIELD.values())}


def _fill_from_spec(record: KeyRecord, raw: Mapping[str, object], spec: KeySpec) -> KeyRecord:
    """Take the permissions the answer left out from the spec we sent."""
    missing = {
        field: getattr(spec.permissions, field)
        for field in PERMISSION_FIELDS
        if all(raw.get(source) is None for source in _ANSWER_FIELDS.get(field, (field,)))
    }
    return replace(record, permissions=replace(record.permissions, **missing))


def parse_created(
    endpoint: str, payload: object, spec: KeySpec, dialect: Dialect | None, collection: str
) -> tuple[CreatedKey, Dialect | None]:
    """A create answer as (created key, dialect its shape shows)."""
    answer = Fields(endpoint, "answer", payload)
    shape = shape_of_created(payload, collection)
    value = parse_key_value(answer)
    if answer.raw.get("data") is not None:
        fields = Fields(endpoint, "data", answer.raw["data"])
    else:
        fields = Fields(endpoint, "answer", {k: v for k, v in answer.raw.items() if k != "key"})
    if not fields.has("name"):
        fields.raw["name"] = spec.name
    record = parse_record(fields, dialect or shape, id_field_for(collection))
    if record.problem is not None:  # the key exists and its value is here: keep both
        return CreatedKey(replace(record, name=record.name or spec.name), value), shape
    return CreatedKey(_fill_from_spec(record, fields.raw, spec), value), shape


def decode_json(endpoint: str, content_type: str, body: bytes) -> object:
    """An answer's JSON document, or ProviderResponseError saying why not (HTML, truncated...)."""
    if content_type and "json" not in content_type.lower():
        kind = content_type.split(";", maxsplit=1)[0]
        raise ProviderResponseError(
            f"{endpoint}: answer is {kind!r:.60}, not JSON", endpoint=endpoint
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        reason = type(exc).__name__ if isinstance(exc, RecursionError) else str(exc)[:80]
        raise ProviderResponseError(
            f"{endpoint}: answer is not valid JSON ({reason})", endpoint=endpoint
        ) from exc


def check_models(endpoint: str, payload: object) -> int:
    """A ``GET /v1/models`` answer must hold a ``data`` array; returns its length."""
    answer = Fields(endpoint, "answer", payload)
    data = answer.raw.get("data")
    if not isinstance(data, list):
        answer.fail("data", f"expected an array, got {_kind(data)}")
    return len(data)


def error_details(payload: object) -> tuple[str, str]:
    """(message, type-or-code) from ``{"error": {...}}`` or a flat ``{"code", "message"}``."""
    if not isinstance(payload, dict):
        return "", ""
    inner = payload.get("error")
    body = inner if isinstance(inner, dict) else payload
    message = body.get("message")
    if not isinstance(message, str) and isinstance(inner, str):
        message = inner
    kind = body.get("code") or body.get("type")
    return (
        message if isinstance(message, str) else "",
        kind if isinstance(kind, str) else "",
    )
