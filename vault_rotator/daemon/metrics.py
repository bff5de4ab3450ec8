"""Prometheus metrics of the daemon (prometheus-client, one registry per daemon).

Labels are environment and key names, outcomes, steps, route templates, HTTP status codes and
words from small fixed sets: never a key value, token, fingerprint or free text (an error is
``error``/``denied``/... , never an exception's class or message).

================================================ ==========================================
``vault_rotator_rotations_total``                counter: env, key, outcome
``vault_rotator_stalls_total``                   counter: env, reason (a stall reason of
                                                 engine.reasons; also a key parked with
                                                 ``record-too-large`` before it had a rotation)
``vault_rotator_step_duration_seconds``          histogram: step (publish, pickup, drain, total)
``vault_rotator_key_age_seconds``                gauge: env, key, never_rotated ("true" when
                                                 counted from the secret's ``rotated_at`` or
                                                 first version, no rotation recorded)
``vault_rotator_keys_overdue``                   gauge: env (keys older than their max_age)
``vault_rotator_rotations_in_flight``            gauge: env
``vault_rotator_stalled_rotations``              gauge: env
``vault_rotator_last_success_timestamp_seconds`` gauge: env, key
``vault_rotator_provider_requests_total``        counter: route, status (HTTP code, or
                                                 ``transport``/``bad-answer``/``error``)
``vault_rotator_vault_requests_total``           counter: operation, status (``ok``,
                                                 ``denied``, ``unavailable``, ``conflict``,
                                                 ``error``)
``vault_rotator_ticks_total``                    counter: account (URL and key path), result
``vault_rotator_last_tick_timestamp_seconds``    gauge: account (URL and key path); by the replica
                                                 that ticked it (max over replicas: last tick)
``vault_rotator_account_lease_held``             gauge 0/1: account; 1 on the replica ticking it
``vault_rotator_account_lease_stuck``            gauge 0/1: account; 1 while this replica has
                                                 found, at 3 polls in a row, no holder that
                                                 ticks it (a lease nobody renews); by every
                                                 replica (max over replicas)
``vault_rotator_webhook_deliveries_total``       counter: result (sent, failed, dropped)
``vault_rotator_build_info``                     gauge 1: version, python
``process_*``, ``python_info``                   prometheus-client's process and platform
================================================ ==========================================
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vault_rotator import __version__
from vault_rotator.engine import reasons
from vault_rotator.engine.state import Outcome, Rotation
from vault_rotator.logs import rotation_steps

STALL_REASONS = frozenset(
    {
        reasons.PICKUP_TIMEOUT,
        reasons.DRAIN_TIMEOUT,
        reasons.SECRET_CHANGED,
        reasons.DELETE_UNCONFIRMED,
        reasons.RETRIES_EXHAUSTED,
        reasons.RATE_LIMITED,
        reasons.ACKS_MISSING,
        reasons.RECORD_TOO_LARGE,
    }
)
STEP_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)
_KEY_SEGMENT = re.compile(r"(/keys/)[^/?]+")
VAULT_STATUS = {
    "StorePermissionError": "denied",
    "StoreUnavailableError": "unavailable",
    "CasConflictError": "conflict",
}
PROVIDER_STATUS = {
    "ProviderRetryableError": "transport",
    "ProviderResponseError": "bad-answer",
}


def route_template(route: str) -> str:
    """``/api/v1/keys/abc123`` -> ``/api/v1/keys/{id}``: bounded label values."""
    return _KEY_SEGMENT.sub(r"\1{id}", route.split("?", 1)[0])


class _WebhookDeliveries(Collector):
    """Reads the notifier's counters at scrape time (they live in the notifier's thread)."""

    def __init__(self) -> None:
        self.source: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "vault_rotator_webhook_deliveries",
            "Webhook deliveries sent and given up (per message and URL), messages dropped",
            labels=["result"],
        )
        for result, count in zip(("sent", "failed", "dropped"), self.source(), strict=True):
            family.add_metric([result], count)
        yield family


class _AccountLeaseStuck(Collector):
    """Reads, at scrape time, which accounts this replica sees with no holder that ticks them
    (:meth:`Replicas.stuck <vault_rotator.daemon.replicas.Replicas.stuck>`)."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[tuple[str, bool]]] = lambda: ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vault_rotator_account_lease_stuck",
            "1 while this replica has found, at 3 polls in a row, no replica renewing the "
            "account's lease (forged, corrupt or abandoned), so none ticks it",
            labels=["account"],
        )
        for account, stuck in self.source():
            family.add_metric([account], 1 if stuck else 0)
        yield family


@dataclass(frozen=True, slots=True)
class KeyRow:
    """What the per-key and per-environment gauges need of one key (the daemon's book)."""

    env: str
    name: str
    in_policy: bool
    in_flight: bool
    stalled: bool
    last_success: float | None  # the record's last successful rotation
    written_at: float | None  # never rotated and idle: its secret's rotated_at or first version
    max_age_s: float


class _KeyGauges(Collector):
    """Key ages, last successes and the per-environment counts, computed at scrape time from
    the daemon's book (no per-poll work, no I/O: ages grow with the clock by themselves)."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[KeyRow]] = lambda: ()
        self.clock: Callable[[], float] = time.time

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        age = GaugeMetricFamily(
            "vault_rotator_key_age_seconds",
            "Seconds since the key was last rotated (or, never rotated, since it was written)",
            labels=["env", "key", "never_rotated"],
        )
        last = GaugeMetricFamily(
            "vault_rotator_last_success_timestamp_seconds",
            "Unix time of the key's last successful rotation",
            labels=["env", "key"],
        )
        per_env: dict[str, list[int]] = {}
        for row in self.source():
            counts = per_env.setdefault(row.env, [0, 0, 0])
            counts[0] += row.in_flight
            counts[1] += row.stalled
            if row.last_success is not None:
                last.add_metric([row.env, row.name], row.last_success)
                age.add_metric([row.env, row.name, "false"], now - row.last_success)
                if row.in_policy and now - row.last_success > row.max_age_s:
                    counts[2] += 1
            elif row.in_policy and not row.in_flight and row.written_at is not None:
                age.add_metric([row.env, row.name, "true"], now - row.written_at)
                counts[2] += now - row.written_at > row.max_age_s
        yield age
        yield last
        names = (
            ("vault_rotator_rotations_in_flight", "Rotations in flight"),
            ("vault_rotator_stalled_rotations", "Rotations stalled"),
            ("vault_rotator_keys_overdue", "Keys older than their max_age"),
        )
        for index, (name, help_text) in enumerate(names):
            family = GaugeMetricFamily(name, help_text, labels=["env"])
            for env, counts in sorted(per_env.items()):
                family.add_metric([env], counts[index])
            yield family


class Metrics:
    """The daemon's metrics, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.webhooks = _WebhookDeliveries()
        r.register(self.webhooks)
        build = Gauge(
            "vault_rotator_build_info", "vault-rotator's version", ["version", "python"], registry=r
        )
        build.labels(__version__, platform.python_version()).set(1)
        self.rotations = Counter(
            "vault_rotator_rotations", "Finished rotations", ["env", "key", "outcome"], registry=r
        )
        self.stalls = Counter(
            "vault_rotator_stalls", "Stalls recorded by this replica", ["env", "reason"], registry=r
        )
        self.steps = Histogram(
            "vault_rotator_step_duration_seconds",
            "Time spent in each stretch of a finished rotation",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.keys = _KeyGauges()  # key ages, last successes, per-environment counts
        r.register(self.keys)
        self.last_tick = Gauge(
            "vault_rotator_last_tick_timestamp_seconds",
            "Unix time of the account's last finished tick",
            ["account"],
            registry=r,
        )
        self.account_lease = Gauge(
            "vault_rotator_account_lease_held",
            "1 while this replica holds the account's lease and ticks it, 0 while another does",
            ["account"],
            registry=r,
        )
        self.lease_stuck = _AccountLeaseStuck()  # source: the daemon's Replicas.stuck
        r.register(self.lease_stuck)
        self.provider_requests = Counter(
            "vault_rotator_provider_requests", "ARouter requests", ["route", "status"], registry=r
        )
        self.vault_requests = Counter(
            "vault_rotator_vault_requests", "Vault requests", ["operation", "status"], registry=r
        )
        self.ticks = Counter(
            "vault_rotator_ticks", "Reconcile ticks", ["account", "result"], registry=r
        )

    def forget_per_key_series(self) -> None:
        """Drop the per-account series after a reload: an account no longer configured must not
        keep its last value (and alerts on it) forever. (The per-key gauges are computed from
        the daemon's book, which a reload builds again.)"""
        self.last_tick.clear()
        self.account_lease.clear()

    def rotation_finished(self, env: str, name: str, outcome: Outcome, rotation: Rotation) -> None:
        self.rotations.labels(env, name, outcome.outcome).inc()
        for step, seconds in rotation_steps(outcome, rotation).items():
            self.steps.labels(step).observe(max(0.0, seconds))

    def stalled(self, env: str, reason: str) -> None:
        """A stall (or a key parked for a reason no retry mends), by its reason word."""
        self.stalls.labels(env, reason if reason in STALL_REASONS else "other").inc()

    def provider_request(self, method: str, route: str, status: int | str) -> None:
        word = str(status) if isinstance(status, int) else PROVIDER_STATUS.get(status, "error")
        self.provider_requests.labels(f"{method} {route_template(route)}", word).inc()

    def vault_request(self, operation: str, status: int | str) -> None:
        word = "ok" if status == "ok" else VAULT_STATUS.get(str(status), "error")
        self.vault_requests.labels(operation, word).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
