"""The emergency's figures as printed, its targets, and which ETA samples count.

Pure functions over what :mod:`benchmarks.scale_emergency` measured (a dict, as each size's
process prints it in JSON) and over the status poller's polls.

**Which ETA samples count.** A sample is one environment's emergency view in one ``GET
/v1/status`` answer; its moment is when the daemon drew the view: the answer's ``as_of`` (a busy
daemon answers with its last drawing while the next is drawn, its ETA counted from the answer:
the sample takes the ETA back to the drawing), else the poll's midpoint ((sent + answered) / 2:
the daemon drew the view somewhere in between). It counts when the view shows at least
:data:`ETA_DONE_MIN` (10 %) and at most :data:`ETA_DONE_MAX` (90 %) of that environment's keys
``done`` and is not settled. Its actual remaining time is the moment that environment's last key
finished (the engine's listener in the daemon's process; the clocks are the same system-wide
monotonic clock) minus the sample's moment, and its error is (ETA - actual) / actual. An ETA the
view leaves unknown, or an actual remaining time of zero or less (a view that still shows keys
moving after they all finished), is an infinite error. The target: at least one sample counts,
and every counted sample is within :data:`ETA_TOLERANCE` (±25 %), or within
:data:`ETA_RESOLUTION_S` of the actual time (the view moves once per poll and shows whole
seconds: near the end ±25 % is less than that). Below 10 % the issue sets no target (the rate is
not known yet); above 90 % the time left is a few polls, of the order of the poll's own
granularity, where a percentage says nothing about the estimate.

The daemon's peak RSS over the emergency is printed here; its target (200 MB at 10,000 keys) is
bench_scale's on the whole run's peak, which includes the emergency.
"""

from __future__ import annotations

import math
import os
from typing import Any

TARGETS = {
    "wall_vs_mass": 1.2,  # x the scheduled mass rotation's wall, + 2 x usage_lag + one poll
    "writes_per_rotation": 9.0,  # the keys' writes; the requests' own are apart
    "writes_per_extra_attempt": 6.0,  # as bench_scale's (a create whose answer was lost)
    "mutations_per_rotation": 2.0,  # create and delete (emergencies skip disable-first)
    "status_max_s": 2.0,  # every GET /v1/status during the emergency
    "side_at_keys": 10_000,  # the side environment's scheduled rotation is a target from here
}
FLOOR_WRITES = 9  # the write floor: 9 writes per rotation at the measured write rate
ETA_DONE_MIN, ETA_DONE_MAX = 0.10, 0.90
ETA_TOLERANCE = 0.25
# The view moves once per poll at best (1 s here) and shows the ETA in whole seconds: a sample
# within one second of the actual remaining time passes whatever its share.
ETA_RESOLUTION_S = 1.0


def target_s(mass_wall_s: float, usage_lag_s: float, poll_s: float) -> float:
    """The emergency's wall-time target for the same keys in the same run."""
    return TARGETS["wall_vs_mass"] * mass_wall_s + 2 * usage_lag_s + poll_s


def status_polls(polls: list[dict[str, Any]], opened: float, done: float) -> dict[str, Any]:
    """Latency of the polls that overlap the emergency (answered after opened, sent before
    done): how many, the largest and when (seconds after opened), the failed ones and the
    first failure's status and error."""
    during = [p for p in polls if p["got"] > opened and p["sent"] < done]
    if not during:
        return {"count": 0, "max_s": None, "max_at_s": None, "failed": 0, "first_error": None}
    worst = max(during, key=lambda p: p["got"] - p["sent"])
    failed = [p for p in during if p["status"] != 200]
    return {
        "count": len(during),
        "max_s": worst["got"] - worst["sent"],
        "max_at_s": worst["sent"] - opened,
        "failed": len(failed),
        "first_error": f"{failed[0]['status']} {failed[0].get('error')}" if failed else None,
    }


def eta_samples(polls: list[dict[str, Any]], ends: dict[str, float]) -> list[dict[str, Any]]:
    """The counted ETA samples (see the module docstring), each with its error (None for
    infinite: JSON has no infinity)."""
    samples = []
    for poll in polls:
        moment, age = (poll["sent"] + poll["got"]) / 2, 0.0
        if poll.get("as_of") is not None and poll.get("got_epoch") is not None:
            age = max(0.0, poll["got_epoch"] - poll["as_of"])
            moment = poll["got"] - age
        for view in poll["views"]:
            end, keys = ends.get(view["env"]), view.get("keys") or 0
            if end is None or keys <= 0 or view.get("settled"):
                continue
            done = view["counts"].get("done", 0) / keys
            if not ETA_DONE_MIN <= done <= ETA_DONE_MAX:
                continue
            actual, eta = end - moment, view.get("eta_s")
            eta = None if eta is None else eta + age
            error = None if eta is None or actual <= 0 else (eta - actual) / actual
            samples.append(
                {"env": view["env"], "done": done, "eta_s": eta, "actual_s": actual, "error": error}
            )
    return samples


def worst_eta(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sample furthest off (an unknown error first)."""
    if not samples:
        return None
    return max(samples, key=lambda s: math.inf if s["error"] is None else abs(s["error"]))


def mutations(e: dict[str, Any], keys: int) -> dict[str, Any] | None:
    """The emergency's own provider mutations: the window's, less the side key's (a create
    per side rotation started after opened, a delete per one finished after it); None when
    the side key was still in flight at the window's end (not measurable)."""
    if not e.get("side_idle"):
        return None
    side_creates = sum(1 for s in e["side"] if s["started_s"] >= 0)
    side_deletes = sum(1 for s in e["side"] if s["finished_s"] >= 0)
    counts = dict(e["mutations"])
    counts["create"] = counts.get("create", 0) - side_creates
    counts["delete"] = counts.get("delete", 0) - side_deletes
    counts = {k: n for k, n in counts.items() if n}
    total = sum(counts.values())
    extra = counts.get("create", 0) - keys  # new attempts after a lost create answer
    # A delete whose answer was lost (a dropped connection) is sent once more and answered 404
    # (the key was gone): the same delete, counted apart as chaos counts retried_lost_answers.
    retried = sum(n for route, n in e["routes"].items() if route.startswith("DELETE ") and
                  route.endswith(" 404"))  # fmt: skip
    return {
        "counts": counts, "total": total, "extra": extra, "retried": retried,
        "per_rotation": (total - retried) / keys,
    }  # fmt: skip


def side_in_time(e: dict[str, Any]) -> dict[str, Any] | None:
    """The side key's scheduled rotation that started after opened and finished before the
    emergency was done, or None."""
    wall = e.get("wall_s")
    for side in e.get("side", []):
        ok = side["trigger"] == "schedule" and side["outcome"] == "succeeded"
        if ok and wall is not None and side["started_s"] >= 0 and side["finished_s"] <= wall:
            return dict(side)
    return None


def check(r: dict[str, Any]) -> list[str]:
    """The emergency targets one size missed, as lines."""
    n, e = r["keys"], r.get("emergency") or {}
    if "error" in e or not e:
        return [f"{n}: emergency not measured: {e.get('error', 'no figures')}"]
    missed = _settled_misses(n, e)
    if e.get("wall_s") is None:
        return missed
    if e["wall_s"] > e["target_s"]:
        missed.append(f"{n}: emergency {e['wall_s']:.1f} s > target {e['target_s']:.1f} s")
    missed += _write_misses(n, e)
    missed += _status_misses(n, e)
    if n >= TARGETS["side_at_keys"] and side_in_time(e) is None:
        missed.append(f"{n}: no scheduled rotation of the side environment during the emergency")
    return missed


def _settled_misses(n: int, e: dict[str, Any]) -> list[str]:
    missed = []
    if not e["finished"]:
        done = e["finished_in_window"]
        missed.append(f"{n}: emergency not settled within {e['limit_s']:.0f} s ({done} finished)")
    elif e["outcomes"] != {"succeeded-emergency": n}:
        missed.append(f"{n}: emergency outcomes {e['outcomes']}")
    bad = [a for a in e["answers"] if a[1] != 202 or a[2] is None or a[3] is not False]
    if bad:
        missed.append(f"{n}: POST /v1/rotate answers not a fresh 202: {bad[:3]}")
    if not e["settled_complete"]:
        missed.append(f"{n}: requests not recorded complete and notified ({e['request_counts']})")
    return missed


def _write_misses(n: int, e: dict[str, Any]) -> list[str]:
    missed = []
    m = mutations(e, n)
    if m is None:
        missed.append(f"{n}: emergency mutations not measurable (the side key still in flight)")
    elif m["total"] - m["retried"] != TARGETS["mutations_per_rotation"] * (n + max(0, m["extra"])):
        missed.append(f"{n}: {m['per_rotation']:.3f} provider mutations per emergency rotation")
    extra = max(0, m["extra"]) if m is not None else 0
    allowed = TARGETS["writes_per_rotation"] * n + TARGETS["writes_per_extra_attempt"] * extra
    if e["writes_after"]["keys"] > allowed:
        per = e["writes_after"]["keys"] / n
        missed.append(f"{n}: {per:.3f} Vault writes per emergency rotation")
    return missed


def _status_misses(n: int, e: dict[str, Any]) -> list[str]:
    missed = []
    status = e["status"]
    if status["count"] == 0:
        missed.append(f"{n}: no GET /v1/status answered during the emergency")
    elif status["max_s"] > TARGETS["status_max_s"] or status["failed"]:
        first = f"; first: {status['first_error']}" if status["failed"] else ""
        missed.append(
            f"{n}: GET /v1/status took up to {status['max_s']:.1f} s during the emergency "
            f"({status['failed']} failed of {status['count']}{first})"
        )
    worst = worst_eta(e["eta"])
    if worst is None:
        missed.append(f"{n}: no ETA sample between 10% and 90% done")
    elif worst["error"] is None or not all(_eta_ok(sample) for sample in e["eta"]):
        bad = [s for s in e["eta"] if not _eta_ok(s)]
        missed.append(
            f"{n}: ETA off by {_eta_error(worst)} ({len(bad)} of {len(e['eta'])} samples past "
            f"±{ETA_TOLERANCE:.0%} and {ETA_RESOLUTION_S:g} s)"
        )
    return missed


def _eta_ok(sample: dict[str, Any]) -> bool:
    """Within ETA_TOLERANCE of the actual remaining time, or within ETA_RESOLUTION_S of it."""
    if sample["error"] is None or sample["eta_s"] is None:
        return False
    off = abs(sample["eta_s"] - sample["actual_s"])
    return abs(sample["error"]) <= ETA_TOLERANCE or off <= ETA_RESOLUTION_S


def _eta_error(sample: dict[str, Any]) -> str:
    return "unknown" if sample["error"] is None else f"{sample['error']:+.0%}"


def lines(r: dict[str, Any]) -> list[str]:
    """The emergency's figures for one size, as printed."""
    n, e = r["keys"], r.get("emergency") or {}
    if "error" in e or not e:
        return [f"environment-wide emergency: NOT MEASURED: {e.get('error', 'no figures')}"]
    envs = len(e["answers"])
    head = (
        f'environment-wide emergency (POST /v1/rotate/{{env}} {{"emergency": true}} x {envs}, '
        f"all at once, answered in {e['opened_in_s']:.2f} s):"
    )
    watched = [_cpu_line(e), _side_line(e), _status_line(e)]
    progress = f"  progress view nearest half-way: {e['progress_line']}"
    if e["wall_s"] is None:  # what could be seen until the limit, for whoever debugs it
        return [
            f"{head} NOT SETTLED within {e['limit_s']:.0f} s: {e['finished_in_window']} of {n} "
            f"keys finished by then ({sum(e['outcomes'].values())} by the end of the phase); "
            f"stalls seen: {e['stalls'] or 'none'}",
            *watched,
            progress,
        ]
    return [
        f"{head} {e['wall_s']:.1f} s wall (target <= {e['target_s']:.1f} s = 1.2 x scheduled "
        f"{r['mass_wall_s']:.1f} s + 2 x usage_lag 0 s + poll 1 s), {n / e['wall_s']:.1f} "
        f"rotations/s, outcomes {e['outcomes']}",
        _floor_line(r, e),
        _writes_line(n, e),
        _mutations_line(n, e),
        "  provider requests per emergency rotation by route: "
        + ", ".join(f"{k}: {v / n:.2f}" for k, v in sorted(e["routes"].items())),
        *watched,
        _eta_line(e),
        progress,
    ]


def _floor_line(r: dict[str, Any], e: dict[str, Any]) -> str:
    rate, n = r["vault_writes_per_s"], r["keys"]
    floor = FLOOR_WRITES * n / rate
    walls = e["env_wall_s"].values()
    return (
        f"  write floor {FLOOR_WRITES} x {n} / {rate:.0f} writes/s = {floor:.1f} s: emergency "
        f"{e['wall_s'] / floor:.2f} x floor, scheduled mass rotation {r['mass_wall_s'] / floor:.2f}"
        f" x floor; environments done at +{min(walls):.1f} to +{max(walls):.1f} s"
    )


def _writes_line(n: int, e: dict[str, Any]) -> str:
    writes = e["writes_after"]
    per_request = [writes["requests"].get(answer[0], 0) for answer in e["answers"]]
    return (
        f"  Vault per emergency rotation: {writes['keys'] / n:.3f} writes (the change signal "
        f"included, {writes['untallied']} past the path tally); each request's own, apart: "
        f"{min(per_request)} to {max(per_request)} writes per request, recorded complete by "
        f"+{e['complete_s']:.0f} s; the side environment's: {writes['side']}"
    )


def _mutations_line(n: int, e: dict[str, Any]) -> str:
    m = mutations(e, n)
    if m is None:
        return "  provider mutations per emergency rotation: NOT MEASURABLE (side key in flight)"
    return (
        f"  provider mutations per emergency rotation: {m['per_rotation']:.3f} {m['counts']} "
        f"(extra attempts after a lost create answer: {m['extra']}; deletes sent again after a "
        f"lost answer, apart: {m['retried']}; the side key's apart)"
    )


def _cpu_line(e: dict[str, Any]) -> str:
    cpu, window = e["cpu_s"], e["window_s"]
    share = sum(cpu.values()) / (window * (os.cpu_count() or 1))
    each = ", ".join(f"{name} {s:.1f} s" for name, s in cpu.items())
    return (
        f"  CPU over the {window:.0f} s until every key finished (or the limit): {each} "
        f"({share:.0%} of {os.cpu_count()} cores); daemon peak RSS then: "
        f"{e['peak_rss_mb']:.0f} MB ({e['rss_at_open_mb']:.0f} MB resident at opened, peak "
        f"{e['peak_before_mb']:.0f} MB before)"
    )


def _side_line(e: dict[str, Any]) -> str:
    found = side_in_time(e)
    if found is not None:
        return (
            f"  side environment (same account): scheduled rotation started "
            f"+{found['started_s']:.1f} s, finished +{found['finished_s']:.1f} s, inside the "
            f"emergency (due about +{e['side_due_s']:.0f} s)"
        )
    seen = [f"{s['trigger']} {s['outcome']} +{s['started_s']:.1f}..+{s['finished_s']:.1f} s"
            for s in e["side"]]  # fmt: skip
    return (
        f"  side environment (same account): NO scheduled rotation inside the emergency (due "
        f"about +{e['side_due_s']:.0f} s; seen: {seen or 'none'})"
    )


def _status_line(e: dict[str, Any]) -> str:
    s = e["status"]
    if not s["count"]:
        return "  GET /v1/status during the emergency: no answer"
    failed = f"{s['failed']} failed" + (f" (first: {s['first_error']})" if s["failed"] else "")
    return (
        f"  GET /v1/status during the emergency: {s['count']} polls, max {s['max_s']:.2f} s "
        f"(at +{s['max_at_s']:.1f} s), {failed}"
    )


def _eta_line(e: dict[str, Any]) -> str:
    worst = worst_eta(e["eta"])
    if worst is None:
        return "  ETA: no sample between 10% and 90% done"
    eta = "unknown" if worst["eta_s"] is None else f"{worst['eta_s']:.1f} s"
    return (
        f"  ETA vs actual remaining, {len(e['eta'])} samples between 10% and 90% done: worst "
        f"{_eta_error(worst)} ({worst['env']} at {worst['done']:.0%} done: ETA {eta}, actual "
        f"{worst['actual_s']:.1f} s)"
    )
