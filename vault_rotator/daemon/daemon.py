"""The daemon's reconcile loop: per provider account, a poll whose cost follows the work.

:meth:`Daemon.tick` is what a scheduler job runs every ``poll_interval`` for an account:

1. bring the account's :class:`~.book.Book` up to date (:mod:`.refresh`): at start every state
   record; afterwards the change signal (one read per state prefix), the records it names, a
   slice of a slow full re-read, and nothing else;
2. pick the idle keys that fall due (:mod:`.starts`; frozen keys never), while fewer than
   ``max_concurrent`` rotations are in flight (stalled ones do not count);
3. if anything is in flight or starting, list the account's keys ONCE, and run every pass
   (each rotation in flight, each start, each stale pending record) in a bounded pool of
   worker threads, all on that list pass. Nothing in flight and nothing due: no list call.

A pass that only observes writes nothing; what it saw stays in the book (see :mod:`.book`).
One key's failure (its record unreadable, its pass refused, even a bug) is that key's alone:
it is reported and the tick goes on with the others. A key that keeps failing is parked and
alerted once (:mod:`.parking`).

Nothing here sleeps: waits are states in the records, and the truth lives in Vault, so a
restart resumes everything and a schedule missed while down fires once.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from vault_rotator.daemon import notify as events
from vault_rotator.daemon.ack_retention import AckRetention
from vault_rotator.daemon.book import Book, Entry
from vault_rotator.daemon.emergencies import Emergencies, Open, RecordOf, Work
from vault_rotator.daemon.freeze import FrozenSet, frozen
from vault_rotator.daemon.metrics import KeyRow, Metrics
from vault_rotator.daemon.notify import Notifier
from vault_rotator.daemon.parking import FailureBook
from vault_rotator.daemon.refresh import Refresher, own_policy
from vault_rotator.daemon.replicas import Replicas
from vault_rotator.daemon.roster import roster
from vault_rotator.daemon.starts import (
    FAILURE_BACKOFF_S,
    MAX_FAILURE_BACKOFF_S,
    Start,
    due_now,
    schedule_basis,
)
from vault_rotator.display import shown
from vault_rotator.engine import reasons
from vault_rotator.engine.decide import Observation
from vault_rotator.engine.decide_create import Listing
from vault_rotator.engine.emergency_round import Job
from vault_rotator.engine.engine import Command, Engine, FaultHook, Progress
from vault_rotator.engine.outcomes import classify
from vault_rotator.engine.preflight import CAPABILITY_BATCH, missing_capabilities
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import Outcome, Rotation, Stall, StateRecord
from vault_rotator.errors import (
    LeaseHeldError,
    PreflightError,
    ProviderAuthError,
    RateLimitedError,
    RecordTooLargeError,
    VaultRotatorError,
)
from vault_rotator.policy import Account, KeyPolicy, PolicySet
from vault_rotator.runtime import Runtime

__all__ = [
    "FAILURE_BACKOFF_S",
    "MAX_FAILURE_BACKOFF_S",
    "Cancelled",
    "Daemon",
    "StopFlag",
    "TickReport",
    "schedule_basis",
]

log = structlog.get_logger(__name__)
T = TypeVar("T")

WORKERS = 16  # passes of one poll run on this many threads at most (hvac and httpx are sync)


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
class TickReport:
    account: Account
    advanced: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # keys (ENV/NAME) that failed in this tick
    follower: bool = False  # another replica holds the account lease: nothing was done
    listed: bool = False  # the tick made a list pass of the account
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, ref: str, *, started: bool) -> None:
        with self.lock:
            (self.started if started else self.advanced).append(ref)

    def fail(self, ref: str, error: str) -> None:
        with self.lock:
            self.errors.append(f"{ref}: {error}")
            self.failed.add(ref)


class CapabilityBatch:
    """The token's capabilities for a batch of emergency starts, asked in one request (per
    mount, :func:`~vault_rotator.engine.preflight.missing_capabilities`) by the first start
    of the batch that needs them, on the start pool; the others wait for that answer. A
    request that fails raises its error in each start that asks (a transient one is retried
    by the round, as the engine's own check's would be)."""

    def __init__(
        self,
        policies: list[KeyPolicy],
        kv_for: Callable[[str], Any],
        store_for: Callable[[KeyPolicy], StateStore],
    ) -> None:
        self.policies, self.kv_for, self.store_for = policies, kv_for, store_for
        self._lock = threading.Lock()
        self._problems: dict[str, str] | None = None

    def problem(self, ref: str) -> str | None:
        """What the token lacks for this key's start, or None."""
        with self._lock:
            if self._problems is None:
                self._problems = missing_capabilities(
                    self.policies, self.kv_for, self.store_for, raising=True
                )
        return self._problems.get(ref)


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
        workers: int = WORKERS,
    ) -> None:
        self.generation = 0
        self._accounts: dict[Account, tuple[KeyPolicy, ...]] | None = None
        self._policies = policies
        self.runtime = runtime
        self.clock: Callable[[], float] = runtime.clock
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.metrics.webhooks.source = self._webhook_counts
        self.metrics.keys.source = self._key_rows
        self.metrics.keys.clock = self.clock
        if runtime.on_provider_request is None:  # count provider requests by route and status
            runtime.on_provider_request = self.metrics.provider_request
        runtime.conn.on_request = self.metrics.vault_request
        self.engine: Engine = runtime.engine(fault=fault, holder=holder)
        self.engine.listeners.append(self)
        self.failures = FailureBook(self.clock)
        self.orphans: dict[Account, tuple[KeyPolicy, ...]] = {}  # see discover_orphans
        self.last_tick: dict[Account, float] = {}
        self.books: dict[Account, Book] = {}
        self.list_passes = 0  # list passes made (benchmarks read it)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vault-rotator")
        # Emergency starts run here, not in a tick: they go on across ticks at the provider's
        # and Vault's pace while the ticks keep every rotation in flight moving.
        self.start_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vr-start")
        self.starting: dict[Account, dict[str, Future[Progress | None]]] = {}
        self.refresher = Refresher(runtime.kv, self.map)
        self.ack_retention = AckRetention(runtime.kv)  # hourly per key; see ack_retention
        self.should_stop: Callable[[], bool] = lambda: False
        self.after_tick: Callable[[], None] = lambda: None  # run: a HeapTrimmer (memory.py)
        self.leading: set[Account] = set()  # accounts this replica ticked last time it asked
        self.replicas = Replicas(
            runtime.kv, holder=self.engine.holder, clock=self.clock, ttl=runtime.lease_ttl
        )
        self.metrics.lease_stuck.source = self.replicas.stuck  # no holder ticks an account
        self.emergencies = Emergencies(  # environment-wide emergency requests (one round a tick)
            self.engine,
            self.notifier,
            should_stop=lambda: self.should_stop(),  # noqa: PLW0108 (Service replaces it)
        )

    # -- what to look after -------------------------------------------------------------

    @property
    def policies(self) -> PolicySet:
        return self._policies

    @policies.setter
    def policies(self, policies: PolicySet) -> None:
        """New policies (a reload): every book is built again from Vault on its next tick."""
        self._policies = policies
        self._accounts = None
        self.generation += 1
        self.books = {}

    def accounts(self) -> dict[Account, tuple[KeyPolicy, ...]]:
        if self._accounts is None:
            self._accounts = self.policies.accounts()
        return self._accounts

    def map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items`` on the worker pool (in order); the first exception is raised."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        return list(self.pool.map(fn, items))

    def discover_orphans(self) -> dict[Account, tuple[KeyPolicy, ...]]:
        """Accounts no policy names any more that still have rotations in flight under the
        configured state prefixes, with the policies those rotations started with.

        Their rotations are finished as they began (on start and after a reload the service
        ticks these accounts too): a provider account removed from the config must not leave
        a rotation with both keys alive and nobody watching. Only against a provider host the
        policies still name: such a rotation's policy comes from its state record, which
        anyone with write on the state prefix could forge, and finishing it reads a management
        key from Vault and sends it to that URL. Any other is left as it is (both keys alive),
        with a warning.
        """
        configured = self.accounts()
        known = {(p.env, p.name) for p in self.policies}
        hosts = {_host(account.base_url) for account in configured}
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
                policy = own_policy(record)
                if policy is None or policy.account in configured:
                    continue
                if _host(policy.provider.base_url) not in hosts:  # a forged record's URL?
                    log.warning(
                        "not finishing a rotation of an account that left the policies: its "
                        "provider host is none the policies name (its management key is sent "
                        "only to those)",
                        key=policy.ref, host=shown(_host(policy.provider.base_url)),
                    )  # fmt: skip
                    continue
                found.setdefault(policy.account, []).append(policy)
        self.orphans = {account: tuple(policies) for account, policies in found.items()}
        for account in self.orphans:
            log.warning("ticking an account that left the policies, for its rotations in flight",
                        account=account.base_url)  # fmt: skip
        return self.orphans

    def book(self, account: Account, keys: tuple[KeyPolicy, ...]) -> Book:
        """The account's book, built afresh for new policies (read on its next refresh)."""
        book = self.books.get(account)
        if book is None or book.generation != self.generation or book.keys is not keys:
            outside = {
                (p.vault.kv_mount, p.vault.state_prefix) for p in self.orphans.get(account, ())
            }
            book = Book(account, keys, generation=self.generation, outside=sorted(outside))
            self.books[account] = book
        return book

    # -- one tick -----------------------------------------------------------------------

    def tick(self, account: Account, keys: tuple[KeyPolicy, ...]) -> TickReport:
        """One reconcile pass of one account (see the module docstring)."""
        report, began = TickReport(account), time.monotonic()
        if not self._lead(account, keys, report):
            self.emergencies.forget(keys)  # its leader folds their webhooks now, not us
            for queued in self.starting.get(account, {}).values():
                queued.cancel()  # starts not begun are the leader's now (those under way end)
            return report  # another replica ticks it, and carries on its emergency requests
        book = self.book(account, keys)
        self._reap(account, book)
        found = self.refresher.refresh(book, _poll(keys))
        report.errors += found.errors
        for policy, error in found.failed:
            self._failed(policy, report, error, in_flight=False)
        for ref in found.recovered:
            self.failures.succeeded(ref)
        record_of = self._record_of(book)
        starting = self.starting.setdefault(account, {})
        busy = frozenset(starting)  # keys whose emergency start is under way (start pool)
        work = self.emergencies.plan(self.policies, keys, record_of, busy=busy)
        urgent = {f"{o.env}/{job.name}" for o, job in work.jobs()}  # the requests pass these
        now = self.clock()
        active = [
            e
            for e in book.active()
            if not self.failures.waiting(e.ref) and e.ref not in urgent and e.ref not in busy
        ]
        flying = {e.ref for e in book.active()} | busy  # rotations in flight, starts included
        starts = self._starts(book, report, now, flying=len(flying), skip=urgent | busy)
        emergency = self._emergency_jobs(work, len(flying) + len(starts))
        listing = None
        if active or starts or emergency:
            try:
                listing = self._list(account, book)
            except RateLimitedError as exc:  # the account is held: nothing is sent this tick
                log.info("provider asks to wait; no pass this tick", error=str(exc))
                active, starts, emergency, found.tidy = [], [], [], []
        report.listed = listing is not None
        jobs: list[Callable[[], None]] = [
            functools.partial(self._pass, book, e, report, listing, None) for e in active
        ]
        jobs += [
            functools.partial(self._pass, book, s.entry, report, listing, _command(s))
            for s in starts
        ]
        jobs += [
            functools.partial(self._pass, book, e, report, listing, None)
            for e in found.tidy
            if e.record.rotation is None and e.ref not in busy
        ]
        jobs += [
            functools.partial(self._upgrade, book, report, listing, o, job)
            for o, job in emergency
            if not job.starts
        ]
        if (jobs or emergency) and not self.replicas.still_holds(account):  # renewed since
            raise self._lease_lost(account)  # the tick began
        self._submit_starts(book, report, listing, [(o, j) for o, j in emergency if j.starts])
        self.map(lambda job: job(), jobs)
        # The tick waits for the starts until half a poll has passed since it began, no longer
        # (so it ends before the next is due): those still running are carried on by the next
        # ticks (the key shows `creating`).
        left = began + _poll(keys) / 2 - time.monotonic()
        futures.wait(starting.values(), timeout=max(0.0, left))
        self._reap(account, book)
        begun = frozenset(  # not those still waiting in the start pool's queue
            ref
            for ref, start in list(starting.items())
            if start.running() or (start.done() and not start.cancelled())
        )
        report.errors += self.emergencies.settle(
            work, record_of, busy=frozenset(starting), begun=begun
        )
        self.ack_retention.sweep(keys, self.clock())
        self.last_tick[account] = self.clock()
        self.after_tick()
        self.metrics.ticks.labels(str(account), "error" if report.errors else "ok").inc()
        self.metrics.last_tick.labels(str(account)).set(self.last_tick[account])
        return report

    def _submit_starts(
        self,
        book: Book,
        report: TickReport,
        listing: Listing | None,
        starts: list[tuple[Open, Job]],
    ) -> None:
        """The requests' starts onto the start pool (their creates run on, across ticks),
        their capabilities asked per batch of CAPABILITY_BATCH keys."""
        starting = self.starting.setdefault(book.account, {})
        for at in range(0, len(starts), CAPABILITY_BATCH):
            batch = starts[at : at + CAPABILITY_BATCH]
            policies = [job.policy for _o, job in batch]
            caps = CapabilityBatch(policies, self.runtime.kv, self.engine.store)
            for found_request, job in batch:
                entry = book.entries.get(job.policy.ref)
                trusted = entry is not None and entry.trusted and not entry.stale
                starting[job.policy.ref] = self.start_pool.submit(
                    self._urgent_start, listing, found_request, job, trusted, caps
                )
                report.add(job.policy.ref, started=True)

    def _record_of(self, book: Book) -> RecordOf:
        """A key's state record as the book holds it (read from Vault if it has none)."""

        def record_of(env: str, name: str) -> tuple[StateRecord, int] | VaultRotatorError:
            entry = book.entries.get(f"{env}/{name}")
            if entry is not None and not entry.stale and not entry.unreadable:
                return entry.record, entry.version
            vault = self.policies.environments[env].vault
            try:
                return StateStore(self.runtime.kv(vault.kv_mount), vault.state_prefix).read(
                    env, name
                )
            except VaultRotatorError as exc:
                return exc

        return record_of

    def _emergency_jobs(self, work: Work, flying: int) -> list[tuple[Open, Job]]:
        """The requests' passes this tick: upgrades, and starts while the account has room
        (``flying``: rotations in flight, stalled ones not, starts under way and the scheduled
        starts of this tick, which come first). Each start checks the token's capabilities on
        its own key, on the start pool (a start the token cannot serve fails its key): asked
        for thousands of keys at once, in the tick, they held it for seconds."""
        chosen: list[tuple[Open, Job]] = []
        for found, job in work.jobs():
            if job.starts:
                if flying >= job.policy.provider.max_concurrent:
                    continue  # queued: a later tick, once rotations in flight end
                flying += 1
            chosen.append((found, job))
        return chosen

    def _upgrade(
        self, book: Book, report: TickReport, listing: Listing | None, found: Open, job: Job
    ) -> None:
        """An emergency upgrade of a rotation in flight (on a worker thread of the tick), as a
        scheduled pass runs: on the book's record, the tick's list pass, no change signal."""
        if self.should_stop():
            raise Cancelled("stopping: no new work")
        entry = book.entries.get(job.policy.ref)
        known = None if entry is None or entry.stale else (entry.record, entry.version)

        def advance(job: Job, command: Command) -> Progress:
            try:
                progress = self._emergency_pass(job, command, listing, known, entry)
            except BaseException:
                if entry is not None:
                    book.mark_stale(entry)
                raise
            self._learned(book, entry, progress)
            report.add(job.policy.ref, started=False)
            return progress

        self.emergencies.act(found, job, advance)

    def _urgent_start(
        self, listing: Listing | None, found: Open, job: Job, trusted: bool, caps: CapabilityBatch
    ) -> Progress | None:
        """An emergency start (on the start pool, maybe past its tick): one pass on the
        record the plan saw. What it left reaches the book at the next tick (:meth:`_reap`).
        The token's capabilities are asked once for the start's batch, by its first start
        (a start the token cannot serve fails its key, as the engine's own check would)."""
        passes: list[Progress] = []

        def advance(job: Job, command: Command) -> Progress:
            if (problem := caps.problem(job.policy.ref)) is not None:
                raise PreflightError(problem)
            known = (job.record, job.version)
            passes.append(self._emergency_pass(job, command, listing, known, None, trusted=trusted))
            return passes[-1]

        if not self.should_stop():
            self.emergencies.act(found, job, advance)
        return passes[-1] if passes else None

    def _emergency_pass(
        self,
        job: Job,
        command: Command,
        listing: Listing | None,
        known: tuple[StateRecord, int] | None,
        entry: Entry | None,
        *,
        trusted: bool = False,
        checked: bool = True,
    ) -> Progress:
        """One pass of a request's key as a scheduled pass runs (a 401: the management key
        read again and the record read afresh)."""
        tries = iter((known, None))

        def call() -> Progress:
            base = next(tries, None)
            return self.engine.advance(
                job.policy,
                start=True,
                command=command,
                listing=listing,
                known=base,
                carried=base is not None and entry is not None and bool(entry.carried_since),
                trusted=base is not None and (trusted or (entry is not None and entry.trusted)),
                scheduled=True,
                flush=entry is not None and entry.must_flush(self.clock()),
                capabilities_checked=checked,
            )

        return self._fresh_key_on_401(job.policy, call)

    def _reap(self, account: Account, book: Book) -> None:
        """Emergency starts that ended since the last tick: what each left, in the book."""
        starting = self.starting.get(account, {})
        for ref, future in list(starting.items()):
            if not future.done():
                continue
            del starting[ref]
            entry = book.entries.get(ref)
            if entry is None:
                continue
            progress = None if future.cancelled() or future.exception() else future.result()
            known = None if progress is None else progress.known
            if progress is None or known is None or known[1] < entry.version:
                book.mark_stale(entry)  # read it again (another process wrote it since)
            else:
                self._learned(book, entry, progress)

    def _lead(self, account: Account, keys: tuple[KeyPolicy, ...], report: TickReport) -> bool:
        """Whether this replica ticks the account now (its account lease; see .replicas)."""
        lead = self.replicas.may_tick(account, keys or self.orphans.get(account, ()))
        if not lead and account in self.leading:
            # The replica ticking it now exports its tick time and its keys' gauges; ours
            # would go stale (a stall resolved there would stay stalled here). The accounts
            # we still tick set theirs again at their next tick.
            self.leading.discard(account)
            self.books.pop(account, None)  # built afresh from Vault if it leads again
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

    def _starts(
        self, book: Book, report: TickReport, now: float, *, flying: int, skip: set[str]
    ) -> list[Start]:
        """The idle keys that start now, within ``max_concurrent`` (``flying``: rotations in
        flight, emergency starts under way included; stalled ones do not count), but those in
        ``skip`` (an emergency request starts them): their capabilities are not asked here."""
        if now < book.next_check:
            return []
        freezes: dict[tuple[str, str], FrozenSet | None] = {}

        def is_frozen(entry: Entry) -> bool:
            if entry.where not in freezes:
                try:
                    freezes[entry.where] = frozen(self.runtime.kv(entry.where[0]), entry.where[1])
                except VaultRotatorError as exc:
                    report.errors.append(f"freezes under {entry.where[0]}/{entry.where[1]}: {exc}")
                    freezes[entry.where] = None
            found = freezes[entry.where]
            return found is None or found.covers(entry.policy.env, entry.policy.name)

        due, book.next_check = due_now(book, frozen=is_frozen, now=now)
        due = [s for s in due if not self.failures.waiting(s.entry.ref) and s.entry.ref not in skip]
        if not due:
            return []
        chosen: list[Start] = []
        for start in due:  # earliest due first, while the account has room
            if flying + len(chosen) >= start.entry.policy.provider.max_concurrent:
                break
            chosen.append(start)
        refused = missing_capabilities(
            [s.entry.policy for s in chosen], self.runtime.kv, self.engine.store
        )
        for start in chosen:
            if (problem := refused.get(start.entry.ref)) is not None:
                self._failed(start.entry.policy, report, problem, in_flight=False)
        book.next_check = min(book.next_check, now) if len(due) > len(chosen) else book.next_check
        return [s for s in chosen if s.entry.ref not in refused]

    def _list(self, account: Account, book: Book) -> Listing:
        """One list pass of the account, for every pass of this tick."""
        policy = next(iter(book.flying.values()), None) or next(iter(book))
        saved = policy.record.dialect

        def list_pass() -> Listing:
            provider = self.runtime.provider(policy.policy, saved)
            asked_at = self.clock()
            keys = provider.list_keys()
            return Listing(Observation.of(tuple(keys), self.clock()), asked_at)

        self.list_passes += 1
        return self._fresh_key_on_401(policy.policy, list_pass)

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

    def _pass(
        self,
        book: Book,
        entry: Entry,
        report: TickReport,
        listing: Listing | None,
        command: Command | None,
    ) -> None:
        """One scheduled pass of one key (on a worker thread); its failure is its own."""
        if self.should_stop():
            raise Cancelled("stopping: no new work")
        policy = entry.policy
        tries = iter((entry, None))  # a retry after a 401 reads the record afresh

        def advance() -> Progress:
            base = next(tries, None)
            known = (base.record, base.version) if base is not None and not base.stale else None
            return self.engine.advance(
                policy,
                start=command is not None,
                command=command,
                listing=listing,
                known=known,
                carried=known is not None and entry.carried_since is not None,
                trusted=known is not None and entry.trusted,
                scheduled=True,
                flush=entry.must_flush(self.clock()),
                capabilities_checked=True,
            )

        try:
            progress = self._fresh_key_on_401(policy, advance)
        except LeaseHeldError:
            book.mark_stale(entry)
            return  # a CLI (or another daemon) is acting on it now; next tick
        except RateLimitedError as exc:  # the provider asked us to slow down: not a failure
            book.mark_stale(entry)
            log.info("pass held back by the provider's rate limit", key=policy.ref, error=str(exc))
            return
        except Cancelled:
            raise
        except RecordTooLargeError as exc:  # no retry can fit it: said at once, by its name
            book.mark_stale(entry)
            self._failed(policy, report, str(exc), in_flight=command is None, too_large=True)
            return
        except VaultRotatorError as exc:
            book.mark_stale(entry)
            self._failed(policy, report, str(exc), in_flight=command is None)
            return
        except Exception as exc:  # one key's bug must not stop the others
            book.mark_stale(entry)
            error = f"unexpected {type(exc).__name__}: {exc}"
            self._failed(policy, report, error, in_flight=command is None)
            return
        self._learned(book, entry, progress)
        self.failures.succeeded(policy.ref)
        report.add(policy.ref, started=command is not None)
        if progress.outcome is not None and not entry.in_policy:
            log.warning("finished a rotation of a key no longer in any policy", key=policy.ref)

    def _learned(self, book: Book, entry: Entry | None, progress: Progress) -> None:
        """Keep the record a pass left in the book (no read next poll)."""
        if entry is not None and progress.known is not None:
            record, version = progress.known
            entry.learned(record, version, carried=progress.carried, now=self.clock())
            book.note(entry)

    def _failed(
        self,
        policy: KeyPolicy,
        report: TickReport,
        error: str,
        *,
        in_flight: bool,
        too_large: bool = False,
    ) -> None:
        """Count a failed pass; park a key that keeps failing (a stall if it can) and alert once.

        ``too_large``: Vault refused the key's record as past its listener's limits. No retry
        can fit it, so it is alerted at once (not after 15 minutes), as a stall
        ``record-too-large`` of the rotation in flight (the stall is written on the record as
        stored, which fits) or, when no rotation could be recorded, a ``failed`` webhook."""
        report.fail(policy.ref, error)
        episode = self.failures.failed(policy.ref, error, policy.provider.poll_interval_s)
        log.warning("pass failed", key=policy.ref, error=error, failures=episode.count)
        if too_large:
            reason, detail = reasons.RECORD_TOO_LARGE, error
            if not self.failures.alert_now(episode):
                return
        else:
            if not self.failures.first_alert(episode):
                return
            minutes = (self.clock() - episode.first_at) / 60
            reason = reasons.RETRIES_EXHAUSTED
            detail = f"{episode.count} passes failed over {minutes:.0f} min; last: {error}"
        if in_flight and self._stall(policy, detail, reason):
            return  # recorded in Vault; the stall's own webhook is the alert
        log.error("key parked: it keeps failing", key=policy.ref, reason=reason, detail=detail)
        if too_large:
            self.metrics.stalled(policy.env, reason)  # named as a stall would be
        self.notifier.notify(
            events.FAILED, env=policy.env, key=policy.ref, reason=reason, detail=detail
        )

    def _stall(self, policy: KeyPolicy, detail: str, reason: str) -> bool:
        """Record a stall on the rotation in flight; False if it cannot."""
        try:
            progress = self.engine.stall(policy, reason, detail, scheduled=True)
        except VaultRotatorError as exc:
            log.warning("could not record the stall", key=policy.ref, error=str(exc))
            return False
        for book in self.books.values():  # read it again on the next poll
            if (entry := book.entries.get(policy.ref)) is not None:
                book.mark_stale(entry)
        return progress.stalled is not None

    def drain_starts(self, timeout: float) -> bool:
        """At shutdown: cancel the emergency starts not begun, wait for those under way (at
        most ``timeout``); whether none runs any more (the account leases may then go)."""
        running = []
        for starts in self.starting.values():
            for future in list(starts.values()):
                if not future.cancel():
                    running.append(future)
        done, _left = futures.wait(running, timeout=timeout)
        return len(done) == len(running)

    def close(self) -> None:
        """Stop the worker pool: passes not started are dropped, those running finish on
        their own (a pass checks for a stop before it starts)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.start_pool.shutdown(wait=False, cancel_futures=True)

    # -- metrics ------------------------------------------------------------------------

    def _key_rows(self) -> Iterable[KeyRow]:
        """Each key's gauge values, from the books (read at scrape time, no I/O)."""
        for book in list(self.books.values()):
            for entry in list(book):
                record = entry.record
                rot = record.rotation
                yield KeyRow(
                    env=entry.policy.env,
                    name=entry.policy.name,
                    in_policy=entry.in_policy,
                    in_flight=rot is not None,
                    stalled=rot is not None and rot.stalled is not None,
                    last_success=record.last_success_at,
                    written_at=entry.written_at if rot is None else None,
                    max_age_s=entry.policy.max_age_s,
                )

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
        self.metrics.stalled(policy.env, stall.reason)
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


def _host(base_url: str) -> str:
    """A provider URL's host (and port-less), lower-cased."""
    return (urlsplit(base_url).hostname or "").lower()


def _poll(keys: tuple[KeyPolicy, ...]) -> float:
    return roster(keys).poll_s


def _command(start: Start) -> Command:
    return Command(trigger="schedule", by=f"daemon:{start.reason}")
