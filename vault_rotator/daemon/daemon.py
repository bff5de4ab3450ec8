"""The daemon's reconcile loop: per provider account, one list pass per poll for every rotation.

:meth:`Daemon.tick` is what a scheduler job runs every ``poll_interval`` for an account:

1. read the state record of every key of the account, plus every record in flight under the
   account's state prefix whose key has left the policies (finished with the policy it started
   with, then reported);
2. list the account's keys ONCE and advance every rotation in flight (not stalled) with that
   observation;
3. start the rotations that are due (:mod:`.due`; frozen keys never), while fewer than
   ``max_concurrent`` are in flight (stalled ones do not count: they block nobody).

One key's failure (its record unreadable, its pass refused, even a bug) is that key's alone:
it is reported and the tick goes on with the others. A key that keeps failing is parked and
alerted once (:mod:`.parking`).

Nothing here sleeps: waits are states in the records, and the truth lives in Vault, so a
restart resumes everything and a schedule missed while down fires once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from vault_rotator.daemon import notify as events
from vault_rotator.daemon.ack_retention import AckRetention
from vault_rotator.daemon.due import due
from vault_rotator.daemon.emergencies import Emergencies
from vault_rotator.daemon.freeze import FrozenSet, frozen
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.daemon.notify import Notifier
from vault_rotator.daemon.parking import FailureBook
from vault_rotator.daemon.replicas import Replicas
from vault_rotator.engine import reasons
from vault_rotator.engine.decide import Observation
from vault_rotator.engine.engine import Command, Engine, FaultHook
from vault_rotator.engine.outcomes import classify
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import Outcome, Rotation, Stall, StateRecord
from vault_rotator.errors import (
    ConfigError,
    LeaseHeldError,
    ProviderAuthError,
    VaultRotatorError,
)
from vault_rotator.policy import Account, KeyPolicy, PolicySet
from vault_rotator.ports.kv import Versioned
from vault_rotator.runtime import Runtime

log = structlog.get_logger(__name__)
T = TypeVar("T")


FAILURE_BACKOFF_S = 3600.0
MAX_FAILURE_BACKOFF_S = 86400.0


def schedule_basis(record: StateRecord) -> tuple[float | None, float]:
    """(the "last rotation" the schedule counts from, the earliest time to start again).

    An operator's abort counts as a rotation for the schedule: the daemon does not undo it on
    its next tick, but waits for the next slot. A rotation that failed verification is retried
    with a backoff (1 h, doubling per failure in a row, at most a day), not on every poll.
    """
    last = record.last_success_at
    failures = 0
    for outcome in reversed(record.outcomes):
        if outcome.outcome != reasons.FAILED_VERIFY:
            break
        failures += 1
    latest = record.outcomes[-1] if record.outcomes else None
    if latest is not None and latest.outcome == reasons.ABORTED:
        last = max(last or 0.0, latest.at)
    if failures and latest is not None:
        wait = min(FAILURE_BACKOFF_S * 2 ** (failures - 1), MAX_FAILURE_BACKOFF_S)
        return last, latest.at + wait
    return last, 0.0


class Cancelled(VaultRotatorError):
    """The daemon is stopping: a wait (a retry backoff) was cut short."""


class StopFlag:
    """A stop event whose ``sleep`` returns early, raising Cancelled, once stop is set."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def sleep(self, seconds: float) -> None:
        if self.event.wait(max(0.0, seconds)):
            raise Cancelled("stopping: wait cancelled")

    def set(self) -> None:
        self.event.set()

    @property
    def stopping(self) -> bool:
        return self.event.is_set()


@dataclass
class Tracked:
    """A key the daemon looks after in a tick: its policy and state record."""

    policy: KeyPolicy
    record: StateRecord
    in_policy: bool = True

    @property
    def active(self) -> bool:
        rot = self.record.rotation
        return rot is not None and rot.stalled is None


@dataclass
class TickReport:
    account: Account
    advanced: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # keys (ENV/NAME) that failed in this tick
    follower: bool = False  # another replica holds the account lease: nothing was done
    # consumer secrets read in this tick (each at most once); per tick, as ticks of different
    # accounts run in parallel threads
    secrets: dict[tuple[str, str], Versioned | None] = field(default_factory=dict)


class Daemon:
    """Rotates every key of every policy on schedule and keeps rotations in flight moving."""

    def __init__(
        self,
        policies: PolicySet,
        runtime: Runtime,
        *,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        fault: FaultHook | None = None,
        holder: str | None = None,
    ) -> None:
        self.policies = policies
        self.runtime = runtime
        self.clock: Callable[[], float] = runtime.clock
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.metrics.webhooks.source = self._webhook_counts
        if runtime.on_provider_request is None:  # count provider requests by route and status
            runtime.on_provider_request = self.metrics.provider_request
        runtime.conn.on_request = self.metrics.vault_request
        self.engine: Engine = runtime.engine(fault=fault, holder=holder)
        self.engine.listeners.append(self)
        self.failures = FailureBook(self.clock)
        self.orphans: dict[Account, tuple[KeyPolicy, ...]] = {}  # see discover_orphans
        self.last_tick: dict[Account, float] = {}
        self.ack_retention = AckRetention(runtime.kv)  # hourly per key; see ack_retention
        self.should_stop: Callable[[], bool] = lambda: False
        self.leading: set[Account] = set()  # accounts this replica ticked last time it asked
        self.replicas = Replicas(
            runtime.kv, holder=self.engine.holder, clock=self.clock, ttl=runtime.lease_ttl
        )
        self.emergencies = Emergencies(  # environment-wide emergency requests (one round a tick)
            self.engine,
            self.notifier,
            guard=self._fresh_key_on_401,
            should_stop=lambda: self.should_stop(),  # noqa: PLW0108 (Service replaces it)
        )

    # -- what to look after -------------------------------------------------------------

    def accounts(self) -> dict[Account, tuple[KeyPolicy, ...]]:
        return self.policies.accounts()

    def tracked(
        self, account: Account, keys: tuple[KeyPolicy, ...], report: TickReport | None = None
    ) -> list[Tracked]:
        """The account's keys with their records, plus in-flight records outside the policies.

        A record that cannot be read is that key's failure (in ``report``); the others go on.
        """
        report = report or TickReport(account)
        found: list[Tracked] = []
        stores: dict[tuple[str, str], StateStore] = {}
        for policy in self.orphans.get(account, ()):  # where the left account's records live
            stores.setdefault(
                (policy.vault.kv_mount, policy.vault.state_prefix), self.engine.store(policy)
            )
        for policy in keys:
            store = stores.setdefault(
                (policy.vault.kv_mount, policy.vault.state_prefix), self.engine.store(policy)
            )
            try:
                found.append(Tracked(policy, store.read(policy.env, policy.name)[0]))
            except VaultRotatorError as exc:
                self._failed(policy, report, str(exc), in_flight=False)
        known = {(p.env, p.name) for p in keys}
        for store in stores.values():
            try:
                records = store.in_flight(skip=known)
            except VaultRotatorError as exc:
                report.errors.append(f"rotations outside the policies: {exc}")
                log.warning("cannot list rotations outside the policies", error=str(exc))
                continue
            for record in records:
                orphan = self._orphan(record)
                if orphan is not None and orphan.policy.account == account:
                    found.append(orphan)
        return found

    def discover_orphans(self) -> dict[Account, tuple[KeyPolicy, ...]]:
        """Accounts no policy names any more that still have rotations in flight under the
        configured state prefixes, with the policies those rotations started with.

        Their rotations are finished as they began (on start and after a reload the service
        ticks these accounts too): a provider account removed from the config must not leave
        a rotation with both keys alive and nobody watching.
        """
        configured = self.policies.accounts()
        known = {(p.env, p.name) for p in self.policies}
        found: dict[Account, list[KeyPolicy]] = {}
        for mount, prefix in sorted(
            {(p.vault.kv_mount, p.vault.state_prefix) for p in self.policies}
        ):
            try:
                records = StateStore(self.runtime.kv(mount), prefix).in_flight(skip=known)
            except VaultRotatorError as exc:
                log.warning("cannot list rotations outside the policies", error=str(exc))
                continue
            for record in records:
                orphan = self._orphan(record)
                if orphan is not None and orphan.policy.account not in configured:
                    found.setdefault(orphan.policy.account, []).append(orphan.policy)
        self.orphans = {account: tuple(policies) for account, policies in found.items()}
        for account in self.orphans:
            log.warning("ticking an account that left the policies, for its rotations in flight",
                        account=account.base_url)  # fmt: skip
        return self.orphans

    def _orphan(self, record: StateRecord) -> Tracked | None:
        assert record.rotation is not None
        try:
            policy = KeyPolicy.from_dict(dict(record.rotation.policy))
        except ConfigError as exc:
            log.warning("cannot resume a rotation", key=record.ref, error=str(exc))
            return None
        return Tracked(policy, record, in_policy=False)

    # -- one tick -----------------------------------------------------------------------

    def tick(self, account: Account, keys: tuple[KeyPolicy, ...]) -> TickReport:
        """One reconcile pass of one account (see the module docstring)."""
        report = TickReport(account)
        if not self._lead(account, keys, report):
            self.emergencies.forget(keys)  # its leader folds their webhooks now, not us
            return report  # another replica ticks it, and carries on its emergency requests
        report.errors += self.emergencies.tick(self.policies, keys)
        tracked = self.tracked(account, keys, report)
        active = [t for t in tracked if t.active]
        if active:
            observation = self._observe(active[0].policy)
            for item in active:
                if not self.replicas.still_holds(account):
                    raise self._lease_lost(account)
                self._advance(item.policy, report, observation=observation)
        self._drop_stale_pending(tracked, report)
        self._start_due(tracked, report)
        self._gauge(tracked, report)
        self.ack_retention.sweep(keys, self.clock())
        for policy in keys:  # a tick this key did not fail in ends its failure episode
            if policy.ref not in report.failed and not self.failures.waiting(policy.ref):
                self.failures.succeeded(policy.ref)
        self.last_tick[account] = self.clock()
        self.metrics.ticks.labels(str(account), "error" if report.errors else "ok").inc()
        self.metrics.last_tick.labels(str(account)).set(self.last_tick[account])
        return report

    def _lead(self, account: Account, keys: tuple[KeyPolicy, ...], report: TickReport) -> bool:
        """Whether this replica ticks the account now (its account lease; see .replicas)."""
        lead = self.replicas.may_tick(account, keys or self.orphans.get(account, ()))
        if not lead and account in self.leading:
            # The replica ticking it now exports its tick time and its keys' gauges; ours
            # would go stale (a stall resolved there would stay stalled here). The accounts
            # we still tick set theirs again at their next tick.
            self.leading.discard(account)
            self.metrics.forget_per_key_series()
            with contextlib.suppress(KeyError):
                self.metrics.last_tick.remove(str(account))
        if lead:
            self.leading.add(account)
        self.metrics.account_lease.labels(str(account)).set(1 if lead else 0)
        report.follower = not lead
        return lead

    def _lease_lost(self, account: Account) -> Cancelled:
        log.warning("account lease lost mid-tick; stopping the tick", account=str(account))
        return Cancelled(f"account lease of {account.base_url} lost mid-tick")

    def _observe(self, policy: KeyPolicy) -> Observation:
        def list_pass() -> Observation:
            provider = self.runtime.provider(policy, None)
            return Observation.of(tuple(provider.list_keys()), self.clock())

        return self._fresh_key_on_401(policy, list_pass)

    def _fresh_key_on_401(self, policy: KeyPolicy, call: Callable[[], T]) -> T:
        """A 401 on a management call: read the management key from Vault again, retry once."""
        try:
            return call()
        except ProviderAuthError:
            log.warning(
                "management key refused; reading it from Vault again",
                account=policy.account.base_url,
                path=policy.provider.management_key.path,
            )
            self.runtime.forget_account(policy.account)
            return call()

    def _advance(
        self,
        policy: KeyPolicy,
        report: TickReport,
        *,
        observation: Observation | None = None,
        command: Command | None = None,
    ) -> None:
        if self.should_stop():
            raise Cancelled("stopping: no new work")
        if self.failures.waiting(policy.ref):
            return  # parked: its next try is not due yet
        try:
            progress = self._fresh_key_on_401(
                policy,
                lambda: self.engine.advance(
                    policy, start=command is not None, command=command, observation=observation
                ),
            )
        except LeaseHeldError:
            return  # a CLI (or another daemon) is acting on it now; next tick
        except Cancelled:
            raise
        except VaultRotatorError as exc:
            self._failed(policy, report, str(exc), in_flight=command is None)
            return
        except Exception as exc:  # one key's bug must not stop the others
            error = f"unexpected {type(exc).__name__}: {exc}"
            self._failed(policy, report, error, in_flight=command is None)
            return
        self.failures.succeeded(policy.ref)
        (report.started if command else report.advanced).append(policy.ref)
        if progress.outcome is not None and policy.ref not in {p.ref for p in self.policies}:
            log.warning("finished a rotation of a key no longer in any policy", key=policy.ref)

    def _failed(
        self, policy: KeyPolicy, report: TickReport, error: str, *, in_flight: bool
    ) -> None:
        """Count a failed pass; park a key that keeps failing (a stall if it can) and alert once."""
        report.errors.append(f"{policy.ref}: {error}")
        report.failed.add(policy.ref)
        episode = self.failures.failed(policy.ref, error, policy.provider.poll_interval_s)
        log.warning("pass failed", key=policy.ref, error=error, failures=episode.count)
        if not self.failures.first_alert(episode):
            return
        minutes = (self.clock() - episode.first_at) / 60
        detail = f"{episode.count} passes failed over {minutes:.0f} min; last: {error}"
        if in_flight and self._stall(policy, detail):
            return  # recorded in Vault; the stall's own webhook is the alert
        log.error("key parked: it keeps failing", key=policy.ref, detail=detail)
        self.notifier.notify(
            events.FAILED,
            env=policy.env,
            key=policy.ref,
            reason=reasons.RETRIES_EXHAUSTED,
            detail=detail,
        )

    def _stall(self, policy: KeyPolicy, detail: str) -> bool:
        """Record a retries-exhausted stall on the rotation in flight; False if it cannot."""
        try:
            progress = self.engine.stall(policy, reasons.RETRIES_EXHAUSTED, detail)
        except VaultRotatorError as exc:
            log.warning("could not record the stall", key=policy.ref, error=str(exc))
            return False
        return progress.stalled is not None

    def _drop_stale_pending(self, tracked: list[Tracked], report: TickReport) -> None:
        """A pending record (a key value) left by a crash after "done": one pass destroys it."""
        idle = {(t.policy.env, t.policy.name): t for t in tracked if t.record.rotation is None}
        folders = {
            (t.policy.vault.kv_mount, t.policy.vault.state_prefix, t.policy.env) for t in tracked
        }
        for mount, prefix, env in sorted(folders):
            for name in self.runtime.kv(mount).list(f"{prefix}/pending/{env}"):
                if (item := idle.get((env, name))) is not None:
                    self._advance(item.policy, report)

    def _start_due(self, tracked: list[Tracked], report: TickReport) -> None:
        frozen_sets: dict[tuple[str, str], FrozenSet] = {}
        in_flight = sum(1 for t in tracked if t.active)
        now = self.clock()
        candidates = []
        for item in tracked:
            if not item.in_policy or item.record.rotation is not None:
                continue
            policy = item.policy
            where = (policy.vault.kv_mount, policy.vault.state_prefix)
            last, not_before = schedule_basis(item.record)
            try:
                if where not in frozen_sets:
                    frozen_sets[where] = frozen(self.runtime.kv(where[0]), where[1])
                verdict = due(
                    policy,
                    last_success_at=last,
                    rotated_at=self._rotated_at(item, report),
                    in_flight=False,
                    frozen=frozen_sets[where].covers(policy.env, policy.name),
                    now=now,
                )
            except VaultRotatorError as exc:
                self._failed(policy, report, str(exc), in_flight=False)
                continue
            if verdict.due and now >= not_before:
                candidates.append((verdict.at, verdict.reason, policy))
        for _at, reason, policy in sorted(candidates, key=lambda c: c[0]):
            if in_flight >= policy.provider.max_concurrent:
                break
            if not self.replicas.still_holds(report.account):
                raise self._lease_lost(report.account)
            self._advance(
                policy, report, command=Command(trigger="schedule", by=f"daemon:{reason}")
            )
            in_flight += 1

    def _secret(self, policy: KeyPolicy, report: TickReport) -> Versioned | None:
        """The consumer secret's current version (None if none), read at most once a tick."""
        where = (policy.vault.kv_mount, policy.secret_path)
        if where not in report.secrets:
            got = self.runtime.kv(where[0]).read(where[1])
            report.secrets[where] = got if got is not None and not got.deleted else None
        return report.secrets[where]

    def _rotated_at(self, item: Tracked, report: TickReport) -> str | None:
        if item.record.last_success_at is not None:
            return None  # the record wins; no need to read the secret
        got = self._secret(item.policy, report)
        stamp = got.data.get("rotated_at") if got else None
        return stamp if isinstance(stamp, str) else None

    def _written_at(self, item: Tracked, report: TickReport) -> float | None:
        """A never-rotated key's age basis: the secret's ``rotated_at``, else its first version."""
        stamp = self._rotated_at(item, report)
        if stamp is None and self._secret(item.policy, report) is not None:
            kv = self.runtime.kv(item.policy.vault.kv_mount)
            first = kv.read(item.policy.secret_path, 1)
            stamp = first.created_time if first is not None else None
        try:
            moment = datetime.fromisoformat(stamp or "")
        except ValueError:
            return None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    def _gauge(self, tracked: list[Tracked], report: TickReport) -> None:
        now = self.clock()
        by_env: dict[str, list[int]] = {}
        for item in tracked:
            counts = by_env.setdefault(item.policy.env, [0, 0, 0])
            rot = item.record.rotation
            counts[0] += rot is not None
            counts[1] += rot is not None and rot.stalled is not None
            labels = (item.policy.env, item.policy.name)
            last = item.record.last_success_at
            if last is not None:
                self.metrics.last_success.labels(*labels).set(last)
                self.metrics.key_age.labels(*labels, "false").set(now - last)
                with contextlib.suppress(KeyError):  # the never-rotated series, if any
                    self.metrics.key_age.remove(*labels, "true")
            elif item.in_policy and item.record.rotation is None:  # one in flight: stalls
                # and the pass itself say more; its age is set again once it ends
                try:
                    last = self._written_at(item, report)
                except VaultRotatorError:
                    last = None
                if last is not None:
                    self.metrics.key_age.labels(*labels, "true").set(now - last)
            if last is not None and item.in_policy and now - last > item.policy.max_age_s:
                counts[2] += 1
        for env, (flying, stalled, overdue) in by_env.items():
            self.metrics.in_flight.labels(env).set(flying)
            self.metrics.stalled.labels(env).set(stalled)
            self.metrics.overdue.labels(env).set(overdue)

    def _webhook_counts(self) -> tuple[int, int, int]:
        counts = self.notifier.counters
        return counts.sent, counts.failed, counts.dropped

    # -- engine listener: metrics and notifications -------------------------------------

    def finished(self, policy: KeyPolicy, outcome: Outcome, rotation: Rotation) -> None:
        self.metrics.rotation_finished(policy.env, policy.name, outcome, rotation)
        if self.emergencies.folds(policy.env, policy.name, rotation):
            return  # into its emergency request's one webhook
        kind = classify(outcome.outcome)  # the outcome table (engine.outcomes)
        if kind.needs_attention:
            event = events.NEEDS_ATTENTION
        elif kind.success:
            event = events.SUCCEEDED
        else:
            event = events.FAILED
        self._notify(event, policy, rotation, outcome=outcome.outcome, detail=outcome.detail)

    def stalled(self, policy: KeyPolicy, rotation: Rotation, stall: Stall) -> None:
        if self.emergencies.folds(policy.env, policy.name, rotation):
            return  # into its emergency request's one webhook
        self._notify(events.STALLED, policy, rotation, reason=stall.reason, detail=stall.detail)

    def _notify(self, event: str, policy: KeyPolicy, rotation: Rotation, **fields: Any) -> None:
        self.notifier.notify(
            event,
            env=policy.env,
            key=policy.ref,
            rotation_id=rotation.id,
            trigger=rotation.trigger,
            by=rotation.by,
            old_key_id=rotation.old_key_id,
            new_key_id=rotation.new_key_id,
            **fields,
        )
