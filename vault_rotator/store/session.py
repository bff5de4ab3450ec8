"""Keeping a Vault token alive: renew it in time, log in again when it cannot be (no hvac here).

A :class:`TokenLease` is what the connection knows of its token: when it was obtained or last
renewed, for how long, and whether it may still be renewed. :func:`next_step` decides, from a
lease and the time (an injected clock), what to do before the next operation:

==========================================  ======
no token yet, or a provisional one          login
TTL 0 (the token never expires)             use
more than a third of its TTL left           use
expired                                     login
renewable                                   renew
not renewable (or capped at its max TTL)    login
==========================================  ======

A renewal that grants less than the lease's TTL has hit the token's max TTL: the lease is then
marked not renewable and the next refresh logs in again. A failed renewal logs in again at once.

:class:`TokenSession` applies those decisions with an :class:`~.auth.Authenticator` and an
:class:`~.auth.AuthApi`, one thread at a time, and recovers from a 403: when the token that was
refused no longer passes ``lookup-self``, it logs in again and says whether to retry (once).
A token that is still valid means a capability is missing: no login then (a bad request must
not turn into a login storm, nor burn a secret-id's uses). When the method can only hand back
the token just refused (a fixed token, revoked or expired), nothing was logged in: that is said
once, as an error naming what to do, and every operation then fails with the refusal.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from vault_rotator.errors import StoreError, StorePermissionError, StoreUnavailableError
from vault_rotator.secret import Secret
from vault_rotator.store.auth import AuthApi, Authenticator, LoginResult

log = structlog.get_logger(__name__)
RENEW_WHEN_LEFT = 1 / 3  # renew once less than this share of the TTL is left


class Step(enum.Enum):
    """What to do with the token before the next operation."""

    USE = "use"
    RENEW = "renew"
    LOGIN = "login"


@dataclass(frozen=True, slots=True)
class TokenLease:
    """The current token and its lifetime as of ``obtained_at`` (``ttl_s`` 0: never expires)."""

    token: Secret
    ttl_s: float
    renewable: bool
    obtained_at: float
    accessor: str = ""
    provisional: bool = False  # lifetime unknown (Vault was unavailable): look again

    @classmethod
    def start(cls, login: LoginResult, now: float) -> TokenLease:
        return cls(
            login.token, login.ttl_s, login.renewable, now, login.accessor, login.provisional
        )

    @property
    def expires_at(self) -> float | None:
        return self.obtained_at + self.ttl_s if self.ttl_s > 0 else None

    @property
    def refresh_at(self) -> float | None:
        """When less than a third of the TTL will be left; None for a token that never expires."""
        if self.ttl_s <= 0:
            return None
        return self.obtained_at + self.ttl_s * (1 - RENEW_WHEN_LEFT)

    def renewed(self, granted_s: float, now: float) -> TokenLease:
        """The lease after a renewal granting ``granted_s``; capped below the TTL: last one."""
        return replace(
            self,
            ttl_s=granted_s,
            obtained_at=now,
            renewable=self.renewable and granted_s >= self.ttl_s,
        )


def next_step(lease: TokenLease | None, now: float) -> Step:
    """Use, renew or log in again (see the module's table)."""
    if lease is None or lease.provisional:
        return Step.LOGIN
    refresh_at, expires_at = lease.refresh_at, lease.expires_at
    if refresh_at is None or now < refresh_at:
        return Step.USE
    if expires_at is not None and now >= expires_at:
        return Step.LOGIN
    return Step.RENEW if lease.renewable else Step.LOGIN


class TokenSession:
    """One token kept fresh for a connection; ``on_token`` is told of every new token."""

    def __init__(
        self,
        auth: Authenticator,
        api: AuthApi,
        *,
        on_token: Callable[[Secret], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.auth = auth
        self._api = api
        self._on_token = on_token
        self._clock = clock
        self._lock = threading.RLock()
        self._lease: TokenLease | None = None
        self.logins = 0
        self.renewals = 0
        self._reported: set[str] = set()  # fingerprints of fixed tokens reported refused

    @property
    def lease(self) -> TokenLease | None:
        return self._lease

    def token(self) -> Secret:
        """The token to use now, renewed or replaced first when due."""
        with self._lock:
            self.refresh()
            assert self._lease is not None  # refresh() logs in when there is no lease
            return self._lease.token

    def refresh(self, *, force: bool = False) -> Step:
        """Renew or log in again when due (``force``: renew, or log in, even if not due)."""
        with self._lock:
            now = self._clock()
            step = next_step(self._lease, now)
            if force and step is Step.USE and self._lease is not None:
                step = Step.RENEW if self._lease.renewable else Step.LOGIN
            if step is Step.RENEW:
                return self._renew(now)
            if step is Step.LOGIN:
                self._login(now, reason=_login_reason(self._lease, now))
            return step

    def recover(self, refused: Secret) -> bool:
        """After a 403 with ``refused``: True when another token is now in place (retry once)."""
        with self._lock:
            if self._lease is None or self._lease.token != refused:
                return True  # another thread logged in meanwhile
            if self._still_valid(refused):
                return False  # the token is fine: the policy lacks a capability
            now = self._clock()
            result = self.auth.login(self._api)
            if result.token == refused:  # a fixed token: nothing else to log in with
                self._lease = TokenLease.start(result, now)
                self._report_refused(refused)
                return False
            self._start(result, now, reason="token refused")
            return True

    def _report_refused(self, token: Secret) -> None:
        if token.fingerprint in self._reported:
            return
        self._reported.add(token.fingerprint)
        log.error(
            "vault token refused",
            method=self.auth.method,
            token=token.fingerprint,
            hint="revoked or expired, and there is no other to log in with: put a new token "
            "in VAULT_TOKEN_FILE, or restart vault-rotator with a new VAULT_TOKEN",
        )

    def _still_valid(self, token: Secret) -> bool:
        try:
            self._api.lookup_self(token)
        except StorePermissionError:
            return False
        return True

    def _renew(self, now: float) -> Step:
        lease = self._lease
        assert lease is not None
        try:
            granted = LoginResult.from_auth(
                self._api.renew_self(lease.token), "auth/token/renew-self"
            ).ttl_s
        except StoreUnavailableError:
            raise
        except StoreError as exc:
            log.info("vault renewal failed", method=self.auth.method, error=str(exc))
            self._login(now, reason="renewal failed")
            return Step.LOGIN
        if granted <= 0:  # less than a second of max TTL was left
            self._login(now, reason="max TTL reached")
            return Step.LOGIN
        self._lease = lease.renewed(granted, now)
        self.renewals += 1
        log.debug("vault token renewed", method=self.auth.method, ttl_s=granted)
        if next_step(self._lease, now) is not Step.USE:
            self._login(now, reason="max TTL reached")
            return Step.LOGIN
        return Step.RENEW

    def _login(self, now: float, *, reason: str) -> None:
        self._start(self.auth.login(self._api), now, reason=reason)

    def _start(self, result: LoginResult, now: float, *, reason: str) -> None:
        self._lease = TokenLease.start(result, now)
        self.logins += 1
        self._on_token(result.token)
        emit = log.debug if result.provisional else log.info
        emit(
            "vault login",
            method=self.auth.method,
            reason=reason,
            ttl_s=result.ttl_s,
            renewable=result.renewable,
            token=result.token.fingerprint,
        )


def _login_reason(lease: TokenLease | None, now: float) -> str:
    if lease is None:
        return "first use"
    if lease.provisional:
        return "lifetime unknown"
    expires_at = lease.expires_at
    if expires_at is not None and now >= expires_at:
        return "expired"
    return "not renewable"
