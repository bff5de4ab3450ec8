"""The chaos run's figures, computed purely from what was gathered once everything settled.

:mod:`vault_rotator.testing.chaos` drives the run and gathers: the emulator's keys (every key
ever created, deleted ones too) and its mutation log, every version of each consumer secret
(key id, rotation id, aborted mark), each key's outcomes and the stalls seen while polling, the
consumers' output, and all text the daemon, its APIs and webhooks produced. Nothing here does
I/O, and no key value is ever part of a figure.

Must-be-zero figures: ``consumer_failed``, ``orphans``, ``lost``, ``repeated``,
``false_stalls``, ``secret_hits``, ``unsettled``, ``unexpected_exits``,
``boundaries_missed``.
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
)
CALL_LINE = re.compile(r"^call \d+: HTTP (\d+) with ")
KEY_SHAPED = re.compile(r"lr_live_[A-Za-z0-9_-]{40}")


@dataclass(frozen=True)
class SecretVersion:
    """One version of a consumer secret, as the figures need it (never its value)."""

    ref: str
    version: int
    key_id: str | None
    rotation_id: str | None
    aborted: bool


@dataclass
class Figures:
    """The run's figures; ``line()`` prints them on one line."""

    seed: int
    kills: int = 0
    boundary_kills: int = 0
    random_kills: int = 0
    rotations: int = 0
    provider_faults: int = 0
    consumer_ok: int = 0
    consumer_failed: int = 0
    orphans: int = 0
    lost: int = 0
    repeated: int = 0
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
            f"random={self.random_kills}) provider_faults={self.provider_faults} "
            f"rotations={self.rotations} "
            f"consumer_ok={self.consumer_ok} consumer_failed={self.consumer_failed} "
            f"orphans={self.orphans} lost={self.lost} repeated={self.repeated} "
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
) -> list[str]:
    """Each piece of repeated work, described (no values): a key name created twice (one
    attempt's name), a second update or delete request for one key id, a second consumer-secret
    version within one rotation, a delete of a key neither named for a rotation nor ever served.
    A new attempt after a lost create answer has a new name, so it is not counted."""
    found = [
        f"created twice: {name}"
        for name, n in Counter(key["name"] for key in keys).items()
        if n > 1
    ]
    for route in ("update", "delete"):
        counts = Counter(m["key_id"] for m in mutations if m["route"] == route)
        found += [f"{route} repeated: {key_id} x{n}" for key_id, n in counts.items() if n > 1]
    per_rotation = Counter(
        (v.ref, v.rotation_id) for v in versions if v.rotation_id and not v.aborted
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


def secret_hits(
    texts: Iterable[str], known: Iterable[str], is_key_value: Callable[[str], bool]
) -> list[str]:
    """Where a secret appears: an exact ``known`` secret, or a key-shaped string that the
    provider recognises as one of its key values. Names the text's index, never the secret."""
    known = [secret for secret in known if secret]
    hits = []
    for index, text in enumerate(texts):
        hits += [f"text {index}: known secret" for secret in known if secret in text]
        hits += [f"text {index}: key value" for m in KEY_SHAPED.findall(text) if is_key_value(m)]
    return hits
