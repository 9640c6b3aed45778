"""The `shadow` block of a model (contract section 8): which version gets copies, how
many of them, and how many may be in flight at once."""

from __future__ import annotations

from typing import Any

from router.config.model import Shadow, Split, Version, default_of, yaml_keys
from router.config.reader import is_number, join, show
from router.config.versions import VersionsReader

_SHADOW = yaml_keys(Shadow)


class ShadowReader(VersionsReader):
    def shadow(
        self,
        section: dict[Any, Any],
        path: str,
        versions: dict[str, Version],
        split: Split | None,
    ) -> Shadow | None:
        """The shadow: a version that exists and is active, with no share of the split
        (its answers never reach a client), copying `percent` in (0, 100]."""
        if "shadow" not in section:
            return None
        where = f"{path}.shadow"
        found = self.mapping(section, "shadow", where, _SHADOW)
        if found is None:
            return None
        name = self.version_ref(found, "version", where, versions, what="a shadow")
        if name is not None and versions[name].state != "active":
            state = versions[name].state
            self.fail(found, "version", join(where, "version"),
                      f"version '{name}' is {state}; a shadow must be active")  # fmt: skip
            name = None
        if name is not None and split is not None and dict(split.shares()).get(name, 0) > 0:
            self.fail(found, "version", join(where, "version"),
                      f"version '{name}' has a share of the split; a shadow answers no "
                      "client, so give it 0 or leave it out of the split")  # fmt: skip
            name = None
        percent = found.get("percent", default_of(Shadow, "percent"))
        if not is_number(percent) or not 0 < percent <= 100:
            self.fail(found, "percent", join(where, "percent"),
                      f"must be a number above 0 and at most 100, not {show(percent)}")  # fmt: skip
            percent = None
        limit = self.count(found, "max_in_flight", where, default_of(Shadow, "max_in_flight"))
        if name is None or percent is None or limit is None:
            return None
        return Shadow(name, float(percent), limit)
