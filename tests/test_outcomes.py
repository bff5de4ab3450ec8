"""Outcomes are classified once (engine/outcomes.py) and every reader agrees with the table."""

from __future__ import annotations

import logging

import pytest
import structlog
from structlog.testing import capture_logs

from vault_rotator.engine import reasons
from vault_rotator.engine.outcomes import OUTCOMES, LogLevel, classify
from vault_rotator.engine.reasons import OutcomeName
from vault_rotator.engine.state import Outcome, StateRecord
from vault_rotator.logs import canonical_rotation_line

# outcome: (success, needs attention, log level, exit code, last success) as the README says
TABLE = {
    reasons.SUCCEEDED: (True, False, "info", 0, True),
    reasons.SUCCEEDED_EMERGENCY: (True, False, "info", 0, True),
    reasons.SUCCEEDED_REVOKED: (True, False, "info", 0, True),
    reasons.SUCCEEDED_OLD_UNKNOWN: (True, True, "warning", 0, True),
    reasons.SUCCEEDED_ATTENTION: (True, True, "warning", 0, True),
    reasons.FINISHED_KEEP_OLD: (False, True, "warning", 0, True),
    reasons.ABORTED: (False, True, "warning", 0, False),
    reasons.FAILED_VERIFY: (False, False, "error", 1, False),
}


def test_the_table_covers_every_outcome_as_documented() -> None:
    """Every outcome constant is in the table, with the README's classification."""
    assert set(OUTCOMES) == set(TABLE)
    for name, (success, attention, level, code, last) in TABLE.items():
        kind = classify(name)
        assert (kind.success, kind.needs_attention, kind.log_level, kind.exit_code) == (
            success,
            attention,
            LogLevel(level),
            code,
        ), name
        assert kind.last_success is last, name


def test_an_unknown_outcome_is_a_failure() -> None:
    """An outcome this version does not know (a newer one wrote it) counts as a failure."""
    assert classify("succeeded-in-2030") == classify(reasons.FAILED_VERIFY)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_the_record_and_the_canonical_line_follow_the_table(name: OutcomeName) -> None:
    """last_success_at moves only where the table says; the line's level is the table's."""
    outcome = Outcome("r1", name, 500.0, "cli", "me", "old", "new")
    record = StateRecord.new("prod", "app").finished(outcome, current_key_id="new")
    assert (record.last_success_at == 500.0) is TABLE[name][4]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with capture_logs() as logs:
        canonical_rotation_line(outcome, None, env="prod", name="app")
    assert [entry["log_level"] for entry in logs] == [TABLE[name][2]]
