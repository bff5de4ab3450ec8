"""Consumer acknowledgements ("acks"): the record, read as hostile input, and the pure rules.

A consumer instance writes ``<kv_mount>/data/<state_prefix>/acks/<env>/<name>/<instance>``
(one record per instance; its own token may create and update there, never read or list)::

    {"version": 5,                        # the consumer secret's KV version it loaded
     "key_id": "key_abc",                 # that version's key_id (never a key value)
     "at": "2026-11-27T10:00:00Z",        # when, by the writer's clock (shown, never trusted)
     "kind": "agent" | "app",             # agent: the file changed on disk; app: the app
                                          #   re-read it and made a successful call with it
     "instance": "web-7d9f-x2k4"}         # the path's last segment, repeated

Everything else is refused, and a refused ack counts as nothing: a record over
:data:`MAX_ACK_BYTES` (as JSON), a missing, extra or mistyped field, an ``instance`` that is not
the path's own name, a name outside ``[a-z0-9][a-z0-9.-]{0,62}``, any string (field names
included) that looks like a key or a token (reported without the value), a version the
consumer secret does not have, or a ``key_id`` that is not that version's key. Each refusal is
an :class:`AckProblem` that ``status`` shows and the engine logs once; none is ever a traceback.

Time: an ack's age is Vault's own ``created_time`` of the record's current version (when Vault
stored the write), not the client's ``at``, which a stale or forged writer could set to "now".
The drain rules below count ``usage_lag`` from the local time of the pass that first saw the
last needed ack (``acks_complete_at``), which is never earlier than the ack itself whatever the
two clocks say.

The rules (pure; :mod:`.decide` calls them):

* ``require_acks: N``: the old key is disabled or deleted only once N distinct present
  instances acknowledged the published version (either kind) *and* traffic evidence holds.
  Not met by the pickup deadline: the rotation stalls ``acks-missing``, naming the present
  instances that did not acknowledge. An emergency rotation ignores it.
* ``drain_on_acks: true``: the instances present at the first pass after publish are the
  expected ones; once every one of them sent an ``app`` ack of the published version, the drain
  may end before ``drain_period``, but only once the old key's reported use has not changed for
  ``usage_lag`` since the last of those acks was seen (and the old key is listed in the pass).
  More than :data:`MAX_EXPECTED` present instances (a consumer token may write as many records
  as it likes): none is awaited, the rotation drains for the full ``drain_period``.
* ``ack_ttl``: an instance whose last ack is older is *gone*: listed, never waited for nor
  counted. ``ack_retention``: records of instances gone that much longer are removed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vault_rotator.display import SECRET_PATTERN, shown
from vault_rotator.engine import reasons
from vault_rotator.engine.state import Rotation
from vault_rotator.policy import KeyPolicy
from vault_rotator.ports.kv import Versioned

INSTANCE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
KINDS = ("agent", "app")
AGENT, APP = KINDS
FIELDS = frozenset({"version", "key_id", "at", "kind", "instance"})
MAX_ACK_BYTES = 1024  # an ack is about 120 bytes as JSON
# Records read per key and pass; names beyond are reported, not read. A consumer token may
# write as many records as it likes: a pass costs one list and at most this many reads.
MAX_ACKS = 256
# Instances drain_on_acks waits for. More present at publish: it is off for that rotation (the
# full drain_period applies, with a warning), so the state record never carries more names
# than a default OpenBao listener accepts in one write (max_request_json_strings 1000).
MAX_EXPECTED = MAX_ACKS
_KEY_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_STAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
)  # ASCII digits only: \d also matches other scripts' digits


@dataclass(frozen=True, slots=True)
class Ack:
    """One instance's valid acknowledgement. ``at``: Vault's time of the write (epoch s)."""

    instance: str
    kind: str
    version: int
    key_id: str
    at: float
    claimed_at: str = ""  # the writer's own ``at`` (display only)


@dataclass(frozen=True, slots=True)
class AckProblem:
    """An ack that was refused: its (escaped) name and why, never a value from its body."""

    instance: str
    problem: str
    at: float | None = None  # Vault's time of the refused record, when it was read


@dataclass(frozen=True, slots=True)
class AckPolicy:
    """A key's ack settings (from its policy)."""

    require: int = 0
    drain_on_acks: bool = False
    ttl: float = 7 * 86400.0
    retention: float = 30 * 86400.0

    @classmethod
    def of(cls, policy: KeyPolicy) -> AckPolicy:
        return cls(
            policy.require_acks, policy.drain_on_acks, policy.ack_ttl_s, policy.ack_retention_s
        )

    @property
    def active(self) -> bool:
        """Do acks take part in this key's rotations?"""
        return self.require > 0 or self.drain_on_acks


@dataclass(frozen=True, slots=True)
class AckFacts:
    """What a pass read of a key's acks: the valid ones, the refused ones, the settings."""

    acks: tuple[Ack, ...] = ()
    problems: tuple[AckProblem, ...] = ()
    policy: AckPolicy = field(default_factory=AckPolicy)
    unread: int = 0  # records past MAX_ACKS, listed and not read


# -- reading one record ----------------------------------------------------------------------


def key_shaped(value: str) -> bool:
    """Does ``value`` look like a key or a token (what the log redaction masks)?"""
    return SECRET_PATTERN.search(value) is not None


def name_problem(name: str) -> AckProblem | None:
    """Why a listed name is not an ack to read (a folder, a bad or secret-looking name)."""
    if key_shaped(name):
        return AckProblem("(not shown)", "a record whose name looks like a key or token")
    if name.endswith("/"):
        return AckProblem(shown(name, 70), "a folder, not an ack record")
    if not INSTANCE.fullmatch(name):
        return AckProblem(shown(name, 70), "name is not [a-z0-9][a-z0-9.-]{0,62}")
    return None


def vault_time(stamp: str) -> float | None:
    """Vault's RFC 3339 ``created_time`` as epoch seconds, or None."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def parse_ack(name: str, got: Versioned) -> Ack | AckProblem:
    """The ack stored at ``name`` (already a valid instance name), or why it is refused."""
    data = got.data
    at = vault_time(got.created_time)
    size = len(json.dumps(data, default=str).encode())
    if size > MAX_ACK_BYTES:
        return AckProblem(name, f"{size} bytes, over the {MAX_ACK_BYTES}-byte limit", at)
    if any(key_shaped(text) for text in _strings(data)):
        return AckProblem(name, "holds a value that looks like a key or token (not shown)", at)
    if (problem := _schema_problem(name, data)) is not None:
        return AckProblem(name, problem, at)
    if at is None:
        return AckProblem(name, "Vault gave no time for the record")
    return Ack(name, data["kind"], data["version"], data["key_id"], at, data["at"])


def _strings(data: Mapping[str, Any]) -> Iterable[str]:
    for key, value in data.items():
        yield str(key)
        if isinstance(value, str):
            yield value
        elif not isinstance(value, int | float | bool | type(None)):
            yield json.dumps(value, default=str)


def _schema_problem(name: str, data: Mapping[str, Any]) -> str | None:
    extra = sorted(set(data) - FIELDS)
    if extra:
        return f"unknown field {shown(str(extra[0]), 40)}"
    missing = sorted(FIELDS - set(data))
    if missing:
        return f"no {', '.join(missing)}"
    version = data["version"]
    checks = (
        (isinstance(version, bool) or not isinstance(version, int) or version < 1,
         "version is not a positive integer"),
        (not _matches(_KEY_ID, data["key_id"]), "key_id is not a key id"),
        (not _matches(_STAMP, data["at"]) or vault_time(data["at"]) is None,
         "at is not an RFC 3339 time"),  # the regex, then the calendar: no 2026-13-45
        (data["kind"] not in KINDS, "kind is neither agent nor app"),
        (data["instance"] != name, "instance names another instance than its path"),
    )  # fmt: skip
    return next((why for failed, why in checks if failed), None)


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


# -- judging acks against the consumer secret --------------------------------------------------


def judge(facts: AckFacts, newest: int | None, keys: Mapping[int, str | None]) -> AckFacts:
    """Refuse acks of a version newer than the secret's ``newest``, or whose key_id is not the
    one ``keys`` (version -> key id) knows for their version. Older versions stay valid."""
    kept: list[Ack] = []
    refused: list[AckProblem] = list(facts.problems)
    for ack in facts.acks:
        known = keys.get(ack.version)
        if newest is not None and ack.version > newest:
            refused.append(AckProblem(ack.instance, f"version {ack.version} does not exist"))
        elif known is not None and ack.key_id != known:
            refused.append(AckProblem(ack.instance, f"key_id is not version {ack.version}'s key"))
        else:
            kept.append(ack)
    return AckFacts(tuple(kept), tuple(refused), facts.policy, facts.unread)


def judge_rotation(facts: AckFacts, rotation: Rotation) -> AckFacts:
    """:func:`judge` against a published rotation's versions."""
    keys = {rotation.start_version: rotation.old_key_id}
    if rotation.published_version is not None:
        keys[rotation.published_version] = rotation.new_key_id
    newest = rotation.published_version or rotation.start_version
    return judge(facts, newest, keys)


# -- the rules -------------------------------------------------------------------------------


def gone(ack: Ack, now: float, ttl: float) -> bool:
    """Past ``ack_ttl`` since its last ack: listed, not waited for, not counted."""
    return now - ack.at > ttl


def retired(ack: Ack | AckProblem, now: float, policy: AckPolicy) -> bool:
    """Gone for longer than ``ack_retention`` (a refused record too): the daemon removes it."""
    return ack.at is not None and now - ack.at > policy.ttl + policy.retention


def present(facts: AckFacts, now: float) -> tuple[Ack, ...]:
    return tuple(a for a in facts.acks if not gone(a, now, facts.policy.ttl))


def of_published(acks: Sequence[Ack], rotation: Rotation, kinds: Sequence[str] = KINDS) -> set[str]:
    """Instances whose ack is of the published version (and of one of ``kinds``)."""
    return {
        a.instance
        for a in acks
        if a.version == rotation.published_version
        and a.key_id == rotation.new_key_id
        and a.kind in kinds
    }


def observe_acks(rotation: Rotation, facts: AckFacts | None, now: float) -> Rotation:
    """Record the expected instances (once) and when every one of them app-acked (or None)."""
    if facts is None or not facts.policy.drain_on_acks:
        return rotation
    expected = rotation.ack_expected
    if expected is None:
        expected = tuple(sorted(a.instance for a in present(facts, now)))
        if len(expected) + facts.unread > MAX_EXPECTED:
            expected = ()  # none awaited: drain_on_acks off for this rotation (see MAX_EXPECTED)
        rotation = rotation.evolve(ack_expected=expected)
    done = bool(expected) and set(expected) <= of_published(facts.acks, rotation, (APP,))
    if not done:
        return rotation.evolve(acks_complete_at=None)
    if rotation.acks_complete_at is None:
        return rotation.evolve(acks_complete_at=now)
    return rotation


@dataclass(frozen=True, slots=True)
class Hold:
    """``require_acks`` not met: wait, or (``stall``) stall acks-missing, with why."""

    stall: bool
    detail: str


NAMED_AT_MOST = 20  # instances named in a stall detail (it goes to the record and webhooks)


def _some(names: list[str]) -> str:
    """Up to NAMED_AT_MOST names, then how many more."""
    shown = ", ".join(names[:NAMED_AT_MOST])
    more = len(names) - NAMED_AT_MOST
    return f"{shown} and {more} more" if more > 0 else shown


def hold(rotation: Rotation, facts: AckFacts | None, now: float) -> Hold | None:
    """None when ``require_acks`` is met (or off, or ignored by an emergency), else a Hold."""
    if facts is None or facts.policy.require <= 0 or rotation.mode == reasons.EMERGENCY:
        return None
    here = present(facts, now)
    have = sorted(of_published(here, rotation))
    need = facts.policy.require
    if len(have) >= need:
        return None
    missing = sorted({a.instance for a in here} - set(have))
    detail = (
        f"{len(have)} of {need} required instances acknowledged version "
        f"{rotation.published_version} ({_some(have) or 'none'}); not acknowledged: "
        f"{_some(missing) or 'no other present instance is known'}"
    )
    late = rotation.pickup_deadline is not None and now >= rotation.pickup_deadline
    return Hold(late, detail)


def ends_drain_early(
    rotation: Rotation, facts: AckFacts | None, usage_lag: float, now: float
) -> bool:
    """``drain_on_acks``: every expected instance app-acked, and the old key's use unchanged
    for ``usage_lag`` since the later of that moment and its last change."""
    if facts is None or not facts.policy.drain_on_acks or rotation.mode == reasons.EMERGENCY:
        return False
    complete, since = rotation.acks_complete_at, rotation.old_mark_since
    if not rotation.ack_expected or complete is None or since is None:
        return False
    return now - max(complete, since) >= usage_lag
