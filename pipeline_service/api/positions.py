"""Line and column of a definition path (`steps[2].depends_on[0]`) in YAML text, so the
editor can underline what a problem is about."""

from __future__ import annotations

import json
import re

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

_PART = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def _parts(path: str) -> list[str | int] | None:
    parts: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = _PART.match(path, pos)
        if match is None:
            return None
        name, index, quoted = match.groups()
        parts.append(int(index) if index is not None else name or json.loads(quoted))
        pos = match.end()
    return parts


def _child(node: Node, part: str | int) -> Node | None:
    if isinstance(node, MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if key.value == part:
                return value  # type: ignore[no-any-return]
    if isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None


def locate(text: str, path: str) -> tuple[int, int] | None:
    """(line, column), 1-based, of the deepest node on `path`; None if the text has no node
    for even its first part. Call only on text that parsed within the loader's limits."""
    parts = _parts(path)
    if not parts:
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    found: Node | None = None
    while node is not None and parts:
        node = _child(node, parts.pop(0))
        if node is not None:
            found = node
    if found is None:
        return None
    return found.start_mark.line + 1, found.start_mark.column + 1
