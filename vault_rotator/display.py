"""Text safe to display: in a log line, a table cell, an error message or a webhook body.

The shared kernel (with :mod:`vault_rotator.errors` and :mod:`vault_rotator.secret`): every
layer may import it, and it imports nothing of the project's but :mod:`vault_rotator.secret`.

:func:`redact_text` and :func:`redact_value` mask anything key-shaped, replacing it by its HMAC
fingerprint: ARouter keys (``lr_live_…``, ``lr_mgmt_…``, ``lr_admin_…``, even a bare prefix),
Vault tokens (``hvs.…``/``hvb.…``/``hvr.…`` and the older ``s.…``/``b.…``) and the credential
after ``Bearer``; :func:`vault_rotator.logs.redact_secrets` applies them to every log event.

:func:`shown` escapes text someone else chose (a provider key's name, a server's message): no
raw control or bidi character ever reaches a terminal or a log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vault_rotator.secret import Secret, fingerprint

SECRET_PATTERN = re.compile(
    # The credential runs to whitespace, a quote, <>,; and never ends in closing punctuation
    # (")", "]", "}", ".", ":", "!", "?"): "(Authorization: Bearer X)." keeps its ")."
    r"(?P<bearer>\b(?i:bearer)\s+)(?P<credential>[^\s\"'<>,;]*[^\s\"'<>,;.:!?)\]}])"
    r"|lr_(?:live|mgmt|admin)_[A-Za-z0-9_\-]*"
    r"|\bhv[sbr]\.[A-Za-z0-9_\-]{8,}"
    r"|\b[sb]\.[A-Za-z0-9]{20,}(?:\.[A-Za-z0-9]+)?"
)
_PLAIN = (int, float, bool, type(None))


def _mask(match: re.Match[str]) -> str:
    if match["bearer"]:
        return f"{match['bearer']}<redacted {fingerprint(match['credential'])}>"
    return f"<redacted {fingerprint(match.group(0))}>"


# Every match of SECRET_PATTERN holds one of these (or "bearer" in any case): text without any
# is returned as it is, without running the pattern's alternation at every character (the
# daemon redacts every log line and every status row).
_TELLTALES = ("lr_", "s.", "b.", "hvr.")
_BEARER = re.compile("bearer", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Replace every key-shaped token in ``text`` by its fingerprint."""
    if not any(tell in text for tell in _TELLTALES) and _BEARER.search(text) is None:
        return text
    return SECRET_PATTERN.sub(_mask, text)


DISPLAY_LIMIT = 120
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(text: str, limit: int = DISPLAY_LIMIT) -> str:
    """``text`` safe for a log line or a table cell: escaped as ``repr`` would, and capped.

    Every character Python does not print (controls, bidi and other format characters, line
    and paragraph separators, unassigned code points) becomes ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN``
    (tab, newline, carriage return ``\\t``, ``\\n``, ``\\r``), a backslash is doubled, and a
    result longer than ``limit`` is cut with "…". Provider-chosen names are shown this way.
    """
    out = "".join(_escaped(char) for char in text[: limit + 1])
    return out if len(out) <= limit and len(text) <= limit else out[: limit - 1] + "…"


def redact_value(value: Any) -> Any:
    """``value`` with every key-shaped string inside it masked (containers become dicts/lists).

    Numbers, booleans and None pass unchanged; a :class:`Secret` becomes its fingerprint; an
    exception becomes ``"Type: message"``; any other object is kept unless its ``repr`` holds
    something key-shaped, in which case the redacted ``repr`` replaces it.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Secret):
        return value.fingerprint
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        return _redact_container(value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    text = repr(value)
    masked = redact_text(text)
    return value if masked == text else masked


def _redact_container(value: Any) -> dict[Any, Any] | list[Any]:
    if isinstance(value, Mapping):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    return [redact_value(v) for v in value]
