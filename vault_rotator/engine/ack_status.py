"""A key's acks as ``status`` shows them: pure, from the acks read and the record.

The ``acks`` object of a ``status --json`` row (``None`` when the acks could not be read)::

    {"require_acks": 2, "drain_on_acks": false, "ack_ttl_s": 604800.0,
     "version": 5,                  # the version acks count for: the published one while a
                                    # rotation is in flight, else the secret's current one
     "acknowledged": 1,             # present instances whose ack is of that version
     "ignored": null | "emergency rotation: require_acks is ignored",
     "instances": [{"instance": "web-1", "kind": "app", "version": 5, "key_id": "key_new",
                    "age_s": 42.0, "gone": false, "current": true}, ...],
     "problems": [{"instance": "web-9", "problem": "instance names another instance ..."}]}
"""

from __future__ import annotations

import math
from typing import Any

from vault_rotator.engine import reasons
from vault_rotator.engine.acks import AckFacts, gone, judge, judge_rotation
from vault_rotator.engine.state import Rotation


def judged(
    facts: AckFacts, rotation: Rotation | None, version: int | None, key_id: Any
) -> AckFacts:
    """The acks judged against the rotation in flight, else against the served version."""
    if rotation is not None and rotation.published_version is not None:
        return judge_rotation(facts, rotation)
    keys = {version: key_id if isinstance(key_id, str) else None} if version else {}
    return judge(facts, version, keys)


def ack_status(
    facts: AckFacts, rotation: Rotation | None, version: int | None, now: float
) -> dict[str, Any]:
    """The ``acks`` object of a status row (see the module docstring)."""
    counted = version
    if rotation is not None and rotation.published_version is not None:
        counted = rotation.published_version
    ttl = facts.policy.ttl
    rows = [
        {
            "instance": a.instance,
            "kind": a.kind,
            "version": a.version,
            "key_id": a.key_id,
            "age_s": round(max(now - a.at, 0.0), 3),
            "gone": gone(a, now, ttl),
            "current": counted is not None and a.version == counted,
        }
        for a in sorted(facts.acks, key=lambda a: a.instance)
    ]
    emergency = rotation is not None and rotation.mode == reasons.EMERGENCY
    return {
        "require_acks": facts.policy.require,
        "drain_on_acks": facts.policy.drain_on_acks,
        "ack_ttl_s": ttl,
        "version": counted,
        "acknowledged": sum(1 for r in rows if r["current"] and not r["gone"]),
        "ignored": "emergency rotation: require_acks is ignored"
        if emergency and facts.policy.active
        else None,
        "instances": rows,
        "problems": [{"instance": p.instance, "problem": p.problem} for p in facts.problems],
    }


def ack_line(ref: str, acks: Any) -> str | None:
    """One line for the status table, or None when the key has no acks and needs none.

    ``acks`` may come from a daemon's answer: anything that is not the expected shape is
    skipped, never trusted (its strings were escaped on arrival)."""
    if not isinstance(acks, dict):
        return None
    rows = [r for r in acks.get("instances") or [] if isinstance(r, dict)]
    problems = [p for p in acks.get("problems") or [] if isinstance(p, dict)]
    need = acks.get("require_acks")
    if not rows and not problems and not need:
        return None
    head = f"{ref}: acks {acks.get('acknowledged')} of {need or 0} required"
    head += f" for version {acks.get('version')}"
    parts = [_instance(r) for r in rows]
    line = f"{head}: {', '.join(parts) or 'none'}"
    if acks.get("ignored"):
        line += f" ({acks['ignored']})"
    if problems:
        said = "; ".join(f"{p.get('instance')}: {p.get('problem')}" for p in problems[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        line += f"; ignored: {said}{more}"
    return line


def age_text(seconds: Any) -> str:
    """A rough age: 42s, 5m, 3h, 2d ("?" for anything but a finite non-negative number)."""
    ok = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    if not ok or not math.isfinite(seconds) or seconds < 0:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _instance(row: dict[str, Any]) -> str:
    when = age_text(row.get("age_s"))
    gone_word = ", gone" if row.get("gone") else ""
    return f"{row.get('instance')} ({row.get('kind')}, v{row.get('version')}, {when}{gone_word})"
