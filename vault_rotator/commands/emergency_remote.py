"""``rotate --env ENV --emergency --yes --daemon URL``: the daemon saves the request and acts.

``POST /v1/rotate/{env}`` with ``{"emergency": true, "revoke_old_now": ...}``; the daemon
answers 202 with the request's id and acts on it in its ticks. ``--wait`` then polls
``GET /v1/status`` (its ``emergencies``) and draws the same progress line and summary as a
local run (:mod:`vault_rotator.engine.emergency_view`), from the daemon's view of the request,
which is checked field by field and escaped like every other answer of a daemon
(:mod:`.remote`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from vault_rotator.commands import remote
from vault_rotator.commands.remote import exit_code, request, said
from vault_rotator.display import redact_text, shown
from vault_rotator.engine import emergency_view
from vault_rotator.errors import DaemonResponseError
from vault_rotator.policy import format_duration

_NUMBER = (int, float)
_FIELDS: dict[str, tuple[type, ...]] = {
    "env": (str,),
    "id": (str,),
    "requested_at": _NUMBER,
    "by": (str,),
    "trigger": (str,),
    "keys": (int,),
    "counts": (dict,),
    "outcomes": (dict,),
    "rate_per_s": _NUMBER,
    "eta_s": (*_NUMBER, type(None)),
    "settled": (bool,),
    "complete": (bool,),
    "settled_at": (*_NUMBER, type(None)),
    "attention": (dict,),
}


def act_env(
    url: str,
    env: str,
    *,
    revoke_old_now: bool,
    wait: bool,
    timeout: float | None,
    poll_s: float | None = None,
) -> int:
    """POST the request; with ``wait``, follow it until no key moves (or ``timeout``)."""
    path = f"/v1/rotate/{env}"
    body = {"emergency": True, "revoke_old_now": revoke_old_now}
    status, answer = request(url, "POST", path, body)
    ok = 200 <= status < 300
    if ok and (answer.get("env") != env or not isinstance(answer.get("request_id"), str)):
        raise DaemonResponseError(f"POST {url}{path}: the answer is not the daemon's")
    print(redact_text(json.dumps(answer, sort_keys=True)))
    if not wait or exit_code(status) != 0:
        return exit_code(status)
    give_up = None if timeout is None else time.monotonic() + timeout
    poll = remote.POLL_S if poll_s is None else poll_s
    code, ending = _follow(url, env, str(answer["request_id"]), give_up, poll)
    if code is None:
        assert timeout is not None
        print(
            f"{env}: emergency {answer['request_id']} still moving after --timeout "
            f"{format_duration(timeout)}; the daemon carries it on: follow it with "
            f"vault-rotator status --daemon {url}"
        )
        return 1
    print(ending)
    return code


def _follow(
    url: str, env: str, request_id: str, give_up: float | None, poll: float
) -> tuple[int | None, str]:
    """Poll status until the request settles: (exit code, what to print); (None, "") when
    ``give_up`` came first."""
    counts: object = None
    while True:
        code, listing = request(url, "GET", "/v1/status")
        if exit_code(code) != 0:
            return 1, f"{env}: the daemon answered {code} to a status poll: {said(listing)}"
        doc = next(
            (d for d in checked_views(listing, url) if (d["env"], d["id"]) == (env, request_id)),
            None,
        )
        if doc is None:
            return 1, (
                f"{env}: emergency {request_id} is not in the daemon's status (no read on "
                f"{env}'s control path, or a newer request replaced it)"
            )
        if doc["counts"] != counts:
            print(emergency_view.line_of(doc), flush=True)
            counts = doc["counts"]
        if doc["settled"]:
            return emergency_view.exit_code(doc), "\n".join(
                emergency_view.summary_lines(doc, time.time())
            )
        pause = poll if give_up is None else min(poll, give_up - time.monotonic())
        if pause <= 0:
            return None, ""
        time.sleep(pause)


def checked_views(answer: Mapping[str, Any], url: str) -> list[dict[str, Any]]:
    """The ``emergencies`` of a ``GET /v1/status`` answer, checked, strings escaped."""
    where = f"GET {url}/v1/status: emergencies"
    views = answer.get("emergencies", [])
    if not isinstance(views, list):
        raise DaemonResponseError(f"{where} is not a list")
    for index, doc in enumerate(views):
        _check(f"{where}[{index}]", doc)
    return [_printable(doc) for doc in views]


def checked_errors(answer: Mapping[str, Any], url: str) -> list[str]:
    """The ``emergency_errors`` of a ``GET /v1/status`` answer (lines), checked, escaped."""
    errors = answer.get("emergency_errors", [])
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise DaemonResponseError(f"GET {url}/v1/status: emergency_errors is not a list of lines")
    return [shown(e, remote.MAX_SHOWN) for e in errors]


def _check(where: str, doc: object) -> None:
    if not isinstance(doc, dict):
        raise DaemonResponseError(f"{where}: expected an object")
    for name, types in _FIELDS.items():
        value = doc.get(name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise DaemonResponseError(f"{where}: {name} missing or of the wrong type")
    for name in ("counts", "outcomes"):
        if not all(_is_int(n) for n in doc[name].values()):
            raise DaemonResponseError(f"{where}: {name} holds a value that is not a count")
    for kind, items in doc["attention"].items():
        good = isinstance(items, list) and all(
            isinstance(i, dict)
            and isinstance(i.get("key"), str)
            and isinstance(i.get("detail"), str)
            for i in items
        )
        if not good:
            raise DaemonResponseError(f"{where}: attention.{shown(str(kind), 40)} is malformed")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _printable(value: Any) -> Any:
    """Strings escaped (a hostile daemon must not drive the terminal), recursively."""
    if isinstance(value, str):
        return shown(value, remote.MAX_SHOWN)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value
