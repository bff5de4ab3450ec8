"""Names of new provider keys, rendered from a policy's ``key_name`` template.

Placeholders: ``{env}`` (the environment), ``{name}`` (the key's name in the policy),
``{date}`` (the UTC date the rotation started, YYYY-MM-DD) and ``{rotation_id}`` (required: it
makes every created key's name unique, which is how a create whose answer was lost is found
again). No other placeholder, format spec or conversion is allowed; write ``{{`` and ``}}`` for
literal braces.
"""

from __future__ import annotations

import datetime as dt
import string

from vault_rotator.policy.problems import PolicyValueError

PLACEHOLDERS = ("env", "name", "date", "rotation_id")
DEFAULT_KEY_NAME = "{env}-{name}-{date}-{rotation_id}"


def template_placeholders(template: str) -> set[str]:
    """The placeholders a template uses; raise PolicyValueError for a malformed template."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PolicyValueError(f"invalid key_name template {template!r}: {exc}") from exc
    found: set[str] = set()
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in PLACEHOLDERS or spec or conversion:
            raise PolicyValueError(
                f"key_name template {template!r} has an unknown placeholder "
                f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                f"; allowed: {', '.join('{' + name + '}' for name in PLACEHOLDERS)}"
            )
        found.add(field)
    return found


def check_key_name_template(template: str) -> str:
    """Return the template if it is well formed and holds ``{rotation_id}``; else raise."""
    if "rotation_id" not in template_placeholders(template):
        raise PolicyValueError(
            f"key_name template {template!r} lacks {{rotation_id}}, which keeps every new "
            "key's name unique"
        )
    return template


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
