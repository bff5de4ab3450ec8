"""The persisted state of one key's rotations: a versioned, frozen record.

Stored at ``<kv_mount>/<state_prefix>/state/<env>/<name>`` as the KV v2 data map below, written
only by check-and-set, never holding a key value (values live in the pending record).

Schema version 2 (version 1 is read too: it has no ``ack_*`` fields and no
``pending_attempt`` in its lease; a record of a newer version is never read)::

    {
      "schema": 2,
      "env": "production", "name": "backend",
      "phase": "idle" | "intent" | "published" | "cleanup" | "aborting",
      "fence": 7,                        # bumped each time a process takes the lease
      "lease": null | {"holder": "host:pid:uuid", "expires_at": 1700000000.0, "fence": 7,
                       "pending_attempt": null | 1},   # v2: the lease ends once the pending
                                                       # record holds this attempt (hand-off)
      "provider_write": null | {"action": "create"|"delete"|"disable"|"enable",
                                "target": "<key name for create, key id otherwise>",
                                "fence": 7, "at": 1700000000.0},
      "dialect": "a" | "b" | "c" | null,  # the account's dialect, saved only once known
                                         # (configured, or shown by a listing or a create
                                         # answer); a fresh process's hint, never a guess
      "current_key_id": "key_abc" | null, "current_key_name": "..." | null,
      "last_success_at": 1700000000.0 | null,
      "rotation": null | {               # the rotation in flight
        "id": "01jd9x4k2m", "attempt": 1, "date": "2026-11-27",
        "mode": "normal" | "emergency", "trigger": "cli", "by": "alice@host",
        "policy": {...effective KeyPolicy.to_dict()...},
        "permissions": {"allowed_providers": [...] | null, "allowed_models": [...] | null,
                        "spending_limit": 500.0 | null, "limit_reset": "monthly" | null,
                        "expires_at": "2027-01-01T00:00:00+00:00" | null},
        "started_at": 1700000000.0, "start_version": 3,
        "old_key_id": "key_old" | null, "old_key_name": "..." | null,
        "new_key_id": null | "key_new", "new_key_name": null | "...", "new_key_fp": null | "fp:…",
        "verified_at": null | 1700000050.0, "verified_attempt": null | 1,
        "published_version": null | 4, "published_at": null | 1700000100.0,
        "pickup_deadline": null | 1700086500.0,
        "baseline": null | {"last_used_at": "…" | null, "usage_cost": 0.0 | null,
                            "usage_tokens": 0 | null},
        "pickup_at": null | 1700000200.0, "drain_deadline": null | 1700605000.0,
        "old_mark": null | {...same shape as baseline...}, "old_mark_since": null | 1700000200.0,
        "old_deleted": false, "old_missing": false, "old_disabled_at": null | 1700000300.0,
        "revoke_old_now": false,
        "failure": null | "why the rotation is cleaning up without publishing",
        "stalled": null | {"reason": "pickup-timeout", "detail": "…", "at": 1700086600.0},
        "aborted_at": null | 1700000400.0, "abort_deadline": null | 1700605000.0,
        "republished_version": null | 5,         # the old secret, back (abort)
        "new_mark": null | {...}, "new_mark_since": null | 1700000400.0,  # new key draining
        "new_deleted": false,
        "ack_expected": null | ["web-1", "web-2"],  # drain_on_acks: instances present at
                                                    # the first pass after publish
        "acks_complete_at": null | 1700000500.0     # when every one of them app-acked
      },
      "outcomes": [{"rotation_id", "outcome", "at", "trigger", "by", "old_key_id",
                    "new_key_id", "detail"}, ...]          # newest last, at most 20
    }

Times named ``*_at``/``*_deadline``/``*_since`` without a provider source are the local clock
(epoch seconds); provider timestamps (``last_used_at`` in marks) are compared only with each
other.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

from vault_rotator.engine.outcomes import classify
from vault_rotator.engine.reasons import Phase
from vault_rotator.errors import EngineError, StoreError
from vault_rotator.ports.provider import Permissions

SCHEMA_VERSION = 2
READS_SCHEMAS = frozenset({1, SCHEMA_VERSION})  # version 1: no ack_*, no pending_attempt
PENDING_SCHEMA = 2  # the pending record's own version: 2 added verified_at (1 is read)
MAX_OUTCOMES = 20

# The phases each phase may move to (``finished`` ends any of them: back to IDLE).
NEXT_PHASES: Mapping[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.INTENT}),
    Phase.INTENT: frozenset({Phase.PUBLISHED, Phase.CLEANUP}),
    Phase.PUBLISHED: frozenset({Phase.ABORTING, Phase.IDLE}),
    Phase.ABORTING: frozenset({Phase.IDLE}),
    Phase.CLEANUP: frozenset({Phase.IDLE}),
}


@dataclass(frozen=True, slots=True)
class Lease:
    """Who acts on the key, until when, under which fence.

    ``pending_attempt`` (a hand-off): the holder gives the lease up as soon as the pending
    record holds this attempt of the rotation, without a write of its own. The pass that
    creates a key saves "about to create" with such a lease, creates, verifies and saves the
    value to pending; that save ends its turn. Another process sees the lease as free once it
    finds that pending record (or once ``expires_at`` passed, as for any lease).
    """

    holder: str
    expires_at: float
    fence: int
    pending_attempt: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderWrite:
    """A provider write recorded just before it is made (so a successor knows it may exist)."""

    action: str
    target: str
    fence: int
    at: float


@dataclass(frozen=True, slots=True)
class UseMark:
    """A key's use as the provider reports it; None = not reported."""

    last_used_at: str | None = None
    usage_cost: float | None = None
    usage_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Stall:
    reason: str
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    rotation_id: str
    outcome: str
    at: float
    trigger: str = ""
    by: str = ""
    old_key_id: str | None = None
    new_key_id: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Rotation:
    """A rotation in flight."""

    id: str
    attempt: int
    date: str
    policy: Mapping[str, Any]
    permissions: Permissions
    started_at: float
    start_version: int
    mode: str = "normal"
    trigger: str = "cli"
    by: str = ""
    old_key_id: str | None = None
    old_key_name: str | None = None
    new_key_id: str | None = None
    new_key_name: str | None = None
    new_key_fp: str | None = None
    verified_at: float | None = None  # our own verify call (local clock) ...
    verified_attempt: int | None = None  # ... of this attempt's key
    published_version: int | None = None
    published_at: float | None = None
    pickup_deadline: float | None = None
    baseline: UseMark | None = None
    pickup_at: float | None = None
    drain_deadline: float | None = None
    old_mark: UseMark | None = None
    old_mark_since: float | None = None
    old_deleted: bool = False
    old_missing: bool = False  # the secret's key was deleted outside vault-rotator
    old_disabled_at: float | None = None
    revoke_old_now: bool = False
    failure: str | None = None
    stalled: Stall | None = None
    aborted_at: float | None = None
    abort_deadline: float | None = None
    republished_version: int | None = None
    new_mark: UseMark | None = None
    new_mark_since: float | None = None
    new_deleted: bool = False
    ack_expected: tuple[str, ...] | None = None  # drain_on_acks (schema 2)
    acks_complete_at: float | None = None

    def attempt_tag(self, attempt: int | None = None) -> str:
        """The ``{rotation_id}`` placeholder's value for an attempt, e.g. ``01jd9x4k2m.2``."""
        return f"{self.id}.{self.attempt if attempt is None else attempt}"

    def evolve(self, **changes: Any) -> Rotation:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One key's state: idle, or a rotation in flight, plus lease and history."""

    env: str
    name: str
    phase: Phase = Phase.IDLE
    fence: int = 0
    lease: Lease | None = None
    provider_write: ProviderWrite | None = None
    dialect: str | None = None
    current_key_id: str | None = None
    current_key_name: str | None = None
    last_success_at: float | None = None
    rotation: Rotation | None = None
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)
    schema: int = SCHEMA_VERSION

    @classmethod
    def new(cls, env: str, name: str) -> Self:
        return cls(env=env, name=name)

    @property
    def ref(self) -> str:
        return f"{self.env}/{self.name}"

    @property
    def in_flight(self) -> bool:
        return self.rotation is not None

    def evolve(self, **changes: Any) -> StateRecord:
        return dataclasses.replace(self, **changes)

    def with_rotation(self, **changes: Any) -> StateRecord:
        assert self.rotation is not None
        return self.evolve(rotation=self.rotation.evolve(**changes))

    # -- transitions: the only code that changes a phase (drawn in .machine) -------------

    def start(self, rotation: Rotation, *, dialect: str | None) -> StateRecord:
        """IDLE -> INTENT: a rotation begins; nothing is created yet."""
        return self._to(Phase.INTENT, rotation=rotation, dialect=dialect, provider_write=None)

    def publish(self, **published: Any) -> StateRecord:
        """INTENT -> PUBLISHED: the consumer secret serves the new key (id, version, baseline)."""
        return self._to(Phase.PUBLISHED, provider_write=None).with_rotation(**published)

    def begin_cleanup(self, why: str, *, aborted_at: float | None = None) -> StateRecord:
        """INTENT -> CLEANUP: the rotation ends unpublished (failed, or aborted before publish)."""
        changes: dict[str, Any] = {"failure": why}
        if aborted_at is not None:
            changes |= {"aborted_at": aborted_at, "stalled": None}
        return self._to(Phase.CLEANUP).with_rotation(**changes)

    def begin_abort(self, at: float) -> StateRecord:
        """PUBLISHED -> ABORTING: the rotation in reverse (old secret back, new key drained)."""
        return self._to(Phase.ABORTING).with_rotation(aborted_at=at, stalled=None)

    def _to(self, phase: Phase, **changes: Any) -> StateRecord:
        if phase not in NEXT_PHASES[self.phase]:
            raise EngineError(f"{self.ref}: no transition from {self.phase} to {phase}")
        return self.evolve(phase=phase, **changes)

    def finished(self, outcome: Outcome, *, current_key_id: str | None) -> StateRecord:
        """Any -> IDLE: the rotation ends; the outcome appended, the served key noted."""
        rot = self.rotation
        history = (*self.outcomes, outcome)[-MAX_OUTCOMES:]
        changes: dict[str, Any] = {
            "phase": Phase.IDLE,
            "rotation": None,
            "provider_write": None,
            "outcomes": history,
            "current_key_id": current_key_id,
        }
        if rot is not None and current_key_id is not None:
            names = {rot.new_key_id: rot.new_key_name, rot.old_key_id: rot.old_key_name}
            changes["current_key_name"] = names.get(current_key_id, self.current_key_name)
        if classify(outcome.outcome).last_success:
            changes["last_success_at"] = outcome.at
        return self.evolve(**changes)

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(self)
        return plain

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> StateRecord:
        """Parse a stored record; a malformed one is a StoreError naming ``where``."""
        refuse_newer(data, f"state record at {where}")
        try:
            return _record_from(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"state record at {where} is malformed ({exc})") from exc


def refuse_newer(data: Mapping[str, Any], what: str, newest: int = SCHEMA_VERSION) -> None:
    """A record of a newer schema is never read (nor so overwritten): StoreError saying so."""
    schema = data.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > newest:
        raise StoreError(
            f"{what} was written by a newer vault-rotator (schema {schema}; this one reads up "
            f"to {newest}): upgrade this process; the record is left as it is"
        )


@functools.cache
def _field_names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain(value: Any) -> Any:
    """Dataclasses to dicts, tuples to lists and datetimes (an expiry) to ISO 8601,
    recursively, for JSON (what ``dataclasses.asdict`` does, without its deep copies)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _opt(cls: type[Any], value: Any) -> Any:
    return None if value is None else cls(**value)


def _tuple_or_none(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(v) for v in value)


def _permissions_from(data: Mapping[str, Any]) -> Permissions:
    values = dict(data)
    values["allowed_providers"] = _tuple_or_none(values.get("allowed_providers"))
    values["allowed_models"] = _tuple_or_none(values.get("allowed_models"))
    expires = values.get("expires_at")
    values["expires_at"] = None if expires is None else datetime.fromisoformat(expires)
    return Permissions(**values)


def _rotation_from(data: Mapping[str, Any]) -> Rotation:
    values = dict(data)
    return Rotation(
        **{
            **values,
            "permissions": _permissions_from(values["permissions"]),
            "baseline": _opt(UseMark, values.get("baseline")),
            "old_mark": _opt(UseMark, values.get("old_mark")),
            "new_mark": _opt(UseMark, values.get("new_mark")),
            "stalled": _opt(Stall, values.get("stalled")),
            "ack_expected": _tuple_or_none(values.get("ack_expected")),
        }
    )


def _record_from(data: Mapping[str, Any]) -> StateRecord:
    values = dict(data)
    schema = values.get("schema")
    if schema not in READS_SCHEMAS or isinstance(schema, bool):
        raise ValueError(f"schema {schema!r:.40}, this vault-rotator reads {SCHEMA_VERSION}")
    values["schema"] = SCHEMA_VERSION  # read as the current schema; written back as it
    rotation = values.pop("rotation", None)
    return StateRecord(
        **{
            **values,
            "schema": SCHEMA_VERSION,  # read as, and written back as, this version
            "phase": Phase(values.get("phase", Phase.IDLE)),
            "lease": _opt(Lease, values.get("lease")),
            "provider_write": _opt(ProviderWrite, values.get("provider_write")),
            "rotation": None if rotation is None else _rotation_from(rotation),
            "outcomes": tuple(Outcome(**o) for o in values.get("outcomes", ())),
        }
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """Values in flight, at ``<kv_mount>/<state_prefix>/pending/<env>/<name>``.

    Stored form: ``{"schema": 2, "rotation_id", "attempt", "new_key_id", "new_key_name",
    "new_key_value", "old_secret": {...} | null, "old_version": int, "verified_at": float |
    null}``. ``old_secret`` is the consumer secret's whole data map when the rotation started
    (for abort). ``verified_at`` (v2; absent in v1): when the new key's own verify call passed
    (local clock), so the value and its verify are saved in one write. Destroyed, every
    version, when the rotation ends.
    """

    rotation_id: str
    attempt: int
    new_key_id: str
    new_key_name: str
    new_key_value: str
    old_secret: Mapping[str, Any] | None
    old_version: int
    verified_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PENDING_SCHEMA, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Pending:
        refuse_newer(data, f"pending record at {where}", PENDING_SCHEMA)
        values = {k: v for k, v in data.items() if k != "schema"}
        try:
            pending = cls(**values)
        except TypeError as exc:
            raise StoreError(f"pending record at {where} is malformed") from exc
        if not isinstance(pending.new_key_value, str) or not pending.new_key_value:
            raise StoreError(f"pending record at {where} has no key value")
        return pending

    def __repr__(self) -> str:
        return f"Pending(rotation_id={self.rotation_id!r}, new_key_id={self.new_key_id!r})"
