"""Keys named ``ENV/NAME``: the ref parsed, the key's policy, or the one its rotation started with.

Shared by the control API (:mod:`.control`) and the CLI verbs, which sit above the daemon.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from vault_rotator.display import shown
from vault_rotator.engine.session import StateStore
from vault_rotator.errors import ConfigError
from vault_rotator.policy import KeyPolicy, PolicySet
from vault_rotator.ports.kv import KvStore

_REF = re.compile(r"([a-z0-9-]+)/([a-z0-9-]+)")  # the policy files' names (policy/fields.py)


def parse_ref(ref: str) -> tuple[str, str]:
    """``ENV/NAME`` -> (env, name), each ``[a-z0-9-]+`` as in the policy files; a malformed ref
    is a usage error. Checked before it goes anywhere: a ``#``, ``?`` or ``..`` in it would
    change the control API route it becomes."""
    match = _REF.fullmatch(ref)
    if match is None:
        raise ConfigError(
            f"{shown(ref, 80)!r} is not ENV/NAME ([a-z0-9-]+ each, for example production/backend)"
        )
    return match.group(1), match.group(2)


def key_policy(policies: PolicySet, ref: str) -> KeyPolicy:
    """The policy of ``ENV/NAME``; a malformed ref or an unknown key is a usage error."""
    return policies.key(*parse_ref(ref))


def in_flight_policy(policies: PolicySet, ref: str, kv_for: Callable[[str], KvStore]) -> KeyPolicy:
    """The policy of ``ENV/NAME``; for a key that left the policies while a rotation of it is
    in flight, the policy that rotation started with (so it can still be resumed or ended)."""
    try:
        return key_policy(policies, ref)
    except ConfigError:
        env, name = parse_ref(ref)
        environment = policies.environments.get(env)
        if environment is None:
            raise
        kv = kv_for(environment.vault.kv_mount)
        record, _ = StateStore(kv, environment.vault.state_prefix).read(env, name)
        if record.rotation is None:
            raise
        return KeyPolicy.from_dict(dict(record.rotation.policy))
