"""One round of an environment-wide emergency: each key of the request looked at once.

A round reads each key's state record that has not ended yet, decides purely what it needs
(:func:`~vault_rotator.engine.emergency.decide_key`), and acts through the per-key machinery,
the same as ``rotate ENV/NAME --emergency``:

* **start** a rotation in emergency mode (trigger ``emergency:<request id>``), frozen keys too
  (a freeze holds schedules, not operators); a key whose old key is unknown is skipped;
* **upgrade** a rotation already in flight to emergency (and to ``revoke_old_now`` if asked);
* **drive** the request's rotations in flight with one pass each, when ``drive`` is set (the
  CLI). The daemon's tick passes every rotation in flight anyway, so its rounds do not.

Each pass runs under the key's lease with every crash-safe step of the engine, so two rounds
(a CLI and a daemon) may run at once: a key whose lease is held is looked at next round. The
progress is saved once per round, only if it changed, by check-and-set; a writer that lost
re-reads and lays its changes over the other's (:func:`~.emergency.merged`). Rounds go one
key after another: bounded concurrency is the daemon's tick's business.

Failures are the key's own: a start refused for good marks it ``failed`` (a rerun tries again);
a transient failure is retried next round, ``max_transient`` times in a row before the key is
failed (or, in flight, stalled as ``retries-exhausted``, both keys alive).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from vault_rotator.engine import reasons
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
    StoreUnavailableError,
    VaultRotatorError,
)
from vault_rotator.policy import EnvironmentPolicy, KeyPolicy

log = structlog.get_logger(__name__)

TRANSIENT = (ProviderRetryableError, StoreUnavailableError, LeaseLostError)
MAX_TRANSIENT = 10
UNKNOWN_OLD = (
    "old key unknown (the secret has no key_id and the policy no adopt_key_id): set "
    "adopt_key_id, then run `vault-rotator rotate {ref} --emergency --wait`"
)

# engine.advance's shape: (policy, start, command, observation) -> Progress
Advance = Callable[[KeyPolicy, bool, Command, Observation | None], Progress]


@dataclass(frozen=True, slots=True)
class RoundResult:
    request: EmergencyRequest
    notify: bool = False  # this round saw the request settle first: send its one webhook


@dataclass
class Round:
    """Rounds of one environment's request (keep one per process: it counts failures)."""

    engine: Engine
    environment: EnvironmentPolicy
    drive: bool
    advance: Advance | None = None  # the daemon wraps engine.advance (a fresh management key)
    should_stop: Callable[[], bool] = lambda: False  # the daemon is stopping: no new passes
    max_transient: int = MAX_TRANSIENT
    failures: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        vault = self.environment.vault
        self.kv = self.engine.kv_for(vault.kv_mount)
        self.store = EmergencyStore(self.kv, vault.state_prefix)
        self.states = StateStore(self.kv, vault.state_prefix)
        self.policies = {key.name: key for key in self.environment.keys}
        self._obs: Observation | None = None

    def run(self, request: EmergencyRequest, *, notify: bool = False) -> RoundResult:
        """Look at every key not ended yet, act, save what changed; return the saved request."""
        self._obs = None
        changes: dict[str, KeyEntry] = {}
        for name, entry in request.keys.items():
            if self.should_stop():
                break
            if entry.step in TERMINAL:
                continue
            changed = self._key(request, name, entry)
            if changed != entry:
                changes[name] = changed
        return self._save(request, changes, notify)

    # -- one key -----------------------------------------------------------------------

    def _key(self, request: EmergencyRequest, name: str, entry: KeyEntry) -> KeyEntry:
        now = self.engine.clock()
        try:
            record = self.states.read(request.env, name)[0]
        except TRANSIENT:
            return entry
        except VaultRotatorError as exc:
            return entry.moved(Step.FAILED, now, detail=f"state record unreadable: {exc}")
        before = entry
        action, entry = decide_key(request, entry, record, now)
        if entry.prior is not None and entry.prior != before.prior:
            # Saved before acting: once upgraded and ended, a prior rotation's outcome looks
            # like the request's own to a round that does not know it was prior (a crash).
            self._save(request, {name: entry}, notify=False)
        if action == KeyAction.NONE or (action == KeyAction.DRIVE and not self.drive):
            self.failures.pop(name, None)
            return entry
        policy = self._policy(name, record)
        if policy is None:
            return entry.moved(Step.SKIPPED, now, detail="no longer in the policies")
        return self._acted(request, policy, action, record, entry)

    def _acted(
        self,
        request: EmergencyRequest,
        policy: KeyPolicy,
        action: KeyAction,
        record: StateRecord,
        entry: KeyEntry,
    ) -> KeyEntry:
        """The entry once ``action`` ran (or failed) on the key."""
        try:
            progress = self._act(request, policy, action, record)
        except LeaseHeldError:
            return entry  # another process is at it; next round
        except OldKeyUnknownError:
            detail = UNKNOWN_OLD.format(ref=policy.ref)
            return entry.moved(Step.SKIPPED, self.engine.clock(), detail=detail)
        except Exception as exc:  # one key's trouble, even a bug, is its own
            if self.should_stop():
                return entry  # a wait cut short by the daemon's stop is no failure
            return self._failed(policy, entry, action, exc)
        self.failures.pop(policy.name, None)
        return after_pass(entry, progress, self.engine.clock())

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

    def _act(
        self, request: EmergencyRequest, policy: KeyPolicy, action: KeyAction, record: StateRecord
    ) -> Progress:
        if action == KeyAction.DRIVE:
            command = Command(trigger=request.tag, by=request.by)
            return self._advance(policy, False, command, self._observation(policy, record))
        command = Command(
            Verb.ROTATE,
            emergency=True,
            revoke_old_now=request.revoke_old_now,
            trigger=request.tag,
            by=request.by,
        )
        return self._advance(policy, True, command, None)

    def _advance(
        self, policy: KeyPolicy, start: bool, command: Command, obs: Observation | None
    ) -> Progress:
        if self.advance is not None:
            return self.advance(policy, start, command, obs)
        listing = None if obs is None else Listing(obs, obs.at)
        return self.engine.advance(policy, start=start, command=command, listing=listing)

    def _observation(self, policy: KeyPolicy, record: StateRecord) -> Observation | None:
        """One list pass of the account per round, shared by the rotations it drives."""
        if self._obs is None:
            try:
                keys = self.engine.providers(policy, record.dialect).list_keys()
            except VaultRotatorError:
                return None  # each pass then lists for itself
            self._obs = Observation.of(tuple(keys), self.engine.clock())
        return self._obs

    def _failed(
        self, policy: KeyPolicy, entry: KeyEntry, action: KeyAction, exc: Exception
    ) -> KeyEntry:
        """Count a failure; past the limit (or at once, for a start refused for good) the key
        is failed, or its rotation in flight stalled."""
        now = self.engine.clock()
        error = str(exc) if isinstance(exc, VaultRotatorError) else f"unexpected {exc!r:.200}"
        count = self.failures.get(policy.name, 0) + 1
        self.failures[policy.name] = count
        log.warning("emergency: pass failed", key=policy.ref, error=error, failures=count)
        permanent = action == KeyAction.START and not isinstance(exc, TRANSIENT)
        if not permanent and count < self.max_transient:
            return entry
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

    # -- saving ------------------------------------------------------------------------

    def _save(
        self, request: EmergencyRequest, changes: dict[str, KeyEntry], notify: bool
    ) -> RoundResult:
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

        saved = self.store.update(request.env, change)
        if saved is None or saved.id != request.id:  # gone: what this round saw is all there is
            return RoundResult(request.with_keys(changes, now))
        return RoundResult(saved, notify=bool(marked))
