"""Webhook notifications against a real local HTTP receiver: delivery, retries, redaction."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vault_rotator.daemon.notify import (
    DEFAULT_EVENTS,
    Counters,
    Notifier,
    build_payload,
    parse_events,
)
from vault_rotator.errors import ConfigError
from vault_rotator.secret import Secret

LIVE = "lr_live_notify0123456789abcdef"
MGMT = "lr_mgmt_notify0123456789abcdef"


class Receiver:
    """A local webhook receiver answering from a script of (status, headers), then 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.gate: threading.Event | None = None
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.bodies.append(body)
                    status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                receiver.arrived.set()
                if receiver.gate is not None:
                    receiver.gate.wait(10)
                with contextlib.suppress(OSError):  # the client may have given up
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/T000/B000/secretpath"

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body) for body in self.bodies]

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a free loopback port."""
    rec = Receiver()
    yield rec
    rec.stop()


@pytest.fixture
def sleeps() -> list[float]:
    """The backoff delays a notifier asked for (recorded, never slept)."""
    return []


def make(urls: list[str], sleeps: list[float], **options: Any) -> Notifier:
    options.setdefault("rng", random.Random(7))
    return Notifier(urls, sleep=sleeps.append, **options)


def test_one_message_per_configured_event_and_url(receiver: Receiver, sleeps: list[float]) -> None:
    """Each configured event reaches every URL once; an unconfigured event is not sent."""
    notifier = make([receiver.url, receiver.url], sleeps, events=frozenset({"stalled", "failed"}))
    assert notifier.notify("stalled", env="prod", key="app", rotation_id="r1", reason="pickup")
    assert notifier.notify("failed", env="prod", key="app", rotation_id="r2", outcome="failed")
    assert not notifier.notify("succeeded", env="prod", key="app", rotation_id="r3")
    notifier.close(timeout=5)
    events = sorted(p["vault_rotator"]["event"] for p in receiver.payloads())
    assert events == ["failed", "failed", "stalled", "stalled"]
    assert notifier.counters == Counters(sent=4, failed=0, dropped=0)
    assert sleeps == []


def test_payload_is_slack_text_plus_structured_fields(
    receiver: Receiver, sleeps: list[float]
) -> None:
    """The payload has Slack's ``text`` and the event's fields under ``vault_rotator``."""
    notifier = make([receiver.url], sleeps)
    notifier.notify(
        "stalled",
        env="prod",
        key="app",
        rotation_id="r1",
        reason="pickup-timeout",
        old_key_id="key_old",
        new_key_id="key_new",
    )
    notifier.close(timeout=5)
    (payload,) = receiver.payloads()
    assert payload["text"].startswith("vault-rotator: prod/app stalled (pickup-timeout)")
    assert "rotation id r1" in payload["text"]
    assert "old key id key_old; new key id key_new" in payload["text"]
    assert payload["vault_rotator"] == {
        "event": "stalled",
        "env": "prod",
        "key": "prod/app",
        "rotation_id": "r1",
        "reason": "pickup-timeout",
        "old_key_id": "key_old",
        "new_key_id": "key_new",
    }


def test_retried_after_a_server_error(receiver: Receiver, sleeps: list[float]) -> None:
    """A 500 is retried after a jittered backoff, and the second attempt delivers."""
    receiver.script = [(500, {})]
    notifier = make([receiver.url], sleeps, backoff_s=2.0)
    notifier.notify("failed", env="prod", key="app")
    notifier.close(timeout=5)
    assert len(receiver.bodies) == 2
    assert receiver.bodies[0] == receiver.bodies[1]
    assert notifier.counters == Counters(sent=1, failed=0, dropped=0)
    assert len(sleeps) == 1
    assert 1.0 <= sleeps[0] <= 2.0


def test_gives_up_after_the_bound(receiver: Receiver, sleeps: list[float]) -> None:
    """Always 503: exactly max_attempts posts, growing backoffs between them, then one failure."""
    receiver.script = [(503, {})] * 10
    notifier = make([receiver.url], sleeps, max_attempts=3, backoff_s=2.0)
    notifier.notify("failed", env="prod", key="app")
    notifier.close(timeout=5)
    assert len(receiver.bodies) == 3
    assert notifier.counters == Counters(sent=0, failed=1, dropped=0)
    assert len(sleeps) == 2
    assert 1.0 <= sleeps[0] <= 2.0 <= sleeps[1] <= 4.0


def test_client_error_is_not_retried(receiver: Receiver, sleeps: list[float]) -> None:
    """A 404 (a wrong webhook URL) fails at once: one post, no backoff."""
    receiver.script = [(404, {})]
    notifier = make([receiver.url], sleeps)
    notifier.notify("failed", env="prod", key="app")
    notifier.close(timeout=5)
    assert len(receiver.bodies) == 1
    assert notifier.counters == Counters(sent=0, failed=1, dropped=0)
    assert sleeps == []


def test_rate_limit_honours_retry_after_within_the_cap(
    receiver: Receiver, sleeps: list[float]
) -> None:
    """A 429 waits its Retry-After (capped by max_backoff), then delivers."""
    receiver.script = [(429, {"Retry-After": "7"}), (429, {"Retry-After": "600"})]
    notifier = make([receiver.url], sleeps, backoff_s=0.5, max_backoff_s=30.0)
    notifier.notify("failed", env="prod", key="app")
    notifier.close(timeout=5)
    assert sleeps == [7.0, 30.0]
    assert notifier.counters.sent == 1


def test_unreachable_webhook_fails_without_raising(sleeps: list[float]) -> None:
    """A refused connection is retried to the bound and counted failed; notify never raises."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notifier = make([f"http://127.0.0.1:{port}/hook"], sleeps, max_attempts=2, timeout_s=2.0)
    assert notifier.notify("failed", env="prod", key="app")
    notifier.close(timeout=5)
    assert notifier.counters == Counters(sent=0, failed=1, dropped=0)
    assert len(sleeps) == 1


def test_full_queue_drops_without_blocking(receiver: Receiver, sleeps: list[float]) -> None:
    """With the worker stuck on a slow receiver and the queue full, notify drops and returns."""
    receiver.gate = threading.Event()
    notifier = make([receiver.url], sleeps, queue_size=1, timeout_s=10.0)
    assert notifier.notify("failed", env="prod", key="one")
    assert receiver.arrived.wait(5)
    assert notifier.notify("failed", env="prod", key="two")
    started = time.monotonic()
    assert not notifier.notify("failed", env="prod", key="three")
    assert time.monotonic() - started < 0.5
    assert notifier.counters.dropped == 1
    receiver.gate.set()
    notifier.close(timeout=5)
    assert notifier.counters == Counters(sent=2, failed=0, dropped=1)
    keys = [p["vault_rotator"]["key"] for p in receiver.payloads()]
    assert keys == ["prod/one", "prod/two"]


def test_close_timeout_drops_what_is_left(receiver: Receiver, sleeps: list[float]) -> None:
    """close() gives up after its timeout: queued messages are dropped, the stuck post fails."""
    receiver.gate = threading.Event()
    notifier = make([receiver.url], sleeps, queue_size=5, timeout_s=0.3)
    notifier.notify("failed", env="prod", key="one")
    assert receiver.arrived.wait(5)
    notifier.notify("failed", env="prod", key="two")
    notifier.notify("failed", env="prod", key="three")
    notifier.close(timeout=0.1)
    assert notifier.counters == Counters(sent=0, failed=1, dropped=2)
    assert not notifier.notify("failed", env="prod", key="four")


def test_no_key_value_ever_reaches_a_payload(receiver: Receiver, sleeps: list[float]) -> None:
    """Key values passed by mistake, in any field or shape, never appear in what is posted."""
    notifier = make([receiver.url], sleeps)
    notifier.notify(
        "needs-attention",
        env="prod",
        key="app",
        reason=f"provider said {LIVE}",
        detail=f"echo {MGMT} and bare lr_live_ prefix",
        api_key=LIVE,
        new_key_value=Secret(LIVE),
        extra={"nested": [MGMT, Secret(MGMT)]},
        note=f"Authorization: Bearer {MGMT}",
    )
    notifier.close(timeout=5)
    (body,) = receiver.bodies
    text = body.decode()
    for forbidden in ("lr_live_", "lr_mgmt_", LIVE, MGMT):
        assert forbidden not in text
    payload = json.loads(body)["vault_rotator"]
    assert "api_key" not in payload
    assert "new_key_value" not in payload
    assert payload["reason"].startswith("provider said <redacted fp:")


def test_build_payload_redacts_before_serializing() -> None:
    """build_payload alone already masks values and drops value-named fields."""
    payload = build_payload("failed", {"env": "prod", "key": "prod/app", "token": "x", "d": LIVE})
    assert "token" not in payload["vault_rotator"]
    assert LIVE not in json.dumps(payload)
    assert payload["vault_rotator"]["key"] == "prod/app"


def test_from_env_reads_urls_and_events() -> None:
    """Comma-separated URLs and events come from the environment; events default to alerts."""
    env = {"VAULT_ROTATOR_WEBHOOK_URL": " http://127.0.0.1:9/a , https://hooks.example/b ,"}
    notifier = Notifier.from_env(env)
    try:
        assert notifier.urls == ("http://127.0.0.1:9/a", "https://hooks.example/b")
        assert notifier.events == DEFAULT_EVENTS == {"stalled", "failed", "needs-attention"}
    finally:
        notifier.close(timeout=1)
    env["VAULT_ROTATOR_WEBHOOK_EVENTS"] = "succeeded, failed"
    custom = Notifier.from_env(env)
    custom.close(timeout=1)
    assert custom.events == {"succeeded", "failed"}


def test_from_env_without_urls_is_disabled() -> None:
    """No URL: the notifier is disabled, notify queues nothing and no thread runs."""
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.notify("stalled", env="prod", key="app")
    notifier.close()
    assert notifier.counters == Counters()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VAULT_ROTATOR_WEBHOOK_URL": "ftp://x/y"}, "VAULT_ROTATOR_WEBHOOK_URL"),
        ({"VAULT_ROTATOR_WEBHOOK_URL": "hooks.slack.com/x"}, "VAULT_ROTATOR_WEBHOOK_URL"),
        ({"VAULT_ROTATOR_WEBHOOK_EVENTS": "stalled,exploded"}, "unknown event 'exploded'"),
    ],
)
def test_bad_configuration_is_a_one_line_config_error(env: dict[str, str], message: str) -> None:
    """A bad URL or an unknown event name is a ConfigError naming the variable or the event."""
    with pytest.raises(ConfigError, match=message):
        Notifier.from_env(env)


def test_unknown_event_in_code_is_a_value_error() -> None:
    """notify with an event that does not exist is a programming error, raised at once."""
    notifier = Notifier()
    with pytest.raises(ValueError, match="unknown webhook event 'stale'"):
        notifier.notify("stale")
    assert parse_events("") == frozenset()
