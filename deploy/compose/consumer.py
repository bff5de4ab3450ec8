"""The compose loop's sample consumer: an app that reads its ARouter key from a file.

Vault Agent renders the key to ``--key-file`` (deploy/compose/agent.hcl); this app re-reads the
file before every call, so a rotated key is used within one agent render interval, with no
restart. It calls ``POST /v1/chat/completions`` every ``--interval`` seconds and prints the
status and the key's fingerprint (never the key). Standard library only: it runs in the plain
python:3.11-slim image. ``--count N`` stops after N calls, exit 1 if any failed (for tests).

It stops as a supervised process should: on SIGTERM (Kubernetes, systemd, ``docker stop``; as
a container's PID 1 it would otherwise ignore it) and on SIGINT, unless SIGINT was ignored when
it started (a background job, ``nohup``, a runner), which it then leaves ignored. The call in
progress ends, a last line says ``stopped by SIG... after N calls (F failed)``, and the exit
code is 1 if a call failed, else 0.

With ``VAULT_ROTATOR_ACK_PATH`` set, every successful call also acknowledges the key it used
(an ``app`` ack, through ``deploy/agent/vault_rotator_ack.py``: found next to this file or in
``../agent``; it writes only when the version changed, or hourly); see docs/consumers.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}]}


def read_key(path: Path) -> str | None:
    """The key the agent rendered last, or None before its first render."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def call(base_url: str, key: str) -> int:
    """One billable chat call with ``key``; the HTTP status (0 when nothing answered)."""
    request = urllib.request.Request(  # noqa: S310 (main() allows http and https only)
        f"{base_url.rstrip('/')}/v1/chat/completions",
        data=json.dumps(BODY).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def app_acker():  # type: ignore[no-untyped-def]
    """``vault_rotator_ack.app_ack`` when acks are configured, else None."""
    if not os.environ.get("VAULT_ROTATOR_ACK_PATH"):
        return None
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent / "agent")]
    import vault_rotator_ack  # noqa: PLC0415 (optional, found at run time)

    return vault_rotator_ack.app_ack


class Stop:
    """Set by SIGTERM, and by SIGINT unless SIGINT was inherited as ignored."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.by = ""  # the signal's name, once set
        signal.signal(signal.SIGTERM, self._set)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, _frame: object) -> None:
        self.by = signal.Signals(signum).name
        self.event.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--count", type=int, default=0, help="stop after N calls (0: never)")
    args = parser.parse_args()
    if not args.base_url.startswith(("http://", "https://")):
        parser.error("--base-url must be an http:// or https:// URL")
    stop = Stop()
    calls = failed = 0
    seen = None
    ack = app_acker()
    while (not args.count or calls < args.count) and not stop.event.is_set():
        key = read_key(args.key_file)
        if key is None:
            print(f"waiting for {args.key_file}", flush=True)
        else:
            fp = "fp:" + hashlib.sha256(key.encode()).hexdigest()[:12]
            if fp != seen:
                print(f"using key {fp}", flush=True)
                seen = fp
            status = call(args.base_url, key)
            calls += 1
            failed += status != 200
            if status == 200 and ack is not None and ack(key):
                print(f"acknowledged {fp} (app)", flush=True)
            print(f"call {calls}: HTTP {status} with {fp} ({failed} failed so far)", flush=True)
        if not args.count or calls < args.count:
            stop.event.wait(args.interval)
    if stop.event.is_set():
        print(f"stopped by {stop.by} after {calls} calls ({failed} failed)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
