"""Names of new provider keys, rendered from a policy's ``key_name`` template.

Placeholders: ``{env}`` (the environment), ``{name}`` (the key's name in the policy),
``{date}`` (the UTC date the rotation started, YYYY-MM-DD) and ``{rotation_id}`` (required: it
makes every created key's name unique, which is how a create whose answer was lost is found
again). No other placeholder, format spec or conversion is allowed.

A policy file's template (not a stored one, so older records stay readable) must also render
names the provider takes as they are: its literal text may hold only ``A-Z a-z 0-9 . _ -``
(the placeholders render from the same set; no space, ``/``, brace, control or bidi
character), and the rendered name, with the longest date and rotation id, is at most
256 characters (the provider refuses longer names).
"""

from __future__ import annotations

import datetime as dt
import string

from vault_rotator.policy.problems import PolicyValueError, shown

PLACEHOLDERS = ("env", "name", "date", "rotation_id")
DEFAULT_KEY_NAME = "{env}-{name}-{date}-{rotation_id}"
MAX_KEY_NAME_CHARS = 256
KEY_NAME_CHARS = "A-Z, a-z, 0-9, '.', '_' and '-'"
# The longest values a rotation renders: a YYYY-MM-DD date and a 10-character id with a
# 4-digit attempt (the engine stalls long before attempt 10 000).
LONGEST_DATE = dt.date(2000, 1, 1)
LONGEST_ROTATION_ID = "0123456789.9999"
_ALLOWED = frozenset(string.ascii_letters + string.digits + "._-")


def template_placeholders(template: str) -> set[str]:
    """The placeholders a template uses; raise PolicyValueError for a malformed template."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PolicyValueError(f"invalid key_name template {shown(template)}: {exc}") from exc
    found: set[str] = set()
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in PLACEHOLDERS or spec or conversion:
            raise PolicyValueError(
                f"key_name template {shown(template)} has an unknown placeholder "
                f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                f"; allowed: {', '.join('{' + name + '}' for name in PLACEHOLDERS)}"
            )
        found.add(field)
    return found


def check_key_name_template(template: str) -> str:
    """Return the template if it is well formed and holds ``{rotation_id}``; else raise."""
    if "rotation_id" not in template_placeholders(template):
        raise PolicyValueError(
            f"key_name template {shown(template)} lacks {{rotation_id}}, which keeps every new "
            "key's name unique"
        )
    return template


def check_key_name_charset(template: str) -> str:
    """Return the template if its literal text holds only KEY_NAME_CHARS; else raise."""
    literal = "".join(text for text, *_ in string.Formatter().parse(template))
    odd = list(dict.fromkeys(char for char in literal if char not in _ALLOWED))
    if odd:
        listed = ", ".join(shown(char) for char in odd[:5]) + (", …" if len(odd) > 5 else "")
        raise PolicyValueError(
            f"key_name template {shown(template)} holds {listed}: a key name may hold only "
            f"{KEY_NAME_CHARS}"
        )
    return template


def longest_key_name(template: str, *, env: str, name: str) -> str:
    """The template rendered with the longest date and rotation id a rotation can use."""
    return render_key_name(
        template, env=env, name=name, date=LONGEST_DATE, rotation_id=LONGEST_ROTATION_ID
    )


def render_key_name(template: str, *, env: str, name: str, date: dt.date, rotation_id: str) -> str:
    """Render a key name; ``date`` may be a date or a datetime (taken in UTC, naive = UTC)."""
    check_key_name_template(template)
    if not rotation_id:
        raise PolicyValueError("rotation_id must not be empty")
    return template.format(env=env, name=name, date=_utc_day(date), rotation_id=rotation_id)


def _utc_day(moment: dt.date) -> str:
    if isinstance(moment, dt.datetime):
        aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
        return aware.astimezone(dt.UTC).date().isoformat()
    return moment.isoformat()
