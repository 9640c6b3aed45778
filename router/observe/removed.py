"""What a reload took away: the versions the books kept per version must forget.

Health, admission and each version's metrics are kept per version and outlive a reload
that keeps the version. One that a reload removes must leave them too (issue 21: a removed
version kept exporting `model_router_upstream_up 1`, and its states stayed for ever).
Only the models a reload changed, and those it dropped, are looked at: on a table of
thousands of models a reload's own work is what it changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from router.config.model import Model, Table
from router.observe.health import grpc_key

Key = tuple[str, str, str]  # model, version, url: as health and admission keep a version


@dataclass(frozen=True, slots=True)
class Removed:
    keys: list[Key]  # gone, or at another url now: health and admission forget these
    versions: list[tuple[str, str]]  # (model, version) no longer in the table: metrics


class Removals:
    """Follows the table in force; told each new one, says what it removed.

    It keeps the models mapping of the table in force, not the table: the models a reload
    left alone are the same objects in both tables, so this holds nothing extra beyond the
    replaced models, and those only until the next swap's callbacks run.
    """

    def __init__(self, table: Table) -> None:
        self._models: Mapping[str, Model] = table.models

    def after(self, table: Table, changed: Collection[str]) -> Removed:
        """What `table`, put in force with the models `changed` (changed or added), removed
        from the table in force before it."""
        old, new = self._models, table.models
        self._models = new
        removed = Removed([], [])
        for name in [*changed, *(old.keys() - new.keys())]:
            before, after = old.get(name), new.get(name)
            if before is None:
                continue  # a model added
            for version in before.versions.values():
                now = after.versions.get(version.name) if after is not None else None
                if now is None:
                    removed.versions.append((name, version.name))
                if now is None or now.url != version.url:
                    removed.keys.append((name, version.name, version.url))
                if version.grpc_url and (now is None or now.grpc_url != version.grpc_url):
                    removed.keys.append(grpc_key(name, version.name, version.grpc_url))
        return removed
