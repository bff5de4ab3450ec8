"""One policy file: validate its shape, merge defaults into each key, apply the rules.

A file holds at most 1 000 keys (``MAX_KEYS``): more is one problem, and none is validated.

Each key's effective setting is its own value, else the one under ``defaults``, else the
built-in default (:mod:`vault_rotator.policy.defaults`). An explicit ``null`` on a key overrides
``defaults`` too: for ``window`` and ``key_ttl`` it means none, for the permissions it means
"inherit from the old key".
"""

from __future__ import annotations

from typing import Any

import vault_rotator.policy.defaults as builtin
from vault_rotator.policy.model import (
    EnvironmentPolicy,
    KeyPolicy,
    ManagementKeyRef,
    ProviderPolicy,
    VaultPolicy,
)
from vault_rotator.policy.problems import Problem
from vault_rotator.policy.rules import KeyContext, Setting, file_rules, key_rules
from vault_rotator.policy.schema import SETTINGS, RawFile, RawKey, RawSettings, validate_model
from vault_rotator.policy.yamlsource import Document, NodePath

MAX_KEYS = 1000

# Settings written as durations in YAML; the model's field names end in "_s".
_DURATIONS = frozenset(
    {
        "jitter",
        "max_age",
        "pickup_timeout",
        "drain_period",
        "drain_timeout",
        "disable_before_delete",
        "key_ttl",
        "ack_ttl",
        "ack_retention",
    }
)


def build_environment(doc: Document) -> tuple[EnvironmentPolicy | None, list[Problem]]:
    """Validate one file; the policy is None when the file has errors."""
    if not isinstance(doc.data, dict):
        return None, [doc.problem((), "expected a mapping of policy fields at the top level")]
    items = doc.data.get("keys")
    if isinstance(items, list) and len(items) > MAX_KEYS:
        message = f"keys: {len(items)} keys; a file may hold at most {MAX_KEYS}"
        return None, [doc.problem(("keys",), message)]
    file = validate_model(RawFile, doc.data, doc)
    problems = list(file.problems)
    broken = set(file.broken)
    keys: list[tuple[int, RawKey]] = []
    for index, item in enumerate(items if isinstance(items, list) else []):
        key = validate_model(RawKey, item, doc, ("keys", index))
        problems += key.problems
        broken |= key.broken
        if key.model is not None:
            keys.append((index, key.model))
    raw = file.model
    contexts = [] if raw is None else [_context(raw, i, key, broken) for i, key in keys]
    problems += file_rules(raw, doc, contexts, frozenset(broken))
    for context in contexts:
        problems += key_rules(context, doc)
    problems = list(dict.fromkeys(problems))  # a rule about a default fires once, not per key
    if raw is None or any(problem.is_error for problem in problems):
        return None, problems
    return _environment(raw, doc, contexts), problems


def _context(raw: RawFile, index: int, key: RawKey, broken: set[NodePath]) -> KeyContext:
    settings = {name: _setting(raw, index, key, name, broken) for name in SETTINGS}
    return KeyContext(raw, key, index, settings, frozenset(broken))


def _setting(raw: RawFile, index: int, key: RawKey, name: str, broken: set[NodePath]) -> Setting:
    own: NodePath = ("keys", index, name)
    if name in key.model_fields_set or own in broken:
        return Setting(getattr(key, name), own, own in broken)
    shared: NodePath = ("defaults", name)
    if name in raw.defaults.model_fields_set or shared in broken:
        return Setting(getattr(raw.defaults, name), shared, shared in broken)
    if name == "disable_before_delete":
        dialect = raw.provider.dialect
        value = None if dialect == "auto" else builtin.disable_before_delete_s(dialect)
        return Setting(value, None)
    return Setting(getattr(RawSettings(), name), None)


def _environment(raw: RawFile, doc: Document, contexts: list[KeyContext]) -> EnvironmentPolicy:
    provider = _provider(raw)
    vault = VaultPolicy(kv_mount=raw.vault.kv_mount, state_prefix=raw.vault.state_prefix)
    return EnvironmentPolicy(
        environment=raw.environment,
        source=doc.file,
        provider=provider,
        vault=vault,
        require_spending_limit=requires_spending_limit(raw),
        keys=tuple(_key_policy(context, provider, vault) for context in contexts),
    )


def requires_spending_limit(raw: RawFile) -> bool:
    """The file's require_spending_limit, or the built-in default for its environment."""
    if raw.require_spending_limit is None:
        return builtin.require_spending_limit(raw.environment)
    return raw.require_spending_limit


def _provider(raw: RawFile) -> ProviderPolicy:
    source = raw.provider
    return ProviderPolicy(
        type=source.type,
        base_url=source.base_url,
        dialect=source.dialect,
        management_key=ManagementKeyRef(
            path=source.management_key.path, field=source.management_key.field
        ),
        usage_lag_s=source.usage_lag,
        poll_interval_s=source.poll_interval,
        max_concurrent=source.max_concurrent,
    )


def _key_policy(context: KeyContext, provider: ProviderPolicy, vault: VaultPolicy) -> KeyPolicy:
    values: dict[str, Any] = {
        (f"{name}_s" if name in _DURATIONS else name): setting.value
        for name, setting in context.settings.items()
    }
    return KeyPolicy(
        env=context.raw.environment,
        name=context.key.name,
        secret_path=context.key.secret_path,
        adopt_key_id=context.key.adopt_key_id,
        provider=provider,
        vault=vault,
        **values,
    )
