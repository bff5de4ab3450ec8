"""Status rows: every key's state, current key, age, due date and outcomes, one dict per key.

Keys come from the policies plus any rotation still in flight for a key no longer in them.
The control API's ``GET /v1/status`` (:mod:`.control`) and ``vault-rotator status`` without a
daemon (:mod:`vault_rotator.commands.status_cmd`) both answer with these rows.
"""

from __future__ import annotations

from typing import Any

from vault_rotator.daemon.due import next_due
from vault_rotator.engine.ack_status import ack_status, judged
from vault_rotator.engine.ack_store import AckStore, read_quietly
from vault_rotator.engine.acks import AckPolicy
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.status import key_status
from vault_rotator.policy import PolicySet
from vault_rotator.runtime import Runtime


def collect(policies: PolicySet, runtime: Runtime, now: float) -> list[dict[str, Any]]:
    """Status rows for every policy key and every in-flight record outside the policies."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    stores: dict[tuple[str, str], StateStore] = {}
    for policy in policies:
        kv = runtime.kv(policy.vault.kv_mount)
        store = stores.setdefault(
            (policy.vault.kv_mount, policy.vault.state_prefix),
            StateStore(kv, policy.vault.state_prefix),
        )
        record, _ = store.read(policy.env, policy.name)
        secret = kv.read(policy.secret_path)
        data = dict(secret.data) if secret and not secret.deleted else None
        rotated_at = (data or {}).get("rotated_at")
        due_at = next_due(
            policy,
            last_success_at=record.last_success_at,
            rotated_at=rotated_at if isinstance(rotated_at, str) else None,
            now=now,
        )
        version = secret.version if data is not None and secret is not None else None
        read = read_quietly(
            AckStore(kv, policy.vault.state_prefix), policy.env, policy.name, AckPolicy.of(policy)
        )
        acks = None
        if read is not None:
            facts = judged(read, record.rotation, version, (data or {}).get("key_id"))
            acks = ack_status(facts, record.rotation, version, now)
        rows.append(
            key_status(
                ref=policy.ref,
                max_age_s=policy.max_age_s,
                next_due_at=due_at,
                record=record,
                secret=data,
                now=now,
                acks=acks,
            )
        )
        seen.add((policy.env, policy.name))
    for store in stores.values():
        for record in store.in_flight(skip=seen):
            rows.append(
                key_status(ref=record.ref, max_age_s=None, record=record, secret=None, now=now)
            )
    return rows
