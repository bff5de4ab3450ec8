"""The ARouter client: the only module that speaks HTTP to ARouter (httpx stays in here).

:class:`ARouterClient` implements :class:`~vault_rotator.ports.provider.KeyProvider` over any of
the spec's three dialects (:mod:`vault_rotator.provider.dialects` builds and parses the bodies);
:class:`InferenceClient` is a small helper for consumers, demos and tests.

Behaviour, including decisions where the spec is silent:

- **Auto-detection** happens on first use (or :meth:`ARouterClient.detect`): one list page at
  ``/api/v1/keys``, then ``/v1/keys`` on a 404 (→ C). A vs B is voted from the listed records'
  fields; with no keys yet it stays open until a create answer shows its shape (nested ``data``
  = A, flat ``hash`` = B). While open, :attr:`~ARouterClient.detected_dialect` is ``None``,
  :attr:`~ARouterClient.dialect` answers A (the documented default) provisionally, and a create
  with a spending cap tries the cap field names in turn (see
  :func:`~vault_rotator.provider.dialects.cap_variants`). A configured dialect is trusted,
  never probed, and its records are parsed strictly.
- **Where a known dialect lives**: in this client, one per provider account (the runtime caches
  it per account). The engine saves it in each key's state record (``dialect``) only once it is
  known, and a fresh process hands a saved one back as ``hint``: it picks the collection to ask
  first and the cap field to send, but stays open to contradiction. Unless configured, records
  on ``/api/v1/keys`` are parsed by their value types whatever dialect is known, so a record of
  the other shape never breaks a listing; and the server is listened to: a 404 on the known
  collection path probes again, a listing whose records vote for the other of A/B by a clear
  majority (at least two records, more than vote for the known one) switches, and so does a
  create answer of the other shape. Each switch logs one warning (``arouter.dialect_changed``).
- **Paging** follows :mod:`vault_rotator.provider.paging` (tokens, else offset; de-duplicated;
  bounded); ``page_size`` is clamped to the spec's 1-100; ``include_disabled=true`` always.
- **Odd records** never fail a listing (see :mod:`vault_rotator.provider.dialects`): an item
  with no usable id is left out, a record with unreadable fields is listed incomplete
  (``KeyRecord.problem``); each is logged once per client as a warning
  (``arouter.record_skipped``, ``arouter.record_incomplete``), escaped.
- **Retries**: at most ``max_attempts`` per request, for 429, 5xx, timeouts and connection
  errors, never 4xx or garbage; waits and error mapping follow :mod:`vault_rotator.provider.retry`
  (a server delay past ``backoff_max`` raises at once with ``retry_after`` set). Such a delay,
  not waited, is then *held*: until it has passed, every call of this client (any route)
  raises the same kind of error at once, "not sent", with the time left as ``retry_after``,
  so no later pass asks the server before it said to.
- **Creates are not idempotent**: only a 429 or a connection that never reached the server
  (connect error/timeout, pool timeout) is retried. Anything else after sending (read/write
  timeout, dropped connection, any 5xx) raises AmbiguousCreateError carrying the key name; a 2xx
  whose body is unreadable raises AmbiguousCreateResponseError (both an ambiguous create and a
  response error): the key probably exists and its value is lost.
- **Bounds**: bodies are streamed and cut at ``max_response_bytes`` (an oversized 2xx is a
  ProviderResponseError; an oversized error body is truncated, its status still counts). Each
  attempt has a hard deadline of ``3 x timeout``: httpx only bounds each socket operation, so
  a :class:`~vault_rotator.provider.deadline.Watchdog` shuts the connection down then (a
  server trickling its headers a byte at a time is cut off), and the deadline is also checked
  after every body chunk. One attempt thus lasts at most ``3 x timeout`` plus name resolution;
  :meth:`worst_case_seconds` counts ``4 x timeout`` per attempt (the rest is slack for that),
  times ``max_attempts``, plus the waits. It bounds **one HTTP request**: auto-detection adds
  up to two requests before the first call, and ``list_keys`` pays it once per page.
- **404**: ``delete_key`` returns False ("already gone"); after an internally retried delete,
  False may mean an earlier attempt of the same call deleted it. Elsewhere 404 is
  KeyNotFoundError, except on a list, where it means "no key API at this path".
- **No keep-alive**: every request opens its own connection, closed with its answer. A reused
  connection the server just closed fails *after* sending, which would turn a create into a
  false AmbiguousCreateError; a fresh one fails at connect, provably unsent. (A client nobody
  closed leaks no socket either.) Calls are few, so the extra handshakes cost nothing.
- **Threads**: the daemon's workers share one client per account. Its detection state and the
  memory of odd records are kept under a lock; requests in flight are bounded by a
  :class:`~vault_rotator.provider.limiter.Limiter` that adapts to 429s and ``Retry-After``
  (waiting for a slot is covered by the attempt's budget: see ``worst_case_seconds``).
- **Secrets**: values are :class:`~vault_rotator.secret.Secret` and revealed only into the
  ``Authorization`` header. Error messages carry the server's message, with known secrets and
  anything key-shaped redacted, on one line, cut at 200 characters. Logs carry key ids and
  fingerprints.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import httpx
import structlog

from vault_rotator.display import shown
from vault_rotator.errors import (
    ConfigError,
    KeyNotFoundError,
    ProviderError,
    ProviderPermanentError,
    ProviderResponseError,
    ProviderRetryableError,
    RateLimitedError,
)
from vault_rotator.ports.provider import CreatedKey, Dialect, KeyRecord, KeySpec
from vault_rotator.provider import dialects as d
from vault_rotator.provider import paging
from vault_rotator.provider.deadline import Watchdog
from vault_rotator.provider.limiter import Limiter
from vault_rotator.provider.retry import (
    MESSAGE_LIMIT,
    Backoff,
    ambiguous_response,
    error_for_status,
    gave_up,
    one_line,
    refuse_ambiguous_retry,
    retry_later,
)
from vault_rotator.secret import Secret

log = structlog.get_logger(__name__)

DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
ATTEMPT_DEADLINE_TIMEOUTS = 3  # an attempt is cut off 3 x timeout after it started
ATTEMPT_WORST_TIMEOUTS = 4  # ... and budgeted at 4 x timeout (slack for DNS and wake-ups)
USER_AGENT = "vault-rotator/0.1"
MAX_REPORTED = 1000  # odd records remembered as logged; past that, the memory starts over


@dataclass(frozen=True, slots=True)
class _Answer:
    """A response read within bounds."""

    status: int
    headers: httpx.Headers
    body: bytes
    complete: bool  # False when cut at max_response_bytes


def _translate(exc: httpx.HTTPError, endpoint: str, secrets: tuple[Secret, ...]) -> ProviderError:
    """An httpx failure as the project's error; ``reached_server`` only for connect failures."""
    detail = one_line(f"{type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ProviderRetryableError(
            f"{endpoint}: could not connect ({detail})", endpoint=endpoint, reached_server=False
        )
    if isinstance(exc, httpx.TimeoutException):
        return ProviderRetryableError(f"{endpoint}: timed out ({detail})", endpoint=endpoint)
    if isinstance(exc, httpx.TransportError):
        return ProviderRetryableError(
            f"{endpoint}: connection failed ({detail})", endpoint=endpoint
        )
    return ProviderResponseError(f"{endpoint}: unreadable answer ({detail})", endpoint=endpoint)


class _Http:
    """One httpx.Client plus bounded reads; shared by both clients of this module."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        max_response_bytes: int,
        transport: httpx.BaseTransport | None,
        monotonic: Callable[[], float],
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            scheme = url.scheme or "no scheme"  # the URL itself may hold credentials: not shown
            raise ConfigError(f"ARouter base URL must be http(s)://host[:port][/path] ({scheme})")
        if not (timeout > 0 and math.isfinite(timeout)) or max_response_bytes < 1:
            raise ConfigError("ARouter timeout and max_response_bytes must be positive")
        self.timeout = timeout
        self.max_bytes = max_response_bytes
        self._monotonic = monotonic
        self._client = httpx.Client(
            base_url=str(url).rstrip("/"),
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def send(
        self,
        method: str,
        path: str,
        auth: Secret,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        secrets: tuple[Secret, ...] = (),
    ) -> _Answer:
        """Send one request, read at most ``max_bytes`` of the answer before the deadline."""
        endpoint = f"{method} {path}"
        headers = {"Authorization": f"Bearer {auth.reveal()}"}
        limit = ATTEMPT_DEADLINE_TIMEOUTS * self.timeout
        with Watchdog(limit) as watchdog:
            request = self._client.build_request(
                method,
                path,
                params=params,
                json=body,
                headers=headers,
                extensions={"trace": watchdog.trace},
            )
            deadline = self._monotonic() + limit
            try:
                response = self._client.send(request, stream=True)
                try:
                    payload, complete = self._read(response, deadline, endpoint)
                finally:
                    response.close()
            except httpx.HTTPError as exc:
                if watchdog.fired:
                    raise ProviderRetryableError(
                        f"{endpoint}: no complete answer within {limit:g}s (the server sends "
                        "too slowly)",
                        endpoint=endpoint,
                    ) from exc
                raise _translate(exc, endpoint, (auth, *secrets)) from exc
        return _Answer(response.status_code, response.headers, payload, complete)

    def _read(self, response: httpx.Response, deadline: float, endpoint: str) -> tuple[bytes, bool]:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return b"", False
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                return b"".join(chunks), False
            chunks.append(chunk)
            if self._monotonic() > deadline:
                raise ProviderRetryableError(
                    f"{endpoint}: answer still arriving after "
                    f"{ATTEMPT_DEADLINE_TIMEOUTS * self.timeout:g}s",
                    endpoint=endpoint,
                )
        return b"".join(chunks), True


class _Closing:
    """Context-manager plumbing: ``close()`` releases the connection pool."""

    _http: _Http

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _json(endpoint: str, answer: _Answer) -> object:
    return d.decode_json(endpoint, answer.headers.get("content-type", ""), answer.body)


class ARouterClient(_Closing):
    """ARouter's key-management API for one management key; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        management_key: Secret,
        dialect: Dialect | Literal["auto"] = "auto",
        *,
        hint: Dialect | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        backoff_initial: float = 0.5,
        backoff_max: float = 20.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        page_size: int = 100,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        on_request: Callable[[str, str, int | str], None] = lambda _m, _r, _s: None,
        limiter: Limiter | None = None,
    ) -> None:
        self._on_request = on_request  # (method, path, status or error class): for metrics
        self.limiter = limiter or Limiter(clock=monotonic)
        self._lock = threading.RLock()  # detection state and the odd records' memory
        if not isinstance(management_key, Secret):
            raise TypeError("management_key must be a Secret")
        try:
            self._configured = None if dialect == "auto" else Dialect(dialect)
        except ValueError as exc:
            raise ConfigError(f"unknown ARouter dialect {dialect!r}: use a, b, c or auto") from exc
        self._dialect = self._configured  # known: configured, or confirmed by the server
        self._hint = None if self._configured else hint  # saved earlier; not yet confirmed
        start = self._dialect or self._hint
        self._collection = d.collection_for(start) if start else None
        self._key = management_key
        self._backoff = Backoff(max_attempts, backoff_initial, backoff_max)
        self._page_size = d.clamp_page_size(page_size)
        self._sleep, self._rng, self._clock, self._monotonic = sleep, rng, clock, monotonic
        self._reported: set[str] = set()  # odd records already logged (once each)
        self._held: tuple[float, ProviderRetryableError] | None = None  # (until, why)
        self._http = _Http(
            base_url,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            transport=transport,
            monotonic=monotonic,
        )

    # -- dialect ---------------------------------------------------------------------------

    @property
    def dialect(self) -> Dialect:
        """The known dialect, else the hint (probes once if neither; A while A/B is open)."""
        if self._collection is None:
            self.detect()
        return self._dialect or self._hint or Dialect.A

    @property
    def detected_dialect(self) -> Dialect | None:
        """The dialect known for sure (configured, or shown by the server), without I/O.

        None while open, and while a saved hint has not been confirmed: only this is saved.
        """
        return self._dialect

    def detect(self) -> Dialect | None:
        """Probe the server with one list page unless the dialect is known; return it."""
        if self._dialect is None or self._collection is None:
            collection, page = self._first_page()
            self._learn(collection, page.records)
        return self._dialect

    def _learn(self, collection: str, records: tuple[d.Fields, ...] | list[d.Fields]) -> None:
        """What a listing of ``collection`` tells about the dialect (nothing if configured)."""
        with self._lock:
            self._learn_locked(collection, records)

    def _learn_locked(
        self, collection: str, records: tuple[d.Fields, ...] | list[d.Fields]
    ) -> None:
        self._collection = collection
        if self._configured is not None:
            return
        by_path = d.dialect_of_collection(collection)
        if by_path is not None:
            self._switch(by_path, f"GET {collection} answered")
            return
        tally = d.Tally.of(records)
        votes = f"{tally.a} listed keys vote a, {tally.b} vote b"
        current = self._dialect or self._hint
        if current is None or current is Dialect.C:
            if tally.majority is not None:
                self._switch(tally.majority, votes)
        elif (other := tally.overturns(current)) is not None:
            self._switch(other, votes)  # a clear majority (two or more) against it
        elif tally.majority is current:
            self._switch(current, votes)  # a hint the listing agrees with is now known

    def _switch(self, dialect: Dialect, why: str) -> None:
        """Take ``dialect`` as known; a change from another known (or hinted) one is one
        warning line."""
        with self._lock:
            self._switch_locked(dialect, why)

    def _switch_locked(self, dialect: Dialect, why: str) -> None:
        if dialect is self._dialect:
            return
        was = self._dialect or self._hint
        if was is None or was is dialect:
            log.info("arouter.dialect_detected", dialect=str(dialect), evidence=why)
        else:
            log.warning("arouter.dialect_changed", was=str(was), now=str(dialect), evidence=why)
        self._dialect, self._hint = dialect, None
        self._collection = d.collection_for(dialect)

    def _parse_dialect(self, collection: str) -> Dialect | None:
        """Configured: parse strictly by it. Else C by path, and A/B by the values' types."""
        return self._configured or d.dialect_of_collection(collection)

    def _ensure_collection(self) -> str:
        if self._collection is None:
            self.detect()
        assert self._collection is not None
        return self._collection

    # -- KeyProvider -----------------------------------------------------------------------

    def list_keys(self, before_page: Callable[[], None] | None = None) -> list[KeyRecord]:
        """Every key, all pages, disabled ones included, normalised.

        ``before_page`` runs before each page's request (the engine renews its lease there, so a
        long listing never outlives it).
        """
        collection, listing = self._fetch_all(before_page or (lambda: None))
        self._learn(collection, listing.records)
        id_field, parse_as = d.id_field_for(collection), self._parse_dialect(collection)
        records = [d.parse_record(record, parse_as, id_field) for record in listing.records]
        self._report_odd(records, listing.skipped)
        return records

    def _report_odd(self, records: list[KeyRecord], skipped: Iterable[str]) -> None:
        """One warning per odd record (incomplete, or not addressable) per client, escaped."""
        with self._lock:
            self._report_odd_locked(records, skipped)

    def _report_odd_locked(self, records: list[KeyRecord], skipped: Iterable[str]) -> None:
        if len(self._reported) > MAX_REPORTED:
            self._reported.clear()
        for reason in skipped:
            if reason not in self._reported:
                self._reported.add(reason)
                log.warning("arouter.record_skipped", problem=shown(reason, MESSAGE_LIMIT))
        for record in records:
            seen = f"{record.id}: {record.problem}"
            if record.problem is not None and seen not in self._reported:
                self._reported.add(seen)
                log.warning(
                    "arouter.record_incomplete",
                    key_id=record.id,
                    name=record.display_name,
                    problem=shown(record.problem, MESSAGE_LIMIT),
                )

    def create_key(self, spec: KeySpec) -> CreatedKey:
        """Create a key; AmbiguousCreateError when it may exist without our knowing its value."""
        collection = self._ensure_collection()
        endpoint = f"POST {collection}"
        answer = self._post_create(collection, spec)
        try:
            payload = _json(endpoint, answer)
            created, shape = d.parse_created(endpoint, payload, spec, self._configured, collection)
        except ProviderResponseError as exc:
            raise ambiguous_response(exc, spec.name) from exc
        if self._configured is None and shape is not None:
            self._switch(shape, f"POST {collection} answered in dialect {shape}'s shape")
        log.info(
            "arouter.key_created",
            key_id=created.record.id,
            name=shown(spec.name),
            fingerprint=created.value.fingerprint,
            problem=created.record.problem,
        )
        return created

    def _post_create(self, collection: str, spec: KeySpec) -> _Answer:
        """POST the create, trying each cap-field variant in turn after a 400."""
        variants = d.cap_variants(
            self._dialect or self._hint, spec, configured=self._configured is not None
        )
        for caps in variants[:-1]:
            try:
                return self._call(
                    "POST", collection, body=d.create_body(spec, caps), creating=spec.name
                )
            except ProviderPermanentError as exc:
                if exc.status != 400:
                    raise
                log.info(
                    "arouter.create_refused_cap_fields", fields=list(caps), name=shown(spec.name)
                )
        body = d.create_body(spec, variants[-1])
        return self._call("POST", collection, body=body, creating=spec.name)

    def update_key(self, key_id: str, *, disabled: bool) -> None:
        """Enable or disable a key (PATCH); KeyNotFoundError if it does not exist."""
        path = d.item_path(self._ensure_collection(), key_id)
        self._call("PATCH", path, body=d.update_body(disabled=disabled))
        log.info("arouter.key_updated", key_id=key_id, disabled=disabled)

    def delete_key(self, key_id: str) -> bool:
        """Delete a key: True when deleted now, False when it was already gone (404)."""
        path = d.item_path(self._ensure_collection(), key_id)
        try:
            self._call("DELETE", path)
        except KeyNotFoundError:
            log.info("arouter.key_already_gone", key_id=key_id)
            return False
        log.info("arouter.key_deleted", key_id=key_id)
        return True

    def verify_key(self, value: Secret) -> None:
        """``GET /v1/models`` with ``value``: returns if it lists models, raises otherwise."""
        endpoint = f"GET {d.MODELS_PATH}"
        answer = self._call("GET", d.MODELS_PATH, auth=value)
        models = d.check_models(endpoint, _json(endpoint, answer))
        log.debug("arouter.key_verified", fingerprint=value.fingerprint, models=models)

    def worst_case_seconds(self) -> float:
        """Longest one HTTP request may take: every attempt timing out, plus the waits."""
        per_attempt = ATTEMPT_WORST_TIMEOUTS * self._http.timeout
        return self._backoff.max_attempts * per_attempt + self._backoff.total_wait()

    # -- listing ---------------------------------------------------------------------------

    def _candidates(self) -> tuple[str, ...]:
        """Collection paths to ask, in order: the configured one alone, else the known first."""
        if self._configured is not None:
            return (d.collection_for(self._configured),)
        known = self._collection
        return tuple(sorted(d.CANDIDATE_COLLECTIONS, key=lambda path: path != known))

    def _first_page(self) -> tuple[str, d.Page]:
        """The first list page, trying each candidate collection path on 404."""
        candidates = self._candidates()
        missing: KeyNotFoundError | None = None
        for path in candidates:
            try:
                page = self._get_page(path, d.list_params(self._page_size))
            except KeyNotFoundError as exc:
                missing = exc
                continue
            if self._collection not in (None, path):
                log.warning(
                    "arouter.dialect_changed",
                    was=str(self._dialect or self._hint),
                    now="probing",
                    evidence=f"GET {self._collection} answered 404, GET {path} did not",
                )
                self._dialect = self._hint = None
            self._collection = path
            return path, page
        tried = " and ".join(f"GET {path}" for path in candidates)
        raise ProviderPermanentError(
            f"no ARouter key-management API here: {tried} answered 404 (wrong base URL or "
            "dialect?)",
            status=404,
            endpoint=f"GET {candidates[-1]}",
        ) from missing

    def _get_page(self, path: str, params: dict[str, str]) -> d.Page:
        endpoint = f"GET {path}"
        return d.parse_page(endpoint, _json(endpoint, self._call("GET", path, params=params)))

    def _fetch_all(self, before_page: Callable[[], None]) -> tuple[str, paging.Listing]:
        """All records of all pages, de-duplicated by id, in server order."""
        before_page()
        collection, page = self._first_page()
        flow = paging.listing(
            page,
            page_size=self._page_size,
            id_field=d.id_field_for(collection),
            endpoint=f"GET {collection}",
        )
        try:
            query = next(flow)
            while True:
                before_page()
                query = flow.send(self._get_page(collection, query))
        except StopIteration as done:
            listing: paging.Listing = done.value
        return collection, listing

    # -- one request, with retries ---------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        auth: Secret | None = None,
        params: dict[str, str] | None = None,
        body: object = None,
        creating: str | None = None,
    ) -> _Answer:
        """Send with retries; a 2xx answer or the mapped error. ``creating`` = key name."""
        self._check_held(f"{method} {path}")
        last: ProviderRetryableError | None = None
        for attempt in range(1, self._backoff.max_attempts + 1):
            outcome = self._attempt(
                method, path, auth or self._key, params=params, body=body, attempt=attempt
            )
            if isinstance(outcome, _Answer):
                return outcome
            if creating is not None:
                refuse_ambiguous_retry(outcome, creating)
            if not isinstance(outcome, ProviderRetryableError):
                raise outcome
            last = outcome
            delay = self._delay(outcome, attempt)
            if attempt < self._backoff.max_attempts:
                log.info(
                    "arouter.retry",
                    route=path,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=type(outcome).__name__,
                    status=outcome.status,
                )
                self._sleep(delay)
        assert last is not None
        raise gave_up(last, self._backoff.max_attempts) from last

    def _attempt(
        self,
        method: str,
        path: str,
        auth: Secret,
        *,
        params: dict[str, str] | None,
        body: object,
        attempt: int,
    ) -> _Answer | ProviderError:
        """One request: its answer if 2xx and complete, else the error it maps to.

        It waits for a slot of the account's :class:`Limiter` first (at most one timeout).
        """
        try:
            with self.limiter.slot(f"{method} {path}", self._http.timeout):
                return self._sent(method, path, auth, params=params, body=body, attempt=attempt)
        except ProviderError as exc:  # no slot: not sent
            log.info("arouter.request_held_back", route=path, error=str(exc))
            return exc

    def _sent(
        self,
        method: str,
        path: str,
        auth: Secret,
        *,
        params: dict[str, str] | None,
        body: object,
        attempt: int,
    ) -> _Answer | ProviderError:
        started = self._monotonic()
        try:
            answer = self._http.send(
                method, path, auth, params=params, body=body, secrets=(self._key,)
            )
        except ProviderError as exc:
            log.debug(
                "arouter.request",
                method=method,
                route=path,
                status=None,
                attempt=attempt,
                error=type(exc).__name__,
            )
            self._on_request(method, path, type(exc).__name__)
            return exc
        duration_ms = round((self._monotonic() - started) * 1000, 1)
        log.debug(
            "arouter.request",
            method=method,
            route=path,
            status=answer.status,
            attempt=attempt,
            duration_ms=duration_ms,
        )
        self._on_request(method, path, answer.status)
        error = self._error_for(f"{method} {path}", answer, (self._key, auth))
        delay = error.retry_after if isinstance(error, RateLimitedError) else None
        self.limiter.answered(answer.status, delay)
        return error or answer

    def _error_for(
        self, endpoint: str, answer: _Answer, secrets: tuple[Secret, ...]
    ) -> ProviderError | None:
        """The error an answer maps to; None for a complete 2xx."""
        if not 200 <= answer.status < 300:
            return error_for_status(
                endpoint,
                answer.status,
                answer.headers,
                answer.body,
                secrets=secrets,
                now=self._clock(),
            )
        if answer.complete:
            return None
        return ProviderResponseError(
            f"{endpoint}: answer larger than {self._http.max_bytes} bytes",
            status=answer.status,
            endpoint=endpoint,
        )

    def _delay(self, error: ProviderRetryableError, attempt: int) -> float:
        """How long to wait before the next attempt; raises (and holds every call until the
        wait has passed) if the server wants too long."""
        if error.retry_after is None:
            return self._backoff.delay(attempt, self._rng)
        if error.retry_after > self._backoff.maximum:
            self._held = (self._monotonic() + error.retry_after, error)
            raise retry_later(error, self._backoff.maximum) from error
        return error.retry_after

    def _check_held(self, endpoint: str) -> None:
        """Raise, sending nothing, while a server's wait that was not waited out runs."""
        if self._held is None:
            return
        until, why = self._held
        left = until - self._monotonic()
        if left <= 0:
            self._held = None
            return
        log.debug("arouter.held", route=endpoint, left_s=round(left, 3))
        raise type(why)(
            f"{endpoint}: not sent: the server asked to wait, {left:.1f}s left ({why})",
            status=why.status,
            endpoint=endpoint,
            retry_after=left,
            reached_server=False,
        )


class InferenceClient(_Closing):
    """Calls a live key can make (models, chat, embeddings); returns HTTP statuses.

    No retries, and no exception for an HTTP status (a consumer counts 401s); a connection
    failure raises ProviderRetryableError. Bodies are read within ``max_response_bytes`` and
    dropped.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = _Http(
            base_url,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            transport=transport,
            monotonic=time.monotonic,
        )

    def models(self, value: Secret) -> int:
        """``GET /v1/models``."""
        return self._status("GET", d.MODELS_PATH, value, None)

    def chat(self, value: Secret, model: str = "openai/gpt-4o", prompt: str = "ping") -> int:
        """``POST /v1/chat/completions`` with one user message."""
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        return self._status("POST", d.CHAT_PATH, value, body)

    def embeddings(
        self, value: Secret, model: str = "openai/text-embedding-3-small", text: str = "ping"
    ) -> int:
        """``POST /v1/embeddings``."""
        return self._status("POST", d.EMBEDDINGS_PATH, value, {"model": model, "input": text})

    def _status(self, method: str, path: str, value: Secret, body: object) -> int:
        answer = self._http.send(method, path, value, body=body)
        log.debug(
            "arouter.inference",
            method=method,
            route=path,
            status=answer.status,
            fingerprint=value.fingerprint,
        )
        return answer.status
