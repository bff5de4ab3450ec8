"""Error and retry policy for ARouter calls: what an answer means, whether and how long to wait,
and what to raise when giving up. Pure: no httpx, no I/O.

- Status mapping: 400 and other 4xx ProviderPermanentError, 401 ProviderAuthError, 402/403
  ProviderForbiddenError, 404 KeyNotFoundError, 429 RateLimitedError, 5xx
  ProviderRetryableError, 3xx (never followed) ProviderResponseError. Messages are one line:
  ``METHOD /path: HTTP status type-or-code: server message``, secrets and anything key-shaped
  redacted, cut at 200 characters.

- Backoff is exponential with full jitter: attempt *n* (1-based) waits
  ``rng() * min(backoff_max, backoff_initial * 2**(n-1))``.
- A server's own delay wins over backoff: ``Retry-After`` (seconds, or an HTTP date), else
  ``X-RateLimit-Reset`` (Unix seconds, turned into a delay with the injected wall clock; a value
  past 1e11 is read as milliseconds, as OpenRouter sends).
- Decision: if the server asks for more than ``backoff_max``, the client does not wait at all; it
  raises at once with ``retry_after`` set, so the engine (which holds a lease and a schedule)
  comes back later instead of sleeping inside a call.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from vault_rotator.display import redact_text, shown
from vault_rotator.errors import (
    AmbiguousCreateError,
    AmbiguousCreateResponseError,
    ConfigError,
    KeyNotFoundError,
    ProviderAuthError,
    ProviderError,
    ProviderForbiddenError,
    ProviderPermanentError,
    ProviderResponseError,
    ProviderRetryableError,
    RateLimitedError,
)
from vault_rotator.provider.dialects import error_details
from vault_rotator.secret import Secret

MAX_HEADER_DELAY = 86_400.0  # a day: anything longer is treated as that
MILLISECONDS_FROM = 1e11  # an X-RateLimit-Reset above this is Unix milliseconds, not seconds


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounded exponential backoff with full jitter."""

    max_attempts: int = 4
    initial: float = 0.5
    maximum: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("ARouter max_attempts must be at least 1")
        if not (self.initial >= 0 and 0 <= self.maximum < math.inf):
            raise ConfigError("ARouter backoff delays must be finite and not negative")

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        """The jittered wait after failed attempt ``attempt`` (1-based)."""
        ceiling = min(self.maximum, self.initial * 2.0 ** max(0, min(attempt - 1, 60)))
        return max(0.0, min(1.0, rng())) * ceiling

    def total_wait(self) -> float:
        """The most all waits of one call can add up to."""
        return (self.max_attempts - 1) * self.maximum


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _retry_after(value: str, now: float) -> float | None:
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.timestamp() - now if moment.tzinfo is not None else None


def server_delay(headers: Mapping[str, str], now: float) -> float | None:
    """The wait a response asks for, in seconds from ``now`` (Unix time), or None.

    ``Retry-After`` wins over ``X-RateLimit-Reset``; the result is clamped to
    ``[0, MAX_HEADER_DELAY]``; unparseable headers are ignored.
    """
    delay = None
    if "retry-after" in headers:
        delay = _retry_after(headers["retry-after"].strip(), now)
    if delay is None and "x-ratelimit-reset" in headers:
        reset = _seconds(headers["x-ratelimit-reset"].strip())
        if reset is not None and reset > MILLISECONDS_FROM:
            reset /= 1000.0  # OpenRouter-style servers send milliseconds
        delay = None if reset is None else reset - now
    if delay is None:
        return None
    return max(0.0, min(MAX_HEADER_DELAY, delay))


# -- what an answer means ------------------------------------------------------------------

MESSAGE_LIMIT = 200
_PERMANENT: dict[int, type[ProviderPermanentError]] = {
    400: ProviderPermanentError,
    401: ProviderAuthError,
    402: ProviderForbiddenError,
    403: ProviderForbiddenError,
    404: KeyNotFoundError,
}


def one_line(text: str, secrets: tuple[Secret, ...] = ()) -> str:
    """``text`` with known secrets and key-shaped tokens redacted, on one line, truncated.

    Whitespace runs become one space; any other character that does not print (a control or
    bidi character a server put in its message) is escaped (:func:`~vault_rotator.display.shown`).
    """
    for secret in secrets:
        text = text.replace(secret.reveal(), f"<redacted {secret.fingerprint}>")
    text = re.sub(r"\s+", " ", redact_text(text)).strip()
    return shown(text, MESSAGE_LIMIT)


def _error_text(endpoint: str, status: int, body: bytes) -> str:
    """``POST /api/v1/keys: HTTP 403 permission_error: <server message>``."""
    try:
        message, kind = error_details(json.loads(body))
    except (ValueError, RecursionError):
        message, kind = body[:1000].decode("utf-8", "replace"), ""
    text = f"{endpoint}: HTTP {status}"
    text += f" {kind}" if kind else ""
    return text + (f": {message}" if message else "")


def error_for_status(
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: tuple[Secret, ...],
    now: float,
) -> ProviderError:
    """The error a non-2xx answer maps to, with the server's (redacted) message and delay."""
    text = one_line(_error_text(endpoint, status, body), secrets)
    if status == 429 or status >= 500:
        wait = server_delay(headers, now)
        kind = RateLimitedError if status == 429 else ProviderRetryableError
        return kind(text, status=status, endpoint=endpoint, retry_after=wait)
    if 300 <= status < 400:
        return ProviderResponseError(
            f"{text} (unexpected redirect)", status=status, endpoint=endpoint
        )
    permanent = _PERMANENT.get(status, ProviderPermanentError)
    return permanent(text, status=status, endpoint=endpoint)


# -- giving up -----------------------------------------------------------------------------


def _copy_retryable(error: ProviderRetryableError, message: str) -> ProviderRetryableError:
    return type(error)(
        message,
        status=error.status,
        endpoint=error.endpoint,
        retry_after=error.retry_after,
        reached_server=error.reached_server,
    )


def gave_up(error: ProviderRetryableError, attempts: int) -> ProviderRetryableError:
    """The last retryable error, re-worded: ``gave up after N attempts: ...``."""
    plural = "s" if attempts != 1 else ""
    return _copy_retryable(error, f"gave up after {attempts} attempt{plural}: {error}")


def retry_later(error: ProviderRetryableError, maximum: float) -> ProviderRetryableError:
    """The error to raise when the server asks for a wait past ``backoff_max``."""
    wait = error.retry_after or 0.0
    return _copy_retryable(
        error, f"{error} (server asks to wait {wait:g}s, more than backoff_max {maximum:g}s)"
    )


def refuse_ambiguous_retry(error: ProviderError, name: str) -> None:
    """Raise if a failed create may have reached the server; return if a retry is safe.

    Safe: a 429, or a connection that never reached the server. Anything else retryable is an
    AmbiguousCreateError; an unreadable answer an AmbiguousCreateResponseError. Permanent
    errors return, for the caller to raise as they are (nothing was created).
    """
    if isinstance(error, RateLimitedError):
        return
    if isinstance(error, ProviderRetryableError):
        if not error.reached_server:
            return
        raise AmbiguousCreateError(
            f"{error}; key {name!r} may have been created: look it up by name",
            status=error.status,
            endpoint=error.endpoint,
            key_name=name,
        ) from error
    if isinstance(error, ProviderResponseError):
        raise ambiguous_response(error, name) from error


def ambiguous_response(error: ProviderError, name: str) -> AmbiguousCreateResponseError:
    """A 2xx create answer we could not read: the key probably exists, its value is lost."""
    return AmbiguousCreateResponseError(
        f"{error}; key {name!r} was probably created with its value lost: look it up by name",
        status=error.status,
        endpoint=error.endpoint,
        key_name=name,
    )
