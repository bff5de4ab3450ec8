"""Which accounts this replica ticks: its account leases (:mod:`..engine.account_lease`).

Every replica runs the same scheduler; before each tick of an account it asks :meth:`may_tick`,
which takes or keeps the account's leases (no I/O while more than half the TTL is left). A
replica that does not hold them skips the tick: it serves probes, metrics, status and the
control API all the same (an operator's action runs under the key's own lease on whichever
replica receives it). During a long tick the leases are kept between keys
(:meth:`still_holds`); a replica that finds it lost them stops the tick.

The lease TTL is ``VAULT_ROTATOR_LEASE_TTL`` (the keys' lease TTL, default 30 s): after a
replica dies, another ticks its accounts within one TTL plus one poll. On shutdown the leases
are given back, so a rolling restart hands over at once.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from vault_rotator.engine.account_lease import AccountLeases, lease_path
from vault_rotator.policy import Account, KeyPolicy
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)


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

    def _leases(self, account: Account, keys: tuple[KeyPolicy, ...]) -> AccountLeases:
        prefixes = sorted({k.vault.state_prefix for k in keys})
        ident = account.lease_id
        current = self.leases.get(account)
        if current is not None and current.paths == sorted(lease_path(p, ident) for p in prefixes):
            return current
        if current is not None:  # the account's state prefixes changed (a reload)
            current.release()
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
        return leases

    def may_tick(self, account: Account, keys: tuple[KeyPolicy, ...]) -> bool:
        """Take or keep the account's leases; True when this replica ticks it now."""
        leases = self._leases(account, keys)
        was = leases.holds
        held = leases.hold()
        if was and not held:
            log.warning("account lease lost; another replica ticks it", account=str(account))
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
        if leases.problem is not None:
            log.warning("account lease unusable", account=str(account), problem=leases.problem)
        return held

    def still_holds(self, account: Account) -> bool:
        """During a tick: keep the leases (renewing past half the TTL); False once lost."""
        leases = self.leases.get(account)
        return leases is None or account in self.unleased or leases.hold()

    def holds(self, account: Account) -> bool:
        """Whether this replica ticks the account: holds its lease by its clock (no I/O), or
        ticks it without one because Vault denies the lease path."""
        leases = self.leases.get(account)
        return account in self.unleased or (leases is not None and leases.holds)

    def forget(self, accounts: set[Account]) -> None:
        """Give back the leases of accounts no longer configured (after a reload)."""
        for account in set(self.leases) - accounts:
            self.leases.pop(account).release()

    def release_all(self) -> None:
        """Give every lease back (shutdown): another replica takes over at once."""
        for leases in self.leases.values():
            leases.release()

    def last_renewed(self, account: Account) -> float | None:
        leases = self.leases.get(account)
        return None if leases is None else leases.last_renewed()
