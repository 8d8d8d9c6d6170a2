"""Bounded, strict YAML for every file and value the CLI parses (job files, ``key=value`` overrides).

``yaml.safe_load`` builds only plain data, but it accepts three things a job file should not
hold:

- **alias bombs**: a few hundred bytes of nested anchors (``&a [*b, *b, ...]``) describe a
  value of billions of elements. PyYAML shares the aliased objects, so loading is cheap,
  but anything that walks the value (an error message, a JSON manifest, a deep copy into a
  worker) expands it. The loader counts the value's *expanded* size (every node as many
  times as aliases reach it) and refuses more than :data:`MAX_NODES`;
- **deep nesting** beyond :data:`MAX_DEPTH` (which would overflow the recursive composer);
- **duplicate keys** in a mapping, which ``safe_load`` resolves silently (the last one
  wins): an error naming both lines.

Files larger than :data:`MAX_FILE_BYTES` are refused before parsing. Every refusal is a
:class:`~alscale.errors.JobError` of one line naming the file, the line and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from alscale.errors import JobError, short_repr

#: Largest job file read (a real one is a few kB; the cap keeps a mistaken path -- a pool,
#: a log -- from being parsed as YAML).
MAX_FILE_BYTES = 1 << 20
#: Most values (scalars, lists, mappings; aliases counted as often as they are used) a file
#: or an override may expand to.
MAX_NODES = 100_000
#: Deepest nesting of lists and mappings.
MAX_DEPTH = 64


class _Refused(yaml.YAMLError):
    """A bound was exceeded; ``mark`` is where."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses duplicate keys, deep nesting and an expanded size above
    :data:`MAX_NODES` (PyYAML's composer and constructor, with three checks added)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # noqa: D102 -- PyYAML hook
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node:  # noqa: D102 -- PyYAML hook
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # noqa: D102
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # ``<<: *defaults`` -- explicit keys override merged ones, by design
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: construct_mapping below names it
                    continue
                if first is not key_node:
                    a, b = first.start_mark.line + 1, key_node.start_mark.line + 1
                    lines = f"lines {a} and {b}" if a != b else f"twice on line {a}"
                    raise _Refused(f"duplicate key {short_repr(key)} ({lines}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: Node | None) -> None:
    """Refuse a node graph whose expansion (aliases followed) exceeds :data:`MAX_NODES`.

    Aliased nodes are shared in the graph, so the size of each node is memoised by
    identity: the cost is linear in the number of distinct nodes, whatever the expansion.
    """
    if root is None:
        return
    size: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, MappingNode)
                    else list(node.value) if isinstance(node, SequenceNode) else [])
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
            continue
        total = 1 + sum(size.get(id(c), 0) for c in children)
        if total > MAX_NODES:
            raise _Refused(f"the value expands to more than {MAX_NODES:,} elements (nested aliases?); "
                           "write it out or shorten it", node.start_mark)
        size[id(node)] = total


def load_yaml(text: str, *, source: str, what: str = "job") -> Any:
    """Parse ``text`` with :class:`BoundedLoader`; a malformed or refused document raises
    one-line ``JobError``: ``{what} {source}: malformed YAML at line L, column C: ...``."""
    if len(text) > MAX_FILE_BYTES:
        raise JobError(f"{what} {source}: {len(text):,} characters is larger than the {MAX_FILE_BYTES:,} a job "
                       "file may have; is this the right file?")
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "refused YAML" if isinstance(exc, _Refused) else "malformed YAML"
        raise JobError(f"{what} {source}: {kind}{where}: {' '.join(str(problem).split())}") from None
    except RecursionError:  # a guard above should make this unreachable
        raise JobError(f"{what} {source}: refused YAML: nested too deeply") from None


def read_text_bounded(path: str | os.PathLike[str], *, what: str = "job", limit: int = MAX_FILE_BYTES) -> str:
    """The text of a small file the CLI parses, refusing one over ``limit`` bytes before
    reading it whole (one-line ``JobError`` naming the file and its size)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise JobError(f"{what} {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        size = ""
        try:
            size = f" ({path.stat().st_size:,} bytes)"
        except OSError:
            pass
        raise JobError(f"{what} {path}: the file is larger than the {limit:,} bytes a job file may have{size}; "
                       "is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobError(f"{what} {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
