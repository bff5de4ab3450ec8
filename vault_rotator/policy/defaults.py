"""Built-in defaults for every setting a policy file may omit.

==========================  ==========================================================
provider.dialect            auto (detected on first contact, saved in state)
provider.management_key     field ``key``
provider.usage_lag          60s
provider.poll_interval      30s
provider.max_concurrent     4 (1 to 100,000)
vault.kv_mount              secret
vault.state_prefix          vault-rotator
require_spending_limit      true when ``environment`` starts with "prod", else false
schedule                    @monthly (00:00 UTC on the 1st; ARouter's suggested baseline)
jitter                      0s
window                      none (any time)
max_age                     45d (a monthly schedule plus two weeks of slack)
pickup_timeout              24h
drain_period                24h
drain_timeout               7d
disable_before_delete       10m in dialect a (free calls leave usage flat), else 0s;
                            with dialect auto it is decided once the dialect is known
key_ttl                     none (new keys do not expire)
key_name                    {env}-{name}-{date}-{rotation_id}
allowed_providers/_models   inherit from the old key
spending_limit/limit_reset  inherit from the old key
require_acks                0 (no consumer acknowledgement needed; at most 256)
drain_on_acks               false
ack_ttl                     7d (an instance counts as present this long after its last ack;
                            at most 90d in a policy file)
ack_retention               30d (ack records of instances gone this long are removed)
==========================  ==========================================================
"""

from __future__ import annotations

from vault_rotator.policy.naming import DEFAULT_KEY_NAME

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0

MANAGEMENT_KEY_FIELD = "key"
USAGE_LAG_S = 60.0
POLL_INTERVAL_S = 30.0
MAX_CONCURRENT = 4
MAX_CONCURRENT_LIMIT = 100_000  # rotations in flight per account: see docs/scale.md
KV_MOUNT = "secret"
STATE_PREFIX = "vault-rotator"

SCHEDULE = "@monthly"
JITTER_S = 0.0
MAX_AGE_S = 45 * DAY
PICKUP_TIMEOUT_S = 24 * HOUR
DRAIN_PERIOD_S = 24 * HOUR
DRAIN_TIMEOUT_S = 7 * DAY
DIALECT_A_DISABLE_BEFORE_DELETE_S = 10 * MINUTE
KEY_NAME = DEFAULT_KEY_NAME
MAX_REQUIRE_ACKS = 256  # = engine.acks.MAX_ACKS: never more than are read (test_acks)
ACK_TTL_S = 7 * DAY
MAX_ACK_TTL_S = 90 * DAY  # policy files: an instance silent longer is gone (README, acks table)
ACK_RETENTION_S = 3 * DAY


def disable_before_delete_s(dialect: str) -> float:
    """The built-in disable_before_delete for a (detected) dialect: 10m in A, else 0s."""
    return DIALECT_A_DISABLE_BEFORE_DELETE_S if dialect == "a" else 0.0


def require_spending_limit(environment: str) -> bool:
    """The built-in require_spending_limit: true for environments named prod*."""
    return environment.startswith("prod")
