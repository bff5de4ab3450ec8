"""Step 0 of a rotation: check everything it needs, with no side effects.

The token's capabilities on every path the rotation will touch, the management key's right to
list, the old key's presence at the provider, and the permissions the new key will get.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from vault_rotator.engine.ack_store import acks_folder
from vault_rotator.engine.acks import AckPolicy
from vault_rotator.engine.session import StateStore
from vault_rotator.errors import PreflightError, VaultRotatorError
from vault_rotator.policy import KeyPolicy
from vault_rotator.ports.kv import KvStore, Versioned
from vault_rotator.ports.provider import NO_PERMISSIONS, KeyProvider, KeyRecord, Permissions

WRITE = frozenset({"create", "update", "root"})


@dataclass(frozen=True, slots=True)
class Plan:
    """What a rotation of one key would do (``rotate --dry-run`` prints it)."""

    ref: str
    secret_path: str
    secret: Versioned | None
    start_version: int
    old: OldKey
    permissions: Permissions
    dialect: str | None  # None: not known yet (an empty A/B account before its first create)
    listed: int

    @property
    def old_key(self) -> KeyRecord | None:
        return self.old.record

    def describe(self, key_name_example: str) -> list[str]:
        old = self.old_key.id if self.old_key else "none (first run)"
        if self.old.unknown:
            old = "unknown (the secret has no key_id and the policy no adopt_key_id)"
        if self.old.missing_id:
            old = (
                f"{self.old.missing_id} is NOT listed at the provider: re-checked after "
                "usage_lag; if still missing, rotated as a first run and flagged"
            )
        perms = self.permissions
        return [
            f"plan for {self.ref} (dialect {self.dialect or 'a or b, not known yet'}, "
            f"{self.listed} keys listed)",
            f"  consumer secret: {self.secret_path} at version {self.start_version}",
            f"  old key: {old}",
            f"  new key name: {key_name_example}",
            f"  allowed_providers: {_show(perms.allowed_providers)}",
            f"  allowed_models: {_show(perms.allowed_models)}",
            f"  spending_limit: {perms.spending_limit}  limit_reset: {perms.limit_reset}",
            f"  expires_at: {perms.expires_at.isoformat() if perms.expires_at else None}",
            "  steps: intent, create, verify, baseline, publish, confirm pickup, drain, "
            + ("delete old, clean up" if self.old_key else "clean up (nothing to delete)"),
        ]


def _show(values: Sequence[str] | None) -> str:
    return "any" if values is None else ", ".join(values)


PROBE_INSTANCE = "instance"  # any instance name: the rules grant the whole folder (``+``)


def required_capabilities(policy: KeyPolicy, store: StateStore) -> list[tuple[str, frozenset[str]]]:
    """(full API path, capabilities one of which the token must hold); ``root`` counts."""
    mount = policy.vault.kv_mount
    env, name = policy.env, policy.name
    read = frozenset({"read", "root"})
    needed = [
        (f"{mount}/data/{policy.secret_path}", read),
        (f"{mount}/data/{policy.secret_path}", WRITE),
        (f"{mount}/data/{store.state_path(env, name)}", WRITE),
        (f"{mount}/data/{store.pending_path(env, name)}", WRITE),
        (f"{mount}/metadata/{store.pending_path(env, name)}", frozenset({"delete", "root"})),
        (f"{mount}/data/{policy.provider.management_key.path}", read),
    ]
    if AckPolicy.of(policy).active:  # the published passes read the key's acks
        acks = acks_folder(store.prefix, env, name)
        needed += [
            (f"{mount}/metadata/{acks}/", frozenset({"list", "root"})),
            (f"{mount}/data/{acks}/{PROBE_INSTANCE}", read),
        ]
    return needed


def check_capabilities(policy: KeyPolicy, kv: KvStore, store: StateStore) -> None:
    """Raise PreflightError listing every capability the token lacks."""
    needed = required_capabilities(policy, store)
    held = kv.capabilities(sorted({path for path, _ in needed}))
    missing = _missing(needed, held)
    if missing:
        raise PreflightError(f"{policy.ref}: the Vault token lacks " + "; ".join(missing))


CAPABILITY_BATCH = 200  # keys whose paths go in one sys/capabilities-self request


def missing_capabilities(
    policies: Sequence[KeyPolicy],
    kv_for: Callable[[str], KvStore],
    store_for: Callable[[KeyPolicy], StateStore],
    *,
    raising: bool = False,
) -> dict[str, str]:
    """:func:`check_capabilities` for many keys in few requests: ref -> what is missing.

    A request that fails is every one of its keys' problem (``raising``: its error is raised,
    as :func:`check_capabilities` raises it).
    """
    problems: dict[str, str] = {}
    by_mount: dict[str, list[KeyPolicy]] = {}
    for policy in policies:
        by_mount.setdefault(policy.vault.kv_mount, []).append(policy)
    for mount, group in by_mount.items():
        for at in range(0, len(group), CAPABILITY_BATCH):
            batch = group[at : at + CAPABILITY_BATCH]
            needs = {p.ref: required_capabilities(p, store_for(p)) for p in batch}
            paths = sorted({path for need in needs.values() for path, _ in need})
            try:
                held = kv_for(mount).capabilities(paths)
            except VaultRotatorError as exc:
                if raising:
                    raise
                problems.update((p.ref, str(exc)) for p in batch)
                continue
            for ref, need in needs.items():
                missing = _missing(need, held)
                if missing:
                    problems[ref] = f"{ref}: the Vault token lacks " + "; ".join(missing)
    return problems


def _missing(
    needed: Sequence[tuple[str, frozenset[str]]], held: Mapping[str, frozenset[str]]
) -> list[str]:
    return [
        f"{path} ({'/'.join(sorted(caps - {'root'}))})"
        for path, caps in needed
        if not caps & held.get(path, frozenset())
    ]


def effective_permissions(policy: KeyPolicy, old: KeyRecord | None, now: float) -> Permissions:
    """The new key's permissions: the policy's, else inherited from the old key."""
    expires = None
    if policy.key_ttl_s is not None:
        expires = datetime.fromtimestamp(now, UTC) + timedelta(seconds=policy.key_ttl_s)
    own = replace(policy.permissions, expires_at=expires)
    perms = own.inherit(old.permissions if old else NO_PERMISSIONS)
    if not perms.restricts_use:
        raise PreflightError(
            f"{policy.ref}: the policy sets neither allowed_providers nor allowed_models and "
            "there is no old key to inherit them from; set one in the policy"
        )
    return perms


@dataclass(frozen=True, slots=True)
class OldKey:
    """What the consumer secret says about the key it serves today."""

    record: KeyRecord | None = None  # listed at the provider
    unknown: bool = False  # a key is served, but which provider key is not known
    missing_id: str | None = None  # the secret names a key the provider does not list


def label_matches(label: str | None, value: str) -> bool | None:
    """Does a provider label (``lr_live_ab...wxyz``) fit ``value``? None: cannot tell."""
    if not label:
        return None
    for ellipsis in ("...", "\u2026"):
        if ellipsis in label:
            head, _, tail = label.partition(ellipsis)
            return value.startswith(head) and value.endswith(tail)
    return value.startswith(label) if label.startswith("lr_") else None


def find_old_key(
    policy: KeyPolicy, secret: Versioned | None, keys: Mapping[str, KeyRecord]
) -> OldKey:
    """The old key, from the secret's ``key_id`` or the policy's ``adopt_key_id``."""
    data = secret.data if secret is not None and not secret.deleted else {}
    if not data:
        return OldKey()  # first run: nothing to drain or delete
    key_id = data.get("key_id")
    if key_id is not None and not isinstance(key_id, str):
        raise PreflightError(f"{policy.ref}: key_id in {policy.secret_path} is not a string")
    if key_id:
        old = keys.get(key_id)
        return OldKey(record=old) if old else OldKey(missing_id=key_id)
    if not policy.adopt_key_id:
        return OldKey(unknown=True)
    return OldKey(record=_adopt(policy, data, keys))


def _adopt(
    policy: KeyPolicy, data: Mapping[str, object], keys: Mapping[str, KeyRecord]
) -> KeyRecord:
    adopt = policy.adopt_key_id
    old = keys.get(adopt or "")
    if old is None:
        raise PreflightError(f"{policy.ref}: adopt_key_id {adopt} is not listed at the provider")
    value = data.get("api_key")
    if isinstance(value, str) and label_matches(old.label, value) is False:
        raise PreflightError(
            f"{policy.ref}: adopt_key_id {adopt} (label {old.label}) is not the key "
            f"{policy.secret_path} serves; refusing to adopt it"
        )
    return old


def preflight(
    policy: KeyPolicy,
    kv: KvStore,
    store: StateStore,
    provider: KeyProvider,
    *,
    now: float,
    capabilities_checked: bool = False,
    keys: Mapping[str, KeyRecord] | None = None,
) -> Plan:
    """Check a rotation of ``policy`` can run; return its plan. No side effects.

    ``keys``: the account's keys by id from a list pass already made (else one is made).
    """
    if not capabilities_checked:
        check_capabilities(policy, kv, store)
    if keys is None:
        keys = {k.id: k for k in provider.list_keys()}
    secret = kv.read(policy.secret_path)
    old = find_old_key(policy, secret, keys)
    if old.record is not None and old.record.problem is not None:
        raise PreflightError(
            f"{policy.ref}: the old key {old.record.id} is listed with an unreadable record "
            f"({old.record.problem}): its permissions and use cannot be judged; rotate it once "
            "the provider lists it whole"
        )
    return Plan(
        ref=policy.ref,
        secret_path=f"{kv.mount}/{policy.secret_path}",
        secret=secret,
        start_version=secret.version if secret else 0,
        old=old,
        permissions=effective_permissions(policy, old.record, now),
        dialect=provider.detected_dialect.value if provider.detected_dialect else None,
        listed=len(keys),
    )
