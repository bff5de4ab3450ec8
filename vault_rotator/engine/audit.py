"""Audit findings: pure functions over one list pass per account and what Vault says it holds.

ARouter's rotation guide: "review the key list monthly and delete any keys that are no longer
in use". ``vault-rotator audit`` (:mod:`vault_rotator.commands.audit_cmd`) gathers; this module
decides. Finding kinds:

    unmanaged            no policy's consumer secret serves it and no state record holds it
                         (the detail says "stray" when its name matches a policy's key_name)
    unused               no use for ``unused_days``: last_used_at older, or never used and
                         created earlier (dialects B, C); dialect A reports no last_used_at, so
                         "no usage and created earlier" stands in (weaker evidence)
    no-spending-cap      the key has no spending_limit
    served-twice         one key (same key_id, or same value fingerprint) at two consumer secrets
    served-key-unknown   a consumer secret holds a value but no key_id, and the policy no
                         adopt_key_id: which provider key it is cannot be told
    unreadable           the provider lists the key with fields that do not parse: nothing is
                         judged from them (no unused or no-cap finding), and it is never a
                         deletion candidate

Managed keys (never deletion candidates): the key_id a policy's secret holds (else its
adopt_key_id); every state record's ``current_key_id``, ``rotation.old_key_id`` and
``rotation.new_key_id``; keys named for an attempt of a rotation in flight, or the target of its
recorded provider write. Held ids and names protect keys in every account: a wider protection
is harmless, a missed one is not.

Deletion candidates are keys both unused and unmanaged, in accounts where every served key is
known and the management key is not an ``lr_live_`` key (it might be one of the listed keys).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vault_rotator.engine import reasons
from vault_rotator.engine.state import StateRecord
from vault_rotator.errors import ConfigError
from vault_rotator.policy import Account, KeyPolicy, PolicyValueError
from vault_rotator.ports.provider import KeyRecord
from vault_rotator.secret import fingerprint

DAY_S = 86_400.0
UNMANAGED = "unmanaged"
UNUSED = "unused"
NO_CAP = "no-spending-cap"
SERVED_TWICE = "served-twice"
SERVED_UNKNOWN = "served-key-unknown"
UNREADABLE = "unreadable"
KINDS = (UNMANAGED, UNUSED, NO_CAP, SERVED_TWICE, SERVED_UNKNOWN, UNREADABLE)
API_KEY_PREFIX = "lr_live_"

_PLACEHOLDER_PATTERNS = {"date": r"\d{4}-\d{2}-\d{2}", "rotation_id": r"[0-9a-z]+\.[0-9]+"}


@dataclass(frozen=True, slots=True)
class Served:
    """What one policy's consumer secret serves: a key id and/or a value's fingerprint."""

    ref: str
    where: str  # "<kv_mount>/<secret_path>"
    account: Account
    key_id: str | None
    value_fp: str | None


@dataclass(frozen=True, slots=True)
class Held:
    """Key ids and key names that state records hold."""

    ids: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    unreadable: frozenset[str] = frozenset()  # records or folders this token may not read

    def __or__(self, other: Held) -> Held:
        return Held(
            self.ids | other.ids, self.names | other.names, self.unreadable | other.unreadable
        )


@dataclass(frozen=True, slots=True)
class NamePattern:
    """A policy's key_name template as a regex over every date and rotation id."""

    ref: str
    template: str
    regex: re.Pattern[str]

    @classmethod
    def of(cls, policy: KeyPolicy) -> NamePattern:
        parts: list[str] = []
        for literal, name, _spec, _conv in string.Formatter().parse(policy.key_name):
            parts.append(re.escape(literal))
            if name in ("env", "name"):
                parts.append(re.escape(policy.env if name == "env" else policy.name))
            elif name is not None:
                parts.append(_PLACEHOLDER_PATTERNS[name])
        return cls(policy.ref, policy.key_name, re.compile("".join(parts)))


@dataclass(frozen=True, slots=True)
class Listing:
    """One account's list pass, and what the audit needs to know about the account."""

    account: Account
    dialect: str
    keys: tuple[KeyRecord, ...]
    patterns: tuple[NamePattern, ...] = ()
    management_is_api_key: bool = False


@dataclass(frozen=True, slots=True)
class Finding:
    account: Account
    key_id: str | None
    name: str | None
    kind: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.account.base_url,
            "account": str(self.account),
            "key_id": self.key_id,
            "name": self.name,
            "kind": self.kind,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Report:
    findings: tuple[Finding, ...]
    candidates: tuple[Finding, ...]  # the unused finding of each key that may be deleted
    refused: Mapping[Account, str] = field(default_factory=dict)  # why no deletion there


# -- gathering helpers (pure: they take what was read) -------------------------------------


def served_by(policy: KeyPolicy, data: Mapping[str, Any] | None) -> Served | None:
    """What ``policy``'s consumer secret (its data map, None if absent) serves, if anything."""
    data = data or {}
    key_id = data.get("key_id") or policy.adopt_key_id
    value = data.get("api_key")
    value_fp = fingerprint(value) if isinstance(value, str) and value else None
    if not key_id and value_fp is None:
        return None
    where = f"{policy.vault.kv_mount}/{policy.secret_path}"
    return Served(policy.ref, where, policy.account, str(key_id) if key_id else None, value_fp)


def held_by(record: StateRecord, policy: KeyPolicy | None) -> Held:
    """Ids and names a state record holds; ``policy`` renders names if the stored one fails."""
    rot = record.rotation
    ids = {record.current_key_id}
    names: set[str | None] = set()
    if rot is not None:
        ids |= {rot.old_key_id, rot.new_key_id}
        names.add(rot.new_key_name)
        names |= _attempt_names(rot.policy, policy, rot.date, rot.id, rot.attempt)
    write = record.provider_write
    if write is not None:
        (names if write.action == reasons.CREATE else ids).add(write.target)
    return Held(frozenset(i for i in ids if i), frozenset(n for n in names if n))


def _attempt_names(
    stored: Mapping[str, Any], fallback: KeyPolicy | None, date: str, rotation_id: str, last: int
) -> set[str | None]:
    policy: KeyPolicy | None
    try:
        policy = KeyPolicy.from_dict(dict(stored))
    except ConfigError:
        policy = fallback
    if policy is None:
        return set()
    try:
        day = datetime.fromisoformat(date).date()
        return {policy.render_name(date=day, rotation_id=f"{rotation_id}.{n}")
                for n in range(1, last + 1)}  # fmt: skip
    except (ValueError, PolicyValueError):
        return set()


# -- findings ----------------------------------------------------------------------------


def unused_evidence(key: KeyRecord, dialect: str, now: float, days: float) -> str | None:
    """Why ``key`` counts as unused for ``days`` at ``now``, or None when it does not."""
    cutoff = now - days * DAY_S
    if key.last_used_at is not None:
        if key.last_used_at.timestamp() >= cutoff:
            return None
        return f"last used {_days_ago(now, key.last_used_at)} days ago ({_day(key.last_used_at)})"
    if key.created_at is None or key.created_at.timestamp() >= cutoff:
        return None
    created = f"created {_days_ago(now, key.created_at)} days ago ({_day(key.created_at)})"
    if dialect != "a":
        return f"never used; {created}"
    if (key.usage_cost or 0) > 0 or (key.usage_tokens or 0) > 0:
        return None
    return (
        f"no usage recorded; {created} (dialect a reports no last_used_at: usage-based "
        "evidence is weaker, unbilled calls leave no trace)"
    )


def _days_ago(now: float, moment: datetime) -> int:
    return int((now - moment.timestamp()) // DAY_S)


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def _unmanaged_detail(key: KeyRecord, patterns: Iterable[NamePattern]) -> str:
    for pattern in patterns:
        if pattern.regex.fullmatch(key.name):
            return (
                f"stray: named like {pattern.ref}'s keys ({pattern.template}) but no secret "
                "serves it and no rotation holds it (left by an earlier rotation?)"
            )
    return "no policy's secret serves it and no rotation holds it"


def key_findings(
    listing: Listing, key: KeyRecord, managed: Held, *, now: float, days: float
) -> list[Finding]:
    """Unmanaged, unused and no-cap findings for one listed key."""
    is_managed = key.id in managed.ids or key.name in managed.names
    found: list[tuple[str, str]] = []
    if not is_managed:
        found.append((UNMANAGED, _unmanaged_detail(key, listing.patterns)))
    if key.problem is not None:  # its fields prove nothing: no unused, no no-cap
        found.append((UNREADABLE, f"listed with fields that do not parse: {key.problem}"))
        return [Finding(listing.account, key.id, key.name, kind, why) for kind, why in found]
    unused = unused_evidence(key, listing.dialect, now, days)
    if unused is not None:
        found.append((UNUSED, unused + ("; managed: never deleted" if is_managed else "")))
    if key.spending_limit is None:
        found.append((NO_CAP, "no spending_limit: exposure is uncapped"))
    return [Finding(listing.account, key.id, key.name, kind, why) for kind, why in found]


def served_twice(served: Sequence[Served], names: Mapping[str, str]) -> list[Finding]:
    """One finding per group of secrets that share a key id or a value fingerprint."""
    findings = []
    for group in _groups(served):
        if len({s.where for s in group}) < 2:
            continue
        ids = sorted({s.key_id for s in group if s.key_id})
        fps = sorted({s.value_fp for s in group if s.value_fp})
        same = [
            what
            for what, shared in (
                ("key_id", len(ids) < sum(1 for s in group if s.key_id)),
                (f"value {', '.join(fps)}", len(fps) < sum(1 for s in group if s.value_fp)),
            )
            if shared
        ]
        where = ", ".join(f"{s.where} ({s.ref})" for s in group)
        key_id = ", ".join(ids) or None
        name = names.get(ids[0]) if len(ids) == 1 else None
        detail = f"served at {where}: same {' and '.join(same)}"
        findings.append(Finding(group[0].account, key_id, name, SERVED_TWICE, detail))
    return findings


def _groups(served: Sequence[Served]) -> list[list[Served]]:
    """Secrets connected by a shared key id or value fingerprint (union-find)."""
    parent = list(range(len(served)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, item in enumerate(served):
        for tag in (("id", item.key_id), ("fp", item.value_fp)):
            if tag[1] is not None:
                j = first.setdefault((tag[0], tag[1]), i)
                parent[root(i)] = root(j)
    groups: dict[int, list[Served]] = {}
    for i, item in enumerate(served):
        groups.setdefault(root(i), []).append(item)
    return list(groups.values())


def served_unknown(served: Iterable[Served]) -> list[Finding]:
    """A finding for each secret whose value cannot be tied to a provider key."""
    return [
        Finding(
            s.account,
            None,
            None,
            SERVED_UNKNOWN,
            f"{s.where} ({s.ref}) holds a value ({s.value_fp}) but no key_id, and the policy "
            "no adopt_key_id: set one (audit deletes nothing in this account until then)",
        )
        for s in served
        if s.key_id is None
    ]


def refusal(listing: Listing, served: Iterable[Served]) -> str | None:
    """Why no key of this account may be deleted, or None."""
    unknown = sorted(s.ref for s in served if s.account == listing.account and s.key_id is None)
    if unknown:
        return f"the key served to {', '.join(unknown)} is not known by id"
    if listing.management_is_api_key:
        return "the management key is an lr_live_ key and may be one of the listed keys"
    return None


def audit(
    listings: Sequence[Listing],
    served: Sequence[Served],
    held: Held,
    *,
    now: float,
    unused_days: float,
) -> Report:
    """Every finding over the accounts' list passes, and the keys that may be deleted."""
    managed = held | Held(frozenset(s.key_id for s in served if s.key_id))
    findings: list[Finding] = []
    refused: dict[Account, str] = {}
    for listing in listings:
        for key in listing.keys:
            findings.extend(key_findings(listing, key, managed, now=now, days=unused_days))
        why = refusal(listing, served)
        if why is not None:
            refused[listing.account] = why
    names = {k.id: k.name for listing in listings for k in listing.keys}
    findings.extend(served_twice(served, names))
    findings.extend(served_unknown(served))
    findings.sort(key=lambda f: (str(f.account), f.key_id or "", KINDS.index(f.kind)))
    return Report(tuple(findings), _candidates(findings, refused), refused)


def _candidates(findings: Sequence[Finding], refused: Mapping[Account, str]) -> tuple[Finding, ...]:
    unmanaged = {(f.account, f.key_id) for f in findings if f.kind == UNMANAGED}
    return tuple(
        f
        for f in findings
        if f.kind == UNUSED and (f.account, f.key_id) in unmanaged and f.account not in refused
    )


def still_deletable(candidate: Finding, served: Iterable[Served], held: Held) -> bool:
    """False when a fresh read of Vault shows the candidate served or held after all."""
    served = [s for s in served if s.account == candidate.account or s.key_id is not None]
    if any(s.key_id is None for s in served):
        return False  # a secret of this account now serves a key not known by id
    ids = held.ids | {s.key_id for s in served if s.key_id}
    return candidate.key_id not in ids and candidate.name not in held.names
