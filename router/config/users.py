"""Where a model's user id comes from (`user_id`), and what happens to a request without
one (`when_no_user_id`), contract sections 2, 3 and 11."""

from __future__ import annotations

from typing import Any

from router.config.model import USER_ID_KINDS, Model, UserIdSource, Version, default_of
from router.config.versions import VersionsReader


class UsersReader(VersionsReader):
    def user_id_sources(self, section: dict[Any, Any], path: str) -> tuple[UserIdSource, ...]:
        default: tuple[UserIdSource, ...] = default_of(Model, "user_id")
        if "user_id" not in section:
            return default
        found = section["user_id"]
        where = f"{path}.user_id"
        if not isinstance(found, list) or not found:
            self.fail(
                section,
                "user_id",
                where,
                "must be a non-empty list like [{header: X-User-ID}, {cookie: uid}]",
            )
            return default
        sources = []
        for i, item in enumerate(found):
            if not isinstance(item, dict) or len(item) != 1:
                self.fail(
                    found,
                    i,
                    f"{where}[{i}]",
                    "must be one of {header: NAME}, {cookie: NAME}, {query: NAME}, {body: NAME}",
                )
                continue
            (kind,) = item
            if kind not in USER_ID_KINDS:
                self.fail(
                    found,
                    i,
                    f"{where}[{i}]",
                    f"unknown source '{kind}'; expected one of: {', '.join(USER_ID_KINDS)}",
                )
            elif (value := self.string(item, kind, f"{where}[{i}]")) is not None:
                sources.append(UserIdSource(kind, value))
        return tuple(sources) or default

    def when_no_user_id(
        self, section: dict[Any, Any], path: str, versions: dict[str, Version]
    ) -> str:
        when = self.string(section, "when_no_user_id", path) or default_of(Model, "when_no_user_id")
        if when not in ("random", "reject"):
            self.version_ref(section, "when_no_user_id", path, versions, what="when_no_user_id")
        return when
