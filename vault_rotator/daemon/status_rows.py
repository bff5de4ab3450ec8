"""Status rows: every key's state, current key, age, due date and outcomes, one dict per key.

Two sources give the same rows:

* :func:`collect` reads Vault: per key its state record, its consumer secret and its ack
  folder, plus any rotation still in flight for a key no longer in the policies. ``vault-rotator
  status`` without ``--daemon`` (:mod:`vault_rotator.commands.status_cmd`) answers with it.
* :class:`HeldRows` answers the daemon's ``GET /v1/status`` (:mod:`.control`) from what the
  daemon already holds: the :class:`~.book.Book` of each account this replica leads, kept
  current every poll (so the rows are fresh to within a poll, and cost no Vault read per key).
  Of the consumer secret, a row needs only ``key_id`` and ``rotated_at``, and only for a key
  vault-rotator never rotated (the record's ``current_key_id`` and ``last_success_at`` answer
  for the others): the book keeps both where the refresher reads that secret
  (:class:`~.book.SecretSeen`); while a rotation is in flight they follow from its record (the
  new key and ``published_at`` once published, else the secret as last read). Acks are read
  only for rotations in flight (where they gate a step), at most :data:`STATUS_ACK_KEYS` keys
  and :data:`STATUS_ACK_BUDGET_S` per answer (those with ``require_acks`` or ``drain_on_acks``
  first); other rows carry ``"acks": null`` ("not read"). A key no book holds (an account
  another replica leads, a book not loaded yet, a key whose first read failed) is read from
  Vault as :func:`collect` reads it.

:func:`~.emergencies.emergency_views` given the books' records makes the same split: each
environment's request is read from Vault (one read per environment, not per key), its keys'
state records taken from the books.

Known differences from :func:`collect`, all for keys vault-rotator never rotated: a first
rotation aborted after its publish shows no age (the republished secret's stamp is not kept);
a secret rewritten by something else than vault-rotator shows as the refresher first read it;
a daemon restarted during a first rotation shows the old key's id from the record and no age
until the rotation is published.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from math import isfinite
from typing import Any

from vault_rotator.daemon.book import Entry, SecretSeen
from vault_rotator.daemon.due import next_due
from vault_rotator.display import redact_text
from vault_rotator.engine.ack_status import ack_status, judged
from vault_rotator.engine.ack_store import AckStore, read_quietly
from vault_rotator.engine.acks import AckPolicy
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.engine.status import (
    derive_state,
    key_status,
    last_rotated,
    lease_holder,
    steady_until,
    unreadable_row,
)
from vault_rotator.errors import (
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
)
from vault_rotator.policy import EnvironmentPolicy, KeyPolicy, PolicySet
from vault_rotator.ports.kv import KvStore
from vault_rotator.runtime import Runtime

STATUS_ACK_KEYS = 16  # rotations in flight whose acks one daemon answer reads, at most
STATUS_ACK_BUDGET_S = 0.5  # ... and no new ack read starts after this long

Views = tuple[list[tuple[EnvironmentPolicy, dict[str, Any]]], list[tuple[EnvironmentPolicy, str]]]


def collect(policies: PolicySet, runtime: Runtime, now: float) -> list[dict[str, Any]]:
    """Status rows for every policy key and every in-flight record outside the policies."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    stores: dict[tuple[str, str], StateStore] = {}
    for policy in policies:
        rows.append(vault_row(policy, _store(stores, runtime, policy), now))
        seen.add((policy.env, policy.name))
    for store in stores.values():
        for record in store.in_flight(skip=seen):
            rows.append(
                key_status(ref=record.ref, max_age_s=None, record=record, secret=None, now=now)
            )
    return rows


def _store(
    stores: dict[tuple[str, str], StateStore], runtime: Runtime, policy: KeyPolicy
) -> StateStore:
    where = (policy.vault.kv_mount, policy.vault.state_prefix)
    if where not in stores:
        stores[where] = StateStore(runtime.kv(where[0]), where[1])
    return stores[where]


def vault_row(policy: KeyPolicy, store: StateStore, now: float) -> dict[str, Any]:
    """One key's row read from Vault: its state record, consumer secret and acks."""
    kv = store.kv
    try:
        record, _ = store.read(policy.env, policy.name)
    except StoreError as exc:  # this key's trouble; every other row still shows
        if isinstance(exc, StorePermissionError | StoreUnavailableError):
            raise  # the token's or Vault's: the whole status says so in one line
        return unreadable_row(policy.ref, str(exc))
    secret = kv.read(policy.secret_path)
    data = dict(secret.data) if secret and not secret.deleted else None
    rotated_at = (data or {}).get("rotated_at")
    due_at = next_due(
        policy,
        last_success_at=record.last_success_at,
        rotated_at=rotated_at if isinstance(rotated_at, str) else None,
        now=now,
    )
    version = secret.version if data is not None and secret is not None else None
    read = read_quietly(
        AckStore(kv, policy.vault.state_prefix), policy.env, policy.name, AckPolicy.of(policy)
    )
    acks = None
    if read is not None:
        facts = judged(read, record.rotation, version, (data or {}).get("key_id"))
        acks = ack_status(facts, record.rotation, version, now)
    return key_status(
        ref=policy.ref,
        max_age_s=policy.max_age_s,
        next_due_at=due_at,
        record=record,
        secret=data,
        now=now,
        acks=acks,
    )


# -- from what the daemon holds ------------------------------------------------------------


class HeldRows:
    """Draws the rows of the keys the books hold, each row's JSON kept from one drawing to
    the next while what it shows stays the same.

    A row depends on the key's policy, its state record and the consumer secret the book saw
    (kept while those are the same objects), and on the clock through its state and deadlines
    passed, its lease holder, its due date and its age. The first four are worked out at each
    drawing and the row is encoded afresh when one moved; otherwise only ``age_s`` (and the
    ``acks`` of the few rotations whose acks were read) are encoded and joined to the rest.
    The bytes are exactly those of encoding the whole row with sorted keys and redacting it:
    a daemon of 10,000 keys, nearly all of whose rows are the same from one drawing to the
    next, spends its drawings on the rows that changed.
    """

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._paths: tuple[PolicySet, dict[str, str]] | None = None

    def paths(
        self, policies: PolicySet, path_of: Callable[[str, str, str, str | None], str]
    ) -> dict[str, str]:
        """Each key's control path by ref (``path_of(mount, prefix, env, name)``), kept
        until the policies are reloaded."""
        if self._paths is None or self._paths[0] is not policies:
            self._paths = (
                policies,
                {
                    p.ref: path_of(p.vault.kv_mount, p.vault.state_prefix, p.env, p.name)
                    for p in policies
                },
            )
        return self._paths[1]

    def draw(
        self,
        keys: Sequence[KeyPolicy],
        held: Mapping[str, Entry],
        runtime: Runtime,
        now: float,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The rows of ``keys`` (in their order) from the book entries in ``held`` (by ref),
        and each row's JSON, redacted; a key not held is read from Vault (see the module
        docstring)."""
        refs = [p.ref for p in keys]  # (built at each call: once here)
        pairs = [(p, ref, held.get(ref)) for p, ref in zip(keys, refs, strict=True)]
        flying = [(p, e) for p, _r, e in pairs if e is not None and e.record.rotation is not None]
        acks = _held_acks(flying, runtime.kv, now, timer)
        stores: dict[tuple[str, str], StateStore] = {}
        kept: dict[str, _Kept] = {}
        rows: list[dict[str, Any]] = []
        encoded: list[bytes] = []
        for policy, ref, entry in pairs:
            if entry is None:
                row = vault_row(policy, _store(stores, runtime, policy), now)
                rows.append(row)
                encoded.append(encode_row(row))
                continue
            keep = self._kept_row(ref, policy, entry, now)
            kept[ref] = keep
            row, line = keep.at(now, acks.get(ref) if acks else None)
            rows.append(row)
            encoded.append(line)
        self._kept = kept  # keys no longer drawn are forgotten
        return rows, encoded

    def _kept_row(self, ref: str, policy: KeyPolicy, entry: Entry, now: float) -> _Kept:
        record, seen = entry.record, entry.secret
        keep = self._kept.get(ref)
        if keep is not None and (
            keep.policy is not policy or keep.record is not record or keep.seen != seen
        ):
            keep = None  # drawn from something else: drawn afresh
        if keep is not None and keep.since <= now < keep.until:
            return keep  # nothing the clock moves has moved
        facts = secret_facts(entry) if keep is None else keep.facts
        state, passed = derive_state(record, now)
        due_at = next_due(
            policy, last_success_at=record.last_success_at, rotated_at=facts["rotated_at"], now=now
        )
        moving = (state, passed, lease_holder(record, now), due_at)
        until, last = steady_until(record, now), last_rotated(record, facts)
        if policy.window is not None or last is None:
            until = now  # the due date moves with the clock: worked out at every drawing
        if keep is not None and keep.moving == moving:
            return dataclasses.replace(keep, since=now, until=until)
        row = key_status(
            ref=ref,
            max_age_s=policy.max_age_s,
            next_due_at=due_at,
            record=record,
            secret=facts,
            now=now,
            acks=None,
        )
        rest = {k: v for k, v in row.items() if k not in _PER_DRAWING}
        return _Kept(
            policy=policy,
            record=record,
            seen=seen,
            facts=facts,
            moving=moving,
            since=now,
            until=until,
            row=row,
            last=last,
            rest=redact_text(json.dumps(rest, sort_keys=True)[1:]).encode(),
        )


_PER_DRAWING = ("acks", "age_s")  # sorted first of a row's fields: encoded at every drawing


@dataclass(frozen=True, slots=True)
class _Kept:
    """One key's row as last drawn, and what it was drawn from."""

    policy: KeyPolicy
    record: StateRecord
    seen: SecretSeen | None
    facts: dict[str, Any]
    moving: tuple[str, list[str], str | None, float]  # state, passed, lease holder, due
    since: float  # ... worked out then (a clock set back works them out again)
    until: float  # ... the same until then (the next deadline or lease expiry)
    row: dict[str, Any]
    last: float | None  # the last rotation (the age's basis)
    rest: bytes  # the row's JSON after its opening brace and per-drawing fields, redacted

    def at(self, now: float, acks: dict[str, Any] | None) -> tuple[dict[str, Any], bytes]:
        """The row at ``now`` with ``acks``, and its JSON."""
        age = None if self.last is None else round(now - self.last, 3)
        row = {**self.row, "acks": acks, "age_s": age}
        head = b"null" if acks is None else encode_row(acks)
        shown = (
            b"null" if age is None else (repr(age) if isfinite(age) else json.dumps(age)).encode()
        )
        return row, b'{"acks": ' + head + b', "age_s": ' + shown + b", " + self.rest


def encode_row(row: Mapping[str, Any]) -> bytes:
    """A row's JSON as GET /v1/status sends it: keys sorted, redacted."""
    return redact_text(json.dumps(row, sort_keys=True)).encode()


def secret_facts(entry: Entry) -> dict[str, Any]:
    """``key_id`` and ``rotated_at`` of the key's consumer secret, as far as the book knows
    (None each where it does not): the new key once a rotation in flight published it (and
    did not put the old one back), else the secret as the refresher last read it."""
    rot = entry.record.rotation
    seen = entry.secret
    key_id = seen.key_id if seen is not None else None
    stamp = seen.rotated_at if seen is not None else None
    if rot is None:
        return {"key_id": key_id, "rotated_at": stamp}
    if rot.published_version is not None and rot.republished_version is None:
        published = rot.published_at
        at = None if published is None else datetime.fromtimestamp(published, UTC).isoformat()
        return {"key_id": rot.new_key_id, "rotated_at": at}
    if seen is None:
        key_id = rot.old_key_id
    if rot.republished_version is not None:
        stamp = None  # the old secret, put back at a time the record does not keep
    return {"key_id": key_id, "rotated_at": stamp}


def _secret_version(entry: Entry) -> int | None:
    """The consumer secret's version acks count against while nothing is published: the one
    the rotation started from (the publish is a check-and-set on it)."""
    rot = entry.record.rotation
    if rot is None or not rot.start_version:
        return None
    return rot.start_version


def _held_acks(
    flying: Iterable[tuple[KeyPolicy, Entry]],
    kv_for: Callable[[str], KvStore],
    now: float,
    timer: Callable[[], float],
) -> dict[str, dict[str, Any]]:
    """The ``acks`` object of at most STATUS_ACK_KEYS rotations in flight, by ref: those whose
    acks gate a step first, then by ref; none started past STATUS_ACK_BUDGET_S."""
    ranked = sorted(flying, key=lambda pair: (not AckPolicy.of(pair[0]).active, pair[0].ref))
    started = timer()
    out: dict[str, dict[str, Any]] = {}
    for policy, entry in ranked[:STATUS_ACK_KEYS]:
        if timer() - started > STATUS_ACK_BUDGET_S:
            break
        store = AckStore(kv_for(policy.vault.kv_mount), policy.vault.state_prefix)
        read = read_quietly(store, policy.env, policy.name, AckPolicy.of(policy))
        if read is None:
            continue
        rot, version = entry.record.rotation, _secret_version(entry)
        facts = judged(read, rot, version, secret_facts(entry)["key_id"])
        out[policy.ref] = ack_status(facts, rot, version, now)
    return out
