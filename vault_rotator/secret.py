"""Secret values and their fingerprints.

A :class:`Secret` wraps a key value so that ``str``, ``repr``, f-strings and log renderers only
ever show its HMAC fingerprint. Call :meth:`Secret.reveal` at the one place the plaintext must
cross a boundary (an HTTP header, a Vault write).

Fingerprints are ``HMAC-SHA256(fingerprint_key, value)`` truncated to 16 hex digits, prefixed
``fp:``. The fingerprint key comes from ``VAULT_ROTATOR_FINGERPRINT_KEY`` when set, so that
fingerprints are stable across processes and hosts; otherwise a fixed project salt is used,
which still keeps the value out of logs but lets anyone holding a candidate value check it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

_DEFAULT_FINGERPRINT_KEY = b"vault-rotator/fingerprint/v1"


def _fingerprint_key() -> bytes:
    env = os.environ.get("VAULT_ROTATOR_FINGERPRINT_KEY")
    return env.encode() if env else _DEFAULT_FINGERPRINT_KEY


def fingerprint(value: str) -> str:
    """Return a short, stable HMAC fingerprint of ``value`` that is safe to log."""
    digest = hmac.new(_fingerprint_key(), value.encode(), hashlib.sha256).hexdigest()
    return f"fp:{digest[:16]}"


class Secret:
    """A secret string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        """Return the plaintext. Use only where it crosses a boundary."""
        return self._value

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._value)

    def __repr__(self) -> str:
        return f"Secret({self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")
