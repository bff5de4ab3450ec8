"""The environment-wide emergency request: a versioned record in Vault.

``vault-rotator rotate --env ENV --emergency --yes`` (or ``POST /v1/rotate/{env}`` with
``{"emergency": true}``) rotates every key of one environment as a suspected leak. The request
is saved first, so a crash resumes it and a rerun skips what is done; each key then goes through
its own crash-safe rotation (the engine's steps, "about to create" included), started or
upgraded to emergency through the per-key ``rotate --emergency`` command. What each key needs
next is decided purely in :mod:`.emergency_decide`; the round that acts on it is
:mod:`.emergency_round`, the store :mod:`.emergency_store`; what operators see of it,
:mod:`.emergency_view`.

Stored at ``<kv_mount>/<state_prefix>/emergency/<env>`` (one current request per environment;
KV v2 keeps the earlier ones as versions), written only by check-and-set, never a key value or
a token. Schema version 2 (this one) keeps there a small header and the keys in shard records
below it (:mod:`.emergency_codec`, where the stored form is drawn). Schema 1, still read (and
rewritten as 2 at its next change), held every key inline, which is also the form
:meth:`EmergencyRequest.to_dict` gives (a key's ``prior`` is new in schema 2)::

    {
      "schema": 1,
      "id": "mab12c3d4e",                  # the request's id (time-ordered, like rotation ids)
      "env": "production",
      "requested_at": 1700000000.0,        # local clock, epoch seconds
      "by": "alice@host" | "token:<accessor>",
      "trigger": "cli" | "api",
      "revoke_old_now": false,             # --revoke-old-now: old keys deleted at publish
      "keys": {                            # the key set, fixed when the request is made
        "backend": {"step": "awaiting-pickup",  # see Step
                    "rotation_id": "mab13...",  # the key's rotation for this request (once known)
                    "outcome": "succeeded-emergency",   # once it ended
                    "detail": "pickup-timeout: ...",    # why stalled, failed or skipped
                    "at": 1700000050.0,                 # when the step last changed
                    "since": 1700000000.0},             # rotations ending before this are not
                                                        # this request's (a rerun requeues a
                                                        # failed key with a later since)
        ...},
      "settled_at": null | 1700000900.0,   # when no key was moving any more (the webhook)
      "completed_at": null | 1700001000.0, # when every key was done, ended or skipped
      "notified_at": null | 1700000900.0   # the daemon queued the request's one webhook
    }

Empty fields of a key are left out. A newer schema is refused (never read nor overwritten); a
malformed record is a one-line :class:`~vault_rotator.errors.StoreError` naming its path.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vault_rotator.errors import StoreError
from vault_rotator.policy.fields import is_name
from vault_rotator.policy.problems import shown

SCHEMA_VERSION = 2  # the request's stored schema (see .emergency_codec)
INLINE_SCHEMA = 1  # every key inline in one document: to_dict / from_dict


class Step(enum.StrEnum):
    """Where one key of a request is (the in-flight words are ``status``'s)."""

    QUEUED = "queued"  # not started by the request yet
    CREATING = "creating"
    AWAITING_PICKUP = "awaiting-pickup"
    DRAINING = "draining"  # the new key is in use; the old one is being deleted
    ABORTING = "aborting"
    CLEANING_UP = "failing:cleanup"
    STALLED = "stalled"  # both keys alive; an operator resumes, aborts or finishes it
    FAILED = "failed"  # could not start, or failed verification: a rerun tries again
    DONE = "done"  # rotated: a success outcome
    ENDED = "ended"  # ended by an operator (aborted, finished keeping the old key)
    SKIPPED = "skipped"  # old key unknown, or the key left the policies


MOVING = frozenset(
    {
        Step.QUEUED,
        Step.CREATING,
        Step.AWAITING_PICKUP,
        Step.DRAINING,
        Step.ABORTING,
        Step.CLEANING_UP,
    }
)
TERMINAL = frozenset({Step.DONE, Step.ENDED, Step.SKIPPED})


def emergency_path(state_prefix: str, env: str) -> str:
    """Where an environment's request lives (relative to the KV mount)."""
    return f"{state_prefix.strip('/')}/emergency/{env}"


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One key of a request."""

    step: Step
    at: float
    since: float
    rotation_id: str | None = None
    outcome: str | None = None
    detail: str = ""
    prior: str | None = None  # a rotation in flight before the request: not the request's

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if v is not None and v != ""}

    def moved(self, step: Step, at: float, **changes: Any) -> KeyEntry:
        """This entry at ``step`` (``at`` kept when neither the step nor the detail changed)."""
        new = dataclasses.replace(self, step=step, **changes)
        same = new.step == self.step and new.detail == self.detail
        return new if same else dataclasses.replace(new, at=at)


@dataclass(frozen=True, slots=True)
class EmergencyRequest:
    """An environment-wide emergency, as stored (``version``: its KV version, not stored)."""

    id: str
    env: str
    requested_at: float
    by: str
    trigger: str
    revoke_old_now: bool
    keys: Mapping[str, KeyEntry]
    settled_at: float | None = None
    completed_at: float | None = None
    notified_at: float | None = None
    version: int = 0  # the header's KV version
    shard_versions: tuple[int, ...] = dataclasses.field(default=(), compare=False)  # schema 2

    @property
    def tag(self) -> str:
        """The trigger of the rotations this request starts (also shown in ``status``)."""
        return f"emergency:{self.id}"

    @property
    def settled(self) -> bool:
        """No key is moving: each is done, ended, skipped, stalled or failed."""
        return not any(e.step in MOVING for e in self.keys.values())

    @property
    def complete(self) -> bool:
        return all(e.step in TERMINAL for e in self.keys.values())

    def evolve(self, **changes: Any) -> EmergencyRequest:
        return dataclasses.replace(self, **changes)

    def with_keys(self, changes: Mapping[str, KeyEntry], now: float) -> EmergencyRequest:
        """``changes`` applied; ``settled_at`` and ``completed_at`` follow the steps."""
        done = self.evolve(keys={**self.keys, **changes})
        settled = done.settled_at if done.settled else None
        return done.evolve(
            settled_at=(settled or now) if done.settled else None,
            completed_at=(done.completed_at or now) if done.complete else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The inline form (schema 1): every key in one document."""
        return {
            "schema": INLINE_SCHEMA,
            "id": self.id,
            "env": self.env,
            "requested_at": self.requested_at,
            "by": self.by,
            "trigger": self.trigger,
            "revoke_old_now": self.revoke_old_now,
            "keys": {name: entry.to_dict() for name, entry in sorted(self.keys.items())},
            "settled_at": self.settled_at,
            "completed_at": self.completed_at,
            "notified_at": self.notified_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str, version: int = 0) -> EmergencyRequest:
        """Parse a stored request; a newer schema or a malformed one is a StoreError."""
        try:
            _check_schema(data, where)
            return cls(
                id=_text(data, "id"),
                env=_text(data, "env"),
                requested_at=_number(data, "requested_at"),
                by=_text(data, "by", empty=True),
                trigger=_text(data, "trigger", empty=True),
                revoke_old_now=_flag(data, "revoke_old_now"),
                keys=_keys(data.get("keys")),
                settled_at=_number(data, "settled_at", optional=True),
                completed_at=_number(data, "completed_at", optional=True),
                notified_at=_number(data, "notified_at", optional=True),
                version=version,
            )
        except (ValueError, TypeError) as exc:
            raise StoreError(f"emergency request at {where} is malformed ({exc})") from exc


def new_request(
    request_id: str,
    env: str,
    names: list[str],
    *,
    by: str,
    trigger: str,
    revoke_old_now: bool,
    now: float,
) -> EmergencyRequest:
    """A fresh request: every key queued."""
    queued = KeyEntry(Step.QUEUED, at=now, since=now)
    return EmergencyRequest(
        id=request_id,
        env=env,
        requested_at=now,
        by=by,
        trigger=trigger,
        revoke_old_now=revoke_old_now,
        keys=dict.fromkeys(sorted(names), queued),
    )


def resumed(request: EmergencyRequest, *, revoke_old_now: bool, now: float) -> EmergencyRequest:
    """A rerun of an open request: failed keys are queued again (their earlier rotations are
    no longer this request's), and ``--revoke-old-now`` may be added, never taken away."""
    again = {
        name: KeyEntry(Step.QUEUED, at=now, since=now)
        for name, entry in request.keys.items()
        if entry.step == Step.FAILED
    }
    revoke = request.revoke_old_now or revoke_old_now
    reopened = request.evolve(revoke_old_now=revoke)
    if again:  # its webhook is due again once it settles again (the failures are news)
        reopened = reopened.evolve(notified_at=None, settled_at=None)
    return reopened.with_keys(again, now)


# -- parsing helpers -----------------------------------------------------------------------


def _check_schema(data: Mapping[str, Any], where: str) -> None:
    """A newer schema is refused as such (StoreError); any other but ours is malformed."""
    schema = data.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA_VERSION:
        raise StoreError(
            f"emergency request at {where} was written by a newer vault-rotator (schema "
            f"{schema}; this one reads up to {SCHEMA_VERSION}): upgrade this process; the "
            "request is left as it is"
        )
    if schema != INLINE_SCHEMA:
        raise ValueError(f"schema {schema!r:.40}, this vault-rotator reads 1 and {SCHEMA_VERSION}")


def _text(data: Mapping[str, Any], name: str, *, empty: bool = False) -> str:
    value = data.get(name, "" if empty else None)
    if not isinstance(value, str) or (not value and not empty):
        raise TypeError(f"{name} must be a non-empty string")
    return value


def _number(data: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    return float(value)


def _flag(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false")
    return value


def _keys(value: Any) -> dict[str, KeyEntry]:
    if not isinstance(value, Mapping) or not value:
        raise TypeError("keys must be a non-empty object")
    out: dict[str, KeyEntry] = {}
    for name, raw in value.items():
        if not is_name(name):  # joined into Vault paths (the key's state record, its secret)
            raise TypeError(f"key name {shown(name)} is not a key name (a-z, 0-9, '-')")
        if not isinstance(raw, Mapping):
            raise TypeError(f"keys.{str(name)[:40]} must be an object")
        step = _step(name, raw.get("step"))
        optional = {f: raw.get(f) for f in ("rotation_id", "outcome", "prior")}
        if any(v is not None and not isinstance(v, str) for v in optional.values()):
            raise TypeError(
                f"keys.{str(name)[:40]}: rotation_id, outcome and prior must be strings"
            )
        detail = raw.get("detail", "")
        if not isinstance(detail, str):
            raise TypeError(f"keys.{str(name)[:40]}.detail must be a string")
        out[str(name)] = KeyEntry(
            step=step,
            at=_number(raw, "at"),
            since=_number(raw, "since"),
            detail=detail,
            **optional,
        )
    return out


def _step(name: object, value: object) -> Step:
    if isinstance(value, str) and value in Step.__members__.values():
        return Step(value)
    raise ValueError(f"keys.{str(name)[:40]}.step {value!r:.40} is not a known step")
