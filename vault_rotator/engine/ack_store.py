"""Ack records in Vault: read them (as hostile input) and remove those of long-gone instances.

Records live at ``<state_prefix>/acks/<env>/<name>/<instance>`` in the key's KV mount (the
schema and the rules: :mod:`.acks`). Reading a key's acks is one list and one read per listed
instance, at most :data:`.acks.MAX_ACKS` reads; names beyond that, names that are not instance
names, and records that are refused are reported (:class:`.acks.AckProblem`), each logged once
per process at warning with the key, the (escaped) name and why, never a value.
"""

from __future__ import annotations

from collections import OrderedDict

import structlog

from vault_rotator.engine.acks import (
    INSTANCE,
    MAX_ACKS,
    Ack,
    AckFacts,
    AckPolicy,
    AckProblem,
    name_problem,
    parse_ack,
    retired,
)
from vault_rotator.errors import AnswerTooLargeError, StoreError
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger("vault_rotator.engine.acks")

_REPORTED: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # logged once per process
_REPORTED_MAX = 4096


def acks_folder(prefix: str, env: str, name: str) -> str:
    """The folder of a key's ack records, relative to its KV mount."""
    return f"{prefix.strip('/')}/acks/{env}/{name}"


class AckStore:
    """Reads and removes one KV mount's ack records under ``state_prefix``."""

    def __init__(self, kv: KvStore, prefix: str) -> None:
        self.kv = kv
        self.prefix = prefix.strip("/")

    def folder(self, env: str, name: str) -> str:
        return acks_folder(self.prefix, env, name)

    def read(self, env: str, name: str, policy: AckPolicy) -> AckFacts:
        """Every valid ack of ``env/name`` and every refused one (StoreError if Vault fails)."""
        folder = self.folder(env, name)
        problems: list[AckProblem] = []
        names: list[str] = []
        try:
            listing = self.kv.list(folder)
        except AnswerTooLargeError as exc:  # a flood past what one answer is read of
            unlisted = AckProblem("*", f"ack folder not listed ({exc})")
            return AckFacts((), (unlisted,), policy, unread=MAX_ACKS + 1)
        for listed in sorted(listing):
            if (problem := name_problem(listed)) is not None:
                problems.append(problem)
            else:
                names.append(listed)
        skipped = max(0, len(names) - MAX_ACKS)
        if skipped:
            problems.append(
                AckProblem(names[MAX_ACKS], f"{skipped} records past the first {MAX_ACKS} not read")
            )
            names = names[:MAX_ACKS]
        acks: list[Ack] = []
        for instance in names:
            try:
                got = self.kv.read(f"{folder}/{instance}")
            except StoreError as exc:
                problems.append(AckProblem(instance, f"unreadable record ({exc})"))
                continue
            except (RecursionError, ValueError, TypeError):  # nested past any parser's depth
                problems.append(AckProblem(instance, "unreadable record (not plain JSON)"))
                continue
            if got is None or got.deleted:
                continue  # removed between the list and the read
            parsed = parse_ack(instance, got)
            if isinstance(parsed, Ack):
                acks.append(parsed)
            else:
                problems.append(parsed)
        return AckFacts(tuple(acks), tuple(problems), policy, unread=skipped)

    def remove_retired(self, env: str, name: str, policy: AckPolicy, now: float) -> list[str]:
        """Destroy the records of instances gone longer than ack_ttl + ack_retention."""
        facts = self.read(env, name, policy)
        removed = []
        records: list[Ack | AckProblem] = [*facts.acks, *facts.problems]
        for ack in records:
            if retired(ack, now, policy) and INSTANCE.fullmatch(ack.instance):
                self.kv.destroy(f"{self.folder(env, name)}/{ack.instance}")
                removed.append(ack.instance)
        if removed:
            log.info("ack records of long-gone instances removed", key=f"{env}/{name}",
                     instances=removed)  # fmt: skip
        return removed


def report(ref: str, facts: AckFacts) -> None:
    """Log each refused ack once per process (key, escaped name, why; never a value)."""
    for problem in facts.problems:
        marker = (ref, problem.instance, problem.problem)
        if marker in _REPORTED:
            continue
        _REPORTED[marker] = None
        if len(_REPORTED) > _REPORTED_MAX:
            _REPORTED.popitem(last=False)
        log.warning("ack ignored", key=ref, instance=problem.instance, problem=problem.problem)


def read_quietly(store: AckStore, env: str, name: str, policy: AckPolicy) -> AckFacts | None:
    """:meth:`AckStore.read` for status: None (logged) when Vault refuses or fails."""
    try:
        return store.read(env, name, policy)
    except StoreError as exc:
        log.warning("acks not readable", key=f"{env}/{name}", error=str(exc))
        return None
