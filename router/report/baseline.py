"""The default baseline (contract sections 7 and 14): without `--baseline`, a model's
baseline is the first version of the split in the last table of the log that names it (by
convention the incumbent is listed first).

"The last table that names it", not the last table of all: the logs of two routers that
serve different models, read together, hold tables that each name only their own models,
and whichever came last would leave the other router's models without a split.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.report.engine import Engine


def default_baseline(split: dict[str, Any], versions: dict[str, dict[str, Any]]) -> str | None:
    """The first version of `split` (the last table that names the model: by convention
    the incumbent is listed first) that has randomised traffic; without one, the version
    with the largest share."""
    listed = [name for name in split if name in versions]
    if listed:
        return str(listed[0])
    if not versions:
        return None
    return max(versions, key=lambda v: (versions[v]["requests"], v))


def last_splits(con: Engine) -> dict[str, dict[str, Any]]:
    """model -> the split of the last `config_loaded` that names the model. "Last" is by
    `ts`; a tie (replicas loading tables in the same millisecond) goes to the larger
    digest, then the larger text, so the answer never depends on the order of the scan
    (parallel, with no line order) or of the files."""
    rows = con.execute(
        "SELECT models FROM configs WHERE models IS NOT NULL "
        "ORDER BY ts NULLS FIRST, config NULLS FIRST, models"
    ).fetchall()
    last: dict[str, dict[str, Any]] = {}
    for (models,) in rows:
        parsed = orjson.loads(models)
        if not isinstance(parsed, dict):
            continue
        for name, entry in parsed.items():
            split = entry.get("split") if isinstance(entry, dict) else None
            if isinstance(split, dict):
                last[name] = split
    return last
