"""Three defects of `model-router report` found from outside (issue 23, contract sections 7
and 14): JSON numbers rounded to 3 decimals, the default baseline looked up only in the very
last table of the log, and an empty log reported as `... from 1 file, None to None`.

Real logs are written to files and read by the real CLI (or `make_report`).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.cli import main
from router.report import make_report, render
from tests.support import logs


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", *args, "--format", "json"]) == 0
    data: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return data


# Full precision -------------------------------------------------------------------------


def regression_log(path: Path) -> Path:
    """A regression model on a small scale: v1 misses by 0.0123 on every labelled request
    (MAE 0.0123, RMSE 0.0123), v2 by 0.25 or 0.375 (MAE 0.3125). Every latency of v1 is
    10.123456789 ms, of v2 20.5 ms. Users: 4 in v1, 2 in v2, each with 2 or 4 requests; the split is
    33.33 / 66.67, so the sample-ratio check expects 1.9998 of the 6 users in v1."""
    lines: list[Any] = [logs.config_loaded("cfg1", {"v1": 33.33, "v2": 66.67})]
    misses = {"v1": [0.0123] * 8, "v2": [0.25, 0.375] * 4}
    i = 0
    for version, errors in misses.items():
        for k, miss in enumerate(errors):
            user = f"{version}-user-{k % (4 if version == 'v1' else 2)}"
            latency = 10.123456789 if version == "v1" else 20.5
            lines.append(logs.request(i, version=version, user=user, prediction=0.0,
                                      latency_ms=latency))  # fmt: skip
            lines.append(logs.feedback(f"req-{i}", miss if k % 2 else -miss))
            i += 1
    return logs.write(path, lines)


def test_json_numbers_carry_every_digit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(regression_log(tmp_path / "reg.jsonl"))
    model = report_json(capsys, path)["models"]["cancer"]
    assert model["labels"] == "real"
    v1, v2 = model["versions"]["v1"], model["versions"]["v2"]
    assert v1["mae"] == 0.0123  # 0.012 when rounded to 3 decimals
    assert v1["rmse"] == pytest.approx(0.0123, rel=1e-15)
    assert v2["mae"] == 0.3125  # 0.312 when rounded
    assert v2["rmse"] == math.sqrt((0.25**2 + 0.375**2) / 2)
    assert v1["latency_ms"] == {"p50": 10.123456789, "p95": 10.123456789, "p99": 10.123456789}
    vs = v2["vs_baseline"]
    assert vs["mae_diff"] == pytest.approx(0.3125 - 0.0123, rel=1e-12)
    assert vs["latency_ms"]["p50_diff"] == 20.5 - 10.123456789
    # The sample-ratio check's expected users of 6, against 33.33/66.67 (not 2.0 and 4.0).
    assert model["srm"]["expected"]["v1"] == pytest.approx(1.9998, rel=1e-12)
    assert model["srm"]["expected"]["v2"] == pytest.approx(4.0002, rel=1e-12)
    # The histogram's bin edges are 10 ** (k / 10) exactly, not rounded to 4 decimals.
    bins = model["latency_histogram"]["versions"]
    assert bins == {"v1": [[10**1.0, 8]], "v2": [[10**1.3, 8]]}  # 19.952623149688797


def test_text_and_html_still_round_for_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = make_report([str(regression_log(tmp_path / "reg.jsonl"))])
    text = render(report, "text")
    assert "10.123456789" not in text
    assert "0.3125" in text
    assert "0.0123" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("v1 "))
    assert "10.1" in row.split()
    assert "v2 vs v1: mean absolute error +0.3002 " in text
    assert "split in force v1 33.3%, v2 66.7%" in text
    page = render(report, "html")
    assert "10.123456789" not in page
    assert "<td>10.1</td>" in page
    assert "0.3125" in page


def test_json_is_byte_identical_from_run_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Heavy users, a ramp, labels and shadow copies: every digit is in the JSON now, so
    any sum whose order depends on threads would show in the last one. (The labels are
    categorical: the per-user sums of real-valued errors are users.py's, whose SQL the
    Spark engine's work makes thread-independent.)"""
    rng = random.Random(7)
    split, ramp = {"v1": 90.0, "v2": 10.0}, {"v1": 50.0, "v2": 50.0}
    lines: list[Any] = [logs.config_loaded("cfg1", split)]
    for i in range(20_000):
        config, table = ("cfg1", split) if i < 10_000 else ("cfg2", ramp)
        if i == 10_000:
            lines.append(logs.config_loaded("cfg2", ramp))
        user = f"user-{int(rng.paretovariate(1.2)) % 300}"  # a few users send most requests
        version = "v1" if rng.random() * 100 < table["v1"] else "v2"
        lines.append(logs.request(i, version=version, user=user, config=config,
                                  latency_ms=rng.lognormvariate(2.3, 0.4),
                                  prediction=rng.randrange(2)))  # fmt: skip
        if i % 3 == 0:
            lines.append(logs.feedback(f"req-{i}", rng.randrange(2)))
        if i % 7 == 0:
            lines.append(logs.shadow(i, primary=version, user=user, prediction=rng.randrange(2),
                                     upstream_ms=rng.lognormvariate(2.5, 0.4)))  # fmt: skip
    path = logs.write(tmp_path / "big.jsonl", lines)
    out = tmp_path / "out.json"
    runs = set()
    for _ in range(3):
        assert main(["report", str(path), "--format", "json", "-o", str(out)]) == 0
        runs.add(out.read_bytes())
    assert len(runs) == 1
    cancer = orjson.loads(runs.pop())["models"]["cancer"]
    assert cancer["versions"]["v2"]["accuracy_ci95"] is not None
    assert cancer["shadow"]["v3"]["accuracy_diff_ci95"] is not None


# The default baseline -------------------------------------------------------------------


def router_log(
    model: str, split: dict[str, float], shares: dict[str, int], ts: str, digest: str
) -> list[Any]:
    """One router's log: its table (naming only its own model) and its traffic, where the
    version listed first in the split gets the smaller share."""
    table = {**logs.config_loaded(digest, split, model=model), "ts": ts}
    lines: list[Any] = [table]
    i = 0
    for version, count in shares.items():
        for _ in range(count):
            lines.append(logs.request(i, version=version, user=f"{model}-{i}", model=model,
                                      config=digest))  # fmt: skip
            i += 1
    return lines


@pytest.mark.parametrize(
    ("cancer_ts", "books_ts"),
    [("01:00", "02:00"), ("02:00", "01:00"), ("01:00", "01:00")],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_each_model_takes_its_baseline_from_the_last_table_that_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cancer_ts: str, books_ts: str, seed: int
) -> None:
    """Two routers serving different models, their logs read together: whichever table
    came last, each model's baseline is the first version of its own split, not the
    version with the largest share; the same with the lines and files in any order."""
    day = "2026-11-25T{}:00.000Z"
    cancer = router_log("cancer", {"v1": 10, "v2": 90}, {"v1": 30, "v2": 270},
                        day.format(cancer_ts), "cfgA")  # fmt: skip
    books = router_log("books", {"w1": 20, "w2": 80}, {"w1": 40, "w2": 160},
                       day.format(books_ts), "cfgB")  # fmt: skip
    rng = random.Random(seed)
    rng.shuffle(cancer)  # the traffic in another order (a table after its records, too)
    rng.shuffle(books)
    a = str(logs.write(tmp_path / "a.jsonl", cancer))
    b = str(logs.write(tmp_path / "b.jsonl.gz", books))
    for files in ([a, b], [b, a]):
        models = report_json(capsys, *files)["models"]
        assert models["cancer"]["baseline"] == "v1"
        assert models["books"]["baseline"] == "w1"
        assert models["cancer"]["versions"]["v2"]["vs_baseline"] is not None


def test_a_later_table_naming_the_model_moves_its_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reload that lists v2 first makes v2 the baseline, though another router's table
    (naming another model) comes after it; with `--baseline`, the option wins."""
    first = router_log("cancer", {"v1": 50, "v2": 50}, {"v1": 100, "v2": 100},
                       "2026-11-25T01:00:00.000Z", "cfg1")  # fmt: skip
    reload = {**logs.config_loaded("cfg2", {"v2": 50, "v1": 50}), "ts": "2026-11-25T02:00:00.000Z"}
    other = router_log("books", {"w1": 50, "w2": 50}, {"w1": 5, "w2": 5},
                       "2026-11-25T03:00:00.000Z", "cfgB")  # fmt: skip
    path = str(logs.write(tmp_path / "all.jsonl", [*first, reload, *other]))
    assert report_json(capsys, path)["models"]["cancer"]["baseline"] == "v2"
    assert report_json(capsys, path, "--baseline", "v1")["models"]["cancer"]["baseline"] == "v1"


def test_tables_at_the_same_time_give_the_same_baseline_in_any_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two replicas loading different tables for one model in the same millisecond: the
    report picks one of them, the same one whatever the order of the files."""
    ts = "2026-11-25T01:00:00.000Z"
    one = router_log("cancer", {"v1": 50, "v2": 50}, {"v1": 100, "v2": 100}, ts, "cfg1")
    two = [{**logs.config_loaded("cfg2", {"v2": 50, "v1": 50}), "ts": ts}]
    a = str(logs.write(tmp_path / "a.jsonl", one))
    b = str(logs.write(tmp_path / "b.jsonl", two))
    found = {report_json(capsys, *files)["models"]["cancer"]["baseline"] for files in
             ([a, b], [b, a])}  # fmt: skip
    assert found == {"v2"}  # the larger digest, cfg2


# The empty log --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [[], [logs.config_loaded("cfg1", {"v1": 100})], [b"not json"]],
    ids=["empty", "a table only", "a bad line only"],
)
def test_a_log_without_requests_reads_sensibly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[Any]
) -> None:
    path = str(logs.write(tmp_path / "routing.jsonl", lines))
    assert main(["report", path]) == 0
    text = capsys.readouterr().out
    assert text.startswith("model-router report: 0 requests from 1 file\n")
    assert "None" not in text
    assert "nothing to compare" in text
    data = report_json(capsys, path)
    assert (data["records"], data["models"], data["first"], data["last"]) == (0, {}, None, None)
    assert main(["report", path, "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert f'<p class="meta">0 requests from 1 file ({path})' in page
    assert "None" not in page
    assert " - to -" not in page


# Sparse records ---------------------------------------------------------------------------


def test_request_records_missing_fields_are_counted_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records from a tool or an older router that lack `outcome`, `latency_ms` and labels:
    counted as requests with no error (a null is not an error), never a crash or a null
    count. DuckDB's count_if of nothing but nulls is null, which broke this."""
    lines: list[Any] = [logs.config_loaded("cfg1", {"v1": 50, "v2": 50})]
    for i in range(6):
        version = "v1" if i % 2 else "v2"
        lines.append(logs.request(i, version=version, user=f"u{i}"))
    lines.append({"event": "request", "ts": "2026-11-25T10:00:00Z", "request_id": "bare",
                  "model": "cancer", "assigned_version": "v1", "assigned_by": "split",
                  "user": "bare-user", "config": "cfg1"})  # fmt: skip
    lines.append({"event": "request", "ts": "2026-11-25T10:00:01Z", "model": "other"})
    model = report_json(capsys, str(logs.write(tmp_path / "sparse.jsonl", lines)))["models"]
    v1 = model["cancer"]["versions"]["v1"]
    assert v1["requests"] == 4
    assert v1["error_rate"] == 0
    assert model["other"]["versions"] == {}
    rows = model["other"]["by_assigned_by"]
    assert [(r["requests"], r["error_rate"]) for r in rows] == [(1, 0)]


def test_a_report_past_its_memory_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODEL_ROUTER_REPORT_MEMORY is DuckDB's limit (512MB by default): a log that needs more
    than it is a one-line error and exit 2, never a traceback."""
    path = regression_log(tmp_path / "reg.jsonl")
    monkeypatch.setenv("MODEL_ROUTER_REPORT_MEMORY", "2MB")
    done = subprocess.run(
        [sys.executable, "-m", "router", "report", str(path), "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "Out of Memory" in line
    assert done.stdout == ""
