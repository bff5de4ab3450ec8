"""A user watching the daemon during the scale benchmark's emergency: ``GET /v1/status``.

``python -m benchmarks.status_poller URL`` (the caller's Vault token in ``VAULT_TOKEN``, never
on the command line) asks ``URL/v1/status`` every :data:`POLL_S` seconds (start to start; at
once again when an answer took longer) until its stdin closes, then prints one JSON line: each
poll's send and answer times (``time.monotonic()``, the system-wide clock, so the benchmark's
process can compare them with its own), HTTP status (0: no answer), the start of the error a
failed poll got, the answer's ``as_of`` (when the daemon drew it, epoch seconds) with the
poll's own epoch time at the answer, and of each emergency view only what the benchmark needs
(env, keys, counts per step, rate, ETA, settled). Key rows are dropped on
arrival; nothing secret is printed. It runs in its own process so that the daemon being
measured pays only for answering.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

POLL_S = 1.0
TIMEOUT_S = 120.0
VIEW_FIELDS = ("env", "id", "keys", "counts", "rate_per_s", "eta_s", "settled", "complete")
ERROR_CHARS = 200  # of a failed poll's answer (the daemon's one-line error: no secret in it)


def poll_once(host: str, port: int, token: str) -> dict[str, Any]:
    """One ``GET /v1/status``: times, status, the emergency views (trimmed)."""
    sent = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    views: list[dict[str, Any]] = []
    error, as_of = None, None
    try:
        connection.request("GET", "/v1/status", headers={"Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        status, body = answer.status, answer.read()
        if status == 200:
            doc = json.loads(body)
            views = [{k: v.get(k) for k in VIEW_FIELDS} for v in doc.get("emergencies", [])]
            as_of = doc.get("as_of")
        else:
            error = body[:ERROR_CHARS].decode(errors="replace")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        status, error = 0, f"{type(exc).__name__}: {str(exc)[:ERROR_CHARS]}"
    finally:
        connection.close()
    got, got_epoch = time.monotonic(), time.time()
    return {
        "sent": sent, "got": got, "got_epoch": got_epoch, "as_of": as_of, "status": status,
        "error": error, "views": views,
    }  # fmt: skip


def main() -> int:
    url = urlsplit(sys.argv[1])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    token = os.environ["VAULT_TOKEN"]
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at end of input
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    polls = []
    while not stop.is_set():
        polls.append(poll_once(host, port, token))
        stop.wait(max(0.0, polls[-1]["sent"] + POLL_S - time.monotonic()))
    print(json.dumps({"polls": polls}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
