"""The narrow port between the engine and a KV v2 secret store (Vault or OpenBao).

Paths are relative to one KV v2 mount. Every write is a check-and-set: ``cas=0`` means "the
path must not have a live version", ``cas=N`` means "the current version must be N".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Versioned:
    """One version of a KV v2 secret."""

    data: Mapping[str, Any]
    version: int
    created_time: str = ""
    deleted: bool = False  # soft-deleted or destroyed: data is empty
    custom_metadata: Mapping[str, str] = field(default_factory=dict)


class KvStore(Protocol):
    """A KV v2 mount."""

    @property
    def mount(self) -> str: ...

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        """The given (default: current) version, or None when the path has no versions."""
        ...

    def current_version(self, path: str) -> int:
        """The path's current version number; 0 when it has never been written."""
        ...

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        """Write a new version by check-and-set; return its number. CasConflictError if lost."""
        ...

    def set_custom_metadata(self, path: str, metadata: Mapping[str, str]) -> None:
        """Replace the path's custom metadata (labels for humans)."""
        ...

    def destroy(self, path: str) -> None:
        """Destroy every version and the metadata of a path (no error if absent)."""
        ...

    def list(self, prefix: str) -> Sequence[str]:
        """Names directly below ``prefix`` (folders end in ``/``); empty if none."""
        ...

    def capabilities(self, paths: Sequence[str]) -> dict[str, frozenset[str]]:
        """This token's capabilities on each full API path (``<mount>/data/<path>``)."""
        ...
