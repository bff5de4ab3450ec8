"""What operators see of an environment-wide emergency: one progress view, one summary.

Pure functions of a request (:mod:`.emergency`) and the clock, shared by ``rotate --env ...
--wait``, ``status`` (and ``GET /v1/status``) and the daemon's one webhook per request:

* the **progress line**: counts per step, the pace of the work (:func:`rate_and_eta`), and
  an ETA for the keys still moving (``production: emergency mab12c3d4e: 24 keys: creating 2,
  awaiting-pickup 10, done 11, skipped 1; 0.42 keys/s; ETA 29s``);
* the **JSON view** (``status --json``'s ``emergencies``, ``GET /v1/status`` too), from which
  the line and the summary are drawn (so the CLI draws a daemon's the same way);
* the **summary**, once no key moves: the counts, the outcomes, then every key that needs an
  operator (stalled, failed, skipped, ended by hand, revoked before pickup was seen) with
  what to run next, at most :data:`SHOWN` of each;
* the **webhook** event and fields of the daemon's one message per request.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from vault_rotator.engine import reasons
from vault_rotator.engine.emergency import MOVING, EmergencyRequest, KeyEntry, Step

SHOWN = 20  # keys named per list in a summary or a webhook; the rest are counted


def counts(request: EmergencyRequest) -> dict[str, int]:
    """Keys per step, in the steps' order, without empty steps."""
    tally = Counter(entry.step for entry in request.keys.values())
    return {str(step): tally[step] for step in Step if tally[step]}


# How far along a key of each moving step is, as a share of its time in the pipeline (measured
# on make bench's emergencies: a key spends about 40 % of it being started, 30 % published and
# awaiting its pickup, the rest having its old key deleted and cleaned up).
PROGRESS = {
    Step.QUEUED: 0.0,
    Step.CREATING: 0.4,
    Step.AWAITING_PICKUP: 0.7,
    Step.DRAINING: 0.85,
    Step.ABORTING: 0.85,
    Step.CLEANING_UP: 0.85,
}


def rate_and_eta(request: EmergencyRequest, now: float) -> tuple[float, float | None]:
    """(keys' worth of work per second since the request, seconds left or None).

    Rotations run many at once, so keys do not finish one by one: they finish as a wave, and
    the keys done so far say little about the time left. Each key counts for how far its step
    is (:data:`PROGRESS`; a key no longer moving counts whole), and the work left is done at
    the pace the work so far was: a pipeline bound by the CPU of Vault, the daemon and the
    provider keeps a steady pace.

    The steps are as of the request's latest change (its keys' latest ``at``), not ``now``: a
    daemon saves a request's progress once per poll, and a poll of 10,000 keys in flight
    lasts a minute or more. So the pace is the work done by then over the time it took, and
    the time left counts from then (the pace counted up to ``now`` fell between two saves,
    and the ETA rose, twice the time actually left)."""
    settled = request.settled and request.settled_at is not None
    moving = [e.step for e in request.keys.values() if e.step in MOVING]
    worked = len(request.keys) - len(moving) + sum(PROGRESS[step] for step in moving)
    if settled or not moving:
        end = request.settled_at if settled and request.settled_at is not None else now
        rate = worked / max(end - request.requested_at, 1e-9)  # a settled one's stays its own
        return rate, 0.0
    latest = max((e.at for e in request.keys.values()), default=request.requested_at)
    seen = max(request.requested_at, min(now, latest))  # (a writer's clock ahead: now)
    rate = worked / max(seen - request.requested_at, 1e-9)
    if rate <= 0:
        return rate, None
    return rate, max(0.0, (len(request.keys) - worked) / rate - (now - seen))


def progress_line(request: EmergencyRequest, now: float) -> str:
    """One line: counts per step, rate, ETA."""
    return line_of(view(request, now))


def line_of(doc: dict[str, Any]) -> str:
    """The progress line of a JSON view (the CLI draws a daemon's views with it too)."""
    steps = ", ".join(f"{step} {n}" for step, n in doc["counts"].items())
    eta = doc["eta_s"]
    tail = f"{doc['rate_per_s']:.2f} keys/s; ETA " + ("unknown" if eta is None else _span(eta))
    if doc["settled"]:
        tail = "settled" + ("; complete" if doc["complete"] else "")
    return f"{doc['env']}: emergency {doc['id']}: {doc['keys']} keys: {steps}; {tail}"


def _span(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def _at(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _named(request: EmergencyRequest, step: Step) -> list[tuple[str, KeyEntry]]:
    return sorted((n, e) for n, e in request.keys.items() if e.step == step)


def revoked_unconfirmed(request: EmergencyRequest) -> list[str]:
    """Keys whose old key went at publish (``--revoke-old-now``): consumers not switched yet
    fail until they pick the new key up; no pickup is awaited, so none was seen."""
    return sorted(n for n, e in request.keys.items() if e.outcome == reasons.SUCCEEDED_REVOKED)


def attention(request: EmergencyRequest) -> dict[str, list[dict[str, str]]]:
    """Keys that need an operator, by kind, each list at most SHOWN long."""
    out: dict[str, list[dict[str, str]]] = {}
    for step in (Step.STALLED, Step.FAILED, Step.SKIPPED, Step.ENDED):
        named = _named(request, step)
        if named:
            out[str(step)] = [
                {"key": f"{request.env}/{n}", "detail": e.outcome or e.detail}
                if step == Step.ENDED
                else {"key": f"{request.env}/{n}", "detail": e.detail}
                for n, e in named[:SHOWN]
            ]
    revoked = revoked_unconfirmed(request)
    if revoked:
        out["revoked"] = [{"key": f"{request.env}/{n}", "detail": ""} for n in revoked[:SHOWN]]
    return out


def view(request: EmergencyRequest, now: float) -> dict[str, Any]:
    """The request as ``status --json`` shows it (no key value, no token: ids and words)."""
    rate, eta = rate_and_eta(request, now)
    tally = counts(request)
    return {
        "env": request.env,
        "id": request.id,
        "requested_at": request.requested_at,
        "by": request.by,
        "trigger": request.trigger,
        "revoke_old_now": request.revoke_old_now,
        "keys": len(request.keys),
        "counts": tally,
        "outcomes": dict(
            sorted(Counter(e.outcome for e in request.keys.values() if e.outcome).items())
        ),
        "rate_per_s": round(rate, 4),
        "eta_s": None if eta is None else round(eta, 1),
        "settled": request.settled,
        "complete": request.complete,
        "settled_at": request.settled_at,
        "completed_at": request.completed_at,
        "attention": attention(request),
    }


def exit_code(doc: dict[str, Any]) -> int:
    """0 when every key is done or ended by an operator; 1 while a key is stalled, failed or
    skipped (its leaked key may still be served) or still moving."""
    good = {str(Step.DONE), str(Step.ENDED)}
    return 1 if any(step not in good for step in doc["counts"]) else 0


_NEXT = {
    "stalled": "both keys alive; for each: vault-rotator resume KEY --wait, vault-rotator "
    "abort KEY --wait, or vault-rotator finish KEY --keep-old",
    "failed": "rerun the same command to try them again",
    "skipped": "not rotated: their leaked key may still be served",
    "ended": "ended by an operator (aborted, or finished keeping the old key)",
    "revoked": "old key deleted at publish without waiting for pickup: consumers not yet "
    "switched fail until they read the new key",
}


def summary_lines(doc: dict[str, Any], now: float) -> list[str]:
    """The summary of a JSON view, printed once no key moves (and the webhook's text)."""
    took = (doc["settled_at"] or now) - doc["requested_at"]
    lines = [
        f"{doc['env']}: emergency {doc['id']} (requested {_at(doc['requested_at'])} by "
        f"{doc['by'] or doc['trigger']}): {doc['keys']} keys in {_span(took)}",
        "  " + ", ".join(f"{step} {n}" for step, n in doc["counts"].items()),
    ]
    if doc["outcomes"]:
        lines.append("  outcomes: " + ", ".join(f"{o} {n}" for o, n in doc["outcomes"].items()))
    totals = {**doc["counts"], "revoked": doc["outcomes"].get(reasons.SUCCEEDED_REVOKED, 0)}
    for kind, items in doc["attention"].items():
        total = int(totals.get(kind, len(items)))
        lines.append(f"  {kind} ({total}): {_NEXT.get(kind, '')}")
        for item in items:
            lines.append(f"    {item['key']}" + (f": {item['detail']}" if item["detail"] else ""))
        if total > len(items):
            lines.append(f"    ... and {total - len(items)} more (vault-rotator status)")
    return lines


def webhook_event(request: EmergencyRequest) -> str:
    """The request's one webhook event (the worst of its keys); names as in daemon.notify."""
    steps = {e.step for e in request.keys.values()}
    if Step.STALLED in steps:
        return "stalled"
    if Step.FAILED in steps:
        return "failed"
    attention_outcomes = {reasons.SUCCEEDED_ATTENTION, reasons.SUCCEEDED_OLD_UNKNOWN}
    needs = steps & {Step.SKIPPED, Step.ENDED} or any(
        e.outcome in attention_outcomes for e in request.keys.values()
    )
    return "needs-attention" if needs else "succeeded"


def webhook_fields(request: EmergencyRequest, now: float) -> dict[str, Any]:
    """The fields of the request's webhook (the notifier adds the event and the text)."""
    doc = view(request, now)
    return {
        "env": request.env,
        "request_id": request.id,
        "reason": "environment-wide emergency",
        "detail": "; ".join(line.strip() for line in summary_lines(doc, now)[1:3]),
        "by": request.by,
        "trigger": request.trigger,
        "keys": len(request.keys),
        "counts": doc["counts"],
        "outcomes": doc["outcomes"],
        "attention": doc["attention"],
    }
