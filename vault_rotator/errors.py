"""The project's exception tree.

Every error vault-rotator raises on purpose derives from :class:`VaultRotatorError`, and its
message is one line that names what was wrong (file, field, endpoint or key id). Messages never
hold a key value, a management key or a token.

::

    VaultRotatorError
    ├── ConfigError                      a policy file or setting is invalid (exit 2)
    ├── ProviderError                    ARouter's key-management or inference API
    │   ├── ProviderRetryableError       429, 502, 503, connect/read timeouts: worth retrying
    │   │   └── RateLimitedError         429, carries the server's retry delay
    │   ├── ProviderPermanentError       400, 401, 402, 403, 404: retrying will not help
    │   │   ├── ProviderAuthError        401: the management key (or API key) is not accepted
    │   │   ├── ProviderForbiddenError   402/403: accepted but not allowed
    │   │   └── KeyNotFoundError         404: no such key
    │   ├── AmbiguousCreateError         a create may have reached the server; look by name
    │   │   └── AmbiguousCreateResponseError   (also a ProviderResponseError) 2xx, unreadable
    │   └── ProviderResponseError        a garbage, oversized or hostile answer
    ├── StoreError                       Vault / OpenBao
    │   ├── StoreUnavailableError        sealed, unreachable, 5xx: worth retrying
    │   ├── StorePermissionError         403: token revoked or lacks a capability
    │   ├── RecordTooLargeError          a write past the listener's limits
    │   ├── AnswerTooLargeError          an answer past what is read of one record
    │   └── CasConflictError             check-and-set lost against another writer
    ├── EngineError                      the rotation engine refused or could not go on
    │   ├── LeaseHeldError               another process holds the key's lease
    │   ├── LeaseLostError               our lease expired and another process took over
    │   └── PreflightError               a precondition failed before any side effect
    │       └── OldKeyUnknownError       emergency refused: the served key's id is not known
    ├── DaemonUnreachableError           the CLI could not reach the daemon at --daemon URL
    └── DaemonResponseError              ... or it answered something that is not its API
"""

from __future__ import annotations


class VaultRotatorError(Exception):
    """Root of every error vault-rotator raises on purpose."""


class ConfigError(VaultRotatorError):
    """A policy file, setting or command-line argument is invalid."""


class ProviderError(VaultRotatorError):
    """ARouter answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, endpoint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.endpoint = endpoint


class ProviderRetryableError(ProviderError):
    """A failure worth retrying: rate limit, bad gateway, unavailable, timeout."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        endpoint: str = "",
        retry_after: float | None = None,
        reached_server: bool = True,
    ) -> None:
        super().__init__(message, status=status, endpoint=endpoint)
        self.retry_after = retry_after
        # False only when we know the request never reached the server (refused connection).
        self.reached_server = reached_server


class RateLimitedError(ProviderRetryableError):
    """HTTP 429: the server asked us to slow down."""


class ProviderPermanentError(ProviderError):
    """A failure retrying will not fix: bad request, bad credentials, forbidden, not found."""


class ProviderAuthError(ProviderPermanentError):
    """HTTP 401: the key used is unknown, deleted or malformed."""


class ProviderForbiddenError(ProviderPermanentError):
    """HTTP 402/403: the key is known but not allowed to do this."""


class KeyNotFoundError(ProviderPermanentError):
    """HTTP 404: no key with this id."""


class AmbiguousCreateError(ProviderError):
    """A create request may have reached the server, but no answer came back.

    The key may exist at the provider with its value lost. Never retry the create blindly:
    look for the key by its (unique) name instead, held in ``key_name``.
    """

    def __init__(
        self, message: str, *, status: int | None = None, endpoint: str = "", key_name: str = ""
    ) -> None:
        super().__init__(message, status=status, endpoint=endpoint)
        self.key_name = key_name


class ProviderResponseError(ProviderError):
    """The server's answer was malformed, oversized or had fields of the wrong type."""


class AmbiguousCreateResponseError(AmbiguousCreateError, ProviderResponseError):
    """A create answered 2xx but the answer was unreadable: the key exists, its value is lost."""


class StoreError(VaultRotatorError):
    """Vault / OpenBao failed or refused."""


class StoreUnavailableError(StoreError):
    """Vault is sealed, unreachable or answered 5xx: worth retrying later."""


class RecordTooLargeError(StoreError):
    """Vault refused a write past its listener's limits (too many JSON strings, too large)."""


class AnswerTooLargeError(StoreError):
    """Vault answered more than the rotator reads of one record (a hostile writer's record)."""


class StorePermissionError(StoreError):
    """Vault answered 403: the token is revoked, expired or lacks a capability."""


class CasConflictError(StoreError):
    """A check-and-set write lost: someone else wrote the path since we read it."""


class EngineError(VaultRotatorError):
    """The rotation engine refused to act or could not go on."""


class LeaseHeldError(EngineError):
    """Another process holds the lease on this key's state record."""


class LeaseLostError(EngineError):
    """Our lease expired and another process took the record: stop acting at once."""


class PreflightError(EngineError):
    """A precondition failed before any side effect."""


class OldKeyUnknownError(PreflightError):
    """An emergency refused: the secret names no key id and the policy no ``adopt_key_id``."""


class DaemonUnreachableError(VaultRotatorError):
    """The daemon at ``--daemon URL`` did not answer (refused, timed out): a failure, exit 1."""


class DaemonResponseError(VaultRotatorError):
    """The URL given as ``--daemon`` answered, but not as the daemon's API does: exit 1."""
