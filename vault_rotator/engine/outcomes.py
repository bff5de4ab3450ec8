"""How each outcome of a finished rotation is classified, in one table.

Logs, metrics, webhooks, the record's ``last_success_at`` and the CLI's exit code all read this
table; nothing else decides whether an outcome was a success.

==========================  =======  ===============  =========  ====  ============
outcome                     success  needs attention  log level  exit  last success
==========================  =======  ===============  =========  ====  ============
succeeded                   yes      no               info       0     yes
succeeded-emergency         yes      no               info       0     yes
succeeded-revoked-old-now   yes      no               info       0     yes
succeeded-old-key-unknown   yes      yes              warning    0     yes
succeeded-needs-attention   yes      yes              warning    0     yes
finished-keep-old           no       yes              warning    0     yes
aborted                     no       yes              warning    0     no
failed-verify               no       no (a failure)   error      1     no
==========================  =======  ===============  =========  ====  ============

*Success*: the rotation did all it set out to do. *Needs attention*: an operator should look
(an old key not deleted, or a rotation ended by hand). *Exit*: what ``rotate``/``resume``/
``abort``/``finish`` return when the rotation ends so: an operator's abort or finish did what
was asked (0); only a failure is 1. *Last success*: whether the key now counts as rotated for
``max_age`` and the schedule: a new key is served after ``finished-keep-old``, not after an
abort (whose schedule counts from the abort itself, see the daemon's ``schedule_basis``).
An outcome unknown to this table (written by a newer version) is treated as a failure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vault_rotator.engine import reasons


class LogLevel(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class OutcomeClass:
    """What an outcome means for logs, alerts, exit codes and the schedule."""

    success: bool
    needs_attention: bool
    log_level: LogLevel
    exit_code: int
    last_success: bool


_SUCCESS = OutcomeClass(True, False, LogLevel.INFO, 0, True)
_SUCCESS_ATTENTION = OutcomeClass(True, True, LogLevel.WARNING, 0, True)
_FAILURE = OutcomeClass(False, False, LogLevel.ERROR, 1, False)

OUTCOMES: dict[str, OutcomeClass] = {
    reasons.SUCCEEDED: _SUCCESS,
    reasons.SUCCEEDED_EMERGENCY: _SUCCESS,
    reasons.SUCCEEDED_REVOKED: _SUCCESS,
    reasons.SUCCEEDED_OLD_UNKNOWN: _SUCCESS_ATTENTION,
    reasons.SUCCEEDED_ATTENTION: _SUCCESS_ATTENTION,
    reasons.FINISHED_KEEP_OLD: OutcomeClass(False, True, LogLevel.WARNING, 0, True),
    reasons.ABORTED: OutcomeClass(False, True, LogLevel.WARNING, 0, False),
    reasons.FAILED_VERIFY: _FAILURE,
}


def classify(outcome: str) -> OutcomeClass:
    """The class of ``outcome``; an unknown one is a failure."""
    return OUTCOMES.get(outcome, _FAILURE)
