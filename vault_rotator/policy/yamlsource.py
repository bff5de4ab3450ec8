"""Read one YAML policy file into plain data plus the line of every node.

PyYAML's composer (safe resolver) builds the node tree; scalars are constructed with the safe
constructor, so no YAML tag can run code. Mapping keys are taken as written (``on`` stays the
string "on"). Refused, as problems with a line: syntax errors, a duplicate key in one mapping,
merge keys (``<<``), non-scalar keys, recursive aliases and documents of more than 100 000 nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from vault_rotator.policy.problems import Problem, Severity

NodePath = tuple[str | int, ...]
MAX_NODES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"


@dataclass(frozen=True)
class Document:
    """A file's data and the 1-based line of each node, by path (``("keys", 2, "name")``)."""

    file: Path
    data: object
    lines: dict[NodePath, int]

    def line_of(self, path: NodePath) -> int:
        """The line of the deepest recorded node on ``path`` (the file's first line at worst)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1

    def problem(self, path: NodePath, message: str, severity: Severity = "error") -> Problem:
        """A problem located at the node on ``path``."""
        return Problem(self.file, self.line_of(path), message, severity)


class _TooLargeError(Exception):
    pass


@dataclass
class _Builder:
    file: Path
    lines: dict[NodePath, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    constructor: SafeConstructor = field(default_factory=SafeConstructor)
    active: set[int] = field(default_factory=set)
    count: int = 0

    def value(self, node: Node, path: NodePath) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLargeError
        if id(node) in self.active:
            self._add(node, "recursive YAML alias (an anchor used inside itself)")
            return None
        if not isinstance(node, ScalarNode) and node.tag not in (MAP_TAG, SEQ_TAG):
            self._add(node, f"unsupported YAML tag {node.tag}")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            return self._scalar(node)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: MappingNode, path: NodePath) -> dict[str, object]:
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            name = self._key(key_node)
            if name is None:
                continue
            if name in result:
                first = self.lines[(*path, name)]
                self._add(key_node, f"duplicate field '{name}' (first at line {first})")
                continue
            self.lines[(*path, name)] = _line(key_node)
            result[name] = self.value(value_node, (*path, name))
        return result

    def _key(self, node: Node) -> str | None:
        if node.tag == MERGE_TAG:
            self._add(node, "YAML merge keys (<<) are not supported; use 'defaults' instead")
            return None
        if not isinstance(node, ScalarNode):
            self._add(node, "a mapping key must be a plain name")
            return None
        return str(node.value)

    def _sequence(self, node: SequenceNode, path: NodePath) -> list[object]:
        items: list[object] = []
        for index, item in enumerate(node.value):
            self.lines[(*path, index)] = _line(item)
            items.append(self.value(item, (*path, index)))
        return items

    def _scalar(self, node: Node) -> object:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._add(node, f"cannot read this value: {_describe(exc)}")
            return None

    def _add(self, node: Node, message: str) -> None:
        self.problems.append(Problem(self.file, _line(node), message))


def read_document(file: Path) -> tuple[Document | None, list[Problem]]:
    """Read and compose ``file``; the document is None when nothing usable could be read."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(file, None, f"cannot read the file: {exc}")]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        message = f"YAML syntax error: {_describe(exc)}"
        if "'@'" in message:
            message += ' (quote values that start with @, such as "@monthly")'
        return None, [Problem(file, _error_line(exc), message)]
    if root is None:
        return None, [Problem(file, 1, "the file is empty; expected a policy mapping")]
    builder = _Builder(file)
    builder.lines[()] = _line(root)
    try:
        data = builder.value(root, ())
    except _TooLargeError:
        return None, [Problem(file, 1, f"the document has more than {MAX_NODES} nodes")]
    return Document(file, data, builder.lines), builder.problems


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _error_line(exc: yaml.YAMLError) -> int | None:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return int(mark.line) + 1
    return None


def _describe(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [exc.context, exc.problem]
        return "; ".join(part for part in parts if part) or str(exc).splitlines()[0]
    return str(exc).splitlines()[0]
