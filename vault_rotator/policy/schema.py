"""The shape of one policy file, as pydantic models, and pydantic errors as problems.

These "raw" models mirror the YAML exactly (``extra="forbid"``, strict types, durations with
units, and the stricter ``File*`` value types of :mod:`~vault_rotator.policy.fields`);
:mod:`vault_rotator.policy.build` merges them into the effective model. Keys are
validated one by one, so one bad key does not hide the problems of the others.
"""

from __future__ import annotations

import difflib
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

import vault_rotator.policy.defaults as builtin
from vault_rotator.policy.fields import (
    DialectName,
    Duration,
    FileAckTtl,
    FileBaseUrl,
    FileKeyNameTemplate,
    FileMountName,
    FileScheduleText,
    FileSpendingLimit,
    LimitReset,
    Name,
    NameList,
    PositiveDuration,
    ProviderType,
    Token,
    VaultPath,
    WindowText,
)
from vault_rotator.policy.problems import Problem, shown
from vault_rotator.policy.yamlsource import Document, NodePath

M = TypeVar("M", bound=BaseModel)


class _Raw(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RawManagementKey(_Raw):
    """``provider.management_key``: where the management key lives in Vault."""

    path: VaultPath
    field: Token = builtin.MANAGEMENT_KEY_FIELD


class RawProvider(_Raw):
    """``provider``: one provider account."""

    type: ProviderType
    base_url: FileBaseUrl
    dialect: DialectName = "auto"
    management_key: RawManagementKey
    usage_lag: Duration = builtin.USAGE_LAG_S
    poll_interval: PositiveDuration = builtin.POLL_INTERVAL_S
    max_concurrent: int = Field(
        default=builtin.MAX_CONCURRENT, ge=1, le=builtin.MAX_CONCURRENT_LIMIT
    )


class RawVault(_Raw):
    """``vault``: where the keys' state records live."""

    kv_mount: FileMountName = builtin.KV_MOUNT
    state_prefix: VaultPath = builtin.STATE_PREFIX


class RawSettings(_Raw):
    """Per-key settings, as written under ``defaults`` or on a key.

    The defaults below are the built-in ones; ``model_fields_set`` tells what a file set.
    ``disable_before_delete``'s built-in default depends on the dialect (see ``defaults``).
    """

    schedule: FileScheduleText = builtin.SCHEDULE
    jitter: Duration = builtin.JITTER_S
    window: WindowText | None = None
    max_age: PositiveDuration = builtin.MAX_AGE_S
    pickup_timeout: PositiveDuration = builtin.PICKUP_TIMEOUT_S
    drain_period: Duration = builtin.DRAIN_PERIOD_S
    drain_timeout: PositiveDuration = builtin.DRAIN_TIMEOUT_S
    disable_before_delete: Duration = 0.0
    key_ttl: PositiveDuration | None = None
    key_name: FileKeyNameTemplate = builtin.KEY_NAME
    allowed_providers: NameList | None = None
    allowed_models: NameList | None = None
    spending_limit: FileSpendingLimit | None = None
    limit_reset: LimitReset | None = None
    require_acks: int = Field(default=0, ge=0, le=builtin.MAX_REQUIRE_ACKS)
    drain_on_acks: bool = False
    ack_ttl: FileAckTtl = builtin.ACK_TTL_S
    ack_retention: PositiveDuration = builtin.ACK_RETENTION_S


SETTINGS = tuple(RawSettings.model_fields)


class RawKey(RawSettings):
    """One entry of ``keys``."""

    name: Name
    secret_path: VaultPath
    adopt_key_id: Token | None = None


class RawFile(_Raw):
    """A whole file; ``keys`` entries are validated separately as :class:`RawKey`."""

    environment: Name
    provider: RawProvider
    vault: RawVault = RawVault()
    require_spending_limit: bool | None = None
    defaults: RawSettings = RawSettings()
    keys: list[Any]


@dataclass(frozen=True)
class Validated(Generic[M]):
    """A validation's outcome.

    When the data had errors, ``model`` is still built if dropping the offending fields makes
    it valid (their built-in defaults then apply); ``broken`` lists those fields' paths, so that
    rules involving them are skipped instead of judged on a stand-in value.
    """

    model: M | None
    problems: list[Problem]
    broken: frozenset[NodePath] = frozenset()


def validate_model(
    model: type[M], data: object, doc: Document, prefix: NodePath = ()
) -> Validated[M]:
    """Validate ``data`` as ``model``: one problem per pydantic error, paths under ``prefix``."""
    try:
        return Validated(model.model_validate(data), [])
    except ValidationError as exc:
        errors = exc.errors()
    problems = [_problem(error, model, doc, prefix) for error in errors]
    broken = {_field_path(error) for error in errors if error["type"] != "missing"}
    try:
        fallback = model.model_validate(_pruned(data, broken))
    except ValidationError:
        return Validated(None, problems)
    return Validated(fallback, problems, frozenset((*prefix, *path) for path in broken))


def _field_path(error: ErrorDetails) -> NodePath:
    """The path of the field an error is about (a list item's error blames the whole list)."""
    path = tuple(part for part in error["loc"] if isinstance(part, str | int))
    while path and not isinstance(path[-1], str):
        path = path[:-1]
    return path


def _pruned(data: object, paths: set[NodePath]) -> object:
    copy = deepcopy(data)
    for path in paths:
        parent = copy
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if path and isinstance(parent, dict):
            parent.pop(path[-1], None)
    return copy


def _problem(
    error: ErrorDetails, model: type[BaseModel], doc: Document, prefix: NodePath
) -> Problem:
    relative: NodePath = tuple(part for part in error["loc"] if isinstance(part, str | int))
    loc: NodePath = (*prefix, *relative)
    kind = error["type"]
    if kind == "missing":
        return doc.problem(loc[:-1], f"{_where(loc[:-1])}missing required field {shown(loc[-1])}")
    if kind == "extra_forbidden":
        hint = _suggest(str(loc[-1]), model, relative)
        return doc.problem(loc, f"{_where(loc[:-1])}unknown field {shown(str(loc[-1]))}{hint}")
    return doc.problem(loc, f"{dotted(loc)}: {_message(error)}")


def _where(path: NodePath) -> str:
    return f"{dotted(path)}: " if path else ""


def dotted(path: NodePath) -> str:
    """``("keys", 2, "drain_period")`` -> ``keys[2].drain_period``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


_EXPECTED = {
    "string_type": "a string",
    "float_type": "a number",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "model_type": "a mapping",
    "dict_type": "a mapping",
}


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "float_type" and isinstance(error["input"], int):
        return f"{shown(error['input'])} is too large a number"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_yaml_type(error['input'])}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {shown(error['input'])}"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}"


def _yaml_type(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a mapping", tuple: "a list"}
    return names.get(type(value), type(value).__name__)


def _suggest(name: str, model: type[BaseModel], loc: NodePath) -> str:
    current = _model_at(model, loc[:-1])
    known = list(current.model_fields) if current is not None else []
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_at(model: type[BaseModel], path: NodePath) -> type[BaseModel] | None:
    current = model
    for part in path:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return current
