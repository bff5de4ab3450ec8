"""Logging: structlog, JSON when not on a terminal, console otherwise, secrets redacted.

:func:`redact_secrets` is a structlog processor that masks anything key-shaped in every string
of an event, recursively (mapping keys and values, lists, tuples, sets, exceptions, and the
``repr`` of any other object), replacing it by its HMAC fingerprint (what counts as
key-shaped: :mod:`vault_rotator.display`). It is the last line of defence: code should log key
ids and fingerprints in the first place, and escape text someone else chose with
:func:`vault_rotator.display.shown`.

:func:`canonical_rotation_line` emits the one canonical line per finished rotation
(event ``rotation finished``): env, key, rotation id, trigger, who, outcome, step durations,
old and new key ids.

:func:`configure` sets structlog up for the process, and routes every standard-library record
(APScheduler's, urllib3's, httpx's, hvac's) through the same redaction and renderer (from
``warning`` up, at every level). :func:`log_settings` picks the level and format: the
``--log-level`` flag, else ``$VAULT_ROTATOR_LOG_LEVEL``, else ``info``;
``$VAULT_ROTATOR_LOG_FORMAT`` (``json`` or ``console``), else JSON off a terminal and console on
one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import structlog

from vault_rotator.display import redact_text, redact_value
from vault_rotator.engine.outcomes import classify
from vault_rotator.errors import ConfigError

if TYPE_CHECKING:
    from vault_rotator.engine.state import Outcome, Rotation, Stall
    from vault_rotator.policy import KeyPolicy

ROTATION_FINISHED = "rotation finished"


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask key-shaped strings anywhere in the event, keys included."""
    redacted = {redact_text(key): redact_value(value) for key, value in event_dict.items()}
    event_dict.clear()
    event_dict.update(redacted)
    return event_dict


def rotation_steps(outcome: Outcome, rotation: Rotation | None) -> dict[str, float]:
    """Seconds spent in each stretch of a finished rotation, as far as the record knows them.

    ``publish``: start to the consumer secret's new version (intent, create, verify, publish);
    ``pickup``: publish to the new key's first seen use; ``drain``: that use to the end (drain,
    delete, clean-up); ``total``: start to end. A rotation that never published has ``total``
    only.
    """
    if rotation is None:
        return {}
    marks = [("publish", rotation.published_at), ("pickup", rotation.pickup_at)]
    steps: dict[str, float] = {}
    previous = rotation.started_at
    for name, at in marks:
        if at is None:
            break
        steps[name] = round(at - previous, 3)
        previous = at
    else:
        steps["drain"] = round(outcome.at - previous, 3)
    steps["total"] = round(outcome.at - rotation.started_at, 3)
    return steps


def rotation_line_fields(
    outcome: Outcome, rotation: Rotation | None, *, env: str, name: str
) -> dict[str, Any]:
    """The fields of the canonical line of a finished rotation (pure)."""
    return {
        "env": env,
        "key": f"{env}/{name}",
        "rotation_id": outcome.rotation_id,
        "attempt": rotation.attempt if rotation else None,
        "trigger": outcome.trigger,
        "by": outcome.by,
        "outcome": outcome.outcome,
        "steps": rotation_steps(outcome, rotation),
        "old_key_id": outcome.old_key_id,
        "new_key_id": outcome.new_key_id,
        "detail": outcome.detail,
    }


def canonical_rotation_line(
    outcome: Outcome,
    rotation: Rotation | None,
    *,
    env: str,
    name: str,
    logger: Any = None,
) -> dict[str, Any]:
    """Log the one canonical line of a finished rotation and return its fields.

    Pass the rotation as it was just before it finished (``record.rotation``), for its step
    times. Its level is the outcome's in :mod:`vault_rotator.engine.outcomes` (``info`` for a
    plain success, ``warning`` when it needs attention, ``error`` for a failure); ``logger``
    defaults to
    this module's.
    """
    fields = rotation_line_fields(outcome, rotation, env=env, name=name)
    target = logger if logger is not None else structlog.get_logger(__name__)
    level = classify(outcome.outcome).log_level  # the outcome table (engine.outcomes)
    getattr(target, level.value)(ROTATION_FINISHED, **fields)
    return fields


class CanonicalLine:
    """A rotation listener that logs the canonical line of each finished rotation.

    The composition root (:meth:`vault_rotator.runtime.Runtime.engine`) installs it, so the CLI
    and the daemon log exactly one such line per finished rotation; the engine imports no logs.
    """

    def finished(self, policy: KeyPolicy, outcome: Outcome, rotation: Rotation) -> None:
        logger = structlog.get_logger("vault_rotator.engine").bind(key=policy.ref)
        canonical_rotation_line(outcome, rotation, env=policy.env, name=policy.name, logger=logger)

    def stalled(self, policy: KeyPolicy, rotation: Rotation, stall: Stall) -> None:
        """A stall is logged by the engine itself ("rotation stalled"); nothing more here."""


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
LOG_LEVEL_ENV = "VAULT_ROTATOR_LOG_LEVEL"
LOG_FORMAT_ENV = "VAULT_ROTATOR_LOG_FORMAT"


def log_settings(
    level: str | None, env: Mapping[str, str] | None = None
) -> tuple[str, bool | None]:
    """(level, json) for :func:`configure`: ``level`` (the flag) beats the environment.

    ``json`` is None when ``$VAULT_ROTATOR_LOG_FORMAT`` is unset (the terminal decides). An
    unknown level or format in the environment is a :class:`ConfigError` naming the variable.
    """
    env = os.environ if env is None else env
    if level is None:
        level = _env_choice(env, LOG_LEVEL_ENV, LOG_LEVELS) or "info"
    fmt = _env_choice(env, LOG_FORMAT_ENV, LOG_FORMATS)
    return level, None if fmt is None else fmt == "json"


def _env_choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    if text.lower() not in choices:
        raise ConfigError(f"{name}={text!r}: expected one of {', '.join(choices)}")
    return text.lower()


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure logging for the process: JSON off a terminal, console on one.

    structlog's own events and every standard-library record (APScheduler, urllib3, httpx,
    hvac...) go through the same timestamp, secret redaction and renderer, one line each, to
    stderr. Library records are written from ``warning`` up whatever the level: at ``info``
    and ``debug``, APScheduler (two lines per tick) and httpx (one per request) would drown the
    rotator's own lines.
    """
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    number = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _TIMESTAMP,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(renderer, max(number, logging.WARNING))


_TIMESTAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record comes (as structlog's own lines do when
    configured again); marked so that :func:`configure` replaces it instead of adding one."""

    vault_rotator = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _route_stdlib(renderer: Any, level: int) -> None:
    """Send every standard-library record through structlog's formatter and the redaction."""
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.stdlib.add_logger_name,
                _TIMESTAMP,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "vault_rotator", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
