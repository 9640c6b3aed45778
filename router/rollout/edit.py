"""Rewriting a routing table in place: a model's split numbers and its rollout `state`, and
not one other byte (comments, key order, quoting, layout all stay).

The YAML is composed (not loaded) so that each value keeps its exact place in the text;
the new numbers are written over the old ones, from the end of the file back, and `state`
is added as the rollout block's first key (or its value replaced). The result is checked:
it must validate, with the split and state intended.
"""

from __future__ import annotations

from decimal import Decimal

import yaml

from router.config.model import Table
from router.config.reader import fmt
from router.config.validate import parse_text


class EditError(Exception):
    """The table cannot be edited safely (a value in an alias, a layout not understood)."""


def edit_table(
    text: str, model: str, split: dict[str, Decimal], state: str | None, source: str
) -> tuple[str, Table]:
    """`text` with the model's split numbers set to `split` (and `state` written into its
    rollout block), and the table it parses to. Raises EditError or ConfigError."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        raise EditError("the table file is empty")
    entry = _child(_child(root, "models"), model)
    changes: list[tuple[int, int, str]] = []
    split_node = _child(entry, "split")
    for key, value in _items(split_node):
        if key.value not in split:
            raise EditError(f"models.{model}.split.{key.value}: not in the new split")
        number = fmt(split[key.value])
        if _as_decimal(value.value) != split[key.value]:
            changes.append((value.start_mark.index, value.end_mark.index, number))
    if state is not None:
        changes.append(_state(text, _child(entry, "rollout"), state))
    if len({start for start, _, _ in changes}) != len(changes):
        raise EditError(f"models.{model}: two values share a place (a YAML alias?)")
    out = text
    for start, end, new in sorted(changes, reverse=True):
        out = out[:start] + new + out[end:]
    table = parse_text(out, source)
    written = table.models[model]
    now = written.rollout.state if written.rollout is not None else None
    if dict(written.split.shares()) != split or (state is not None and now != state):
        raise EditError(f"models.{model}: the edited table does not say what was meant")
    return out, table


def _state(text: str, rollout: yaml.Node, state: str) -> tuple[int, int, str]:
    """Where `state: <state>` goes: over an existing state's value, or as the first key."""
    for key, value in _items(rollout):
        if key.value == "state":
            return value.start_mark.index, value.end_mark.index, state
    assert isinstance(rollout, yaml.MappingNode)
    if rollout.flow_style:  # {candidate: v2, ...}: right after the brace
        at = rollout.start_mark.index + 1
        return at, at, f"state: {state}, "
    first = rollout.value[0][0]
    line_start = text.rfind("\n", 0, first.start_mark.index) + 1
    indent = " " * first.start_mark.column
    return line_start, line_start, f"{indent}state: {state}\n"


def _child(node: yaml.Node, key: str) -> yaml.Node:
    for k, v in _items(node):
        if k.value == key:
            return v
    raise EditError(f"no '{key}' where it was expected")


def _items(node: yaml.Node) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise EditError("a mapping was expected")
    return [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]


def _as_decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except ArithmeticError:
        return None
