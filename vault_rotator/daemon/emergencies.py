"""The daemon's side of environment-wide emergencies: saved requests picked up, one webhook each.

A request is saved in Vault by ``rotate --env ENV --emergency --yes`` or by the control API
(``POST /v1/rotate/{env}``, :mod:`.control`). Each tick of an account runs one round
(:class:`~vault_rotator.engine.emergency_round.Round`) of the open request of each of its
environments, in three parts: :meth:`Emergencies.plan` decides every key not ended from the
record the daemon's book holds (no per-key read); the tick runs the starts and upgrades it asks
for on its worker pool, beside its own passes, on the tick's one list pass (within the
account's ``max_concurrent`` and the poll's time, see :mod:`.daemon`); then
:meth:`Emergencies.settle` judges the other keys afresh from the records as the passes left
them and saves the request's progress once (the shards that changed and the header). The tick
passes every rotation in flight as usual (so rounds here do not drive them). A request a CLI
saved and was then killed is carried on the same way.

**One webhook per request.** While a request is open and its webhook not yet sent, the
per-key ``stalled``, ``failed``, ``needs-attention`` and ``succeeded`` webhooks of the request's
own rotations are folded into it (not sent; metrics and logs are unchanged): a key not ended in
the request, and a rotation that is the request's (its recorded rotation id, or the trigger
``emergency:<id>``). Anything else notifies as usual: another rotation of the key (a prior one,
or a later normal one of a key already done), every key while the request cannot be read (a
round that raised), and every key of an account this replica does not lead (:meth:`forget`).
Once no key of the request moves any more, the round that sees it first marks ``notified_at``
in the request by check-and-set
(so of several daemons exactly one sends) and queues one message: event ``stalled`` if a key
stalled, else ``failed`` if one failed, else ``needs-attention`` if a key was skipped, ended by
an operator or succeeded needing attention, else ``succeeded``; its fields carry the counts per
step, the outcomes and the keys that need an operator
(:func:`~vault_rotator.engine.emergency_view.webhook_fields`). After that, keys of the request
an operator resumes notify one by one, as any other. A CLI never sends webhooks: a request a
CLI carried to its end gets its webhook from a daemon's next tick, if that comes within an hour
(:data:`LATE_WEBHOOK_S`; a daemon started later does not report old requests).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from vault_rotator.daemon.notify import Notifier
from vault_rotator.daemon.roster import roster
from vault_rotator.engine.emergency import (
    TERMINAL,
    EmergencyRequest,
    KeyEntry,
    Step,
    new_request,
)
from vault_rotator.engine.emergency_decide import decide_key, refreshed
from vault_rotator.engine.emergency_round import Advance, Job, Plan, Round
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.emergency_view import view, webhook_event, webhook_fields
from vault_rotator.engine.engine import Engine, new_rotation_id
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import Rotation, StateRecord
from vault_rotator.errors import VaultRotatorError
from vault_rotator.policy import EnvironmentPolicy, KeyPolicy, PolicySet
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)

RecordOf = Callable[[str, str], tuple[StateRecord, int] | VaultRotatorError]
LATE_WEBHOOK_S = 3600.0  # a request a CLI completed longer ago than this gets no webhook


@dataclass
class Open:
    """One environment's open request in this tick: its rounds and what they decided."""

    env: str
    rounds: Round
    plan: Plan


@dataclass
class Work:
    """The emergency part of one tick of an account."""

    requests: list[Open] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def jobs(self) -> list[tuple[Open, Job]]:
        """Every pass the requests ask for, each request's runnable ones in its order, the
        requests taken in turn (one job of each, then the next of each): requests opened at
        once share the start pool and the account's room evenly, so each moves at a steady
        pace (its ETA holds) and none waits for the others to end."""
        each = [[(o, job) for job in o.rounds.runnable(o.plan.jobs)] for o in self.requests]
        turns = itertools.zip_longest(*each)
        return [pair for turn in turns for pair in turn if pair is not None]


class Emergencies:
    """Rounds of the open requests, and which keys' webhooks are folded into theirs.

    A tick asks :meth:`plan` what the open requests of its keys' environments need (no pass
    yet: decided from the book's records), runs those passes (:meth:`act`: upgrades on its
    pool beside its own passes, starts on the daemon's start pool, which may outlive the
    tick), then :meth:`settle` saves each request's progress once, with the entries of every
    pass that ended since (:meth:`record`), and sends the one webhook of a request that
    settled. A key whose start is still under way shows as ``creating``.
    """

    def __init__(
        self,
        engine: Engine,
        notifier: Notifier,
        *,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.engine = engine
        self.notifier = notifier
        self.should_stop = should_stop
        self.rounds: dict[str, Round] = {}  # per environment (failure counts live there)
        # env -> key -> (request id, its entry after a pass that ended), until settled
        self.results: dict[str, dict[str, tuple[str, KeyEntry]]] = {}
        self._lock = threading.Lock()
        # env -> (the request's tag, {key not ended: its rotation id for the request})
        self.folding: dict[str, tuple[str, dict[str, str | None]]] = {}
        # env -> its request as this replica last read or saved it (None: there is none), for
        # GET /v1/status (no Vault read per drawing); environments of accounts it leads only
        self.latest: dict[str, EmergencyRequest | None] = {}
        # env -> the request as this replica's last settle judged and saved it: its keys
        # were judged from their records then, so a view need not judge them again
        self.judged: dict[str, EmergencyRequest] = {}

    def folds(self, env: str, name: str, rotation: Rotation) -> bool:
        """Whether this rotation's own webhooks are folded into its request's."""
        tag, keys = self.folding.get(env, ("", {}))
        if name not in keys:
            return False
        return rotation.trigger == tag or rotation.id == keys[name]

    def saved(self, env: str, request: EmergencyRequest) -> None:
        """A request this process just saved (the control API): held for GET /v1/status if
        the environment's requests are held here (an account this replica leads)."""
        if env in self.latest:
            self.latest[env] = request

    def forget(self, keys: tuple[KeyPolicy, ...]) -> None:
        """This replica no longer ticks these keys' account: fold nothing of theirs."""
        for env in roster(keys).envs:
            self.folding.pop(env, None)
            self.latest.pop(env, None)
            self.judged.pop(env, None)
            with self._lock:  # a pass that ended under our lead is no news once another led
                self.results.pop(env, None)

    def plan(
        self,
        policies: PolicySet,
        keys: tuple[KeyPolicy, ...],
        record_of: RecordOf,
        *,
        busy: frozenset[str] = frozenset(),
    ) -> Work:
        """The open request of each of these keys' environments, decided (nothing acted on);
        no job for a key in ``busy`` (``ENV/NAME``: a pass of it is under way)."""
        work = Work()
        for env in roster(keys).envs:
            environment = policies.environments.get(env)
            if environment is None or self.should_stop():
                continue
            try:
                found = self._plan(environment, record_of)
            except Exception as exc:  # one environment's trouble, even a bug, is its own
                work.errors.append(self._unread(env, exc))
                continue
            if found is not None:  # a key being started is judged once its pass has ended
                plan = found.plan
                plan.jobs = [j for j in plan.jobs if f"{env}/{j.name}" not in busy]
                plan.changes = {n: e for n, e in plan.changes.items() if f"{env}/{n}" not in busy}
                work.requests.append(found)
        return work

    def act(self, found: Open, job: Job, advance: Advance) -> None:
        """Run one job of a request (on any thread); its entry is kept for a settle."""
        self.record(found, job.name, found.rounds.act(found.plan.request, job, advance))

    def record(self, found: Open, name: str, entry: KeyEntry) -> None:
        """A key's entry after its pass (or a refusal), for the next settle of its request."""
        with self._lock:
            self.results.setdefault(found.env, {})[name] = (found.plan.request.id, entry)

    def settle(
        self,
        work: Work,
        record_of: RecordOf,
        *,
        busy: frozenset[str] = frozenset(),
        begun: frozenset[str] | None = None,
    ) -> list[str]:
        """Each request's progress saved once (the keys not acted on judged afresh from
        their records, as the tick's passes left them; those in ``busy`` left as they are,
        ``creating`` once their start has begun: those of ``begun``, all of ``busy`` when it
        is None); a settled one's webhook sent.

        A start waiting in the start pool's queue is still ``queued``: shown ``creating``,
        the thousand starts a tick hands the pool would count as a third done at once, and
        the pace and ETA drawn from them would be far too hopeful."""
        errors = list(work.errors)
        for found in work.requests:
            try:
                self._settle(found, record_of, busy, busy if begun is None else begun)
            except Exception as exc:  # one environment's trouble, even a bug, is its own
                errors.append(self._unread(found.env, exc))
        return errors

    def _unread(self, env: str, exc: Exception) -> str:
        """A round that raised: reported, and its keys notify one by one meanwhile."""
        self.folding.pop(env, None)
        error = str(exc) if isinstance(exc, VaultRotatorError) else f"unexpected {exc!r:.200}"
        log.warning("emergency round failed", env=env, error=error)
        return f"emergency of {env}: {error}"

    def _plan(self, environment: EnvironmentPolicy, record_of: RecordOf) -> Open | None:
        env = environment.environment
        rounds = self._rounds_of(environment)
        request = rounds.store.read(env)  # its saves (Round.finish) keep what it read
        self.latest[env] = request
        if request is None or not self._open(request):
            self.folding.pop(env, None)
            return None
        self._fold(env, request if request.notified_at is None else None)
        return Open(env, rounds, rounds.plan(request, lambda name: record_of(env, name)))

    def _settle(
        self, found: Open, record_of: RecordOf, busy: frozenset[str], begun: frozenset[str]
    ) -> None:
        request, now = found.plan.request, self.engine.clock()
        with self._lock:
            ended = self.results.pop(found.env, {})
        results = {n: e for n, (rid, e) in ended.items() if rid == request.id and n in request.keys}
        changes = dict(found.plan.changes)
        for name, entry in request.keys.items():
            if entry.step in TERMINAL or name in results:
                continue
            ref = f"{found.env}/{name}"
            if ref in busy:  # its start is queued on the start pool, or under way
                if entry.step == Step.QUEUED and ref in begun:
                    changes[name] = entry.moved(Step.CREATING, now)
                continue
            got = record_of(found.env, name)
            if not isinstance(got, VaultRotatorError):
                changes[name] = decide_key(request, changes.get(name, entry), got[0], now)[1]
        changes.update(results)
        changes = {n: e for n, e in changes.items() if e != request.keys[n]}
        result = found.rounds.finish(request, changes, notify=True)
        self.latest[found.env] = self.judged[found.env] = result.request
        if result.notify:
            event = webhook_event(result.request)
            fields = webhook_fields(result.request, now)
            self.notifier.notify(event, **fields)
            log.info(
                "emergency request settled",
                env=found.env,
                request_id=request.id,
                webhook=event,
                counts=view(result.request, now)["counts"],
            )
        done = result.request.complete or result.request.notified_at is not None
        self._fold(found.env, None if done else result.request)

    def _open(self, request: EmergencyRequest) -> bool:
        """Not complete, or completed (by a CLI) lately with its webhook not sent yet."""
        if not request.complete:
            return True
        settled = request.settled_at or request.completed_at or request.requested_at
        late = self.engine.clock() - settled > LATE_WEBHOOK_S
        return request.notified_at is None and not late

    def _fold(self, env: str, request: EmergencyRequest | None) -> None:
        """Fold the webhooks of ``request``'s keys not ended yet (None: of no key of ``env``)."""
        if request is None:
            self.folding.pop(env, None)
            return
        keys = {n: e.rotation_id for n, e in request.keys.items() if e.step not in TERMINAL}
        self.folding[env] = (request.tag, keys)

    def _rounds_of(self, environment: EnvironmentPolicy) -> Round:
        env = environment.environment
        rounds = self.rounds.get(env)
        if rounds is None or rounds.environment is not environment:  # new, or reloaded
            rounds = Round(self.engine, environment, drive=False, should_stop=self.should_stop)
            self.rounds[env] = rounds
        return rounds


def emergency_views(
    policies: PolicySet,
    kv_for: Callable[[str], KvStore],
    now: float,
    *,
    records: Mapping[str, StateRecord] | None = None,
    busy: frozenset[str] = frozenset(),
    requests: Mapping[str, EmergencyRequest | None] | None = None,
    judged: Mapping[str, EmergencyRequest] | None = None,
) -> tuple[list[tuple[EnvironmentPolicy, dict[str, Any]]], list[tuple[EnvironmentPolicy, str]]]:
    """Each environment's current request (open or not), as ``status`` shows it: the saved
    request with each key not ended yet judged afresh from its state record (nothing is
    written: with no process acting, an operator's resume or abort shows all the same); and
    a line per environment whose request cannot be read (the other environments still show).

    ``records`` (by ``ENV/NAME``): the records the caller holds (the daemon's book), else each
    is read. A key in ``busy`` (its emergency start handed to the start pool) shows as the
    request saved it (``queued`` until the start began, then ``creating``): its record in the
    book is still the idle one it starts from.
    ``requests`` (by env): the requests the caller holds (the daemon's, as its last tick read
    or saved them; None: none), else each is read. ``judged`` (by env): those of them the
    caller's last settle judged from the records and saved (the very objects): shown as
    they are, not judged again (a daemon in a 10,000-key emergency settles every poll)."""
    found, unreadable = [], []
    for env, environment in sorted(policies.environments.items()):
        try:
            doc = _view_of(
                environment,
                kv_for,
                now,
                records=records or {},
                busy=busy,
                requests=requests or {},
                judged=judged or {},
            )
        except Exception as exc:  # one environment's trouble, even a bug, is its own
            error = str(exc) if isinstance(exc, VaultRotatorError) else f"unexpected {exc!r:.200}"
            unreadable.append((environment, f"emergency request of {env} unreadable: {error}"))
            continue
        if doc is not None:
            found.append((environment, doc))
    return found, unreadable


def _view_of(
    environment: EnvironmentPolicy,
    kv_for: Callable[[str], KvStore],
    now: float,
    *,
    records: Mapping[str, StateRecord],
    busy: frozenset[str],
    requests: Mapping[str, EmergencyRequest | None],
    judged: Mapping[str, EmergencyRequest],
) -> dict[str, Any] | None:
    env = environment.environment
    kv, prefix = kv_for(environment.vault.kv_mount), environment.vault.state_prefix
    request = requests[env] if env in requests else EmergencyStore(kv, prefix).read(env)
    if request is None:
        return None
    if request is judged.get(env):
        return view(request, now)
    states = StateStore(kv, prefix)
    chosen: dict[str, StateRecord] = {}
    for name, entry in request.keys.items():
        if entry.step in TERMINAL or f"{env}/{name}" in busy:
            continue
        record = records.get(f"{env}/{name}")
        chosen[name] = record if record is not None else states.read(env, name)[0]
    return view(refreshed(request, chosen, now), now)


def open_request(
    environment: EnvironmentPolicy,
    kv_for: Callable[[str], KvStore],
    clock: Callable[[], float],
    *,
    by: str,
    trigger: str,
    revoke_old_now: bool,
) -> tuple[EmergencyRequest, bool]:
    """The environment's open request resumed (True), or a new one over all its keys saved."""
    env, vault = environment.environment, environment.vault
    names = [key.name for key in environment.keys]

    def fresh() -> EmergencyRequest:
        return new_request(
            new_rotation_id(clock),
            env,
            names,
            by=by,
            trigger=trigger,
            revoke_old_now=revoke_old_now,
            now=clock(),
        )

    store = EmergencyStore(kv_for(vault.kv_mount), vault.state_prefix)
    return store.open(env, fresh=fresh, revoke_old_now=revoke_old_now, now=clock())
