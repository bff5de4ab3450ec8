"""Reason and outcome constants: the words the state record, status and logs use."""

from __future__ import annotations

# Outcomes of a finished rotation (the record's outcome history).
SUCCEEDED = "succeeded"
SUCCEEDED_OLD_UNKNOWN = "succeeded-old-key-unknown"  # published; no known old key to delete
FAILED_VERIFY = "failed-verify"  # the new key did not work; it was deleted, old key untouched
SUCCEEDED_EMERGENCY = "succeeded-emergency"  # emergency: the old key went once the new was in use
SUCCEEDED_REVOKED = "succeeded-revoked-old-now"  # emergency: the old key went right at publish
SUCCEEDED_ATTENTION = "succeeded-needs-attention"  # the old key had been deleted outside
ABORTED = "aborted"  # rolled back: the old secret republished, the new key deleted
FINISHED_KEEP_OLD = "finished-keep-old"  # ended by an operator; the old key left alive
# What each outcome means (success, attention, log level, exit code): engine/outcomes.py.

# Why a rotation stalled (both keys stay alive; an operator decides).
PICKUP_TIMEOUT = "pickup-timeout"  # consumers never used the new key before pickup_timeout
DRAIN_TIMEOUT = "drain-timeout"  # the old key kept carrying traffic past drain_timeout
SECRET_CHANGED = "secret-changed"  # noqa: S105 (a reason, not a password); someone else wrote the consumer secret under the rotation
DELETE_UNCONFIRMED = "delete-unconfirmed"  # provider said 404 yet still lists the key
RETRIES_EXHAUSTED = "retries-exhausted"  # the provider or Vault kept failing
RATE_LIMITED = "rate-limited"  # the provider refused a create with 429 and a wait past a poll

# Phases of the record.
IDLE = "idle"
INTENT = "intent"  # rotation started; the new key is being created, verified, published
PUBLISHED = "published"  # consumers are served the new key; pickup, drain, delete, clean-up
CLEANUP = "cleanup"  # the rotation failed (or was aborted) before publishing; removing its keys
ABORTING = "aborting"  # rolling back a published rotation: old secret back, new key drained

# Modes of a rotation.
NORMAL = "normal"
EMERGENCY = "emergency"  # a suspected leak: no drain; the old key goes once the new one is used

# Provider writes recorded (fenced) just before they happen.
CREATE = "create"
DELETE = "delete"
DISABLE = "disable"
ENABLE = "enable"
