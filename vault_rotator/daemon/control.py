"""The control API's decisions: who may do what, and what each route does.

Every action route needs a bearer token that is a Vault token. The daemon looks it up
(``auth/token/lookup-self`` as that token: unknown, expired or revoked is 401; it gives the
accessor) and asks Vault for its capabilities on
``<kv_mount>/data/<state_prefix>/control/<env>/<name>``: ``update`` for actions (else 403),
``read`` for a key to appear in ``GET /v1/status``. Every action is logged with the caller's
token accessor, never the token.

Routes (one per CLI verb)::

    POST /v1/rotate/{env}/{name}     {"emergency": true, "revoke_old_now": true}   (optional)
    POST /v1/resume/{env}/{name}
    POST /v1/finish/{env}/{name}     {"keep_old": true}                            (required)
    POST /v1/abort/{env}/{name}
    POST /v1/freeze/{env}[/{name}]   {"reason": "..."}                             (optional)
    POST /v1/unfreeze/{env}[/{name}]
    GET  /v1/status
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from vault_rotator.commands.common import in_flight_policy
from vault_rotator.commands.status_cmd import collect
from vault_rotator.daemon import freeze as freezes
from vault_rotator.daemon.daemon import Daemon
from vault_rotator.engine.engine import Command, Progress, Verb
from vault_rotator.errors import (
    ConfigError,
    EngineError,
    LeaseHeldError,
    StorePermissionError,
    VaultRotatorError,
)
from vault_rotator.policy import KeyPolicy
from vault_rotator.secret import Secret

log = structlog.get_logger(__name__)

ROUTE = re.compile(
    r"^/v1/(rotate|resume|finish|abort|freeze|unfreeze)/([a-z0-9-]+)(?:/([a-z0-9-]+))?$"
)
VERBS = {"rotate": Verb.ROTATE, "resume": Verb.RESUME, "abort": Verb.ABORT}


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class CallerAuth(Protocol):
    """What the control API needs from Vault about a caller's token."""

    def accessor_of(self, token: Secret) -> str: ...

    def capabilities_of(self, token: Secret, paths: list[str]) -> dict[str, frozenset[str]]: ...


def control_path(mount: str, prefix: str, env: str, name: str | None) -> str:
    tail = f"{env}/{name}" if name else env
    return f"{mount}/data/{prefix}/control/{tail}"


class Control:
    """Authorises and runs control-API requests against a daemon."""

    def __init__(self, daemon: Daemon, auth: CallerAuth) -> None:
        self.daemon = daemon
        self.auth = auth

    def handle(self, method: str, path: str, token: str | None, body: Mapping[str, Any]) -> Answer:
        if not token:
            return Answer(401, {"error": "a Vault token is required (Authorization: Bearer ...)"})
        secret = Secret(token)
        try:
            accessor = self.auth.accessor_of(secret)
        except StorePermissionError:
            return Answer(401, {"error": "Vault does not accept this token"})
        if method == "GET" and path == "/v1/status":
            return self._status(secret)
        match = ROUTE.match(path)
        if method != "POST" or match is None:
            return Answer(404, {"error": f"no route {method} {path}"})
        return self._guarded(match, secret=secret, accessor=accessor, body=body)

    def _guarded(
        self, match: re.Match[str], *, secret: Secret, accessor: str, body: Mapping[str, Any]
    ) -> Answer:
        verb, env, name = match.groups()
        try:
            return self._act(verb, env, name, token=secret, accessor=accessor, body=body)
        except LeaseHeldError as exc:
            return Answer(409, {"error": str(exc)})
        except ConfigError as exc:
            return Answer(400, {"error": str(exc)})
        except EngineError as exc:
            return Answer(409, {"error": str(exc)})
        except VaultRotatorError as exc:
            return Answer(502, {"error": str(exc)})

    def _allowed(self, token: Secret, paths: list[str], capability: str) -> set[str]:
        held = self.auth.capabilities_of(token, paths)
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
        policy = self._target(env, name)
        path = control_path(policy.vault.kv_mount, policy.vault.state_prefix, env, name)
        if not self._allowed(token, [path], "update"):
            log.warning("control denied", verb=verb, env=env, name=name, accessor=accessor)
            return Answer(403, {"error": f"this token lacks update on {path}"})
        log.info("control action", verb=verb, env=env, name=name, accessor=accessor)
        if verb in ("freeze", "unfreeze"):
            return self._freeze(verb, policy, f"{env}/{name}" if name else env, accessor, body)
        if name is None:
            return Answer(404, {"error": f"{verb} needs /v1/{verb}/ENV/NAME"})
        command = self._command(verb, body, accessor)
        start = command.verb == Verb.ROTATE
        progress = self.daemon.engine.advance(policy, start=start, command=command)
        return Answer(202 if not progress.finished else 200, _progress(progress))

    def _command(self, verb: str, body: Mapping[str, Any], accessor: str) -> Command:
        by = f"token:{accessor}"
        if verb == "finish":
            if body.get("keep_old") is not True:
                raise ConfigError('finish needs {"keep_old": true}')
            return Command(Verb.FINISH_KEEP_OLD, trigger="api", by=by)
        emergency = body.get("emergency") is True
        revoke = body.get("revoke_old_now") is True
        if revoke and not emergency:
            raise ConfigError("revoke_old_now needs emergency")
        return Command(
            VERBS[verb], emergency=emergency, revoke_old_now=revoke, trigger="api", by=by
        )

    def _target(self, env: str, name: str | None) -> KeyPolicy:
        policies = self.daemon.policies
        if name is not None:
            return in_flight_policy(policies, f"{env}/{name}", self.daemon.runtime.kv)
        environment = policies.environments.get(env)
        if environment is None or not environment.keys:
            raise ConfigError(f"no environment {env!r} with keys in the policies")
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
        return Answer(200, {"target": target, "frozen": result.to_dict()})

    def _status(self, token: Secret) -> Answer:
        policies = self.daemon.policies
        paths = {
            p.ref: control_path(p.vault.kv_mount, p.vault.state_prefix, p.env, p.name)
            for p in policies
        }
        readable = self._allowed(token, sorted(set(paths.values())), "read")
        rows = collect(policies, self.daemon.runtime, self.daemon.clock())
        visible = [r for r in rows if paths.get(r["key"]) in readable]
        return Answer(200, {"keys": visible})


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
