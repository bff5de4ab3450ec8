"""A daemon on OpenBao meeting a forged account lease (issue 20 item 5): it follows while the
lease is young, says the account is stuck on /metrics, then takes the lease over and ticks."""

from __future__ import annotations

from test_daemon import Fleet, fleet  # noqa: F401 (the fixture)

from vault_rotator.daemon.daemon import Daemon
from vault_rotator.engine.account_lease import TERM_CAP, lease_path
from vault_rotator.policy import Account, KeyPolicy

TTL = 30.0  # the runtime's default lease TTL
POLL = 30.0  # the fleet's poll_interval
FORGED = {"schema": 1, "account": "x", "holder": "mallory", "fence": 7, "expires_at": 1e308,
          "renewed_at": 0}  # fmt: skip


def _forge(fleet: Fleet, account: Account, keys: tuple[KeyPolicy, ...]) -> None:  # noqa: F811
    for prefix in {k.vault.state_prefix for k in keys}:
        fleet.kv.write(lease_path(prefix, account.lease_id), FORGED, cas=0)


def _gauge(daemon: Daemon, name: str, account: Account) -> float | None:
    for family in daemon.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels.get("account") == str(account):
                return sample.value
    return None


def test_a_daemon_takes_a_forged_lease_over_after_the_capped_term_and_ticks(
    fleet: Fleet,  # noqa: F811
) -> None:
    """With expires_at 1e308 at the lease path, every tick follows until the lease has been
    unchanged for ten TTLs, then the daemon takes it over, ticks and exports its tick time."""
    fleet.seed(1)
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    _forge(fleet, account, keys)
    start = fleet.clock()
    while daemon.tick(account, keys).follower:
        assert fleet.clock() - start <= TERM_CAP * TTL
        fleet.clock.advance(POLL)
    assert fleet.clock() - start == TERM_CAP * TTL + POLL
    assert _gauge(daemon, "vault_rotator_last_tick_timestamp_seconds", account) == fleet.clock()
    assert _gauge(daemon, "vault_rotator_account_lease_held", account) == 1.0


def test_a_daemon_serves_the_stuck_gauge_before_it_takes_the_lease_over(
    fleet: Fleet,  # noqa: F811
) -> None:
    """/metrics shows the account stuck (1) from the third poll past the TTL until the
    takeover, and 0 after it."""
    fleet.seed(1)
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    _forge(fleet, account, keys)
    start = fleet.clock()
    seen: dict[float, float | None] = {}
    while daemon.tick(account, keys).follower:
        assert fleet.clock() - start <= TERM_CAP * TTL
        seen[fleet.clock() - start] = _gauge(daemon, "vault_rotator_account_lease_stuck", account)
        fleet.clock.advance(POLL)
    assert {at for at, stuck in seen.items() if stuck} == {
        at for at in seen if at >= TTL + 3 * POLL
    }
    assert _gauge(daemon, "vault_rotator_account_lease_stuck", account) == 0.0
