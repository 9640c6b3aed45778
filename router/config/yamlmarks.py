"""YAML loading that remembers where each key was written.

PyYAML's composed nodes carry marks; this loader keeps the line of every mapping key and
sequence item on the constructed containers, and notes duplicate keys (which plain PyYAML
silently resolves to the last one), so that validation can say `FILE:LINE: key.path: ...`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml


class MarkedDict(dict[Any, Any]):
    """A mapping with `line` (its own), `key_lines` (each key's) and `duplicates`."""

    line: int
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int]]


class MarkedList(list[Any]):
    """A sequence with `line` (its own) and `item_lines` (each item's)."""

    line: int
    item_lines: list[int]


class MarkedInt(int):
    """A whole number with the text it was written as: YAML reads `017` as 15 and `0x1F`
    as 31, but a salt or a header value written that way means the text."""

    text: str


class _Loader(yaml.SafeLoader):
    pass


# libyaml's parser where PyYAML was built with it (the wheels are): it composes the same
# nodes, marks included, three times as fast as the pure-Python one. Its error messages
# say less (no offending character), so a file it refuses is read again by the Python
# parser for the message.
_Fast: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", _Loader)


class _FastLoader(_Fast):  # type: ignore[valid-type,misc]  # a SafeLoader, in C
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[tuple[Any, Any, Any], str] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        """The tag of each node, as PyYAML's resolver gives it, remembered for the
        document: libyaml parses in C, but calls this Python resolver (a regular
        expression per scalar) for every node, half of CSafeLoader's time on a big table,
        where the same names and values are written thousands of times."""
        key = (kind, value, implicit)
        tag = self._tags.get(key)
        if tag is None:
            tag = self._tags[key] = super().resolve(kind, value, implicit)
        return tag


_MERGE = "tag:yaml.org,2002:merge"


def _int(loader: _Loader, node: yaml.ScalarNode) -> MarkedInt:
    value = MarkedInt(loader.construct_yaml_int(node))
    value.text = node.value
    return value


def _mapping(loader: _Loader, node: yaml.MappingNode) -> MarkedDict:
    # Keys written in this mapping, as opposed to those a `<<` merge brings in: only two of
    # these can be duplicates; a written key overriding a merged one is what YAML intends.
    own = None
    if any(key_node.tag == _MERGE for key_node, _ in node.value):
        own = {id(key_node) for key_node, _ in node.value}
        loader.flatten_mapping(node)
    result = MarkedDict()
    result.line = node.start_mark.line + 1
    key_lines: dict[Any, int] = {}
    result.key_lines = key_lines
    result.duplicates = []
    written: set[Any] | dict[Any, int] = key_lines if own is None else set()
    for key_node, value_node in node.value:
        key = _key(_construct(loader, key_node))
        line = key_node.start_mark.line + 1
        if own is None or id(key_node) in own:
            if key in written:
                result.duplicates.append((key, line))
            if isinstance(written, set):
                written.add(key)
        result[key] = _construct(loader, value_node)
        key_lines[key] = line
    return result


def _key(key: object) -> object:
    """Whole-number keys are names too (`versions: {1: ...}`); other odd keys become text."""
    if isinstance(key, int) and not isinstance(key, bool):
        return getattr(key, "text", str(key))
    if not isinstance(key, str | float | bool) and key is not None:
        return str(key)
    return key


def _construct(loader: _Loader, node: yaml.Node) -> Any:
    """Construct a value; a value YAML cannot build (`2027-31-03`) is an error at its line."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot read {node.value!r}: {exc}", node.start_mark
        ) from exc


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> MarkedList:
    result = MarkedList(_construct(loader, child) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


for _class in (_Loader, _FastLoader):
    _class.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    _class.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
    _class.add_constructor("tag:yaml.org,2002:int", _int)


@contextmanager
def collector_off() -> Iterator[None]:
    """Build with the cyclic collector off: a parse (or an unpickling) builds hundreds of
    thousands of objects and no cycle, and each collection it sets off walks all it has
    built so far: on a table of 2,000 models with 20 rules each, 2.1 s of libyaml's 3.7 s."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def load(text: str) -> Any:
    """Parse YAML text; raises `yaml.YAMLError` (with `problem_mark`) on a syntax error."""
    try:
        return yaml.load(text, Loader=_FastLoader)  # SafeLoader subclasses: safe
    except yaml.YAMLError:
        if _FastLoader.__mro__[1] is _Loader:
            raise
        return yaml.load(text, Loader=_Loader)  # its own error, with the fuller message


def line_of(container: object, key: object) -> int | None:
    """The line where `key` (a mapping key or list index) was written, if known."""
    if isinstance(container, MarkedDict):
        return container.key_lines.get(key, container.line)
    if isinstance(container, MarkedList) and isinstance(key, int):
        if 0 <= key < len(container.item_lines):
            return container.item_lines[key]
        return container.line
    return None
