"""Talking to a running daemon instead of racing it: ``--daemon URL`` / ``VAULT_ROTATOR_DAEMON``.

The CLI sends the daemon's control API the caller's own Vault token (``VAULT_TOKEN``) as bearer;
the daemon checks its capabilities. Exit codes follow the CLI's: 0 done, 1 refused or failed
(a daemon that cannot be reached too), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import httpx

from vault_rotator.engine import reasons
from vault_rotator.errors import ConfigError, DaemonUnreachableError
from vault_rotator.logs import redact_text

DAEMON_ENV = "VAULT_ROTATOR_DAEMON"
SETTLED = ("idle", "never-rotated")


def add_daemon_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--daemon",
        metavar="URL",
        default=None,
        help=f"ask this running daemon instead of acting directly (or ${DAEMON_ENV})",
    )


def daemon_url(args: argparse.Namespace) -> str | None:
    url = getattr(args, "daemon", None) or os.environ.get(DAEMON_ENV)
    return url.rstrip("/") if url else None


def request(
    url: str, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    token = os.environ.get("VAULT_TOKEN", "")
    if not token:
        raise ConfigError("VAULT_TOKEN is not set: the daemon authorises callers by Vault token")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            resp = client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as exc:
        raise DaemonUnreachableError(f"daemon at {url} unreachable: {type(exc).__name__}") from exc
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, {"error": resp.text[:200]}


def exit_code(status: int) -> int:
    if 200 <= status < 300:
        return 0
    return 2 if status in (400, 404) else 1


def act(url: str, verb: str, ref: str, body: dict[str, Any], *, wait: bool) -> int:
    """POST a control action; with ``wait``, poll status until the key settles."""
    status, answer = request(url, "POST", f"/v1/{verb}/{ref}", body)
    print(redact_text(json.dumps(answer, sort_keys=True)))
    if not wait or exit_code(status) != 0:
        return exit_code(status)
    while True:
        time.sleep(2)
        _code, listing = request(url, "GET", "/v1/status")
        row = next((r for r in listing.get("keys", []) if r.get("key") == ref), None)
        if row is None:
            print(f"{ref}: not visible in the daemon's status (no read capability?)")
            return 1
        if row["state"].startswith("stalled"):
            print(f"{ref}: {row['state']}")
            return 1
        if row["state"] in SETTLED:
            return _settled(ref, row, answer.get("rotation_id"))


def _settled(ref: str, row: dict[str, Any], rotation_id: object) -> int:
    """The key is idle again: 0 only if our rotation's recorded outcome is a success."""
    outcomes = [o for o in row.get("last_outcomes", []) if o.get("rotation_id") == rotation_id]
    outcome = outcomes[-1]["outcome"] if outcomes else "unknown"
    print(f"{ref}: {outcome}")
    return 0 if outcome in (*reasons.SUCCESSES, reasons.ABORTED) else 1
