"""Prometheus metrics of the daemon (prometheus-client, one registry per daemon).

Labels are environment and key names, outcomes, steps, routes and status codes: never a key
value, token or fingerprint.

==============================================  ==========================================
``vault_rotator_rotations_total``               counter: env, key, outcome
``vault_rotator_step_duration_seconds``         histogram: step (publish, pickup, drain, total)
``vault_rotator_key_age_seconds``               gauge: env, key (since the last rotation)
``vault_rotator_rotations_in_flight``           gauge: env
``vault_rotator_stalled_rotations``             gauge: env
``vault_rotator_last_success_timestamp_seconds`` gauge: env, key
``vault_rotator_provider_requests_total``       counter: route, status
``vault_rotator_vault_requests_total``          counter: operation, status
``vault_rotator_ticks_total``                   counter: account (base URL), result
==============================================  ==========================================
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vault_rotator.engine.state import Outcome, Rotation
from vault_rotator.logs import rotation_steps

STEP_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)
_KEY_SEGMENT = re.compile(r"(/keys/)[^/?]+")


def route_template(route: str) -> str:
    """``/api/v1/keys/abc123`` -> ``/api/v1/keys/{id}``: bounded label values."""
    return _KEY_SEGMENT.sub(r"\1{id}", route.split("?", 1)[0])


class Metrics:
    """The daemon's metrics, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
            "vault_rotator_key_age_seconds", "Seconds since the key was last rotated",
            ["env", "key"], registry=r,
        )  # fmt: skip
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

    def rotation_finished(self, env: str, name: str, outcome: Outcome, rotation: Rotation) -> None:
        self.rotations.labels(env, name, outcome.outcome).inc()
        for step, seconds in rotation_steps(outcome, rotation).items():
            self.steps.labels(step).observe(max(0.0, seconds))

    def provider_request(self, method: str, route: str, status: int | str) -> None:
        self.provider_requests.labels(f"{method} {route_template(route)}", str(status)).inc()

    def vault_request(self, operation: str, status: int | str) -> None:
        self.vault_requests.labels(operation, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
