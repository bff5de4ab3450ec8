"""One round of an environment-wide emergency: every key of the request looked at, and its
passes run many at once.

A round has three parts, so that whoever runs it (the daemon's tick, or a CLI's ``--wait``
loop) can run the passes on its own pool of workers, beside its own passes:

1. :meth:`Round.plan` decides, purely, what each key not ended yet needs
   (:func:`~vault_rotator.engine.emergency_decide.decide_key`) from its state record, as the
   caller knows it (the daemon's book) or reads it: **start** a rotation in emergency mode
   (trigger ``emergency:<request id>``, frozen keys too: a freeze holds schedules, not
   operators), **upgrade** a rotation in flight to emergency (and to ``revoke_old_now`` if
   asked), **drive** the request's rotations in flight (a CLI's round; the daemon's tick passes
   every rotation in flight anyway), or nothing. The jobs come back in the request's order.
2. :meth:`Round.act` runs one job (on any thread): one pass of the engine under the key's
   lease, with every crash-safe step (``about to create`` saved before the create), and turns
   what happened into the key's new entry. The provider's adaptive limiter bounds how many of
   them reach the provider at once.
3. :meth:`Round.finish` saves the request's progress once: the shards that changed and the
   header, by check-and-set; a writer that lost re-reads and lays its changes over the other's
   (:func:`~.emergency_decide.merged`).

:meth:`Round.run` does the three for a CLI: it reads the records in parallel, lists the account
once, runs the passes on its pool, and bumps the change signal once for every key it wrote
(``scheduled`` passes: observations not written yet stay in the round's memo, as in the
daemon's book, and ride on the rotation's next write).

Failures are the key's own: a start refused for good marks it ``failed`` (a rerun tries
again); a transient failure is retried next round, ``max_transient`` times in a row before the
key is failed (or, in flight, stalled as ``retries-exhausted``, both keys alive). A provider
that asks to wait (a 429, even with a ``Retry-After`` past a poll) fails nothing: the key
waits (an emergency rotation never stalls as ``rate-limited``), and no new key of the round is
started until the wait has passed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from vault_rotator.engine import reasons
from vault_rotator.engine.changes import note_changes
from vault_rotator.engine.context import Command, Progress, Verb
from vault_rotator.engine.decide import Observation
from vault_rotator.engine.decide_create import Listing
from vault_rotator.engine.emergency import TERMINAL, EmergencyRequest, KeyEntry, Step
from vault_rotator.engine.emergency_decide import KeyAction, after_pass, decide_key, merged
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.engine import Engine
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.errors import (
    ConfigError,
    LeaseHeldError,
    LeaseLostError,
    OldKeyUnknownError,
    ProviderRetryableError,
    RateLimitedError,
    StoreUnavailableError,
    VaultRotatorError,
)
from vault_rotator.policy import EnvironmentPolicy, KeyPolicy

log = structlog.get_logger(__name__)
T = TypeVar("T")
U = TypeVar("U")

TRANSIENT = (ProviderRetryableError, StoreUnavailableError, LeaseLostError)
MAX_TRANSIENT = 10
FLUSH_S = 300.0  # observations a CLI round's pass did not write are written within this
UNKNOWN_OLD = (
    "old key unknown (the secret has no key_id and the policy no adopt_key_id): set "
    "adopt_key_id, then run `vault-rotator rotate {ref} --emergency --wait`"
)

# job -> the pass's progress (the daemon's wraps engine.advance: its book, a fresh management key)
Advance = Callable[["Job", Command], Progress]
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def serial_map(fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
    return [fn(item) for item in items]


@dataclass(frozen=True, slots=True)
class Job:
    """One key's pass that a round asks for."""

    name: str
    action: KeyAction
    entry: KeyEntry  # the request's entry as decided, before the pass
    record: StateRecord
    version: int
    policy: KeyPolicy

    @property
    def starts(self) -> bool:
        """A new rotation (it takes a place among the account's rotations in flight)."""
        return self.action == KeyAction.START


@dataclass
class Plan:
    """What a round decided: the entries as the records show them, and the passes to run."""

    request: EmergencyRequest
    changes: dict[str, KeyEntry] = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RoundResult:
    request: EmergencyRequest
    notify: bool = False  # this round saw the request settle first: send its one webhook


@dataclass
class _Memo:
    """A CLI round's own last pass on a key: the record it left (maybe with observations not
    written yet), kept while Vault still holds the version it builds on."""

    record: StateRecord
    version: int
    carried_since: float | None


@dataclass
class Round:
    """Rounds of one environment's request (keep one per process: it counts failures)."""

    engine: Engine
    environment: EnvironmentPolicy
    drive: bool
    should_stop: Callable[[], bool] = lambda: False  # the daemon is stopping: no new passes
    max_transient: int = MAX_TRANSIENT
    failures: dict[str, int] = field(default_factory=dict)
    held_until: float = 0.0  # the provider asked to wait: no new start before then

    def __post_init__(self) -> None:
        vault = self.environment.vault
        self.kv = self.engine.kv_for(vault.kv_mount)
        self.store = EmergencyStore(self.kv, vault.state_prefix)
        self.states = StateStore(self.kv, vault.state_prefix)
        self.policies = {key.name: key for key in self.environment.keys}
        self._lock = threading.Lock()
        self._memo: dict[str, _Memo] = {}

    # -- a CLI's whole round -----------------------------------------------------------

    def run(
        self, request: EmergencyRequest, *, notify: bool = False, map: Mapper = serial_map
    ) -> RoundResult:
        """Plan, run the passes on ``map``'s workers (one list pass shared; starts within
        ``max_concurrent``, counted on this environment's records), save once."""
        names = [n for n, e in request.keys.items() if e.step not in TERMINAL]
        records = dict(zip(names, map(self._read, names), strict=True))
        plan = self.plan(request, lambda name: records[name])
        jobs = self._within_room(self.runnable(plan.jobs), records.values())
        try:
            listing = self._listing(jobs)
        except RateLimitedError as exc:  # the provider holds the account: no pass this round
            self._hold(exc)
            jobs, listing = [], None
        wrote: list[str] = []

        def one(job: Job) -> tuple[str, KeyEntry]:
            entry = self.act(plan.request, job, lambda j, c: self._advance(j, c, listing, wrote))
            return job.name, entry

        try:
            plan.changes.update(map(one, jobs))
        finally:  # once for every key written, even when a pass raised
            refs = sorted({f"{request.env}/{name}" for name in wrote})
            note_changes(self.kv, self.environment.vault.state_prefix, refs, at=self.engine.clock())
        return self.finish(plan.request, plan.changes, notify=notify)

    def _within_room(
        self, jobs: Sequence[Job], records: Iterable[tuple[StateRecord, int] | VaultRotatorError]
    ) -> list[Job]:
        """Every job but the starts past ``max_concurrent`` (rotations in flight not stalled;
        a CLI counts its environment's, the daemon its account's)."""
        flying = sum(
            1
            for got in records
            if not isinstance(got, VaultRotatorError)
            and got[0].rotation is not None
            and got[0].rotation.stalled is None
        )
        room = self.environment.provider.max_concurrent - flying
        kept: list[Job] = []
        for job in jobs:
            if job.starts:
                if room <= 0:
                    continue  # queued: a later round
                room -= 1
            kept.append(job)
        return kept

    def _read(self, name: str) -> tuple[StateRecord, int] | VaultRotatorError:
        try:
            return self.states.read(self.environment.environment, name)
        except VaultRotatorError as exc:
            return exc

    def _listing(self, jobs: Sequence[Job]) -> Listing | None:
        """One list pass of the account per round, shared by the passes it runs."""
        if not jobs:
            return None
        job = jobs[0]
        try:
            asked_at = self.engine.clock()
            keys = self.engine.providers(job.policy, job.record.dialect).list_keys()
        except RateLimitedError:
            raise
        except VaultRotatorError:
            return None  # each pass then lists for itself
        return Listing(Observation.of(tuple(keys), self.engine.clock()), asked_at)

    def _advance(
        self, job: Job, command: Command, listing: Listing | None, wrote: list[str]
    ) -> Progress:
        memo = self._memo.get(job.name)
        fresh = memo is not None and memo.version == job.version
        record = memo.record if fresh and memo is not None else job.record
        carried_since = memo.carried_since if fresh and memo is not None else None
        now = self.engine.clock()
        progress = self.engine.advance(
            job.policy,
            start=job.action != KeyAction.DRIVE,
            command=command,
            listing=listing,
            known=(record, job.version),
            carried=carried_since is not None,
            scheduled=True,  # observations ride on the next write; the signal once a round
            flush=carried_since is not None and now - carried_since > FLUSH_S,
        )
        with self._lock:
            if progress.wrote:
                wrote.append(job.name)
            if progress.known is not None:
                since = (carried_since or now) if progress.carried else None
                self._memo[job.name] = _Memo(*progress.known, carried_since=since)
        return progress

    # -- the three parts ---------------------------------------------------------------

    def plan(
        self,
        request: EmergencyRequest,
        record_of: Callable[[str], tuple[StateRecord, int] | VaultRotatorError],
    ) -> Plan:
        """Each key not ended yet, as its record shows it, and the passes it needs."""
        now = self.engine.clock()
        plan = Plan(request)
        priors: dict[str, KeyEntry] = {}
        for name, entry in request.keys.items():
            if entry.step in TERMINAL:
                continue
            got = record_of(name)
            if isinstance(got, VaultRotatorError):
                if not isinstance(got, TRANSIENT):
                    why = f"state record unreadable: {got}"
                    plan.changes[name] = entry.moved(Step.FAILED, now, detail=why)
                continue
            record, version = got
            action, decided = decide_key(request, entry, record, now)
            if decided.prior is not None and decided.prior != entry.prior:
                priors[name] = decided
            if decided != entry:
                plan.changes[name] = decided
            if action == KeyAction.NONE or (action == KeyAction.DRIVE and not self.drive):
                self.failures.pop(name, None)
                continue
            policy = self._policy(name, record)
            if policy is None:
                plan.changes[name] = decided.moved(
                    Step.SKIPPED, now, detail="no longer in the policies"
                )
                continue
            plan.jobs.append(Job(name, action, decided, record, version, policy))
        if priors:
            # Saved before acting: once upgraded and ended, a prior rotation's outcome looks
            # like the request's own to a round that does not know it was prior (a crash).
            plan.request = self.finish(request, priors, notify=False).request
        return plan

    def runnable(self, jobs: Iterable[Job]) -> list[Job]:
        """The jobs to run now: no new start while the provider asks to wait."""
        held = self.engine.clock() < self.held_until
        return [job for job in jobs if not (held and job.starts)]

    def command(self, request: EmergencyRequest, job: Job) -> Command:
        if job.action == KeyAction.DRIVE:
            return Command(trigger=request.tag, by=request.by)
        return Command(
            Verb.ROTATE,
            emergency=True,
            revoke_old_now=request.revoke_old_now,
            trigger=request.tag,
            by=request.by,
        )

    def act(  # noqa: PLR0911 (one return per way a pass can end)
        self, request: EmergencyRequest, job: Job, advance: Advance
    ) -> KeyEntry:
        """The key's entry once its pass ran (or failed); safe on any thread."""
        entry = job.entry
        if self.should_stop() or (job.starts and self.engine.clock() < self.held_until):
            return entry  # stopping; or queued until the provider's wait has passed
        try:
            progress = advance(job, self.command(request, job))
        except LeaseHeldError:
            return entry  # another process is at it; next round
        except OldKeyUnknownError:
            detail = UNKNOWN_OLD.format(ref=job.policy.ref)
            return entry.moved(Step.SKIPPED, self.engine.clock(), detail=detail)
        except RateLimitedError as exc:  # nothing created: the key waits, it does not fail
            return self._held(entry, exc)
        except Exception as exc:  # one key's trouble, even a bug, is its own
            if self.should_stop():
                return entry  # a wait cut short by the daemon's stop is no failure
            return self._failed(job.policy, entry, job.action, exc)
        with self._lock:
            self.failures.pop(job.name, None)
        return after_pass(entry, progress, self.engine.clock())

    def _held(self, entry: KeyEntry, exc: RateLimitedError) -> KeyEntry:
        wait = self._hold(exc)
        return entry.moved(
            entry.step, self.engine.clock(), detail=f"rate-limited: waiting {wait:g}s"
        )

    def _hold(self, exc: RateLimitedError) -> float:
        """No new start until the provider's wait (at least a poll) has passed; the wait."""
        now = self.engine.clock()
        wait = exc.retry_after if exc.retry_after is not None else 0.0
        poll = self.environment.provider.poll_interval_s
        with self._lock:
            self.held_until = max(self.held_until, now + max(wait, poll))
        log.info("emergency: provider asks to wait", env=self.environment.environment, wait=wait)
        return wait

    def finish(
        self, request: EmergencyRequest, changes: Mapping[str, KeyEntry], *, notify: bool
    ) -> RoundResult:
        """Save the changes once (check-and-set); the request as saved."""
        now = self.engine.clock()
        marked: list[bool] = []

        def change(current: EmergencyRequest | None) -> EmergencyRequest | None:
            marked.clear()
            if current is None or current.id != request.id:
                return None  # replaced (a new request) or removed: not ours to write
            wanted = merged(current, changes, now)
            if notify and wanted.settled and wanted.notified_at is None:
                wanted = wanted.evolve(notified_at=now)
                marked.append(True)
            return None if wanted == current else wanted

        if not changes and not notify and not request.settled:
            return RoundResult(request)  # nothing to say: no read, no write
        saved = self.store.update(request.env, change)
        if saved is None or saved.id != request.id:  # gone: what this round saw is all there is
            return RoundResult(request.with_keys(changes, now))
        return RoundResult(saved, notify=bool(marked))

    # -- one key -----------------------------------------------------------------------

    def _policy(self, name: str, record: StateRecord) -> KeyPolicy | None:
        """The key's policy; for a key that left the policies, its rotation's own, if any."""
        if name in self.policies:
            return self.policies[name]
        if record.rotation is None:
            return None
        try:
            return KeyPolicy.from_dict(dict(record.rotation.policy))
        except ConfigError:
            return None

    def _failed(
        self, policy: KeyPolicy, entry: KeyEntry, action: KeyAction, exc: Exception
    ) -> KeyEntry:
        """Count a failure; past the limit (or at once, for a start refused for good) the key
        is failed, or its rotation in flight stalled."""
        now = self.engine.clock()
        error = str(exc) if isinstance(exc, VaultRotatorError) else f"unexpected {exc!r:.200}"
        with self._lock:
            count = self.failures.get(policy.name, 0) + 1
            self.failures[policy.name] = count
        log.warning("emergency: pass failed", key=policy.ref, error=error, failures=count)
        permanent = action == KeyAction.START and not isinstance(exc, TRANSIENT)
        if not permanent and count < self.max_transient:
            return entry
        with self._lock:
            self.failures.pop(policy.name, None)
        if action != KeyAction.START:
            try:
                detail = f"gave up after {count} failed passes: {error}"
                progress = self.engine.stall(policy, reasons.RETRIES_EXHAUSTED, detail)
            except VaultRotatorError:
                pass
            else:
                if progress.stalled is not None:
                    return after_pass(entry, progress, now)
        return entry.moved(Step.FAILED, now, detail=error)
