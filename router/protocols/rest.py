"""The router's own protocol: `/models/<m>[/versions/<v>]/<rest>` and `/feedback/<m>`
(contract sections 3 and 4). The version gets `<rest>` and the query as sent."""

from __future__ import annotations

from router.protocols.base import Adapter, Call, RouteError
from router.routing.paths import PathError, route


class Rest(Adapter):
    name = "rest"

    def call(self, target: str) -> Call:
        try:
            where = route(target)
        except PathError as exc:
            raise RouteError(exc, exc.model, self) from None
        if where.kind == "feedback":
            return Call(self, where.model, local="feedback")
        return Call(self, where.model, where.pinned, where.target)


REST = Rest()
