"""Talking to a running daemon instead of racing it: ``--daemon URL`` / ``VAULT_ROTATOR_DAEMON``.

The CLI sends the daemon's control API the caller's own Vault token (``VAULT_TOKEN``) as bearer;
the daemon checks its capabilities. Exit codes follow the CLI's: 0 done, 1 refused or failed
(a daemon that cannot be reached too), 2 a usage error.

``--wait`` polls the daemon's status every :data:`POLL_S` seconds (tests lower it) and shows each
change as :mod:`.follow` does locally; ``--timeout`` gives up waiting (exit 1) on the monotonic
clock while the daemon carries on.

The token never travels in clear over a network: a plain ``http://`` daemon URL must name a
loopback host (``localhost``, ``127.0.0.0/8``, ``::1``), else it is a usage error; an
``https://`` daemon's certificate is checked against the system CAs or
``VAULT_ROTATOR_DAEMON_CACERT``.

The daemon's answers are read as hostile: at most :data:`MAX_ANSWER_BYTES`, within
:data:`ANSWER_DEADLINE_S`, and they must be a JSON object (status rows objects with string
``key`` and ``state``); anything else is a one-line DaemonResponseError (exit 1). A malformed
``--daemon`` URL is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import ssl
import time
from collections.abc import Mapping
from typing import Any

import httpx

from vault_rotator.commands.follow import Follower, gave_up, remote_view
from vault_rotator.display import redact_text, shown
from vault_rotator.engine.outcomes import classify
from vault_rotator.errors import ConfigError, DaemonResponseError, DaemonUnreachableError
from vault_rotator.files import why_not_regular
from vault_rotator.provider.deadline import Watchdog

DAEMON_ENV = "VAULT_ROTATOR_DAEMON"
CACERT_ENV = "VAULT_ROTATOR_DAEMON_CACERT"
SETTLED = ("idle", "never-rotated")
POLL_S = 2.0  # between status polls of --wait
MAX_ANSWER_BYTES = 8 * 1024 * 1024
ANSWER_DEADLINE_S = 60.0  # one request, headers to last byte


def add_daemon_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--daemon",
        metavar="URL",
        default=None,
        help=f"ask this running daemon instead of acting directly (or ${DAEMON_ENV})",
    )


def daemon_url(args: argparse.Namespace) -> str | None:
    """The daemon's base URL, checked: http(s), a host, no query; None when not asked for."""
    url = getattr(args, "daemon", None) or os.environ.get(DAEMON_ENV)
    if not url:
        return None
    text = redact_text(url[:80]).encode("unicode_escape").decode("ascii")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"--daemon {text!r} is not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.query:
        raise ConfigError(f"--daemon {text!r}: expected http(s)://HOST[:PORT]")
    if parsed.userinfo:
        raise ConfigError("--daemon: no credentials in the URL (the token is VAULT_TOKEN)")
    if parsed.scheme == "http" and not _loopback(parsed.host):
        raise ConfigError(
            f"--daemon {text!r}: refusing to send VAULT_TOKEN over plain http to a host that "
            f"is not loopback; use https:// (and {CACERT_ENV} for a private CA)"
        )
    return url.rstrip("/")


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _verify() -> ssl.SSLContext | bool:
    """How an https daemon's certificate is checked: VAULT_ROTATOR_DAEMON_CACERT, else the
    system's CAs."""
    cacert = os.environ.get(CACERT_ENV)
    if not cacert:
        return True
    if (why := why_not_regular(cacert)) is not None:  # a FIFO would block the command
        raise ConfigError(f"{CACERT_ENV} {cacert[:120]}: {why}")
    try:
        return ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{CACERT_ENV}={cacert[:120]!r}: not a readable CA bundle") from exc


def request(
    url: str, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One control-API call: (HTTP status, the JSON object answered)."""
    token = os.environ.get("VAULT_TOKEN", "")
    if not token:
        raise ConfigError("VAULT_TOKEN is not set: the daemon authorises callers by Vault token")
    headers = {"Authorization": f"Bearer {token}"}
    where = f"{method} {url}{path}"
    with Watchdog(ANSWER_DEADLINE_S) as watchdog:  # headers trickling in count too
        try:
            with (
                httpx.Client(base_url=url, timeout=30, verify=_verify()) as client,
                client.stream(
                    method, path, json=body, headers=headers, extensions={"trace": watchdog.trace}
                ) as resp,
            ):
                raw = _read(resp, where)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            if watchdog.fired:
                raise DaemonResponseError(
                    f"{where}: no complete answer within {ANSWER_DEADLINE_S:g}s"
                ) from exc
            raise DaemonUnreachableError(
                f"daemon at {url} unreachable: {type(exc).__name__}"
            ) from exc
    return resp.status_code, _object(raw, resp.status_code, where)


def _read(resp: httpx.Response, where: str) -> bytes:
    """The body, within MAX_ANSWER_BYTES and ANSWER_DEADLINE_S."""
    deadline = time.monotonic() + ANSWER_DEADLINE_S
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise DaemonResponseError(f"{where}: answer larger than {MAX_ANSWER_BYTES} bytes")
        if time.monotonic() > deadline:
            raise DaemonResponseError(f"{where}: answer still arriving after {ANSWER_DEADLINE_S}s")
        chunks.append(chunk)
    return b"".join(chunks)


def _object(raw: bytes, status: int, where: str) -> dict[str, Any]:
    """The answer as a JSON object; a non-JSON error answer becomes ``{"error": text}``."""
    if 300 <= status < 400:  # never followed: the token must not travel to where it points
        return {"error": f"a redirect ({status}), not followed: give --daemon the daemon's URL"}
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        if 200 <= status < 300:
            raise DaemonResponseError(f"{where}: answered {status} with no JSON") from None
        text = raw[:200].decode("utf-8", "replace").encode("unicode_escape").decode("ascii")
        return {"error": redact_text(text)}
    if not isinstance(answer, dict):
        kind = type(answer).__name__
        raise DaemonResponseError(f"{where}: answered {status} with a JSON {kind}, not an object")
    return answer


_ROW_FIELDS: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "state": (str,),
    "in_policy": (bool,),
    "current_key_id": (str, type(None)),
    "age_s": (int, float, type(None)),
    "next_due_at": (int, float, type(None)),
    "last_outcomes": (list,),
}
_OUTCOME_FIELDS: dict[str, tuple[type, ...]] = {
    "outcome": (str,),
    "by": (str, type(None)),
    "trigger": (str, type(None)),
}
MAX_SHOWN = 4096  # characters of one string of a status row


def _printable(value: Any) -> Any:
    """Strings with control and bidi characters escaped (a hostile daemon must not drive the
    terminal)."""
    if isinstance(value, str):
        return shown(value, MAX_SHOWN)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _check(where: str, obj: object, fields: Mapping[str, tuple[type, ...]]) -> None:
    if not isinstance(obj, dict):
        raise DaemonResponseError(f"{where}: expected an object")
    for name, types in fields.items():
        value = obj.get(name, False if name == "in_policy" else None)
        if name in ("key", "state", "last_outcomes", "outcome") and value is None:
            raise DaemonResponseError(f"{where}: {name} missing")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise DaemonResponseError(f"{where}: {name} has the wrong type")


def status_rows(answer: Mapping[str, Any], url: str) -> list[dict[str, Any]]:
    """The ``keys`` of a ``GET /v1/status`` answer, checked against the status row schema."""
    where = f"GET {url}/v1/status"
    rows = answer.get("keys", [])
    if not isinstance(rows, list):
        raise DaemonResponseError(f"{where}: keys is not a list")
    for index, row in enumerate(rows):
        _check(f"{where}: keys[{index}]", row, _ROW_FIELDS)
        for number, outcome in enumerate(row["last_outcomes"]):
            _check(f"{where}: keys[{index}].last_outcomes[{number}]", outcome, _OUTCOME_FIELDS)
    return [_printable(row) for row in rows]


def exit_code(status: int) -> int:
    if 200 <= status < 300:
        return 0
    return 2 if status in (400, 404) else 1


def _check_action(verb: str, ref: str, answer: Mapping[str, Any], where: str) -> None:
    """A 2xx answer to an action must be the daemon's: it names our key (or freeze target)."""
    if verb in ("freeze", "unfreeze"):
        ok = answer.get("target") == ref and isinstance(answer.get("frozen"), bool)
    else:
        ok = answer.get("key") == ref
    if not ok:
        raise DaemonResponseError(f"{where}: the answer is not the daemon's (it names no {ref})")


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
    if 200 <= status < 300:
        _check_action(verb, ref, answer, f"POST {url}/v1/{verb}/{ref}")
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
        code, listing = request(url, "GET", "/v1/status")
        if exit_code(code) != 0:
            return 1, f"{ref}: the daemon answered {code} to a status poll: {said(listing)}"
        row = next((r for r in status_rows(listing, url) if r["key"] == ref), {})
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


def said(answer: Mapping[str, Any]) -> str:
    """The ``error`` text of an answer, one line, cut short."""
    return shown(redact_text(str(answer.get("error", ""))), 200)


def _settled(ref: str, row: Mapping[str, Any], rotation_id: object) -> tuple[int, str]:
    """The key is idle again: 0 only if our rotation's recorded outcome is a success."""
    listed = row.get("last_outcomes", [])
    outcomes = [
        o
        for o in (listed if isinstance(listed, list) else [])
        if isinstance(o, dict) and o.get("rotation_id") == rotation_id
    ]
    outcome = str(outcomes[-1].get("outcome", "unknown")) if outcomes else "unknown"
    return classify(outcome).exit_code, f"{ref}: {outcome}"
