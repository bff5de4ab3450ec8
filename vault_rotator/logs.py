"""Logging: structlog, JSON when not on a terminal, console otherwise, secrets redacted.

:func:`redact_secrets` is a structlog processor that masks anything key-shaped
(``lr_live_…``, ``lr_mgmt_…``, ``lr_admin_…``, Vault tokens ``hvs.…``/``s.…``/``b.…``) in every
string value of an event, recursively, replacing it by its HMAC fingerprint. It is the last line
of defence: code should log key ids and fingerprints in the first place.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from vault_rotator.secret import Secret, fingerprint

SECRET_PATTERN = re.compile(
    r"\b(?:lr_(?:live|mgmt|admin)_[A-Za-z0-9_\-]{4,}"
    r"|hv[sbr]\.[A-Za-z0-9_\-]{8,}"
    r"|[sb]\.[A-Za-z0-9]{20,})"
)


def redact_text(text: str) -> str:
    """Replace every key-shaped token in ``text`` by its fingerprint."""
    return SECRET_PATTERN.sub(lambda m: f"<redacted {fingerprint(m.group(0))}>", text)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Secret):
        return value.fingerprint
    if isinstance(value, Mapping):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask key-shaped strings anywhere in the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact(value)
    return event_dict


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog for the process: JSON off a terminal, console on one."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
