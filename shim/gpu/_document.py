"""Parse one CDI spec file's bytes into plain data, within fixed bounds.

A spec directory is shared by every container on the node, so one file in it
must not be able to stall or break the Create of containers that never use it.
The bounds here make every parse cheap or a clean ``CdiError``:

- size: the caller reads at most ``MAX_BYTES`` (NVIDIA's generated spec for an
  8-GPU host is tens of KiB);
- nesting: at most ``MAX_DEPTH`` levels, checked while YAML is composed and
  after JSON is decoded, so neither parser recurses into a RecursionError;
- YAML aliases: an alias is counted at the size of what it stands for, and the
  whole document may stand for at most ``MAX_NODES`` nodes. PyYAML shares
  aliased objects instead of copying them, so an alias bomb ("billion laughs")
  loads small and explodes only later, in whatever walks or prints it (our
  own error messages included); counting the expanded size refuses it up
  front. An alias to a node that is still open (a self-containing document)
  is refused as well.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from shim.gpu._bound import clip
from shim.gpu.cdi import CdiError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "parse_document"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 200_000


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, composing within MAX_DEPTH and MAX_NODES."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # id(node) -> how many nodes it stands for once aliases are expanded.
        # Nodes stay referenced by the document while it is composed, so ids
        # are not reused before the loader is dropped.
        self._weights: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor  # type: ignore[no-untyped-call]
            target = self.anchors.get(anchor)
            if target is not None and id(target) not in self._weights:
                raise CdiError(f"YAML alias *{clip(str(anchor), 40)} refers to a node that "
                               "contains it")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise CdiError(f"nested deeper than {MAX_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None and id(node) not in self._weights:
            self._weights[id(node)] = self._weigh(node)
        return node

    def _weigh(self, node: Node) -> int:
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        weight = 1 + sum(self._weights.get(id(child), 1) for child in children)
        if weight > MAX_NODES:
            raise CdiError(
                f"stands for more than {MAX_NODES} values once YAML aliases are expanded"
            )
        return weight


def _check_depth(doc: Any) -> None:
    """Iterative, so a deep document cannot exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CdiError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_document(data: bytes, *, json_file: bool) -> Any:
    """The document in ``data`` (JSON or YAML); CdiError when it is out of bounds.

    Malformed input raises the parser's own error (ValueError, YAMLError),
    which the caller records with the file's name.
    """
    if len(data) > MAX_BYTES:
        raise CdiError(f"larger than {MAX_BYTES} bytes")
    text = data.decode()
    if json_file:
        try:
            doc = json.loads(text)
        except RecursionError:
            raise CdiError(f"nested deeper than {MAX_DEPTH} levels") from None
        _check_depth(doc)
        return doc
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
