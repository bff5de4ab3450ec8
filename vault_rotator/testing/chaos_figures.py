"""The chaos run's figures, computed purely from what was gathered once everything settled.

:mod:`vault_rotator.testing.chaos` drives the run and gathers: the emulator's keys (every key
ever created, deleted ones too) and its mutation log, every version of each consumer secret
(key id, rotation id, aborted mark), each key's outcomes and the stalls seen while polling, the
consumers' output, and all text the daemon, its APIs and webhooks produced. Nothing here does
I/O, and no key value is ever part of a figure.

Must-be-zero figures: ``consumer_failed``, ``orphans``, ``lost``, ``repeated``,
``false_stalls``, ``secret_hits``, ``unsettled``, ``unexpected_exits``,
``boundaries_missed``, ``foreign_touched``, ``hammering`` and ``vault_missed``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MUST_BE_ZERO = (
    "consumer_failed",
    "orphans",
    "lost",
    "repeated",
    "false_stalls",
    "secret_hits",
    "unsettled",
    "unexpected_exits",
    "boundaries_missed",
    "foreign_touched",
    "hammering",
    "vault_missed",
)
MANAGEMENT_ROUTES = ("list", "get", "create", "update", "delete")
RPS_LIMIT = 20  # requests to one management route in any second: an order above the design's
GRACE_S = 0.02  # a request this soon after an answer was already on its way
SLACK_S = 0.05  # clock and scheduling slack on a Retry-After
CALL_LINE = re.compile(r"^call \d+: HTTP (\d+) with ")
KEY_SHAPED = re.compile(r"lr_live_[A-Za-z0-9_-]{40}")
TOKEN_SHAPED = re.compile(r"\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9]{24,}\b")  # a Vault token


@dataclass(frozen=True)
class SecretVersion:
    """One version of a consumer secret, as the figures need it (never its value)."""

    ref: str
    version: int
    key_id: str | None
    rotation_id: str | None
    aborted: bool
    outside: bool = False  # written by someone else (the run's concurrent writer)


@dataclass
class Figures:
    """The run's figures; ``line()`` prints them on one line."""

    seed: int
    kills: int = 0
    boundary_kills: int = 0
    random_kills: int = 0
    rotations: int = 0
    provider_faults: int = 0
    provider_requests_during_faults: int = 0
    max_route_rps: int = 0
    hammering: int = 0
    foreign_touched: int = 0
    vault_faults: int = 0
    vault_fault_rotations: int = 0
    readyz_503_seen: int = 0
    readyz_503_expected: int = 0
    relogins: int = 0
    cas_conflicts: int = 0
    stalls_resumed: int = 0
    vault_missed: int = 0
    consumer_ok: int = 0
    consumer_failed: int = 0
    orphans: int = 0
    lost: int = 0
    repeated: int = 0
    retried_lost_answers: int = 0
    false_stalls: int = 0
    secret_hits: int = 0
    unsettled: int = 0
    unexpected_exits: int = 0
    boundaries_missed: int = 0
    searched_texts: int = 0
    searched_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """The must-be-zero figures that are not 0, plus 'rotations' when none completed."""
        bad = [name for name in MUST_BE_ZERO if getattr(self, name)]
        return [*bad, "rotations"] if self.rotations == 0 else bad

    def line(self) -> str:
        return (
            f"chaos seed={self.seed} kills={self.kills} (boundary={self.boundary_kills} "
            f"random={self.random_kills}) rotations={self.rotations} "
            f"vault_faults={self.vault_faults} vault_fault_rotations={self.vault_fault_rotations} "
            f"readyz_503_seen={self.readyz_503_seen}/{self.readyz_503_expected} "
            f"relogins={self.relogins} cas_conflicts={self.cas_conflicts} "
            f"vault_missed={self.vault_missed} "
            f"provider_faults={self.provider_faults} "
            f"provider_requests_during_faults={self.provider_requests_during_faults} "
            f"max_route_rps={self.max_route_rps} hammering={self.hammering} "
            f"foreign_touched={self.foreign_touched} stalls_resumed={self.stalls_resumed} "
            f"consumer_ok={self.consumer_ok} consumer_failed={self.consumer_failed} "
            f"orphans={self.orphans} lost={self.lost} repeated={self.repeated} "
            f"retried_lost_answers={self.retried_lost_answers} "
            f"false_stalls={self.false_stalls} secret_hits={self.secret_hits} "
            f"unsettled={self.unsettled} unexpected_exits={self.unexpected_exits} "
            f"boundaries_missed={self.boundaries_missed} "
            f"searched={self.searched_texts} texts/{self.searched_bytes / 2**20:.1f} MiB "
            f"seconds={self.seconds:.0f} "
            f"result={'FAIL:' + ','.join(self.failures()) if self.failures() else 'ok'}"
        )


def consumer_calls(lines: Iterable[str]) -> tuple[int, int]:
    """(ok, failed) calls in the shipped consumer's output."""
    ok = failed = 0
    for line in lines:
        match = CALL_LINE.match(line)
        if match:
            ok += match.group(1) == "200"
            failed += match.group(1) != "200"
    return ok, failed


def orphans_and_lost(keys: Sequence[Mapping[str, Any]], served: Iterable[str]) -> tuple[int, int]:
    """Live keys no secret serves, and served key ids that are not live."""
    live = {key["id"] for key in keys if not key["deleted"]}
    served = set(served)
    return len(live - served), len(served - live)


def repeated_work(
    keys: Sequence[Mapping[str, Any]],
    mutations: Sequence[Mapping[str, Any]],
    versions: Sequence[SecretVersion],
    rotation_ids: Iterable[str],
    unanswered: Mapping[tuple[str, str], int] | None = None,
) -> list[str]:
    """Each piece of repeated work, described (no values): a key name created twice (one
    attempt's name), a second update or delete request for one key id that took effect or
    found the key gone (a 5xx or 429 answer did nothing: its retry is no repeat), a second
    consumer-secret version within one rotation, a delete of a key neither named for a rotation
    nor ever served. A new attempt after a lost create answer has a new name, so it is not
    counted; nor is a secret version someone else wrote, nor the client's retry of an update
    or delete whose answer it never got (``unanswered``: (route, key id) -> how many such
    attempts the daemon logged), which is how an idempotent call is made safe."""
    found = [
        f"created twice: {name}"
        for name, n in Counter(key["name"] for key in keys).items()
        if n > 1
    ]
    lost = unanswered or {}
    for route in ("update", "delete"):
        counts = Counter(m["key_id"] for m in mutations if m["route"] == route and _took(m))
        found += [
            f"{route} repeated: {key_id} x{n}"
            for key_id, n in counts.items()
            if n > 1 + lost.get((route, key_id), 0)
        ]
    per_rotation = Counter(
        (v.ref, v.rotation_id)
        for v in versions
        if v.rotation_id and not v.aborted and not v.outside
    )
    found += [
        f"second secret version: {ref} {rid}" for (ref, rid), n in per_rotation.items() if n > 1
    ]
    ids = tuple(rotation_ids)
    names = {key["id"]: key["name"] for key in keys}
    ever_served = {v.key_id for v in versions}
    for m in mutations:
        if m["route"] != "delete" or m["key_id"] in ever_served:
            continue
        if not any(f"{rid}." in str(names.get(m["key_id"], "")) for rid in ids):
            found.append(f"delete of a key not named for a rotation: {m['key_id']}")
    return found


def unanswered_writes(events: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    """From the daemon's debug log: (route, key id) of each update or delete attempt that got
    no answer (a timeout, a dropped connection), which the client then retried."""
    routes = {"PATCH": "update", "DELETE": "delete"}
    return Counter(
        (routes[str(e["method"])], str(e["route"]).rsplit("/", 1)[-1])
        for e in events
        if e.get("event") == "arouter.request"
        and e.get("method") in routes
        and e.get("status") is None
    )


def _took(mutation: Mapping[str, Any]) -> bool:
    """The request took effect (2xx), or found its key gone (404)."""
    status = int(mutation.get("status", 200))
    return status < 300 or status == 404


def secret_hits(
    texts: Iterable[str], known: Iterable[str], is_key_value: Callable[[str], bool]
) -> list[str]:
    """Where a secret appears: an exact ``known`` secret, a key-shaped string that the
    provider recognises as one of its key values, or anything shaped like a Vault token (such
    as one AppRole issued, which the harness never sees). Names the text's index, never the
    secret."""
    known = [secret for secret in known if secret]
    hits = []
    for index, text in enumerate(texts):
        hits += [f"text {index}: known secret" for secret in known if secret in text]
        hits += [f"text {index}: key value" for m in KEY_SHAPED.findall(text) if is_key_value(m)]
        hits += [f"text {index}: Vault token" for _ in TOKEN_SHAPED.finditer(text)]
    return hits


def _life(moment: float, lives: Sequence[tuple[float, float]]) -> int | None:
    return next((i for i, (start, end) in enumerate(lives) if start <= moment <= end), None)


def early_requests(
    requests: Sequence[Mapping[str, Any]], lives: Sequence[tuple[float, float]]
) -> list[str]:
    """Requests to a management route sent before a Retry-After on that route had elapsed:
    after an answer carrying ``Retry-After: R``, another request to the route arriving more
    than :data:`GRACE_S` and less than ``R`` (less :data:`SLACK_S`) after it, by the same
    daemon life (a new life does not know what the last one was told)."""
    found = []
    for route in MANAGEMENT_ROUTES:
        entries = sorted((r for r in requests if r["route"] == route), key=lambda r: r["at"])
        for index, told in enumerate(entries):
            if not told.get("retry_after"):
                continue
            life = _life(told["answered"], lives)
            until = told["answered"] + told["retry_after"] - SLACK_S
            for later in entries[index + 1 :]:
                if later["at"] >= until:
                    break
                waited = later["at"] - told["answered"]
                if waited > GRACE_S and life is not None and _life(later["at"], lives) == life:
                    found.append(
                        f"{route} asked again {waited:.2f}s after Retry-After "
                        f"{told['retry_after']:g}s"
                    )
    return found


def busiest_second(requests: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Per management route, the most requests that arrived within any one second."""
    most = {}
    for route in MANAGEMENT_ROUTES:
        times = sorted(r["at"] for r in requests if r["route"] == route)
        first, best = 0, 0
        for last, moment in enumerate(times):
            while moment - times[first] >= 1.0:
                first += 1
            best = max(best, last - first + 1)
        most[route] = best
    return most


def hammering(
    requests: Sequence[Mapping[str, Any]], lives: Sequence[tuple[float, float]]
) -> tuple[list[str], int]:
    """Each sign of hammering (a request before Retry-After elapsed, a route asked more than
    :data:`RPS_LIMIT` times in one second), and the busiest second's count."""
    found = early_requests(requests, lives)
    busiest = busiest_second(requests)
    found += [
        f"{route}: {n} requests in one second" for route, n in busiest.items() if n > RPS_LIMIT
    ]
    return found, max(busiest.values(), default=0)


def foreign_touched(
    mutations: Sequence[Mapping[str, Any]],
    keys: Sequence[Mapping[str, Any]],
    foreign: Iterable[str],
) -> list[str]:
    """Foreign keys (someone else's, odd names) that were written to, deleted or disabled."""
    ids = set(foreign)
    found = [f"{m['route']} of foreign key {m['key_id']}" for m in mutations if m["key_id"] in ids]
    found += [
        f"foreign key {k['id']} is {'deleted' if k['deleted'] else 'disabled'}"
        for k in keys
        if k["id"] in ids and (k["deleted"] or k.get("disabled"))
    ]
    return found
