"""Prometheus metrics of the daemon (prometheus-client, one registry per daemon).

Labels are environment and key names, outcomes, steps, route templates, HTTP status codes and
words from small fixed sets: never a key value, token, fingerprint or free text (an error is
``error``/``denied``/... , never an exception's class or message).

================================================ ==========================================
``vault_rotator_rotations_total``                counter: env, key, outcome
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
``vault_rotator_ticks_total``                    counter: account (base URL), result
``vault_rotator_last_tick_timestamp_seconds``    gauge: account (base URL); set by the replica
                                                 that ticked it (max over replicas: last tick)
``vault_rotator_account_lease_held``             gauge 0/1: account; 1 on the replica ticking it
``vault_rotator_webhook_deliveries_total``       counter: result (sent, failed, dropped)
``vault_rotator_build_info``                     gauge 1: version, python
``process_*``, ``python_info``                   prometheus-client's process and platform
================================================ ==========================================
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from vault_rotator import __version__
from vault_rotator.engine.state import Outcome, Rotation
from vault_rotator.logs import rotation_steps

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
        self.steps = Histogram(
            "vault_rotator_step_duration_seconds",
            "Time spent in each stretch of a finished rotation",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.key_age = Gauge(
            "vault_rotator_key_age_seconds",
            "Seconds since the key was last rotated (or, never rotated, since it was written)",
            ["env", "key", "never_rotated"], registry=r,
        )  # fmt: skip
        self.overdue = Gauge(
            "vault_rotator_keys_overdue", "Keys older than their max_age", ["env"], registry=r
        )
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
        self.in_flight = Gauge(
            "vault_rotator_rotations_in_flight", "Rotations in flight", ["env"], registry=r
        )
        self.stalled = Gauge(
            "vault_rotator_stalled_rotations", "Rotations stalled", ["env"], registry=r
        )
        self.last_success = Gauge(
            "vault_rotator_last_success_timestamp_seconds",
            "Unix time of the key's last successful rotation",
            ["env", "key"],
            registry=r,
        )
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
        """Drop the gauges' series (per key, environment, account) after a reload: a key or an
        account no longer configured must not keep its last value (and alerts on it) forever."""
        for gauge in (
            self.key_age,
            self.overdue,
            self.in_flight,
            self.stalled,
            self.last_success,
            self.last_tick,
            self.account_lease,
        ):
            gauge.clear()

    def rotation_finished(self, env: str, name: str, outcome: Outcome, rotation: Rotation) -> None:
        self.rotations.labels(env, name, outcome.outcome).inc()
        for step, seconds in rotation_steps(outcome, rotation).items():
            self.steps.labels(step).observe(max(0.0, seconds))

    def provider_request(self, method: str, route: str, status: int | str) -> None:
        word = str(status) if isinstance(status, int) else PROVIDER_STATUS.get(status, "error")
        self.provider_requests.labels(f"{method} {route_template(route)}", word).inc()

    def vault_request(self, operation: str, status: int | str) -> None:
        word = "ok" if status == "ok" else VAULT_STATUS.get(str(status), "error")
        self.vault_requests.labels(operation, word).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
