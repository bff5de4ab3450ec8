"""Reason and outcome constants: the words the state record, status and logs use."""

from __future__ import annotations

import enum


class OutcomeName(enum.StrEnum):
    """Outcomes of a finished rotation (the record's outcome history)."""

    SUCCEEDED = "succeeded"
    SUCCEEDED_OLD_UNKNOWN = "succeeded-old-key-unknown"  # published; no known old key to delete
    FAILED_VERIFY = "failed-verify"  # the new key did not work; deleted, the old key untouched
    SUCCEEDED_EMERGENCY = "succeeded-emergency"  # emergency: old key gone once the new was used
    SUCCEEDED_REVOKED = "succeeded-revoked-old-now"  # emergency: the old key went at publish
    SUCCEEDED_ATTENTION = "succeeded-needs-attention"  # the old key had been deleted outside
    ABORTED = "aborted"  # rolled back: the old secret republished, the new key deleted
    FINISHED_KEEP_OLD = "finished-keep-old"  # ended by an operator; the old key left alive


SUCCEEDED = OutcomeName.SUCCEEDED
SUCCEEDED_OLD_UNKNOWN = OutcomeName.SUCCEEDED_OLD_UNKNOWN
FAILED_VERIFY = OutcomeName.FAILED_VERIFY
SUCCEEDED_EMERGENCY = OutcomeName.SUCCEEDED_EMERGENCY
SUCCEEDED_REVOKED = OutcomeName.SUCCEEDED_REVOKED
SUCCEEDED_ATTENTION = OutcomeName.SUCCEEDED_ATTENTION
ABORTED = OutcomeName.ABORTED
FINISHED_KEEP_OLD = OutcomeName.FINISHED_KEEP_OLD
# What each outcome means (success, attention, log level, exit code): engine/outcomes.py.

# Why a rotation stalled (both keys stay alive; an operator decides).
PICKUP_TIMEOUT = "pickup-timeout"  # consumers never used the new key before pickup_timeout
DRAIN_TIMEOUT = "drain-timeout"  # the old key kept carrying traffic past drain_timeout
SECRET_CHANGED = "secret-changed"  # noqa: S105 (a reason, not a password); someone else wrote the consumer secret under the rotation
DELETE_UNCONFIRMED = "delete-unconfirmed"  # provider said 404 yet still lists the key
RETRIES_EXHAUSTED = "retries-exhausted"  # the provider or Vault kept failing
RATE_LIMITED = "rate-limited"  # the provider refused a create with 429 and a wait past a poll
ACKS_MISSING = "acks-missing"  # require_acks not met by the pickup deadline (engine/acks.py)
RECORD_TOO_LARGE = "record-too-large"  # Vault refused the key's record past listener limits


class Phase(enum.StrEnum):
    """Phases of the record (stored as these strings); the machine: :mod:`.machine`."""

    IDLE = "idle"
    INTENT = "intent"  # rotation started; the new key is being created, verified, published
    PUBLISHED = "published"  # consumers are served the new key; pickup, drain, delete, clean-up
    ABORTING = "aborting"  # rolling back a published rotation: old secret back, new key drained
    CLEANUP = "cleanup"  # failed (or aborted) before publishing; removing its keys


IDLE = Phase.IDLE
INTENT = Phase.INTENT
PUBLISHED = Phase.PUBLISHED
ABORTING = Phase.ABORTING
CLEANUP = Phase.CLEANUP

# Modes of a rotation.
NORMAL = "normal"
EMERGENCY = "emergency"  # a suspected leak: no drain; the old key goes once the new one is used

# Provider writes recorded (fenced) just before they happen.
CREATE = "create"
DELETE = "delete"
DISABLE = "disable"
ENABLE = "enable"
