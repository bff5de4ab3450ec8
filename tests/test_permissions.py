"""One permission value type: what a policy asks, a spec sends, a listing shows, a record keeps."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from vault_rotator.engine.preflight import effective_permissions
from vault_rotator.engine.state import SCHEMA_VERSION, Rotation, StateRecord
from vault_rotator.errors import PreflightError
from vault_rotator.policy import KeyPolicy, ManagementKeyRef, ProviderPolicy
from vault_rotator.ports.provider import NO_PERMISSIONS, KeyRecord, KeySpec, Permissions
from vault_rotator.provider.dialects import create_body

T0 = 1_800_000_000.0
LATER = datetime(2030, 1, 1, tzinfo=UTC)
OLD = Permissions(
    allowed_providers=("openai",),
    allowed_models=("gpt-4o",),
    spending_limit=10.0,
    limit_reset="monthly",
    expires_at=datetime(2029, 1, 1, tzinfo=UTC),
)


def policy(**fields: object) -> KeyPolicy:
    provider = ProviderPolicy(
        base_url="http://127.0.0.1:9", management_key=ManagementKeyRef(path="arouter/mgmt")
    )
    return KeyPolicy.model_validate(
        {"env": "prod", "name": "app", "secret_path": "arouter/prod/app", "provider": provider}
        | fields
    )


def test_own_fields_win_and_unset_ones_but_the_expiry_come_from_the_old_key() -> None:
    """inherit keeps what is set, takes the rest from the old key, and never its expiry."""
    own = Permissions(spending_limit=25.0)
    assert own.inherit(OLD) == Permissions(
        allowed_providers=("openai",),
        allowed_models=("gpt-4o",),
        spending_limit=25.0,
        limit_reset="monthly",
    )
    assert Permissions(expires_at=LATER).inherit(OLD).expires_at == LATER
    assert NO_PERMISSIONS.inherit(NO_PERMISSIONS) == NO_PERMISSIONS


def test_set_fields_lists_only_what_is_set_in_declaration_order() -> None:
    """set_fields names each set field once, in the order the type declares them."""
    perms = Permissions(expires_at=LATER, allowed_models=("m",), spending_limit=1.0)
    assert list(perms.set_fields().items()) == [
        ("allowed_models", ("m",)),
        ("spending_limit", 1.0),
        ("expires_at", LATER),
    ]


@pytest.mark.parametrize(
    ("listed", "difference"),
    [
        (Permissions(allowed_providers=("openai",), spending_limit=10.0000001), None),
        (Permissions(), None),  # a dialect that lists none of them proves nothing
        (Permissions(allowed_models=("gpt-4o", "o1")), None),  # models were not asked for
        (
            Permissions(allowed_providers=("mistral",)),
            "listed with allowed_providers ('mistral',), not ('openai',)",
        ),
        (Permissions(spending_limit=5.0), "listed with spending_limit 5.0, not 10.0"),
    ],
)
def test_differs_from_compares_providers_models_and_cap_set_on_both_sides(
    listed: Permissions, difference: str | None
) -> None:
    """A listed key differs only where both sides set providers, models or the cap."""
    asked = Permissions(allowed_providers=("openai",), spending_limit=10.0, limit_reset="daily")
    assert asked.differs_from(listed) == difference


def test_effective_permissions_take_the_policy_then_the_old_key_and_expire_after_key_ttl() -> None:
    """The policy's own fields, the old key's for the rest, the expiry key_ttl from now."""
    old = KeyRecord("k", "n", permissions=OLD)
    perms = effective_permissions(policy(spending_limit=25.0, key_ttl_s=3600.0), old, T0)
    assert perms == Permissions(
        allowed_providers=("openai",),
        allowed_models=("gpt-4o",),
        spending_limit=25.0,
        limit_reset="monthly",
        expires_at=datetime.fromtimestamp(T0, UTC) + timedelta(hours=1),
    )
    assert effective_permissions(policy(allowed_models=("m",)), None, T0).expires_at is None
    with pytest.raises(PreflightError, match="neither allowed_providers nor allowed_models"):
        effective_permissions(policy(spending_limit=25.0), None, T0)


def test_a_create_body_carries_each_set_permission_and_the_cap_under_each_name() -> None:
    """The body holds the name, lists as arrays, the cap under each dialect name, Z expiry."""
    spec = KeySpec("n", Permissions(allowed_models=("m",), spending_limit=2.0, expires_at=LATER))
    assert create_body(spec, ("limit", "limit_usd")) == {
        "name": "n",
        "allowed_models": ["m"],
        "limit": 2.0,
        "limit_usd": 2.0,
        "expires_at": "2030-01-01T00:00:00Z",
    }
    assert create_body(KeySpec("bare"), ("limit",)) == {"name": "bare"}


def test_the_state_record_stores_permissions_as_schema_1_always_did() -> None:
    """A version-1 record's permissions read back and are written again byte for byte (in a
    record of the current schema: 2 changed the lease and the pending record, not these)."""
    stored = {
        "allowed_providers": ["openai", "anthropic"],
        "allowed_models": None,
        "spending_limit": 500.0,
        "limit_reset": "monthly",
        "expires_at": "2027-01-01T00:00:00+00:00",
    }
    rotation = Rotation(
        id="r1",
        attempt=1,
        date="2026-11-27",
        policy={},
        permissions=Permissions(),
        started_at=T0,
        start_version=3,
    )
    record = StateRecord.new("prod", "app").start(rotation, dialect="b")
    data = json.loads(json.dumps(record.to_dict()))
    data["rotation"]["permissions"] = stored
    schema_1 = json.loads(json.dumps(data))  # as schema 1 stored it (no ack fields yet)
    schema_1["schema"] = 1
    for name in ("ack_expected", "acks_complete_at"):
        del schema_1["rotation"][name]
    read = StateRecord.from_dict(schema_1, "secret/x")
    assert read.rotation is not None
    assert read.rotation.permissions == Permissions(
        allowed_providers=("openai", "anthropic"),
        spending_limit=500.0,
        limit_reset="monthly",
        expires_at=datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert json.loads(json.dumps(read.to_dict())) == data  # permissions written back unchanged
    assert data["schema"] == SCHEMA_VERSION
