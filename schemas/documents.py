"""Untrusted YAML/JSON text -> plain data, within size, nesting and alias-expansion limits.

Limits are enforced while the document is read, before any value is built, so a hostile
document (a billion laughs, ten thousand nested brackets) is refused in milliseconds.
Problems are reported as `Problem`s with the path `<document>`; `join_path` builds the paths
of problems found deeper in a definition.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, Event
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000
DOCUMENT = "<document>"
"""The path of problems that concern the whole document (size, syntax, top level)."""


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PipelineValidationError(Exception):
    """A definition with problems; `problems` lists all of them, in document order."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def document_error(message: str) -> PipelineValidationError:
    """An error with one problem about the whole document."""
    return PipelineValidationError([Problem(DOCUMENT, message)])


_PATH_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def join_path(path: str, *items: str | int) -> str:
    """`join_path("steps", 2, "env", "REGION")` -> `steps[2].env.REGION`."""
    for item in items:
        if isinstance(item, int):
            path += f"[{item}]"
        elif _PATH_KEY.fullmatch(item):
            path = f"{path}.{item}" if path else item
        else:
            path += f"[{json.dumps(item)}]"
    return path


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest candidate, or nothing."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


class _LimitExceeded(Exception):
    pass


def _at(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


class _BoundedLoading(Composer, SafeConstructor):
    """Refuses deep nesting and too many nodes while composing; collects duplicate keys."""

    # PyYAML composes recursively, so depth is bounded here, before the recursion gets deep.
    _depth = 0
    _composed = 0
    duplicate_keys: list[Problem]
    check_event: Callable[..., bool]  # provided by the parser half of the loader
    peek_event: Callable[[], Event]

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                where = _at(self.peek_event().start_mark)
                raise _LimitExceeded(f"document nests deeper than {MAX_DEPTH} levels{where}")
            if not self.check_event(AliasEvent):
                self._composed += 1
                if self._composed > MAX_NODES:
                    raise _LimitExceeded(f"document has more than {MAX_NODES} values")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, Any]] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or isinstance(key_node.value, list):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                message = f"duplicate key {key_node.value!r}{_at(key_node.start_mark)}"
                self.duplicate_keys.append(Problem(DOCUMENT, message))
            seen.add(key)
        return super().construct_mapping(node, deep)


class _PythonLoader(_BoundedLoading, yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys = []


_Loader: type[_BoundedLoading] = _PythonLoader
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _LibyamlLoader(_BoundedLoading, CParser, Resolver):
        """Events from libyaml (several times faster on large documents), nodes from Python."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self.duplicate_keys = []

    _Loader = _LibyamlLoader


def _node_children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_alias_expansion(root: Node) -> None:
    """Refuse aliases that expand past the limits (billion laughs) or into themselves.

    Aliases share node objects, so the expanded size is counted once per node (memoized).
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, expanded depth)
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = [sizes[id(child)] for child in _node_children(node)]
            count = 1 + sum(size for size, _ in children)
            depth = 1 + max((depth for _, depth in children), default=0)
            if count > MAX_NODES:
                raise _LimitExceeded(f"aliases expand the document to more than {MAX_NODES} values")
            if depth > MAX_DEPTH:
                raise _LimitExceeded(f"aliases expand the document deeper than {MAX_DEPTH} levels")
            sizes[key] = (count, depth)
            open_nodes.discard(key)
        elif key not in sizes:
            if key in open_nodes:
                raise _LimitExceeded(f"recursive alias{_at(node.start_mark)}")
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _node_children(node))


def _parse_yaml(text: str) -> Any:
    loader = _Loader(text)  # type: ignore[call-arg]
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_alias_expansion(root)
        data = loader.construct_document(root)
    except _LimitExceeded as exc:
        raise document_error(str(exc)) from None
    except yaml.MarkedYAMLError as exc:
        where = _at(exc.problem_mark or exc.context_mark)
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise document_error(f"invalid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise document_error(f"invalid YAML: {exc}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer too long to convert
        raise document_error(f"invalid value: {exc}") from None
    if loader.duplicate_keys:
        raise PipelineValidationError(loader.duplicate_keys)
    return data


def _parse_json(text: str) -> Any:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise document_error(
            f"invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    except RecursionError:
        raise document_error(f"document nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise document_error(f"invalid value: {exc}") from None
    if duplicates:
        raise PipelineValidationError(
            [Problem(DOCUMENT, f"duplicate key {k!r}") for k in duplicates]
        )
    return data


def data_limit_problem(data: Any) -> str | None:
    """Depth and size of already-parsed data (JSON bodies, or YAML after alias expansion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            return f"document has more than {MAX_NODES} values"
        if depth > MAX_DEPTH:
            return f"document nests deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((part, depth + 1) for pair in value.items() for part in pair)
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)
    return None


def parse_document(text: str, fmt: Literal["yaml", "json"] = "yaml") -> Any:
    """Parse YAML or JSON text within the size, nesting and alias-expansion limits."""
    # A str has at most as many characters as UTF-8 bytes: skip encoding huge inputs.
    if len(text) > MAX_DOCUMENT_BYTES or len(text.encode(errors="replace")) > MAX_DOCUMENT_BYTES:
        raise document_error(f"document is larger than 1 MiB ({MAX_DOCUMENT_BYTES} bytes)")
    data = _parse_json(text) if fmt == "json" else _parse_yaml(text)
    problem = data_limit_problem(data)
    if problem:
        raise document_error(problem)
    return data
