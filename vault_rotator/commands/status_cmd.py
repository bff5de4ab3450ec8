"""``vault-rotator status [--json]``: every key's state, current key, age, due date, outcomes.

Keys come from the policies plus any rotation still in flight for a key no longer in them
(the rows of :mod:`vault_rotator.daemon.status_rows`, which the daemon serves too). A table
(or ``--json``, one object per key) on stdout. Exit 1 if any key is stalled.

Each environment's current emergency request (``rotate --env ENV --emergency --yes``) follows
the table: its progress line (counts per step, rate, ETA), or its summary once no key moves;
in ``--json`` under ``emergencies`` (:func:`vault_rotator.engine.emergency_view.view`).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from vault_rotator.commands.common import add_config_argument, load
from vault_rotator.commands.emergency_remote import checked_errors, checked_views
from vault_rotator.commands.remote import (
    add_daemon_argument,
    daemon_url,
    exit_code,
    request,
    said,
    status_rows,
)
from vault_rotator.daemon.emergencies import emergency_views
from vault_rotator.daemon.status_rows import collect
from vault_rotator.display import shown
from vault_rotator.engine.ack_status import ack_line
from vault_rotator.engine.acks import NAMED_AT_MOST
from vault_rotator.engine.emergency_view import line_of, summary_lines
from vault_rotator.engine.status import UNREADABLE
from vault_rotator.policy import format_duration
from vault_rotator.runtime import Runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_config_argument(parser)
    add_daemon_argument(parser)


CELL, DETAIL = 120, 1000  # characters of a record's text shown in a cell, in a detail line


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def table(rows: list[dict[str, Any]], *, escape: bool = True) -> str:
    """The rows as a table; ``escape``: text from records escaped (rows a daemon answered
    are escaped already, when checked)."""
    header = ("KEY", "STATE", "CURRENT KEY", "AGE", "NEXT DUE", "LAST OUTCOME")
    lines = [header]
    for row in rows:
        last = row["last_outcomes"][-1] if row["last_outcomes"] else None
        outcome = f"{last['outcome']} by {last['by'] or last['trigger']}" if last else "-"
        age = "-" if row["age_s"] is None else format_duration(row["age_s"])
        state = row["state"] + ("" if row["in_policy"] else " (not in policy)")
        lines.append(
            (
                row["key"],
                state,
                row["current_key_id"] or "-",
                age,
                _when(row["next_due_at"]),
                outcome,
            )
        )
    cells = [[shown(str(cell), CELL) if escape else str(cell) for cell in line] for line in lines]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def run(args: argparse.Namespace) -> int:
    if (url := daemon_url(args)) is not None:
        code, answer = request(url, "GET", "/v1/status")
        if exit_code(code) != 0:
            print(f"daemon answered {code}: {said(answer)}")
            return exit_code(code)
        rows, docs = status_rows(answer, url), checked_views(answer, url)
        errors = checked_errors(answer, url)
        _show(rows, docs, as_json=args.json, now=time.time(), errors=errors, escape=False)
        return _exit_code(rows)
    policies = load(args)
    runtime = Runtime.from_env()
    try:
        now = runtime.clock()
        rows = collect(policies, runtime, now)
        found, unreadable = emergency_views(policies, runtime.kv, now)
        docs = [doc for _env, doc in found]
        errors = [line for _env, line in unreadable]
    finally:
        runtime.close()
    _show(rows, docs, as_json=args.json, now=now, errors=errors)
    if not args.json:
        for row in rows:
            if row["stall_detail"] or row["deadlines_passed"]:
                detail = shown(row["stall_detail"] or "deadline passed", DETAIL)
                print(f"{row['key']}: {row['state']}: {detail}")
    return _exit_code(rows)


def ack_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Below the table, a line per key that has acks or requires them."""
    return [line for row in rows if (line := _ack_line(row["key"], row.get("acks"))) is not None]


def _ack_line(ref: str, acks: Any) -> str | None:
    """The key's ack line naming at most NAMED_AT_MOST instances, then how many more (as the
    stall detail does); ``status --json`` lists every one."""
    listing = acks.get("instances") if isinstance(acks, dict) else None
    instances = [r for r in listing if isinstance(r, dict)] if isinstance(listing, list) else []
    if len(instances) <= NAMED_AT_MOST:
        return ack_line(ref, acks)
    named = {**acks, "instances": instances[:NAMED_AT_MOST]}
    listed = ack_line(ref, {**named, "ignored": None, "problems": []})
    full = ack_line(ref, named)
    assert listed is not None  # instances were given: ack_line answers a line
    assert full is not None
    more = f" and {len(instances) - NAMED_AT_MOST} more instances (status --json lists every one)"
    return listed + more + full.removeprefix(listed)  # ack_line appends what follows the names


def _show(
    rows: list[dict[str, Any]],
    docs: list[dict[str, Any]],
    *,
    as_json: bool,
    now: float,
    errors: list[str],
    escape: bool = True,
) -> None:
    if as_json:
        out = {"keys": rows, "emergencies": docs, "emergency_errors": errors}
        print(json.dumps(out, indent=2, sort_keys=True))
        return
    print(table(rows, escape=escape))
    for line in ack_lines(rows):
        print(line)
    for error in errors:
        print(error)
    for doc in docs:
        print("\n".join(summary_lines(doc, now)) if doc["settled"] else line_of(doc))


def _exit_code(rows: list[dict[str, Any]]) -> int:
    """1 while a key is stalled or its record unreadable, else 0."""
    return 1 if any(row["state"].startswith(("stalled", UNREADABLE)) for row in rows) else 0
