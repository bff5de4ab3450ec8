"""Two daemons on one account, in process on a fake clock: one ticks, the other follows and
exports nothing stale; two accounts on one base URL keep their own series."""

from __future__ import annotations

from test_daemon import Fleet, fleet  # noqa: F401 (the fixture)
from world import MANAGEMENT_KEY

from vault_rotator.daemon.daemon import Daemon

TTL = 30.0


def _series(daemon: Daemon, name: str) -> dict[str, float]:
    """A metric's samples by their ``account`` label (or '' for unlabelled env/key series)."""
    found: dict[str, float] = {}
    for family in daemon.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found[sample.labels.get("account", "")] = sample.value
    return found


def test_one_daemon_ticks_the_other_follows_and_takes_over_when_it_goes_silent(
    fleet: Fleet,  # noqa: F811
) -> None:
    """The follower starts nothing and exports no tick time; when the holder goes silent past
    the lease it takes over, and the old holder, ticking again, follows and drops its stale
    tick time and key gauges."""
    fleet.seed(2)
    one, two = fleet.daemon(), fleet.daemon()
    ((account, keys),) = one.accounts().items()
    first = one.tick(account, keys)
    assert not first.follower
    assert len(first.started) == 2
    second = two.tick(account, keys)
    assert second.follower
    assert second.started == second.advanced == []
    assert _series(two, "vault_rotator_last_tick_timestamp_seconds") == {}
    assert _series(two, "vault_rotator_account_lease_held") == {str(account): 0.0}
    assert _series(one, "vault_rotator_rotations_in_flight")
    fleet.clock.advance(TTL + 1)  # one is silent past its lease
    assert not two.tick(account, keys).follower
    assert one.tick(account, keys).follower
    assert _series(one, "vault_rotator_last_tick_timestamp_seconds") == {}
    assert _series(one, "vault_rotator_rotations_in_flight") == {}
    assert _series(one, "vault_rotator_account_lease_held") == {str(account): 0.0}
    assert set(_series(two, "vault_rotator_last_tick_timestamp_seconds")) == {str(account)}


def test_two_accounts_on_one_base_url_keep_their_own_series(fleet: Fleet) -> None:  # noqa: F811
    """Accounts differing only by management key path are two series, not one."""
    fleet.seed(1)
    fleet.kv.write(f"{fleet.tag}/management2", {"key": MANAGEMENT_KEY}, cas=0)
    other = (fleet.config / "fleet.yaml").read_text()
    other = other.replace(f"environment: {fleet.tag}", f"environment: {fleet.tag}b")
    other = other.replace(f"path: {fleet.tag}/management", f"path: {fleet.tag}/management2")
    other = other.replace(f"secret_path: {fleet.tag}/", f"secret_path: {fleet.tag}b/")
    (fleet.config / "other.yaml").write_text(other)
    daemon = fleet.daemon()
    accounts = daemon.accounts()
    assert len(accounts) == 2
    assert len({a.base_url for a in accounts}) == 1
    for account, keys in accounts.items():
        daemon.tick(account, keys)
    held = _series(daemon, "vault_rotator_account_lease_held")
    assert held == {str(a): 1.0 for a in accounts}
    assert len(_series(daemon, "vault_rotator_last_tick_timestamp_seconds")) == 2
