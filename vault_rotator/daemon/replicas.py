"""Which accounts this replica ticks: its account leases (:mod:`..engine.account_lease`).

Every replica runs the same scheduler; before each tick of an account it asks :meth:`may_tick`,
which takes or keeps the account's leases (no I/O while more than half the TTL is left). A
replica that does not hold them skips the tick: it serves probes, metrics, status and the
control API all the same (an operator's action runs under the key's own lease on whichever
replica receives it). During a long tick the leases are kept between keys
(:meth:`still_holds`); a replica that finds it lost them stops the tick. Between ticks a
renewal job (:meth:`renew_held`, every third of the TTL) keeps them, so a ``poll_interval``
longer than the TTL does not hand the account around on every poll.

A holder whose ticks keep failing (a provider its node cannot reach, say) steps back
(:meth:`step_back`): it gives the leases back and does not take them again for a while, so a
healthy replica takes over.

The lease TTL is ``VAULT_ROTATOR_LEASE_TTL`` (the keys' lease TTL, default 30 s): after a
replica dies, another ticks its accounts within one TTL plus one poll. On shutdown the leases
are given back, so a rolling restart hands over at once.

A lease nobody renews (forged, corrupt, or left by a replica that no longer runs) is taken
over once it has stayed unchanged past its capped term (:mod:`..engine.account_lease`). Before
that, each replica counts the polls in a row at which it found no holder that ticks: not
itself, and a lease nobody has renewed within its term. After :data:`STUCK_POLLS` of them the
account is *stuck* (:meth:`stuck`: the ``vault_rotator_account_lease_stuck`` gauge and its
alert; not ``/readyz``, which every replica would fail at once). An unusable lease is logged
when its problem first shows or changes, not at every poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from vault_rotator.daemon.roster import roster
from vault_rotator.engine.account_lease import AccountLeases, lease_path
from vault_rotator.policy import Account, KeyPolicy
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)

STUCK_POLLS = 3  # polls in a row with no holder that ticks before an account counts as stuck


class Replicas:
    """This replica's account leases, one :class:`AccountLeases` per account."""

    def __init__(
        self,
        kv: Callable[[str], KvStore],
        *,
        holder: str,
        clock: Callable[[], float],
        ttl: float,
    ) -> None:
        self.kv = kv
        self.holder = holder
        self.clock = clock
        self.ttl = ttl
        self.leases: dict[Account, AccountLeases] = {}
        self.unleased: set[Account] = set()  # ticked without a lease: Vault denies its path
        self.resting: dict[Account, float] = {}  # stepped back until (our clock)
        self.unheld: dict[Account, int] = {}  # polls in a row that found no holder that ticks
        self.problems: dict[Account, str] = {}  # the unusable lease's problem, as last logged
        self._lock = threading.Lock()

    def _leases(self, account: Account, keys: tuple[KeyPolicy, ...]) -> AccountLeases:
        prefixes = list(roster(keys).prefixes)
        ident = account.lease_id
        with self._lock:
            current = self.leases.get(account)
            if current is not None and current.paths == sorted(
                lease_path(p, ident) for p in prefixes
            ):
                return current
            leases = AccountLeases(
                self.kv(account.kv_mount),
                prefixes,
                ident,
                str(account),
                holder=self.holder,
                clock=self.clock,
                ttl=self.ttl,
            )
            self.leases[account] = leases
        if current is not None:  # the account's state prefixes changed (a reload)
            current.release()
        return leases

    def may_tick(self, account: Account, keys: tuple[KeyPolicy, ...]) -> bool:
        """Take or keep the account's leases; True when this replica ticks it now."""
        if not keys:
            return False  # nothing of this account is configured or in flight
        leases = self._leases(account, keys)
        if self.resting.get(account, 0.0) > self.clock():
            return False
        was = leases.holds
        held = leases.hold()
        self._count_unheld(account, leases, held)
        if leases.denied:  # an older generated Vault policy: tick as a single daemon would
            if account not in self.unleased:
                self.unleased.add(account)
                log.warning(
                    "account lease denied by Vault; ticking without it (with several replicas "
                    "each lists the account; keys stay safe under their own leases): grant the "
                    "path `vault-rotator vault-policy rotator` prints",
                    account=str(account),
                    problem=leases.problem,
                )
            return True
        self.unleased.discard(account)
        if leases.problem is None:
            self.problems.pop(account, None)
        elif self.problems.get(account) != leases.problem:  # once, not at every poll
            self.problems[account] = leases.problem
            log.warning("account lease unusable", account=str(account), problem=leases.problem)
        if was and not held and leases.problem is None:
            log.warning("account lease lost; another replica ticks it", account=str(account))
        return held

    def _count_unheld(self, account: Account, leases: AccountLeases, held: bool) -> None:
        """One more poll with no holder that ticks the account, or none at all."""
        with self._lock:
            if held or leases.denied or not leases.unrenewed:
                self.unheld.pop(account, None)
            else:
                self.unheld[account] = self.unheld.get(account, 0) + 1

    def stuck(self) -> list[tuple[str, bool]]:
        """Per account this replica looks after, whether it has found no holder that ticks it
        at :data:`STUCK_POLLS` polls in a row (the metric's source; no I/O)."""
        with self._lock:
            return [
                (str(account), self.unheld.get(account, 0) >= STUCK_POLLS)
                for account in self.leases
            ]

    def still_holds(self, account: Account) -> bool:
        """During a tick: keep the leases (renewing past half the TTL); False once lost, or
        once the account is no longer ours to tick (forgotten by a reload)."""
        leases = self.leases.get(account)
        if leases is None:
            return False
        return account in self.unleased or leases.hold()

    def holds(self, account: Account) -> bool:
        """Whether this replica ticks the account: holds its lease by its clock (no I/O), or
        ticks it without one because Vault denies the lease path."""
        leases = self.leases.get(account)
        return account in self.unleased or (leases is not None and leases.holds)

    def renew_held(self) -> None:
        """Keep every lease held (the renewal job): a long poll interval must not let it lapse."""
        with self._lock:
            held = [leases for leases in self.leases.values() if leases.held]
        for leases in held:
            leases.renew()

    def step_back(self, account: Account, seconds: float) -> None:
        """Give the account back and leave it to other replicas for ``seconds``."""
        self.resting[account] = self.clock() + seconds
        leases = self.leases.get(account)
        if leases is not None and leases.held:
            log.warning(
                "ticks keep failing; leaving the account to another replica",
                account=str(account),
                for_s=round(seconds),
            )
            leases.release()

    def forget(self, accounts: set[Account]) -> None:
        """Give back the leases of accounts no longer configured (after a reload)."""
        with self._lock:
            gone = [self.leases.pop(a) for a in set(self.leases) - accounts]
            for account in set(self.unheld) - accounts:
                self.unheld.pop(account)
            for account in set(self.problems) - accounts:
                self.problems.pop(account)
        for leases in gone:
            leases.release()

    def release_all(self) -> None:
        """Give every lease back (shutdown): another replica takes over at once."""
        with self._lock:
            every = list(self.leases.values())
        for leases in every:
            leases.release()
