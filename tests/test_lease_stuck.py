"""Whether some replica ticks an account, as each replica sees it (issue 20 item 5): a forged
lease shows as stuck on the metric before its takeover, which is logged once; a newer lease
that keeps renewing is neither taken over nor called stuck."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from test_lease_takeover import CAP, FORGED, POLL, TTL

from vault_rotator.daemon.metrics import Metrics
from vault_rotator.daemon.replicas import Replicas
from vault_rotator.engine.account_lease import lease_path
from vault_rotator.policy import Account, KeyPolicy, load_policies
from vault_rotator.ports.kv import KvStore
from vault_rotator.store.memory import MemoryKv
from vault_rotator.testing.clock import FakeClock

EXAMPLES = Path(__file__).resolve().parents[1] / "config"


def _newer_replica(kv: KvStore, path: str) -> Callable[[], None]:
    """A replica of a newer release that renews its lease (schema 2, fields we do not know)."""
    beats = [0]

    def renew() -> None:
        got = kv.read(path)
        beats[0] += 1
        data = {"schema": 2, "holder": "newer", "lease": {"beat": beats[0]}}
        kv.write(path, data, cas=0 if got is None else got.version)

    return renew


@pytest.fixture
def accounts() -> dict[Account, tuple[KeyPolicy, ...]]:
    return load_policies(EXAMPLES).accounts()


def _wired(kv: MemoryKv, clock: FakeClock) -> tuple[Replicas, Metrics]:
    """A replica and its metrics, wired as the daemon wires them (``Daemon.__init__``:
    ``metrics.lease_stuck.source = replicas.stuck``)."""
    replicas = Replicas(lambda _mount: kv, holder="one", clock=clock, ttl=TTL)
    metrics = Metrics()
    metrics.lease_stuck.source = replicas.stuck
    return replicas, metrics


def _stuck(metrics: Metrics) -> dict[str, float]:
    text = metrics.render().decode()
    return {
        sample.labels["account"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vault_rotator_account_lease_stuck"
    }


def _paths(account: Account, keys: tuple[KeyPolicy, ...]) -> list[str]:
    return sorted({lease_path(k.vault.state_prefix, account.lease_id) for k in keys})


def test_a_newer_lease_that_keeps_renewing_is_never_taken_over_nor_called_stuck(
    accounts: dict[Account, tuple[KeyPolicy, ...]],
) -> None:
    """A newer release's lease whose version keeps changing is left to it for twenty caps, as
    docs/upgrading.md promises, and the account is never reported as having no holder."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    account, keys = next(iter(accounts.items()))
    paths = _paths(account, keys)
    newer = [_newer_replica(kv, path) for path in paths]
    replicas, metrics = _wired(kv, clock)
    for second in range(int(20 * CAP)):
        if second % int(TTL / 2) == 0:
            for renew in newer:
                renew()
        if second % int(POLL) == 0:
            assert not replicas.may_tick(account, keys)
            assert _stuck(metrics) == {str(account): 0.0}
        clock.advance(1)
    for path in paths:
        got = kv.read(path)
        assert got is not None
        assert got.data["holder"] == "newer"


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_stuck_account_shows_in_the_metric_before_its_takeover_which_is_logged_once(
    case: str, accounts: dict[Account, tuple[KeyPolicy, ...]]
) -> None:
    """With a forged lease, the replica reports the account stuck once it has seen no holder
    that ticks for 3 polls, before it takes it over; the takeover is one warning, and the
    unusable lease is not a warning per poll."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    account, keys = next(iter(accounts.items()))
    for path in _paths(account, keys):
        kv.write(path, FORGED[case], cas=0)
    replicas, metrics = _wired(kv, clock)
    seen: list[tuple[float, bool, float]] = []  # (seconds, ticks, stuck)
    with capture_logs() as logs:
        for polls in range(int((CAP + 4 * POLL) / POLL)):
            ticks = replicas.may_tick(account, keys)
            seen.append((polls * POLL, ticks, _stuck(metrics)[str(account)]))
            clock.advance(POLL)
    first_stuck = next(at for at, _, stuck in seen if stuck)
    first_tick = next(at for at, ticks, _ in seen if ticks)
    assert first_stuck <= TTL + 3 * POLL  # 3 polls once unchanged past the TTL
    assert first_tick == CAP + POLL
    assert all(stuck for at, _, stuck in seen if first_stuck <= at < first_tick)
    assert all(not stuck for at, _, stuck in seen if at >= first_tick)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    taken = [e for e in warnings if "not renewed" in e["event"]]
    assert len(taken) == 1
    assert taken[0]["account"] == str(account)
    assert len(warnings) <= 2  # the unusable lease once (not every poll), the takeover once


def test_a_holder_that_renews_or_dies_never_shows_the_account_stuck(
    accounts: dict[Account, tuple[KeyPolicy, ...]],
) -> None:
    """A follower beside a holder renewing every third of the TTL never reports the account
    stuck nor takes it; when the holder dies, the follower takes over by expiry within a TTL
    plus a poll, before three polls could call it stuck."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    account, keys = next(iter(accounts.items()))
    holder = Replicas(lambda _mount: kv, holder="holder", clock=clock, ttl=TTL)
    follower, metrics = _wired(kv, clock)
    assert holder.may_tick(account, keys)
    for second in range(int(5 * CAP)):
        if second % int(TTL / 3) == 0:
            holder.renew_held()
        if second % int(POLL) == 0:
            assert not follower.may_tick(account, keys)
            assert _stuck(metrics) == {str(account): 0.0}
        clock.advance(1)
    died = clock()
    while not follower.may_tick(account, keys):
        assert _stuck(metrics) == {str(account): 0.0}
        clock.advance(POLL)
    assert clock() - died <= TTL + POLL
