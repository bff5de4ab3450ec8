"""Step 0 of a rotation: check everything it needs, with no side effects.

The token's capabilities on every path the rotation will touch, the management key's right to
list, the old key's presence at the provider, and the permissions the new key will get.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import Permissions
from vault_rotator.errors import PreflightError
from vault_rotator.policy import KeyPolicy
from vault_rotator.provider.port import KeyProvider, KeyRecord
from vault_rotator.store.port import KvStore, Versioned

T = TypeVar("T")
WRITE = frozenset({"create", "update", "root"})


@dataclass(frozen=True, slots=True)
class Plan:
    """What a rotation of one key would do (``rotate --dry-run`` prints it)."""

    ref: str
    secret_path: str
    secret: Versioned | None
    start_version: int
    old_key: KeyRecord | None
    old_key_unknown: bool  # a secret holds a key, but which provider key is not known
    permissions: Permissions
    dialect: str
    listed: int

    def describe(self, key_name_example: str) -> list[str]:
        old = self.old_key.id if self.old_key else "none"
        if self.old_key_unknown:
            old = "unknown (the secret has no key_id and the policy no adopt_key_id)"
        perms = self.permissions
        return [
            f"plan for {self.ref} (dialect {self.dialect}, {self.listed} keys listed)",
            f"  consumer secret: {self.secret_path} at version {self.start_version}",
            f"  old key: {old}",
            f"  new key name: {key_name_example}",
            f"  allowed_providers: {_show(perms.allowed_providers)}",
            f"  allowed_models: {_show(perms.allowed_models)}",
            f"  spending_limit: {perms.spending_limit}  limit_reset: {perms.limit_reset}",
            f"  expires_at: {perms.expires_at}",
            "  steps: intent, create, verify, baseline, publish, confirm pickup, drain, "
            + ("delete old, clean up" if self.old_key else "clean up (nothing to delete)"),
        ]


def _show(values: Sequence[str] | None) -> str:
    return "any" if values is None else ", ".join(values)


def required_capabilities(policy: KeyPolicy, store: StateStore) -> list[tuple[str, frozenset[str]]]:
    """(full API path, capabilities one of which the token must hold); ``root`` counts."""
    mount = policy.vault.kv_mount
    env, name = policy.env, policy.name
    read = frozenset({"read", "root"})
    return [
        (f"{mount}/data/{policy.secret_path}", read),
        (f"{mount}/data/{policy.secret_path}", WRITE),
        (f"{mount}/data/{store.state_path(env, name)}", WRITE),
        (f"{mount}/data/{store.pending_path(env, name)}", WRITE),
        (f"{mount}/metadata/{store.pending_path(env, name)}", frozenset({"delete", "root"})),
        (f"{mount}/data/{policy.provider.management_key.path}", read),
    ]


def check_capabilities(policy: KeyPolicy, kv: KvStore, store: StateStore) -> None:
    """Raise PreflightError listing every capability the token lacks."""
    needed = required_capabilities(policy, store)
    held = kv.capabilities(sorted({path for path, _ in needed}))
    missing = [
        f"{path} ({'/'.join(sorted(caps - {'root'}))})"
        for path, caps in needed
        if not caps & held.get(path, frozenset())
    ]
    if missing:
        raise PreflightError(f"{policy.ref}: the Vault token lacks " + "; ".join(missing))


def effective_permissions(policy: KeyPolicy, old: KeyRecord | None, now: float) -> Permissions:
    """The new key's permissions: the policy's, else inherited from the old key."""

    expires = None
    if policy.key_ttl_s is not None:
        expires = (
            datetime.fromtimestamp(now, UTC) + timedelta(seconds=policy.key_ttl_s)
        ).isoformat()
    perms = Permissions(
        allowed_providers=_pick(policy.allowed_providers, old.allowed_providers if old else None),
        allowed_models=_pick(policy.allowed_models, old.allowed_models if old else None),
        spending_limit=_pick(policy.spending_limit, old.spending_limit if old else None),
        limit_reset=_pick(policy.limit_reset, old.limit_reset if old else None),
        expires_at=expires,
    )
    if perms.allowed_providers is None and perms.allowed_models is None:
        raise PreflightError(
            f"{policy.ref}: the policy sets neither allowed_providers nor allowed_models and "
            "there is no old key to inherit them from; set one in the policy"
        )
    return perms


def _pick(own: T | None, inherited: T | None) -> T | None:
    return own if own is not None else inherited


def find_old_key(
    policy: KeyPolicy, secret: Versioned | None, keys: Mapping[str, KeyRecord]
) -> tuple[KeyRecord | None, bool]:
    """(the old key, whether an old key exists but is unknown) from the secret and policy."""
    data = secret.data if secret is not None and not secret.deleted else {}
    if not data:
        return None, False  # first run: nothing to drain or delete
    key_id = data.get("key_id") or policy.adopt_key_id
    if not key_id:
        return None, True
    if not isinstance(key_id, str):
        raise PreflightError(f"{policy.ref}: key_id in {policy.secret_path} is not a string")
    old = keys.get(key_id)
    if old is None:
        raise PreflightError(
            f"{policy.ref}: the old key {key_id} is not listed at the provider "
            "(deleted outside vault-rotator, or a wrong adopt_key_id)"
        )
    return old, False


def preflight(
    policy: KeyPolicy,
    kv: KvStore,
    store: StateStore,
    provider: KeyProvider,
    *,
    now: float,
    capabilities_checked: bool = False,
) -> Plan:
    """Check a rotation of ``policy`` can run; return its plan. No side effects."""
    if not capabilities_checked:
        check_capabilities(policy, kv, store)
    keys = {k.id: k for k in provider.list_keys()}
    secret = kv.read(policy.secret_path)
    old, unknown = find_old_key(policy, secret, keys)
    return Plan(
        ref=policy.ref,
        secret_path=f"{kv.mount}/{policy.secret_path}",
        secret=secret,
        start_version=kv.current_version(policy.secret_path) if secret else 0,
        old_key=old,
        old_key_unknown=unknown,
        permissions=effective_permissions(policy, old, now),
        dialect=provider.dialect.value,
        listed=len(keys),
    )
