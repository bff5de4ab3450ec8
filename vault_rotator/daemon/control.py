"""The control API's decisions: who may do what, and what each route does.

Every action route needs a bearer token that is a Vault token. The daemon looks it up
(``auth/token/lookup-self`` as that token: unknown, expired or revoked is 401; it gives the
accessor) and asks Vault for its capabilities on
``<kv_mount>/data/<state_prefix>/control/<env>/<name>``: ``update`` for actions (else 403),
``read`` for a key to appear in ``GET /v1/status``. Every action is logged with the caller's
token accessor, never the token.

``GET /v1/status`` answers from what the daemon holds: its books' state records, fresh to
within a poll (:func:`~.status_rows.HeldRows`), with no Vault read per key; only the keys of
accounts this replica does not lead are read from Vault (:mod:`.status_rows`).

Routes (one per CLI verb)::

    POST /v1/rotate/{env}/{name}     {"emergency": true, "revoke_old_now": true}   (optional)
    POST /v1/rotate/{env}            {"emergency": true, "revoke_old_now": true}   (emergency
                                     required: every key of the environment, see below)
    POST /v1/resume/{env}/{name}
    POST /v1/finish/{env}/{name}     {"keep_old": true}                            (required)
    POST /v1/abort/{env}/{name}
    POST /v1/freeze/{env}[/{name}]   {"reason": "..."}                             (optional)
    POST /v1/unfreeze/{env}[/{name}]
    GET  /v1/status

``rotate``, ``resume`` and ``abort`` take ``emergency`` and ``revoke_old_now`` (booleans; the
CLI sends both); ``finish`` only ``keep_old``; ``freeze`` only ``reason`` (a string);
``unfreeze`` and ``status`` nothing. An unknown field or a wrong type is a 400 naming it.

``POST /v1/rotate/{env}`` is the environment-wide emergency (``rotate --env ENV --emergency
--yes``): it needs ``{"emergency": true}`` (else 400) and ``update`` on the environment's
control path ``<kv_mount>/data/<state_prefix>/control/<env>``. It saves the request in Vault
(:mod:`vault_rotator.engine.emergency`; an open one is resumed) with the caller's token accessor
as ``by``, and answers 202 with the request's id; the daemon's ticks act on it
(:mod:`.emergencies`). ``GET /v1/status`` lists each environment's current request under
``emergencies`` to callers with ``read`` on that environment's control path.

Checks run in this order, so that no answer tells a caller more than it may know: no or a
malformed token 401; a token Vault refuses 401; no such route 404 (a known route with another
method 405); a bad body 400; no ``update`` on the control path 403; then the target.

**An unknown environment or key answers exactly the 403 a forbidden known key gets**: the
message names only the requested ref, never a path, the known keys or a file. Only a caller
holding ``update`` where that ref's control path would be (a root token; for an unknown
environment, under any mount and state prefix of the policies) learns that it does not
exist: 404 naming only the requested ref.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from vault_rotator.daemon import freeze as freezes
from vault_rotator.daemon.book import Entry
from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.emergencies import emergency_views, open_request
from vault_rotator.daemon.refs import in_flight_policy
from vault_rotator.daemon.status_rows import HeldRows
from vault_rotator.display import redact_text
from vault_rotator.engine.engine import Command, Progress, Verb
from vault_rotator.engine.state import StateRecord
from vault_rotator.errors import (
    ConfigError,
    EngineError,
    LeaseHeldError,
    StorePermissionError,
    VaultRotatorError,
)
from vault_rotator.policy import KeyPolicy, PolicySet
from vault_rotator.secret import Secret, fingerprint

log = structlog.get_logger(__name__)

ROUTE = re.compile(
    r"/v1/(rotate|resume|finish|abort|freeze|unfreeze)/([a-z0-9-]+)(?:/([a-z0-9-]+))?"
)
STATUS_PATH = "/v1/status"
VERBS = {"rotate": Verb.ROTATE, "resume": Verb.RESUME, "abort": Verb.ABORT}
_MODES: dict[str, type] = {"emergency": bool, "revoke_old_now": bool}
FIELDS: dict[str, dict[str, type]] = {
    "rotate": _MODES,
    "resume": _MODES,
    "abort": _MODES,
    "finish": {"keep_old": bool},
    "freeze": {"reason": str},
    "unfreeze": {},
    "status": {},
}
TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")  # printable ASCII, as Vault's tokens are
_SHOWN = 120  # characters of a caller's text echoed back at most


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    # The body as sent (JSON, redacted), when the caller encoded it already: GET /v1/status
    # joins rows encoded once per drawing instead of encoding thousands of rows per call.
    payload: bytes | None = None


class CallerAuth(Protocol):
    """What the control API needs from Vault about a caller's token."""

    def accessor_of(self, token: Secret) -> str: ...

    def capabilities_of(self, token: Secret, paths: list[str]) -> dict[str, frozenset[str]]: ...


def control_path(mount: str, prefix: str, env: str, name: str | None) -> str:
    tail = f"{env}/{name}" if name else env
    return f"{mount}/data/{prefix}/control/{tail}"


def would_be_paths(policies: PolicySet, env: str, name: str | None) -> list[str]:
    """Where the control path of ``env[/name]`` is, or would be if it existed.

    A known environment has one (its mount and state prefix, whether or not the key exists);
    an unknown one, the path under each distinct mount and state prefix of the policies.
    """
    environment = policies.environments.get(env)
    if environment is not None:
        vault = environment.vault
        return [control_path(vault.kv_mount, vault.state_prefix, env, name)]
    places = {(e.vault.kv_mount, e.vault.state_prefix) for e in policies.environments.values()}
    return sorted(control_path(mount, prefix, env, name) for mount, prefix in places)


def bad_body(verb: str, body: Mapping[str, Any]) -> str | None:
    """What is wrong with a route's JSON object body, or None."""
    allowed = FIELDS[verb]
    for name, value in body.items():
        kind = allowed.get(name)
        if kind is None:
            known = ", ".join(sorted(allowed)) or "none"
            return f"unknown field {_short(name)} for {verb} (fields: {known})"
        if not isinstance(value, kind):
            return f"{name!r} must be {'true or false' if kind is bool else 'a string'}"
    if body.get("revoke_old_now") is True and body.get("emergency") is not True:
        return "revoke_old_now needs emergency"
    if verb == "finish" and body.get("keep_old") is not True:
        return 'finish needs {"keep_old": true}'
    return None


class Control:
    """Authorises and runs control-API requests against a daemon."""

    def __init__(self, daemon: Daemon, auth: CallerAuth) -> None:
        self.daemon = daemon
        self.auth = auth
        self._status_lock = threading.Lock()
        self._status_shot: _Snapshot | None = None
        self._status_wanted = threading.Event()  # a caller took a snapshot past its freshness
        self._drawer: threading.Thread | None = None
        # caller (its token's fingerprint) -> (the drawing's key paths and request paths,
        # when asked, the drawing, the control paths it may read there)
        self._readers: dict[
            str, tuple[dict[str, str], dict[str, str], float, _Snapshot, set[str]]
        ] = {}
        self._asking: set[str] = set()  # callers whose capabilities are asked behind them
        self._rows = HeldRows()  # each key's row kept between drawings while it stays the same
        # the last answer's (drawing, readable paths, rows, their JSON joined): see _rows_for
        self._status_rows: tuple[_Snapshot, set[str], list[dict[str, Any]], bytes] | None = None

    def handle(self, method: str, path: str, token: str | None, body: Mapping[str, Any]) -> Answer:
        caller = self._caller(token)
        if isinstance(caller, Answer):
            return caller
        route = _route(method, path)
        if isinstance(route, Answer):
            return route
        problem = bad_body(route[0], body) or _whole_env_body(route, body)
        if problem is not None:
            return Answer(400, {"error": problem})
        return self._guarded(route, *caller, body)

    def _caller(self, token: str | None) -> tuple[Secret, str] | Answer:
        """The caller's token and its accessor, or the 401 (502 if Vault cannot tell)."""
        if not token or not TOKEN.fullmatch(token):
            return Answer(401, {"error": "a Vault token is needed in the Authorization header"})
        secret = Secret(token)
        try:
            return secret, self.auth.accessor_of(secret)
        except StorePermissionError:
            return Answer(401, {"error": "Vault does not accept this token"})
        except VaultRotatorError as exc:
            return Answer(502, {"error": f"could not check the token: {exc}"})

    def _guarded(
        self,
        route: tuple[str, str, str | None],
        token: Secret,
        accessor: str,
        body: Mapping[str, Any],
    ) -> Answer:
        verb, env, name = route
        try:
            if verb == "status":
                return self._status(token)
            return self._act(verb, env, name, token=token, accessor=accessor, body=body)
        except (LeaseHeldError, EngineError) as exc:
            return Answer(409, {"error": str(exc)})
        except ConfigError as exc:
            return Answer(400, {"error": str(exc)})
        except VaultRotatorError as exc:
            return Answer(502, {"error": str(exc)})

    def _allowed(self, token: Secret, paths: list[str], capability: str) -> set[str]:
        held = self.auth.capabilities_of(token, paths) if paths else {}
        return {p for p in paths if held.get(p, frozenset()) & {capability, "root"}}

    def _act(
        self,
        verb: str,
        env: str,
        name: str | None,
        *,
        token: Secret,
        accessor: str,
        body: Mapping[str, Any],
    ) -> Answer:
        ref = f"{env}/{name}" if name else env
        if not self._allowed(token, would_be_paths(self.daemon.policies, env, name), "update"):
            log.warning("control denied", verb=verb, env=env, name=name, accessor=accessor)
            return Answer(403, {"error": f"this token lacks update on the control path of {ref}"})
        policy = self._target(env, name)
        if policy is None:
            log.info("control target unknown", verb=verb, env=env, name=name, accessor=accessor)
            return Answer(404, {"error": f"no key or environment {ref} in the policies"})
        log.info("control action", verb=verb, env=env, name=name, accessor=accessor)
        if verb in ("freeze", "unfreeze"):
            return self._freeze(verb, policy, ref, accessor, body)
        if verb == "rotate" and name is None:
            return self._emergency(env, accessor, body)
        if name is None:
            return Answer(404, {"error": f"{verb} needs /v1/{verb}/ENV/NAME"})
        command = _command(verb, body, accessor)
        start = command.verb == Verb.ROTATE
        progress = self.daemon.engine.advance(policy, start=start, command=command)
        return Answer(202 if not progress.finished else 200, _progress(progress))

    def _target(self, env: str, name: str | None) -> KeyPolicy | None:
        """The policy acted on, or None for an unknown environment or key."""
        policies = self.daemon.policies
        if name is not None:
            try:
                return in_flight_policy(policies, f"{env}/{name}", self.daemon.runtime.kv)
            except ConfigError:  # its message names the known keys and the file: not for callers
                return None
        environment = policies.environments.get(env)
        if environment is None or not environment.keys:
            return None
        return environment.keys[0]

    def _freeze(
        self, verb: str, policy: KeyPolicy, target: str, accessor: str, body: Mapping[str, Any]
    ) -> Answer:
        kv = self.daemon.runtime.kv(policy.vault.kv_mount)
        prefix = policy.vault.state_prefix
        if verb == "freeze":
            reason = str(body.get("reason", ""))[:200]
            result = freezes.freeze(
                kv, prefix, target, f"token:{accessor}", at=self.daemon.clock(), reason=reason
            )
        else:
            result = freezes.unfreeze(kv, prefix, target)
        # Only what the caller targeted: the record also holds other environments' and keys'
        # freezes, who made them (token accessors) and why, which this caller may not see.
        frozen = target in result.envs or target in result.keys
        return Answer(200, {"target": target, "frozen": frozen})

    def _emergency(self, env: str, accessor: str, body: Mapping[str, Any]) -> Answer:
        """Save (or resume) the environment's emergency request; the ticks act on it."""
        request, again = open_request(
            self.daemon.policies.environments[env],
            self.daemon.runtime.kv,
            self.daemon.clock,
            by=f"token:{accessor}",
            trigger="api",
            revoke_old_now=body.get("revoke_old_now") is True,
        )
        self.daemon.emergencies.saved(env, request)  # shown at once, not after the next tick
        log.warning(
            "emergency requested",
            env=env,
            request_id=request.id,
            resumed=again,
            keys=len(request.keys),
            accessor=accessor,
        )
        answer = {
            "env": env,
            "request_id": request.id,
            "keys": len(request.keys),
            "requested_at": request.requested_at,
            "revoke_old_now": request.revoke_old_now,
            "resumed": again,
        }
        return Answer(202, answer)

    def _status(self, token: Secret) -> Answer:
        """Every key and emergency request the caller may read, from what the daemon holds
        (:func:`~.status_rows.HeldRows`; keys of accounts it does not lead: read from Vault).
        What the daemon holds is drawn at most once per :data:`STATUS_FRESH_S` and shared by
        every caller meanwhile (a burst of callers costs one drawing), a row encoded again
        only when it changed; each caller's capabilities are asked at most once per drawing
        and reused while the keys drawn are the same (:meth:`_readable`). A drawing that took
        longer than :data:`STATUS_SYNC_DRAW_S`, or of more than :data:`STATUS_SYNC_KEYS`
        keys, is redone in the background, paced by its own cost, and callers get the last
        one at once: the answer's ``as_of`` says when it was drawn, and an emergency view's
        ETA counts from the answer's moment."""
        shot = self._held_status()
        readable = self._readable(token, shot)
        keys, rows = self._rows_for(shot, readable)
        age = max(0.0, time.monotonic() - shot.at)
        emergencies = [
            _aged(doc, age) for env, doc in shot.views if shot.env_paths[env] in readable
        ]
        errors = [line for env, line in shot.unreadable if shot.env_paths[env] in readable]
        body = {
            "as_of": shot.drawn_at,
            "emergencies": emergencies,
            "emergency_errors": errors,
            "keys": keys,
        }
        head = redact_text(json.dumps({k: v for k, v in body.items() if k != "keys"},
                                      sort_keys=True))  # fmt: skip
        payload = head[:-1].encode() + b', "keys": [' + rows + b"]}"
        return Answer(200, body, payload=payload)

    def _rows_for(self, shot: _Snapshot, readable: set[str]) -> tuple[list[dict[str, Any]], bytes]:
        """The rows of a drawing the caller may read, and their JSON joined: worked out once
        per drawing and set of readable paths (callers with the same capabilities polling the
        same drawing share them)."""
        with self._status_lock:
            last = self._status_rows
        if last is not None and last[0] is shot and last[1] is readable:
            return last[2], last[3]
        shown = [i for i, (ref, _row) in enumerate(shot.rows) if shot.paths[ref] in readable]
        keys = [shot.rows[i][1] for i in shown]
        rows = b", ".join(shot.encoded[i] for i in shown)
        with self._status_lock:
            self._status_rows = (shot, readable, keys, rows)
        return keys, rows

    def _readable(self, token: Secret, shot: _Snapshot) -> set[str]:
        """The snapshot's control paths the caller may read: asked of Vault once per caller
        and drawing, and no more than once per STATUS_CAPS_S while the drawings are of the
        same keys and requests (a caller's token is still looked up at every call: a revoked
        one is refused at once; a change of its policies shows within STATUS_CAPS_S)."""
        caller = fingerprint(token.reveal())
        with self._status_lock:
            known = self._readers.get(caller)
        same = known is not None and known[0] is shot.paths and known[1] == shot.env_paths
        if same and known is not None:
            age = time.monotonic() - known[2]
            if known[3] is shot or age < STATUS_CAPS_S:
                if age > STATUS_CAPS_S / 2 and known[3] is not shot:
                    self._ask_behind(caller, token, shot)  # ready before this one expires
                return known[4]
        return self._ask_readable(caller, token, shot)

    def _ask_readable(self, caller: str, token: Secret, shot: _Snapshot) -> set[str]:
        wanted = sorted(set(shot.paths.values()) | set(shot.env_paths.values()))
        asked = time.monotonic()
        readable = self._allowed(token, wanted, "read")
        with self._status_lock:
            if len(self._readers) >= STATUS_READERS:
                self._readers.clear()
            self._readers[caller] = (shot.paths, shot.env_paths, asked, shot, readable)
        return readable

    def _ask_behind(self, caller: str, token: Secret, shot: _Snapshot) -> None:
        """Ask a caller's capabilities again in the background (one question at a time per
        caller): a caller polling every second does not wait for Vault to weigh 10,000 paths
        under load in its call. A failure leaves the known answer, which then expires and is
        asked in the call (its error shown)."""
        with self._status_lock:
            if caller in self._asking:
                return
            self._asking.add(caller)

        def ask() -> None:
            try:
                self._ask_readable(caller, token, shot)
            except Exception as exc:  # the next call past the expiry asks, and says why
                error = str(exc) if isinstance(exc, VaultRotatorError) else type(exc).__name__
                log.debug("capabilities asked behind the caller failed", error=error)
            finally:
                with self._status_lock:
                    self._asking.discard(caller)

        threading.Thread(target=ask, name="vr-status-caps", daemon=True).start()

    def _held_status(self) -> _Snapshot:
        with self._status_lock:  # one drawing at a time; those waiting take it
            shot = self._status_shot
            if shot is not None and shot.generation == self.daemon.generation:
                if shot.at > time.monotonic() - STATUS_FRESH_S:
                    return shot
                costly = shot.took > STATUS_SYNC_DRAW_S or len(shot.rows) > STATUS_SYNC_KEYS
                if costly:  # redrawn behind the callers
                    self._status_wanted.set()
                    self._start_drawer()
                    return shot
            self._status_shot = _draw(self.daemon, self._rows)
            return self._status_shot

    def _start_drawer(self) -> None:
        if self._drawer is None or not self._drawer.is_alive():
            self._drawer = threading.Thread(
                target=self._draw_behind, name="vr-status-drawer", daemon=True
            )
            self._drawer.start()

    def _draw_behind(self) -> None:
        """Redraw while callers ask, each drawing at least STATUS_PACE times its own wall
        time after the last (a busy daemon spends at most about a sixth of its time on it);
        idle once nobody asked for a minute."""
        while self._status_wanted.wait(STATUS_DRAWER_IDLE_S):
            self._status_wanted.clear()
            try:
                shot = _draw(self.daemon, self._rows)
            except Exception as exc:  # callers keep the last drawing; one line, no traceback
                error = str(exc) if isinstance(exc, VaultRotatorError) else f"{exc!r:.200}"
                log.warning("status drawing failed; the last one is served", error=error)
                time.sleep(STATUS_FRESH_S)
                continue
            with self._status_lock:
                self._status_shot = shot
            time.sleep(max(STATUS_FRESH_S, STATUS_PACE * shot.took))


STATUS_FRESH_S = 1.0  # GET /v1/status draws what the daemon holds at most this often
STATUS_SYNC_DRAW_S = 0.25  # a drawing that took longer is redone behind the callers
STATUS_SYNC_KEYS = 2000  # ... and one of more keys, however quick (a drawing of 10,000 keys
# that happened to be quick, redone in a call while the daemon was busy, took 4 s)
STATUS_PACE = 5.0  # ... each at least this many times its own wall time after the last
STATUS_DRAWER_IDLE_S = 60.0  # the background drawer ends after this long without a caller
STATUS_READERS = 64  # callers whose capabilities on the current drawing are remembered
STATUS_CAPS_S = 10.0  # ... and reused for later drawings of the same paths this long


def _aged(doc: dict[str, Any], age: float) -> dict[str, Any]:
    """An emergency view drawn ``age`` seconds ago, its ETA counted from now."""
    eta = doc.get("eta_s")
    if eta is None or age <= 0 or doc.get("settled"):
        return doc
    return {**doc, "eta_s": round(max(0.0, eta - age), 1)}


@dataclass(frozen=True)
class _Snapshot:
    """What the daemon holds, drawn for GET /v1/status: every key's row (and its JSON,
    redacted), every request's view (filtered per caller afterwards by the control paths)."""

    at: float  # monotonic
    drawn_at: float  # epoch (the daemon's clock)
    took: float  # seconds the drawing took
    generation: int
    paths: dict[str, str]  # ref -> its control path
    env_paths: dict[str, str]  # env -> its control path
    rows: list[tuple[str, dict[str, Any]]]  # (ref, row), in the policies' order
    encoded: list[bytes]  # each row's JSON, redacted, in the same order
    views: list[tuple[str, dict[str, Any]]]  # (env, view)
    unreadable: list[tuple[str, str]]  # (env, line)


def _draw(daemon: Daemon, drawer: HeldRows) -> _Snapshot:
    began = time.monotonic()
    policies, now = daemon.policies, daemon.clock()
    paths = drawer.paths(policies, control_path)
    held = held_entries(daemon)
    records = _Records(held)
    starting = list(daemon.starting.values())  # (the ticks change it meanwhile)
    busy = frozenset(ref for starts in starting for ref in list(starts))
    found, unreadable = emergency_views(
        policies,
        daemon.runtime.kv,
        now,
        records=records,
        busy=busy,
        requests=dict(daemon.emergencies.latest),
        judged=dict(daemon.emergencies.judged),
    )
    env_paths = {
        env.environment: control_path(
            env.vault.kv_mount, env.vault.state_prefix, env.environment, None
        )
        for env in [e for e, _doc in found] + [e for e, _line in unreadable]
    }
    keys = list(policies)
    rows, encoded = drawer.draw(keys, held, daemon.runtime, now)
    at = time.monotonic()
    return _Snapshot(
        at=at,
        drawn_at=now,
        took=at - began,
        generation=daemon.generation,
        paths=paths,
        env_paths=env_paths,
        rows=[(p.ref, row) for p, row in zip(keys, rows, strict=True)],
        encoded=encoded,
        views=[(env.environment, doc) for env, doc in found],
        unreadable=[(env.environment, line) for env, line in unreadable],
    )


class _Records(Mapping[str, StateRecord]):
    """The state records of held entries, by ref (looked up, not copied: a drawing of
    10,000 keys needs a few of them)."""

    def __init__(self, held: Mapping[str, Entry]) -> None:
        self._held = held

    def __getitem__(self, ref: str) -> StateRecord:
        return self._held[ref].record

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)


def held_entries(daemon: Daemon) -> dict[str, Entry]:
    """The book entries of the accounts this replica leads, by ref, as of their last poll
    (a key of the policies from its own account's book first; books of older policies and
    books still loading are left out)."""
    books = [
        b for b in list(daemon.books.values()) if b.loaded and b.generation == daemon.generation
    ]
    entries = [pair for book in books for pair in list(book.entries.items())]  # by ref
    held = {ref: e for ref, e in entries if e.in_policy}
    for ref, entry in entries:
        held.setdefault(ref, entry)
    return held


def _whole_env_body(route: tuple[str, str, str | None], body: Mapping[str, Any]) -> str | None:
    """A rotate of a whole environment is an emergency or nothing."""
    verb, _env, name = route
    if verb == "rotate" and name is None and body.get("emergency") is not True:
        return 'rotate of a whole environment needs {"emergency": true} (every key, at once)'
    return None


def _route(method: str, path: str) -> tuple[str, str, str | None] | Answer:
    """(verb, env, name) of a control route, or the 404 / 405 answer."""
    if path == STATUS_PATH:
        if method != "GET":
            return Answer(405, {"error": f"use GET for {STATUS_PATH}"}, {"Allow": "GET"})
        return "status", "", None
    match = ROUTE.fullmatch(path)
    if match is None:
        return Answer(404, {"error": f"no route {_short(path)}"})
    if method != "POST":
        return Answer(405, {"error": f"use POST for /v1/{match[1]}/..."}, {"Allow": "POST"})
    verb, env, name = match.groups()
    return verb, env, name


def _command(verb: str, body: Mapping[str, Any], accessor: str) -> Command:
    by = f"token:{accessor}"
    if verb == "finish":
        return Command(Verb.FINISH_KEEP_OLD, trigger="api", by=by)
    return Command(
        VERBS[verb],
        emergency=body.get("emergency") is True,
        revoke_old_now=body.get("revoke_old_now") is True,
        trigger="api",
        by=by,
    )


def _short(text: str) -> str:
    """A caller's text, quoted and cut, for an error message."""
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _progress(progress: Progress) -> dict[str, Any]:
    out = progress.outcome
    return {
        "key": progress.ref,
        "phase": progress.phase,
        "rotation_id": progress.rotation_id,
        "waiting": progress.waiting,
        "outcome": out.outcome if out else None,
        "stalled": progress.stalled.reason if progress.stalled else None,
    }
