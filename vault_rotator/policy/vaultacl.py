"""Least-privilege Vault policies (HCL) derived from the policy files: pure, no I/O.

:func:`rotator_rules` lists what the daemon and the CLI touch, path by path, for exactly the
configured keys; :func:`consumer_rules` what one key's consumer reads and acknowledges;
:func:`render` turns either into HCL with a comment above every rule. Paths are exact (no ``*``
or ``+``), so no rule reaches a management key beyond ``read``, another consumer's secret, or
another key's state; the one exception is a key's own ack folder, whose instances are unknown
in advance: ``<prefix>/acks/<env>/<name>/+`` (``+`` is one path segment, never a deeper one).
A consumer policy grants nothing inside any configured state prefix but that folder, inside its
own prefix only; one that would is refused (:mod:`~vault_rotator.policy.namespace`).

What each rule is for, as the engine uses the KV v2 API (:class:`~vault_rotator.store.vault.
VaultKv`: ``read`` and ``write`` on ``data/``; ``current_version``, ``set_custom_metadata``,
``destroy`` and ``list`` on ``metadata/``)::

    consumer secret   data: create read update      read it, publish by check-and-set
                      metadata: read update         current version; custom metadata labels
    state record      data: create read update      the record and its lease
                      metadata: read                its version when the record was deleted
    pending values    data: create read update      the new key and the old secret in flight
                      metadata: read delete         its version; destroyed (every version)
    management key    data: read                    nothing else, ever
    state/ and state/<env>/, pending/<env>/         metadata: list (status, audit, daemon)
    control/frozen    data: create read update      freezes
    accounts/<id>     data: create read update      the account lease (which replica ticks)
    acks/<env>/<name>/+   data: read; metadata: delete   consumer acks; long-gone ones removed
    acks/<env>/<name>/    metadata: list                 find the key's ack records
    emergency/<env>   data: create read update      the environment-wide emergency request
    emergency/<env>/+/+  data: create read update   its key shards (<request id>/<n>)
    changes           data: create read update      the change signal (engine.changes): the
                                                    daemon reads it every poll, operators'
                                                    passes bump it
    token self paths  lookup, renew, revoke, capabilities-self (also in Vault's default policy)

The layout mirrors :class:`~vault_rotator.engine.session.StateStore`,
:func:`~vault_rotator.engine.changes.changes_path`,
:func:`~vault_rotator.daemon.freeze.frozen_path` and
:func:`~vault_rotator.engine.emergency.emergency_path` without importing them (this package sits
below the engine); ``tests/test_vault_policy.py`` checks that they agree, and that every
capability the preflight asks for is granted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vault_rotator.errors import ConfigError
from vault_rotator.policy.model import EnvironmentPolicy, KeyPolicy, PolicySet
from vault_rotator.policy.namespace import inside

# Vault's own order for capabilities, so rendered lists read the same everywhere.
CAPABILITY_ORDER = ("create", "read", "update", "patch", "delete", "list")
_EXACT = re.compile(r"[A-Za-z0-9._/-]+")

TOKEN_SELF = (
    ("auth/token/lookup-self", ("read",), "look up our own token (readiness, renewal)"),
    ("auth/token/renew-self", ("update",), "renew our own token"),
    ("auth/token/revoke-self", ("update",), "revoke a token we logged in for, on exit"),
    ("sys/capabilities-self", ("update",), "our capabilities on a key's paths (preflight)"),
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``path`` stanza: a full API path, its capabilities, why (comment lines), and the
    section it is shown under."""

    path: str
    capabilities: tuple[str, ...]
    why: tuple[str, ...]
    section: str = ""


@dataclass(frozen=True, slots=True)
class _Grant:
    section: str
    path: str
    capabilities: tuple[str, ...]
    why: str
    management_key: bool = False


def _data(mount: str, path: str) -> str:
    return f"{mount}/data/{path}"


def _metadata(mount: str, path: str) -> str:
    return f"{mount}/metadata/{path}"


def _folder(mount: str, path: str) -> str:
    """A folder's list path: KV v2 lists on ``metadata/``, and a LIST is checked against the
    path with a trailing ``/`` (OpenBao accepts either form; the slash form works on both)."""
    return f"{mount}/metadata/{path}/"


def state_path(prefix: str, env: str, name: str) -> str:
    return f"{prefix}/state/{env}/{name}"


def pending_path(prefix: str, env: str, name: str) -> str:
    return f"{prefix}/pending/{env}/{name}"


def frozen_path(prefix: str) -> str:
    return f"{prefix}/control/frozen"


def account_lease_path(prefix: str, lease_id: str) -> str:
    return f"{prefix}/accounts/{lease_id}"


def acks_folder(prefix: str, env: str, name: str) -> str:
    return f"{prefix}/acks/{env}/{name}"


ONE_SEGMENT = "+"  # Vault's glob for exactly one path segment: any instance, nothing deeper


def emergency_path(prefix: str, env: str) -> str:
    return f"{prefix}/emergency/{env}"


def emergency_shards(prefix: str, env: str) -> str:
    """The request's key shards: ``<request id>/<n>`` below its path."""
    return f"{emergency_path(prefix, env)}/{ONE_SEGMENT}/{ONE_SEGMENT}"


def changes_path(prefix: str) -> str:
    return f"{prefix}/changes"


WRITE = ("create", "read", "update")


def _key_grants(section: str, key: KeyPolicy) -> list[_Grant]:
    mount, prefix, ref = key.vault.kv_mount, key.vault.state_prefix, key.ref
    state = state_path(prefix, key.env, key.name)
    pending = pending_path(prefix, key.env, key.name)
    return [
        _Grant(section, _data(mount, key.secret_path), WRITE, f"{ref}: consumer secret"),
        _Grant(
            section,
            _metadata(mount, key.secret_path),
            ("read", "update"),
            f"{ref}: consumer secret's current version and custom metadata",
        ),
        _Grant(section, _data(mount, state), WRITE, f"{ref}: state record and its lease"),
        _Grant(section, _metadata(mount, state), ("read",), f"{ref}: state record's version"),
        _Grant(section, _data(mount, pending), WRITE, f"{ref}: pending (new key, old secret)"),
        _Grant(
            section,
            _metadata(mount, pending),
            ("read", "delete"),
            f"{ref}: pending's version; destroyed (every version) when the rotation ends",
        ),
        *_ack_grants(section, key),
    ]


def _ack_grants(section: str, key: KeyPolicy) -> list[_Grant]:
    mount, ref = key.vault.kv_mount, key.ref
    acks = acks_folder(key.vault.state_prefix, key.env, key.name)
    return [
        _Grant(section, _folder(mount, acks), ("list",), f"{ref}: consumer acks (the folder)"),
        _Grant(
            section,
            _data(mount, f"{acks}/{ONE_SEGMENT}"),
            ("read",),
            f"{ref}: consumer acks (read as hostile input)",
        ),
        _Grant(
            section,
            _metadata(mount, f"{acks}/{ONE_SEGMENT}"),
            ("delete",),
            f"{ref}: ack records of instances gone past ack_retention, removed",
        ),
    ]


def _environment_grants(environment: EnvironmentPolicy) -> list[_Grant]:
    env, mount = environment.environment, environment.vault.kv_mount
    prefix = environment.vault.state_prefix
    section = f"environment {env} (kv_mount {mount}, state_prefix {prefix})"
    grants = [
        _Grant(
            section,
            _data(mount, environment.provider.management_key.path),
            ("read",),
            f"{env}: management key (read only)",
            management_key=True,
        ),
        _Grant(
            section, _folder(mount, f"{prefix}/state/{env}"), ("list",), f"{env}: state records"
        ),
        _Grant(
            section,
            _folder(mount, f"{prefix}/pending/{env}"),
            ("list",),
            f"{env}: pending values (the daemon destroys stale ones)",
        ),
        _Grant(
            section,
            _data(mount, emergency_path(prefix, env)),
            WRITE,
            f"{env}: environment-wide emergency request (rotate --env {env} --emergency)",
        ),
        _Grant(
            section,
            _data(mount, emergency_shards(prefix, env)),
            WRITE,
            f"{env}: the emergency request's key shards",
        ),
    ]
    for key in sorted(environment.keys, key=lambda k: k.name):
        grants += _key_grants(section, key)
    return grants


def rotator_rules(policies: PolicySet) -> list[Rule]:
    """Every rule the daemon and the CLI need for ``policies``, in a stable order.

    Token self paths first; then per state location (KV mount and state prefix, sorted) its
    freezes and state folder, and each of its environments (sorted) with its keys (sorted). A
    path named twice (a management key two environments share) is one rule with both reasons.
    """
    section = "token self paths (also in Vault's default policy; repeated to stand alone)"
    grants = [_Grant(section, path, caps, f"token: {why}") for path, caps, why in TOKEN_SELF]
    locations: dict[tuple[str, str], list[EnvironmentPolicy]] = {}
    for environment in policies.environments.values():
        where = (environment.vault.kv_mount, environment.vault.state_prefix)
        locations.setdefault(where, []).append(environment)
    for (mount, prefix), environments in sorted(locations.items()):
        names = ", ".join(sorted(e.environment for e in environments))
        section = f"state prefix {mount}/{prefix} ({names})"
        grants += [
            _Grant(section, _data(mount, frozen_path(prefix)), WRITE, f"{names}: freezes"),
            _Grant(
                section,
                _data(mount, changes_path(prefix)),
                WRITE,
                f"{names}: change signal (read every poll, bumped after an operator's act)",
            ),
            _Grant(
                section, _folder(mount, f"{prefix}/state"), ("list",), f"{names}: state folders"
            ),
        ]
        accounts = {k.account for e in environments for k in e.keys}
        for account in sorted(accounts, key=lambda a: a.lease_id):
            path = account_lease_path(prefix, account.lease_id)
            grants.append(
                _Grant(section, _data(mount, path), WRITE, f"account lease: {account.base_url}")
            )
        for environment in sorted(environments, key=lambda e: e.environment):
            grants += _environment_grants(environment)
    _check_read_only(grants)
    return _merge(grants)


def consumer_rules(key: KeyPolicy, policies: PolicySet) -> list[Rule]:
    """What the consumer of ``key`` needs: read on its own secret's data, and writing (never
    reading or listing) its instances' acks of that key; nothing else.

    Nothing is granted inside any state prefix of ``policies`` (or the key's own) in the key's
    mount but the key's own ack folder, and that only inside its own prefix: a policy that
    would is refused with ConfigError (the validator refuses such files first;
    :mod:`~vault_rotator.policy.namespace`)."""
    mount = key.vault.kv_mount
    acks = acks_folder(key.vault.state_prefix, key.env, key.name)
    _check_outside_state(key, acks, policies)
    rules = [
        Rule(
            _data(mount, key.secret_path), ("read",), (f"{key.ref}: consumer secret (read only)",)
        ),
        Rule(
            _data(mount, f"{acks}/{ONE_SEGMENT}"),
            ("create", "update"),
            (f"{key.ref}: this key's acks, one record per instance (write only)",),
        ),
    ]
    _check_exact(rules)
    return rules


def _check_outside_state(key: KeyPolicy, acks: str, policies: PolicySet) -> None:
    """ConfigError if the key's secret lies in a state prefix of its mount, or its ack folder
    in one but its own."""
    mount, own = key.vault.kv_mount, key.vault.state_prefix
    prefixes = {own} | {
        e.vault.state_prefix for e in policies.environments.values() if e.vault.kv_mount == mount
    }
    for prefix in sorted(prefixes):
        if inside(key.secret_path, prefix):
            what = f"its secret_path {key.secret_path}"
        elif prefix != own and inside(acks, prefix):
            what = f"its ack folder {acks}"
        else:
            continue
        raise ConfigError(
            f"refusing the consumer policy of {key.ref}: {what} is inside the state_prefix "
            f"{prefix} (kv_mount {mount}), where vault-rotator keeps its state; fix the policy "
            "files (vault-rotator validate names the line)"
        )


def _merge(grants: Iterable[_Grant]) -> list[Rule]:
    """One rule per path, at its first place: capabilities united, reasons kept in order."""
    first: dict[str, _Grant] = {}
    caps: dict[str, set[str]] = {}
    why: dict[str, list[str]] = {}
    for grant in grants:
        first.setdefault(grant.path, grant)
        caps.setdefault(grant.path, set()).update(grant.capabilities)
        if grant.why not in why.setdefault(grant.path, []):
            why[grant.path].append(grant.why)
    rules = [
        Rule(path, _ordered(caps[path]), tuple(why[path]), grant.section)
        for path, grant in first.items()
    ]
    _check_exact(rules)
    return rules


def _ordered(capabilities: Iterable[str]) -> tuple[str, ...]:
    wanted = set(capabilities)
    return tuple(c for c in CAPABILITY_ORDER if c in wanted)


def _check_exact(rules: Sequence[Rule]) -> None:
    """Policy files allow no glob or quote in a path; refuse one rather than widen a rule.
    The globs written are ours: ``+`` as the last segment of an ack folder, ``+/+`` as the
    last two below an emergency request (its shards)."""
    shards = f"/{ONE_SEGMENT}/{ONE_SEGMENT}"
    for rule in rules:
        path = rule.path
        if "/emergency/" in path and path.endswith(shards):
            path = path.removesuffix(shards)
        elif "/acks/" in path and path.endswith(f"/{ONE_SEGMENT}"):
            path = path.removesuffix(f"/{ONE_SEGMENT}")
        if not _EXACT.fullmatch(path) or "//" in path:
            raise ConfigError(f"refusing to write a Vault policy rule for {rule.path!r}")


def _check_read_only(grants: Sequence[_Grant]) -> None:
    """A management key path that another grant also names would be writable: refuse."""
    keys = {g.path for g in grants if g.management_key}
    for grant in grants:
        if grant.path in keys and not grant.management_key:
            raise ConfigError(
                f"{grant.path} is a management key and also {grant.why}: the rotator would "
                "be allowed to write the management key; give them different paths"
            )


def render(rules: Sequence[Rule], header: Sequence[str]) -> str:
    """HCL: the header as comments, a banner per section, each rule with its reasons above it."""
    lines = [f"# {line}".rstrip() for line in header]
    section = None
    for rule in rules:
        if rule.section and rule.section != section:
            section = rule.section
            lines += ["", f"# ---- {section} ----"]
        caps = ", ".join(json.dumps(c) for c in rule.capabilities)
        lines += ["", *(f"# {reason}" for reason in rule.why)]
        lines += [f"path {json.dumps(rule.path)} {{", f"  capabilities = [{caps}]", "}"]
    return "\n".join(lines) + "\n"
