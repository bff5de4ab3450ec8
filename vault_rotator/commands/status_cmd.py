"""``vault-rotator status [--json]``: every key's state, current key, age, due date, outcomes.

Keys come from the policies plus any rotation still in flight for a key no longer in them.
A table (or ``--json``, one object per key) on stdout. Exit 1 if any key is stalled.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from vault_rotator.commands.common import add_config_argument, load
from vault_rotator.commands.remote import (
    add_daemon_argument,
    daemon_url,
    exit_code,
    request,
    said,
    status_rows,
)
from vault_rotator.daemon.due import next_due
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.status import key_status
from vault_rotator.policy import PolicySet, format_duration
from vault_rotator.runtime import Runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_config_argument(parser)
    add_daemon_argument(parser)


def collect(policies: PolicySet, runtime: Runtime, now: float) -> list[dict[str, Any]]:
    """Status rows for every policy key and every in-flight record outside the policies."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    stores: dict[tuple[str, str], StateStore] = {}
    for policy in policies:
        kv = runtime.kv(policy.vault.kv_mount)
        store = stores.setdefault(
            (policy.vault.kv_mount, policy.vault.state_prefix),
            StateStore(kv, policy.vault.state_prefix),
        )
        record, _ = store.read(policy.env, policy.name)
        secret = kv.read(policy.secret_path)
        data = dict(secret.data) if secret and not secret.deleted else None
        rotated_at = (data or {}).get("rotated_at")
        due_at = next_due(
            policy,
            last_success_at=record.last_success_at,
            rotated_at=rotated_at if isinstance(rotated_at, str) else None,
            now=now,
        )
        rows.append(
            key_status(
                ref=policy.ref,
                max_age_s=policy.max_age_s,
                next_due_at=due_at,
                record=record,
                secret=data,
                now=now,
            )
        )
        seen.add((policy.env, policy.name))
    for store in stores.values():
        for record in store.in_flight(skip=seen):
            rows.append(
                key_status(ref=record.ref, max_age_s=None, record=record, secret=None, now=now)
            )
    return rows


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def table(rows: list[dict[str, Any]]) -> str:
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
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def run(args: argparse.Namespace) -> int:
    if (url := daemon_url(args)) is not None:
        code, answer = request(url, "GET", "/v1/status")
        if exit_code(code) != 0:
            print(f"daemon answered {code}: {said(answer)}")
            return exit_code(code)
        rows = status_rows(answer, url)
        print(json.dumps({"keys": rows}, indent=2, sort_keys=True) if args.json else table(rows))
        return 1 if any(row["state"].startswith("stalled") for row in rows) else 0
    policies = load(args)
    runtime = Runtime.from_env()
    try:
        rows = collect(policies, runtime, runtime.clock())
    finally:
        runtime.close()
    if args.json:
        print(json.dumps({"keys": rows}, indent=2, sort_keys=True))
    else:
        print(table(rows))
        for row in rows:
            if row["stall_detail"] or row["deadlines_passed"]:
                print(f"{row['key']}: {row['state']}: {row['stall_detail'] or 'deadline passed'}")
    return 1 if any(row["state"].startswith("stalled") for row in rows) else 0
