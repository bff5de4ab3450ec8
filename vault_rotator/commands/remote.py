"""Talking to a running daemon instead of racing it: ``--daemon URL`` / ``VAULT_ROTATOR_DAEMON``.

The CLI sends the daemon's control API the caller's own Vault token (``VAULT_TOKEN``) as bearer;
the daemon checks its capabilities. Exit codes follow the CLI's: 0 done, 1 refused or failed
(a daemon that cannot be reached too), 2 a usage error.

``--wait`` polls the daemon's status every :data:`POLL_S` seconds (tests lower it) and shows each
change as :mod:`.follow` does locally; ``--timeout`` gives up waiting (exit 1) on the monotonic
clock while the daemon carries on.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx

from vault_rotator.commands.follow import Follower, gave_up, remote_view
from vault_rotator.engine import reasons
from vault_rotator.errors import ConfigError, DaemonUnreachableError
from vault_rotator.logs import redact_text

DAEMON_ENV = "VAULT_ROTATOR_DAEMON"
SETTLED = ("idle", "never-rotated")
POLL_S = 2.0  # between status polls of --wait


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


def act(
    url: str,
    verb: str,
    ref: str,
    body: dict[str, Any],
    *,
    wait: bool,
    timeout: float | None = None,
    poll_s: float | None = None,
) -> int:
    """POST a control action; with ``wait``, poll status until the key settles (or timeout)."""
    status, answer = request(url, "POST", f"/v1/{verb}/{ref}", body)
    print(redact_text(json.dumps(answer, sort_keys=True)))
    if not wait or exit_code(status) != 0:
        return exit_code(status)
    follower = Follower(time.monotonic)
    try:
        code, ending = _follow(
            url, ref, answer.get("rotation_id"), follower, timeout=timeout, poll_s=poll_s
        )
    finally:
        follower.close()
    print(ending)
    return code


def _follow(
    url: str,
    ref: str,
    rotation_id: object,
    follower: Follower,
    *,
    timeout: float | None,
    poll_s: float | None,
) -> tuple[int, str]:
    """Poll until the key settles, stalls or ``timeout`` runs out: (exit code, last line)."""
    give_up = None if timeout is None else time.monotonic() + timeout
    row: Mapping[str, Any] = {}
    while _pause(POLL_S if poll_s is None else poll_s, give_up):
        _code, listing = request(url, "GET", "/v1/status")
        row = next((r for r in listing.get("keys", []) if r.get("key") == ref), {})
        if not row:
            return 1, f"{ref}: not visible in the daemon's status (no read capability?)"
        if row["state"].startswith("stalled"):
            return 1, f"{ref}: {row['state']}"
        if row["state"] in SETTLED:
            return _settled(ref, row, rotation_id)
        follower.show(remote_view(ref, row))
    assert timeout is not None  # only a deadline ends the loop
    where = str(row.get("state", "in flight"))
    return 1, gave_up(ref, where, timeout, f"vault-rotator status --daemon {url}")


def _pause(seconds: float, give_up: float | None) -> bool:
    """Sleep ``seconds``, cut short at ``give_up``; False once it has come."""
    if give_up is not None:
        left = give_up - time.monotonic()
        if left <= 0:
            return False
        seconds = min(seconds, left)
    time.sleep(seconds)
    return True


def _settled(ref: str, row: Mapping[str, Any], rotation_id: object) -> tuple[int, str]:
    """The key is idle again: 0 only if our rotation's recorded outcome is a success."""
    outcomes = [o for o in row.get("last_outcomes", []) if o.get("rotation_id") == rotation_id]
    outcome = outcomes[-1]["outcome"] if outcomes else "unknown"
    return (0 if outcome in (*reasons.SUCCESSES, reasons.ABORTED) else 1), f"{ref}: {outcome}"
