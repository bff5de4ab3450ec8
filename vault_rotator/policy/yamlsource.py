"""Read one YAML policy file into plain data plus the line of every node.

PyYAML's composer (safe resolver) builds the node tree; scalars are constructed with the safe
constructor, so no YAML tag can run code. Mapping keys are taken as written (``on`` stays the
string "on"). Refused, as problems with a line: syntax errors, a duplicate key in one mapping,
merge keys (``<<``), non-scalar keys and recursive aliases.

A policy file is small; a hostile or broken one must cost little. Limits, each one problem:

=====================  ==========  =======================================================
file size              1 MiB       checked before reading (and at most 1 MiB + 1 byte read)
encoding               UTF-8       a bad byte is reported at its line and column
nesting depth          32          a policy needs 5; checked while composing, so
                                   ``[[[[…`` never reaches Python's recursion limit
YAML nodes             50 000      counted while composing and again while expanding
                                   aliases (1 000 keys of 8 fields make about 20 000)
scalar length          1 024       characters of one value or field name (so no number
                                   has thousands of digits)
=====================  ==========  =======================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.events import ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from vault_rotator.policy.problems import Problem, Severity, shown

NodePath = tuple[str | int, ...]
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 50_000
MAX_SCALAR_CHARS = 1024
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


class _LimitError(Exception):
    """A limit was crossed at ``line``; reading stops there."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, composing under the depth, node and scalar limits."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = _mark_line(event.start_mark)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _LimitError(line, f"the document has more than {MAX_NODES} YAML nodes")
        if isinstance(event, ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise _LimitError(
                line,
                f"a value of {len(event.value)} characters is longer than "
                f"{MAX_SCALAR_CHARS} characters",
            )
        if self.depth >= MAX_DEPTH:
            raise _LimitError(line, f"the document is nested deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        return node


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
            message = f"the document has more than {MAX_NODES} YAML nodes once aliases are expanded"
            raise _LimitError(_line(node), message)
        if id(node) in self.active:
            self._add(node, "recursive YAML alias (an anchor used inside itself)")
            return None
        if not isinstance(node, ScalarNode) and node.tag not in (MAP_TAG, SEQ_TAG):
            self._add(node, f"unsupported YAML tag {shown(node.tag)}")
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
                self._add(key_node, f"duplicate field {shown(name)} (first at line {first})")
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
        except (ValueError, OverflowError) as exc:  # int() and float() of odd numbers
            self._add(node, f"cannot read this value: {shown(str(exc))}")
        return None

    def _add(self, node: Node, message: str) -> None:
        self.problems.append(Problem(self.file, _line(node), message))


def read_document(file: Path) -> tuple[Document | None, list[Problem]]:
    """Read and compose ``file``; the document is None when nothing usable could be read."""
    text, problem = read_text(file)
    if text is None:
        return None, [problem] if problem is not None else []
    try:
        root = _compose(text)
    except _LimitError as exc:
        return None, [Problem(file, exc.line, exc.message)]
    except yaml.YAMLError as exc:
        message = f"YAML syntax error: {_describe(exc)}"
        if "'@'" in message:
            message += ' (quote values that start with @, such as "@monthly")'
        return None, [Problem(file, _error_line(exc, text), message)]
    if root is None:
        return None, [Problem(file, 1, "the file is empty; expected a policy mapping")]
    builder = _Builder(file)
    builder.lines[()] = _line(root)
    try:
        data = builder.value(root, ())
    except _LimitError as exc:
        return None, [Problem(file, exc.line, exc.message)]
    return Document(file, data, builder.lines), builder.problems


def _compose(text: str) -> Node | None:
    loader = _Loader(text)  # refuses characters YAML does not allow (ReaderError)
    try:
        root: Node | None = loader.get_single_node()
    finally:
        loader.dispose()
    return root


def read_text(file: Path) -> tuple[str | None, Problem | None]:
    """The file's text, or the problem: over MAX_FILE_BYTES (never read), unreadable, not UTF-8."""
    try:
        size = file.stat().st_size
        if size <= MAX_FILE_BYTES:
            with file.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)  # a file growing under us stays bounded
            size = len(raw)
    except OSError as exc:
        return None, Problem(file, None, f"cannot read the file: {exc.strerror or exc}")
    if size > MAX_FILE_BYTES:
        message = f"the file is larger than 1 MiB ({size} bytes), the limit for a policy file"
        return None, Problem(file, None, message)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, _not_utf8(file, raw, exc.start)


def _not_utf8(file: Path, raw: bytes, start: int) -> Problem:
    line_start = raw.rfind(b"\n", 0, start) + 1
    column = len(raw[line_start:start].decode("utf-8")) + 1  # what precedes it is valid
    line = raw.count(b"\n", 0, start) + 1
    message = f"the file is not valid UTF-8: byte 0x{raw[start]:02x} at column {column}"
    return Problem(file, line, message)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _mark_line(mark: Mark | None) -> int:
    return 1 if mark is None else int(mark.line) + 1


_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what PyYAML counts as one


def _error_line(exc: yaml.YAMLError, text: str) -> int | None:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return int(mark.line) + 1
    if isinstance(exc, ReaderError):  # a character YAML refuses, by position
        return len(_LINE_BREAK.findall(text, 0, exc.position)) + 1
    return None


def _describe(exc: yaml.YAMLError) -> str:
    """PyYAML's explanation, on one line and at most about 200 characters."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, yaml.MarkedYAMLError):
        text = "; ".join(part for part in (exc.context, exc.problem) if part) or text
    return text if len(text) <= 200 else text[:200] + "…"
