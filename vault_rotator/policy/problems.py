"""Problems found in policy files, and the errors that carry them.

A problem is one line: ``FILE:LINE: message``. Messages quote values from the file through
:func:`shown`, which escapes control and bidi characters the way ``repr`` does and cuts long
values at 80 characters; as a last guard, ``str(problem)`` escapes any non-printable character
left in a message, so a hostile file can neither break the line nor reorder what a terminal
shows.

::

    ConfigError                    (vault_rotator.errors)
    ├── PolicyError                one or more problems in the policy files; carries them all
    └── PolicyValueError           one value is malformed: a duration, cron, window or template
                                   (also a ValueError, so pydantic validators report it)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vault_rotator.errors import ConfigError

Severity = Literal["error", "warning"]
SHOWN_CHARS = 80  # how much of a value a message quotes


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A value as a message quotes it: ``repr``-escaped and cut at ``limit`` characters.

    A cut string keeps its quotes and says how long it was: ``'xxx…' (902 characters)``.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        quoted = repr(value[:limit])
        return f"{quoted[:-1]}…{quoted[-1]} ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def clipped(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut at ``limit`` characters (``…`` marks the cut); for unquoted names."""
    return text if len(text) <= limit else text[:limit] + "…"


def escaped(text: str) -> str:
    """``text`` with every non-printable character (control, bidi, line breaks) escaped."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a policy file: where it is and what is wrong.

    ``line`` is 1-based; ``None`` when the problem has no line (an empty config directory).
    """

    file: Path
    line: int | None
    message: str
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        """True for errors, False for warnings."""
        return self.severity == "error"

    def sort_key(self) -> tuple[str, int, str]:
        """Order by file, then line, then message."""
        return (str(self.file), self.line or 0, self.message)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        prefix = "warning: " if self.severity == "warning" else ""
        return escaped(f"{where}: {prefix}{self.message}")


class PolicyError(ConfigError):
    """The policy files have errors. ``problems`` holds every error and warning found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=Problem.sort_key)
        errors = self.errors
        first = errors[0] if errors else self.problems[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{first}{more}")

    @property
    def errors(self) -> list[Problem]:
        """The problems that are errors (not warnings)."""
        return [problem for problem in self.problems if problem.is_error]


class PolicyValueError(ConfigError, ValueError):
    """One value in a policy is malformed; the message names the value and the expected form."""
