"""Keys named ``ENV/NAME``: the ref parsed, the key's policy, or the one its rotation started with.

Shared by the control API (:mod:`.control`) and the CLI verbs, which sit above the daemon.
"""

from __future__ import annotations

from collections.abc import Callable

from vault_rotator.engine.session import StateStore
from vault_rotator.errors import ConfigError
from vault_rotator.policy import KeyPolicy, PolicySet
from vault_rotator.ports.kv import KvStore


def parse_ref(ref: str) -> tuple[str, str]:
    """``ENV/NAME`` -> (env, name); a malformed ref is a usage error."""
    env, sep, name = ref.partition("/")
    if not sep or not env or not name or "/" in name:
        raise ConfigError(f"{ref!r} is not ENV/NAME (for example production/backend)")
    return env, name


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
