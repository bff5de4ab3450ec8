"""The state and pending records are a stored schema: a newer one is refused, never misread."""

from __future__ import annotations

import pytest

from vault_rotator.engine.state import SCHEMA_VERSION, Pending, StateRecord
from vault_rotator.errors import StoreError


@pytest.mark.parametrize("record", [StateRecord, Pending])
def test_a_record_of_a_newer_schema_says_to_upgrade(record: type[StateRecord | Pending]) -> None:
    """schema N+1 is refused as written by a newer vault-rotator, not as malformed."""
    data = {"schema": SCHEMA_VERSION + 1, "whatever": "a later version stores"}
    with pytest.raises(StoreError) as info:
        record.from_dict(data, "secret/x")
    message = str(info.value)
    assert "written by a newer vault-rotator" in message
    assert "upgrade this process" in message
    assert "malformed" not in message


def test_the_current_schema_round_trips() -> None:
    """A record written by this version reads back equal."""
    record = StateRecord.new("prod", "app").evolve(dialect="b")
    assert StateRecord.from_dict(record.to_dict(), "secret/x") == record


def test_a_record_of_the_previous_schema_is_read() -> None:
    """Schema 1 (no hand-off in its lease, no verify time in its pending record) still reads,
    and is written back as the current schema."""
    old = StateRecord.new("prod", "app").to_dict()
    old["schema"] = 1
    old["lease"] = {"holder": "h:1:abc", "expires_at": 1.0, "fence": 3}
    record = StateRecord.from_dict(old, "secret/x")
    assert record.lease is not None
    assert record.lease.pending_attempt is None
    assert record.to_dict()["schema"] == SCHEMA_VERSION
    pending = {
        "schema": 1,
        "rotation_id": "r",
        "attempt": 1,
        "new_key_id": "k",
        "new_key_name": "n",
        "new_key_value": "lr_live_x",
        "old_secret": None,
        "old_version": 0,
    }
    assert Pending.from_dict(pending, "secret/p").verified_at is None
