"""Problems found in policy files, and the errors that carry them.

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
        return f"{where}: {prefix}{self.message}"


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
