"""Webhook notifications: Slack-compatible JSON posted from a background thread.

Configuration (environment):

* ``VAULT_ROTATOR_WEBHOOK_URL``: one URL, or several separated by commas; unset or empty means
  no notifications. URLs are never logged whole (a Slack webhook's path is its secret): logs
  show scheme and host only.
* ``VAULT_ROTATOR_WEBHOOK_EVENTS``: the events to send, comma-separated, from
  ``stalled``, ``failed``, ``needs-attention``, ``succeeded`` (default: all but ``succeeded``).

Payload, one POST per event and URL::

    {"text": "vault-rotator: production/backend stalled (pickup-timeout) ...",
     "vault_rotator": {"event": "stalled", "env": "production", "key": "production/backend",
                       "rotation_id": "...", "reason": "...", "old_key_id": "...", ...}}

Slack shows ``text``; other receivers read the structured fields under ``vault_rotator`` (kept
apart from Slack's own top-level fields).

An environment-wide emergency request gets one message, not one per key
(:mod:`vault_rotator.daemon.emergencies`): ``env`` and ``request_id`` instead of ``key``, the
counts per step, the outcomes and the keys that need an operator. Until it is sent, the daemon
does not call :meth:`Notifier.notify` for the request's keys (they are folded into it).

Never a key value: fields whose names hold values
(``api_key``, ``value``, ``token`` ...) are dropped, every string is redacted, and the serialized
body goes through :func:`~vault_rotator.display.redact_text` once more.

:meth:`Notifier.notify` never blocks and never raises on delivery problems: messages wait in a
bounded queue (a full queue drops the message and counts it), a worker thread posts them with a
timeout, retrying transport errors, 429 and 5xx a bounded number of times with exponential
backoff and jitter (a 429's ``Retry-After`` is honoured, within the backoff cap). Counters:
``sent`` and ``failed`` per delivery (message x URL), ``dropped`` per message.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from vault_rotator.display import redact_text, redact_value
from vault_rotator.errors import ConfigError

log = structlog.get_logger(__name__)

STALLED = "stalled"
FAILED = "failed"
NEEDS_ATTENTION = "needs-attention"
SUCCEEDED = "succeeded"
EVENTS = frozenset({STALLED, FAILED, NEEDS_ATTENTION, SUCCEEDED})
DEFAULT_EVENTS = frozenset({STALLED, FAILED, NEEDS_ATTENTION})

URL_ENV = "VAULT_ROTATOR_WEBHOOK_URL"
EVENTS_ENV = "VAULT_ROTATOR_WEBHOOK_EVENTS"

# Field names that could only ever carry a key value or a credential: dropped from payloads.
_VALUE_FIELDS = frozenset(
    {"api_key", "value", "key_value", "new_key_value", "management_key", "token", "secret"}
)
_TEXT_FIELDS = (
    "rotation_id",
    "request_id",
    "reason",
    "outcome",
    "old_key_id",
    "new_key_id",
    "detail",
)


@dataclass(frozen=True, slots=True)
class Message:
    """One notification, ready to post."""

    event: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Counters:
    """Deliveries sent and given up (per message and URL), messages dropped (queue full)."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0


def build_payload(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON payload of an event (redacted, value-shaped fields dropped)."""
    kept = {k: v for k, v in fields.items() if k.lower() not in _VALUE_FIELDS}
    clean: dict[str, Any] = redact_value(kept)
    env, key = clean.get("env"), clean.get("key")
    if env and key and "/" not in str(key):
        clean["key"] = f"{env}/{key}"
    return {"text": _text(event, clean), "vault_rotator": {"event": event, **clean}}


def _text(event: str, fields: Mapping[str, Any]) -> str:
    what = fields.get("key") or fields.get("env") or "a key"
    why = fields.get("reason") or fields.get("outcome")
    line = f"vault-rotator: {what} {event}" + (f" ({why})" if why else "")
    details = [
        f"{name.replace('_', ' ')} {fields[name]}"
        for name in _TEXT_FIELDS
        if name not in ("reason", "outcome") and fields.get(name)
    ]
    return line + ("\n" + "; ".join(details) if details else "")


def encode(payload: Mapping[str, Any]) -> bytes:
    """Serialize a payload, redacting the whole text once more as a last guard."""
    return redact_text(json.dumps(payload, default=str, sort_keys=True)).encode()


def parse_urls(text: str) -> tuple[str, ...]:
    """Comma-separated http(s) URLs; ConfigError naming the variable for a bad one."""
    urls = tuple(part.strip() for part in text.split(",") if part.strip())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{URL_ENV}: expected http(s) URLs separated by commas, got one with scheme "
                f"{parts.scheme or 'none'!r}"
            )
    return urls


def parse_events(text: str) -> frozenset[str]:
    """Comma-separated event names; ConfigError naming the variable for an unknown one."""
    events = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(events - EVENTS)
    if unknown:
        raise ConfigError(
            f"{EVENTS_ENV}: unknown event {unknown[0]!r}; known: {', '.join(sorted(EVENTS))}"
        )
    return events


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Notifier:
    """Posts event notifications to webhooks from a worker thread (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        events: frozenset[str] = DEFAULT_EVENTS,
        queue_size: int = 100,
        max_attempts: int = 4,
        timeout_s: float = 5.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if unknown := sorted(events - EVENTS):
            raise ValueError(f"unknown webhook event {unknown[0]!r}")
        if queue_size < 1 or max_attempts < 1:
            raise ValueError("queue_size and max_attempts must be at least 1")
        self.urls = tuple(urls)
        self.events = events
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._abort = threading.Event()
        self._sleep = sleep if sleep is not None else self._abort.wait
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not crypto)
        self._queue: queue.Queue[Message | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "failed": 0, "dropped": 0}
        self._closed = False
        self._timeout_s = timeout_s
        self._client = httpx.Client(timeout=timeout_s)
        self._worker = threading.Thread(target=self._run, name="webhook-notifier", daemon=True)
        if self.urls:
            self._worker.start()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> Notifier:
        """A notifier configured from ``VAULT_ROTATOR_WEBHOOK_URL``/``_EVENTS`` (and options)."""
        env = os.environ if env is None else env
        urls = parse_urls(env.get(URL_ENV, ""))
        events_text = env.get(EVENTS_ENV, "").strip()
        events = parse_events(events_text) if events_text else DEFAULT_EVENTS
        return cls(urls, events=events, **options)

    @property
    def enabled(self) -> bool:
        """Whether there is anywhere to send to."""
        return bool(self.urls)

    @property
    def counters(self) -> Counters:
        """A snapshot of the counters."""
        with self._lock:
            return Counters(**self._counts)

    def notify(self, event: str, **fields: Any) -> bool:
        """Queue ``event`` if it is configured; True if queued. Never blocks.

        ValueError for an event name that does not exist (a programming error).
        """
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        if not self.urls or event not in self.events:
            return False
        message = Message(event=event, body=encode(build_payload(event, fields)))
        with self._lock:
            if self._closed:
                return False
            try:
                self._queue.put_nowait(message)
            except queue.Full:
                self._counts["dropped"] += 1
                dropped = self._counts["dropped"]
            else:
                return True
        log.warning("webhook queue full; notification dropped", notification=event, dropped=dropped)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout`` seconds), then stop the worker.

        Messages still queued when the time is up are dropped and counted; a post under way
        then ends within the client timeout.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._worker.is_alive():
            self._stop_worker(timeout)
        self._client.close()

    def _stop_worker(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._worker.join(max(0.0, end - time.monotonic()))
        if not self._worker.is_alive():
            return
        self._abort.set()
        while True:
            try:
                if self._queue.get_nowait() is not None:
                    self._count("dropped")
            except queue.Empty:
                break
        self._queue.put_nowait(None)
        self._worker.join(self._timeout_s)

    def _count(self, name: str, by: int = 1) -> int:
        with self._lock:
            self._counts[name] += by
            return self._counts[name]

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            if self._abort.is_set():
                self._count("dropped")
                continue
            for url in self.urls:
                if self._abort.is_set():  # closing timed out: no new posts
                    self._count("failed")
                    continue
                try:
                    self._deliver(url, message)
                except Exception as exc:  # the worker must outlive any one delivery
                    self._count("failed")
                    # No traceback: it could carry the webhook URL, whose path is a secret.
                    log.error(  # noqa: TRY400
                        "webhook notification crashed", webhook=_host(url), error=type(exc).__name__
                    )

    def _deliver(self, url: str, message: Message) -> None:
        """Post ``message`` to ``url`` with bounded retries; count the result."""
        for attempt in range(1, self._max_attempts + 1):
            retry_after, why = self._post(url, message)
            if why is None:
                self._count("sent")
                return
            if retry_after is None or attempt == self._max_attempts or self._abort.is_set():
                break
            self._sleep(self._delay(attempt, retry_after))
        self._count("failed")
        log.warning(
            "webhook notification failed", notification=message.event, webhook=_host(url), error=why
        )

    def _post(self, url: str, message: Message) -> tuple[float | None, str | None]:
        """(retry delay hint or None when not worth retrying, error or None on success)."""
        headers = {"content-type": "application/json"}
        try:
            response = self._client.post(url, content=message.body, headers=headers)
        except httpx.HTTPError as exc:
            return 0.0, type(exc).__name__
        if response.is_success:
            return None, None
        why = f"HTTP {response.status_code}"
        if response.status_code == 429:
            return _retry_after(response.headers.get("retry-after")), why
        return (0.0 if response.status_code >= 500 else None), why

    def _delay(self, attempt: int, hint: float) -> float:
        """Exponential backoff with jitter (half fixed, half random), or the server's hint."""
        base = min(self._max_backoff_s, self._backoff_s * 2.0 ** (attempt - 1))
        jittered = base / 2 + self._rng.uniform(0, base / 2)
        return min(self._max_backoff_s, max(jittered, hint))


def _retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (seconds form); 0 when absent or a date."""
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return 0.0
    return max(0.0, seconds)
