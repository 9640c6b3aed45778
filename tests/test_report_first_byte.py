"""The report's time to first byte (contract section 11): p50 and p95 per version and their
differences against the baseline, with the user as the unit, as for latency; shown only
when a version has first_byte_ms values (a version that streams)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from router.cli import main
from router.report import make_report, render
from tests.support import logs

SPLIT = {"v1": 50.0, "v2": 50.0}
# The rest of the answer after its first byte: v2 streams its first token later but ends
# sooner, so a first-byte difference that copied the latency's would show.
TAIL_MS = {"v1": 100.0, "v2": 60.0}


def first_byte_log(
    path: Path,
    medians: dict[str, float],
    *,
    seed: int = 1,
    light: int = 300,
    heavy: int = 0,
    heavy_requests: int = 200,
    user_sd: float = 0.3,
) -> Path:
    """Users alternate between v1 and v2; each has a first-byte level of their own
    (log-normal, sd `user_sd` in log) around their version's median, light users send 1-3
    requests and `heavy` users an arm `heavy_requests` each. A version missing from
    `medians` writes no first_byte_ms (it does not stream); the latency is the first byte
    and the version's TAIL_MS."""
    rng = random.Random(seed)
    records: list[Any] = [logs.config_loaded("cfg1", SPLIT)]
    i = 0
    for k in range(2 * (light + heavy)):
        version = ("v1", "v2")[k % 2]
        level = rng.lognormvariate(0.0, user_sd)
        for _ in range(heavy_requests if k < 2 * heavy else rng.randint(1, 3)):
            median = medians.get(version)
            first = None
            if median is not None:
                first = round(median * level * rng.lognormvariate(0.0, 0.2), 3)
            latency = round((first or 20.0) + TAIL_MS[version], 3)
            records.append(logs.request(i, version=version, user=f"u{k}", latency_ms=latency,
                                        first_byte_ms=first))  # fmt: skip
            i += 1
    return logs.write(path, records)


def report_json(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    assert main(["report", str(path), "--format", "json"]) == 0
    data: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return data


def test_a_later_first_byte_is_a_positive_difference_whose_interval_excludes_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = first_byte_log(tmp_path / "routing.jsonl", {"v1": 40.0, "v2": 60.0})
    versions = report_json(capsys, path)["models"]["cancer"]["versions"]
    v1, v2 = versions["v1"], versions["v2"]
    assert set(v1["first_byte_ms"]) == set(v2["first_byte_ms"]) == {"p50", "p95"}
    assert v1["first_byte_ms"]["p50"] < v1["first_byte_ms"]["p95"]
    assert v1["vs_baseline"] is None
    first = v2["vs_baseline"]["first_byte_ms"]
    assert set(first) == {"p50_diff", "p50_ci95", "p95_diff", "p95_ci95"}
    # The point estimate is the difference of the quantiles the table shows.
    assert first["p50_diff"] == v2["first_byte_ms"]["p50"] - v1["first_byte_ms"]["p50"]
    assert first["p95_diff"] == v2["first_byte_ms"]["p95"] - v1["first_byte_ms"]["p95"]
    assert 0 < first["p50_ci95"][0] < first["p50_diff"] < first["p50_ci95"][1]
    assert 0 < first["p95_ci95"][0] < first["p95_diff"] < first["p95_ci95"][1]
    # Latency keeps its own numbers beside it (v2 ends sooner).
    assert v2["vs_baseline"]["latency_ms"]["p50_diff"] < 0

    assert main(["report", str(path)]) == 0
    text = capsys.readouterr().out
    assert "first byte p50 ms" in text
    lines = [line.strip() for line in text.splitlines() if "v2 vs v1: first byte" in line]
    assert len(lines) == 1
    assert lines[0].startswith("v2 vs v1: first byte p50 +")
    assert "(n.s.)" not in lines[0]
    assert "first byte p50 ms" in render(make_report([str(path)]), "html")


def test_an_a_a_first_byte_interval_covers_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = first_byte_log(tmp_path / "routing.jsonl", {"v1": 50.0, "v2": 50.0}, seed=3)
    first = report_json(capsys, path)["models"]["cancer"]["versions"]["v2"]["vs_baseline"][
        "first_byte_ms"
    ]
    for q in ("p50", "p95"):
        low, high = first[f"{q}_ci95"]
        assert low < 0 < high, (q, first)


def request_level_width(values: list[np.ndarray], q: float) -> float:
    """The width of the 95% interval of a quantile difference that took each request as
    independent (the binomial share q +- 1.96 sqrt(q (1 - q) / n), mapped through the
    empirical quantile function): what the user as the unit must not shrink to."""
    variance = 0.0
    for x in values:
        half = 1.96 * math.sqrt(q * (1 - q) / x.size)
        low, high = np.quantile(x, [max(0.0, q - half), min(1.0, q + half)])
        variance += ((high - low) / (2 * 1.96)) ** 2
    return 2 * 1.96 * math.sqrt(variance)


def test_heavy_users_do_not_make_the_first_byte_interval_narrow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A/A where 20 heavy users an arm send most of the requests, each with a first-byte
    level of their own: their requests move together, so the interval must be as wide as
    the users can tell, far wider than if each request were independent."""
    path = first_byte_log(tmp_path / "routing.jsonl", {"v1": 50.0, "v2": 50.0}, seed=2,
                          light=200, heavy=20, user_sd=0.6)  # fmt: skip
    first = report_json(capsys, path)["models"]["cancer"]["versions"]["v2"]["vs_baseline"][
        "first_byte_ms"
    ]
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    values = [
        np.array([r["first_byte_ms"] for r in records if r.get("assigned_version") == v])
        for v in ("v1", "v2")
    ]
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        low, high = first[f"{name}_ci95"]
        assert low < 0 < high, (name, first)
        assert high - low > 3 * request_level_width(values, q), name


def test_a_log_without_first_byte_gives_null_and_the_same_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records: list[Any] = [logs.config_loaded("cfg1", {"v1": 90.0, "v2": 10.0})]
    records += logs.split_traffic(3000, {"v1": 90.0, "v2": 10.0},
                                  error_rates={"v1": 0.01, "v2": 0.03})  # fmt: skip
    old = logs.write(tmp_path / "old.jsonl", records)
    nulls = logs.write(tmp_path / "nulls.jsonl",
                       [r | {"first_byte_ms": None} if r["event"] == "request" else r
                        for r in records])  # fmt: skip
    model = report_json(capsys, old)["models"]["cancer"]
    for version in model["versions"].values():
        assert version["first_byte_ms"] is None
    assert model["versions"]["v2"]["vs_baseline"]["first_byte_ms"] is None
    texts = []
    for path in (old, nulls):
        assert main(["report", str(path)]) == 0
        texts.append(capsys.readouterr().out.replace(path.name, "LOG"))
    assert texts[0] == texts[1]
    assert "first byte" not in texts[0]
    assert "first byte" not in render(make_report([str(old)]), "html")


def test_a_version_that_does_not_stream_has_null_and_no_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = first_byte_log(tmp_path / "routing.jsonl", {"v2": 60.0})
    versions = report_json(capsys, path)["models"]["cancer"]["versions"]
    assert versions["v1"]["first_byte_ms"] is None
    assert versions["v2"]["first_byte_ms"]["p50"] == pytest.approx(60.0, rel=0.2)
    assert versions["v2"]["vs_baseline"]["first_byte_ms"] is None
    assert main(["report", str(path)]) == 0
    text = capsys.readouterr().out
    assert "first byte p50 ms" in text  # the column, with `-` for v1
    assert "vs v1: first byte" not in text


def test_first_byte_json_is_byte_identical_run_to_run(tmp_path: Path) -> None:
    path = str(first_byte_log(tmp_path / "routing.jsonl", {"v1": 40.0, "v2": 45.0}, heavy=5))
    first, second = (render(make_report([path]), "json") for _ in range(2))
    assert '"first_byte_ms": {' in first
    assert first == second
