"""`model-router logs compact` (contract section 14): routing logs rewritten as Parquet by day,
every record read back as it was, and `report` and `rollout` reading the directory as they
read the JSON lines."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.cli import main
from router.observe.parquet import FIELDS, files_in, read_records
from router.rollout.controller import Controller
from tests.support import logs

DAYS = ("2026-11-25", "2026-11-26", "2026-11-27")
GARBAGE = [
    b"not json at all",
    b'{"event": "request", "ts": "2026-11-2',
    b"[1, 2]",
    b'"text"',
    b"42",
]
# Fields no version of the router writes, of every JSON type: they must come back as written.
UNKNOWN: dict[str, Any] = {
    "region": "eu-west", "tags": ["a", 1, 2.5, None], "nested": {"x": None, "y": [True]},
    "ratio": 0.3125, "n": 7, "flag": False, "maybe": None, "huge": 2**63 + 5,
}  # fmt: skip


def _request(rng: random.Random, i: int, day: str, model: str, config: str) -> dict[str, Any]:
    """A randomised request of `model` (cancer: classes; books: real-valued predictions)."""
    user = f"u{rng.randrange(400)}"
    candidate = rng.random() < (0.3 if config == "ramp" else 0.1)
    version = "v2" if candidate else "v1"
    outcome = "server_error" if rng.random() < (0.06 if candidate else 0.02) else "ok"
    latency = round(rng.lognormvariate(2.3, 0.4), 3)
    prediction: Any = rng.randrange(2) if model == "cancer" else round(rng.random(), 4)
    record = {
        **logs.request(i, version=version, user=user, outcome=outcome, latency_ms=latency,
                       model=model, config=config, prediction=prediction),
        "ts": f"{day}T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}.{i % 1000:03d}Z",
        "request_id": f"{model}-{day}-{i}", "protocol": "rest", "trace_id": f"{i:032x}",
        "first_byte_ms": None if outcome != "ok" else round(latency / 3, 3),
    }  # fmt: skip
    if rng.random() < 0.05:
        record["assigned_by"] = "pinned"
    if i % 7 == 0:
        record["grpc_status"] = "OK"
    if i % 11 == 0:
        record |= UNKNOWN
    return record


def _feedback(rng: random.Random, request: dict[str, Any], tie: bool) -> list[dict[str, Any]]:
    """Labels for `request`; with `tie`, a wrong one then the right one at the same time, so
    that only "on a tie, the later line" (section 7) gives the right label."""
    prediction = request["response"]["prediction"]
    if request["model"] == "cancer":
        right: Any = prediction if rng.random() < 0.9 else 1 - prediction
        right = float(right) if rng.random() < 0.2 else right  # 1.0 is 1
        wrong: Any = 1 - int(right)
    else:
        right, wrong = round(prediction + rng.gauss(0, 0.1), 4), 99.5
    fb = logs.feedback(request["request_id"], right, model=request["model"])
    fb["ts"] = request["ts"][:11] + "23:59:59.000Z"
    return [{**fb, "label": wrong}, fb] if tie else [fb]


def _shadow(i: int, request: dict[str, Any]) -> dict[str, Any]:
    dropped = i % 13 == 0
    record = logs.shadow(i, primary=request["assigned_version"], user=request["user"],
                         prediction=request["response"]["prediction"] ^ (i % 5 == 0),
                         outcome="dropped" if dropped else "ok",
                         drop_reason="overloaded" if dropped else None,
                         agree=None if dropped else i % 5 != 0)  # fmt: skip
    return {**record, "ts": request["ts"], "request_id": request["request_id"],
            "trace_id": request["trace_id"]}  # fmt: skip


def _day(rng: random.Random, day: str, config: str, split: dict[str, float]) -> list[Any]:
    pid = "worker-1" if day == DAYS[0] else 41  # a known field of an unexpected type first
    loaded = {**logs.config_loaded(config, split), "ts": f"{day}T00:00:00.000Z",
              "source": "config/routes.yaml", "pid": pid}  # fmt: skip
    loaded["models"]["books"] = {"split": {"v1": 50, "v2": 50}}
    lines: list[Any] = [loaded]
    for i in range(900):
        model = "cancer" if i % 3 else "books"
        request = _request(rng, i, day, model, config)
        lines.append(request)
        if model == "cancer" and request["assigned_version"] == "v1" and i % 4 == 0:
            lines.append(_shadow(i, request))
        if request["outcome"] == "ok" and rng.random() < 0.6:
            lines += _feedback(rng, request, tie=i % 10 == 0)
        if i % 150 == 0:
            lines.insert(rng.randrange(1, len(lines)), GARBAGE[i // 150 % len(GARBAGE)])
    return lines


def fleet_logs(directory: Path) -> list[Path]:
    """Three days: a plain file for the first two (a ramp of cancer's v2 from 10% to 30% on
    the second), a .gz for the third; shadow copies, labels of both kinds and ties, fields
    this version does not know, blank and garbage lines."""
    rng = random.Random(23)
    first = _day(rng, DAYS[0], "base", {"v1": 90, "v2": 10})
    second = _day(rng, DAYS[1], "ramp", {"v1": 70, "v2": 30})
    third = _day(rng, DAYS[2], "ramp", {"v1": 70, "v2": 30})
    plain = logs.write(directory / "routing.jsonl", [*first, b"", *second])
    return [plain, logs.write(directory / "routing.1.jsonl.gz", third)]


def records_of(paths: list[Path]) -> list[dict[str, Any]]:
    """The JSON objects of the logs, in line order, as any reader of the log sees them."""
    out = []
    for path in paths:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for line in data.splitlines():
            try:
                value = json.loads(line)  # json, not orjson: it reads integers past 64 bits
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def canonical(value: Any) -> Any:
    """A JSON value compared as JSON values are: numbers by value (1 equals 1.0), true is not
    1, objects without regard to key order."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", value)  # Python compares int and float by value, exactly
    if isinstance(value, list):
        return ("array", [canonical(v) for v in value])
    return ("object", {k: canonical(v) for k, v in value.items()})


def compact(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["logs", "compact", *args]) == 0
    return capsys.readouterr().out


def test_every_record_comes_back_with_every_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = fleet_logs(tmp_path)
    out = tmp_path / "lake" / "routing"  # made with its parent, as mkdir -p
    said = compact(capsys, *map(str, paths), "-o", str(out))
    written = records_of(paths)
    assert said.strip() == (
        f"wrote {len(written):,} records to {out} (3 day partitions); "
        f"skipped {3 * 6} lines that are not JSON objects"
    )
    assert sorted(p.name for p in out.iterdir()) == [f"day={day}" for day in DAYS]
    back = list(read_records(files_in(str(out))))
    assert len(back) == len(written)
    for before, after in zip(written, back, strict=True):
        assert canonical(after) == canonical(before)
    assert any(r.get("huge") == 2**63 + 5 for r in back)  # past BIGINT, exact in _extra


def test_the_columns_are_the_field_names_typed(tmp_path: Path) -> None:
    paths = fleet_logs(tmp_path)
    assert main(["logs", "compact", *map(str, paths), "-o", str(tmp_path / "lake")]) == 0
    con = duckdb.connect()
    glob = str(tmp_path / "lake" / "**" / "*.parquet")
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{glob}', "
                            "hive_partitioning = true)").fetchall()  # fmt: skip
    schema = {row[0]: row[1] for row in described}
    assert list(schema) == [*FIELDS, "_extra", "_line", "day"]
    assert (schema["latency_ms"], schema["status"], schema["agree"]) == ("DOUBLE", "BIGINT",
                                                                        "BOOLEAN")  # fmt: skip
    assert schema["day"] == "DATE"
    # A request whose fields are all known and typed has no _extra; nulls go there.
    rows = con.execute(f"SELECT _extra FROM read_parquet('{glob}') WHERE event = 'request' "
                       "AND _extra IS NOT NULL").fetchall()  # fmt: skip
    extras = [orjson.loads(row[0]) for row in rows]
    assert {"bucket": None} in extras
    assert {"bucket": None, "first_byte_ms": None} in extras
    assert any(set(e) >= set(UNKNOWN) for e in extras)


def test_spark_reads_the_directory(tmp_path: Path) -> None:
    """Another engine reads the same directory by its field names (Spark's hive partition
    discovery, zstd, the null day)."""
    sql = pytest.importorskip("pyspark.sql")
    records = [{"event": "request", "ts": "2026-11-25T10:00:00.000Z", "latency_ms": 7},
               {"event": "x", "ts": "not a time", "status": 200, "other": [1]}]  # fmt: skip
    log = logs.write(tmp_path / "routing.jsonl", records)
    assert main(["logs", "compact", str(log), "-o", str(tmp_path / "lake")]) == 0
    spark = sql.SparkSession.builder.master("local[1]").appName("compact-test").getOrCreate()
    try:
        frame = spark.read.parquet(str(tmp_path / "lake"))
        assert frame.columns == [*FIELDS, "_extra", "_line", "day"]
        rows = {r["event"]: r for r in frame.collect()}
    finally:
        spark.stop()
    assert (rows["request"]["latency_ms"], str(rows["request"]["day"])) == (7.0, "2026-11-25")
    assert (rows["x"]["status"], rows["x"]["day"], rows["x"]["_extra"]) == (
        200,
        None,
        '{"other":[1]}',
    )


def test_report_on_the_directory_is_the_report_on_the_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same JSON, byte for byte, but for `files` and `bad_lines` (compact skipped them):
    the same rows reach the same sums, which do not depend on the order rows are read in."""
    paths = fleet_logs(tmp_path)
    compact(capsys, *map(str, paths), "-o", str(tmp_path / "lake"))
    assert main(["report", *map(str, paths), "--format", "json"]) == 0
    lines = orjson.loads(capsys.readouterr().out)
    assert main(["report", str(tmp_path / "lake"), "--format", "json"]) == 0
    lake = orjson.loads(capsys.readouterr().out)
    assert (lines.pop("files"), lake.pop("files")) == (
        list(map(str, paths)),
        [str(tmp_path / "lake")],
    )
    assert (lines.pop("bad_lines"), lake.pop("bad_lines")) == (3 * 6, 0)
    assert orjson.dumps(lake) == orjson.dumps(lines)
    cancer, books = lake["models"]["cancer"], lake["models"]["books"]
    assert (cancer["labels"], books["labels"]) == ("categorical", "real")
    assert cancer["shadow"]["v3"]["copies"] > 0
    # The ties went to the later line: only right labels (no 99.5) entered the MAE.
    assert books["versions"]["v1"]["mae"] < 0.2


def test_report_reads_the_days_or_the_files_of_a_directory_as_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A glob of day partitions, or of their Parquet files (a lake read a month at a time),
    reads as the whole directory: one scan, ties still ordered by `_line`."""
    paths = fleet_logs(tmp_path)
    lake = tmp_path / "lake"
    compact(capsys, *map(str, paths), "-o", str(lake))
    reports = []
    for logs_given in ([str(lake)], [str(lake / "day=*")], [str(lake / "*" / "*.parquet")]):
        assert main(["report", *logs_given, "--format", "json"]) == 0
        report = orjson.loads(capsys.readouterr().out)
        reports.append(orjson.dumps({k: v for k, v in report.items() if k != "files"}))
    assert reports[1] == reports[0]
    assert reports[2] == reports[0]


def test_report_reads_lines_and_a_directory_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Yesterday compacted, today still JSON lines: one report over both, as over the lines."""
    plain, gz = fleet_logs(tmp_path)
    compact(capsys, str(gz), "-o", str(tmp_path / "lake"))
    reports = []
    for logs_given in ([str(plain), str(gz)], [str(plain), str(tmp_path / "lake")]):
        assert main(["report", *logs_given, "--format", "json"]) == 0
        report = orjson.loads(capsys.readouterr().out)
        reports.append({k: v for k, v in report.items() if k not in ("files", "bad_lines")})
    assert orjson.dumps(reports[1]) == orjson.dumps(reports[0])


def test_appending_continues_the_lines_and_refuses_a_full_directory_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = fleet_logs(tmp_path)
    out = str(tmp_path / "lake")
    compact(capsys, str(first), "-o", out)
    assert main(["logs", "compact", str(second), "-o", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is not empty" in err
    assert "--append" in err
    compact(capsys, str(second), "-o", out, "--append")
    back = list(read_records(files_in(out)))
    assert [canonical(r) for r in back] == [canonical(r) for r in records_of([first, second])]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d.joinpath("cut.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n' * 999)[:60]),
         "cannot compact the logs"),
        (lambda d: d.joinpath("empty").mkdir(), "is a directory"),
        (lambda d: None, "no such log file"),
    ],
    ids=["truncated-gz", "directory", "missing"],
)  # fmt: skip
def test_an_unreadable_log_is_one_line_and_exit_2_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, message: str
) -> None:
    make(tmp_path)
    name = next((str(p) for p in tmp_path.iterdir()), str(tmp_path / "missing.jsonl"))
    assert main(["logs", "compact", name, "-o", str(tmp_path / "lake")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("model-router logs compact: ")
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "lake").exists() or not any((tmp_path / "lake").iterdir())


def test_report_still_refuses_a_directory_without_parquet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "routing.jsonl").write_text("")
    assert main(["report", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err
    assert err.count("\n") == 1


TABLE = """\
log:
  path: {log}
models:
  cancer:
    versions:
      v1: {{url: "http://127.0.0.1:9001"}}
      v2: {{url: "http://127.0.0.1:9002"}}
    split: {{v1: 95, v2: 5}}
    rollout:
      candidate: v2
      steps: [5, 25, 50, 100]
      step_s: 60
      min_users: 50
      guardrails:
        error_rate: {{max_increase: 0.05}}
"""


def test_rollout_reads_the_directory_as_the_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "routes.yaml"
    shares = {"v1": 95.0, "v2": 5.0}
    traffic = logs.split_traffic(3000, shares, error_rates={"v1": 0.0, "v2": 0.5}, users=3000)
    for r in traffic:
        r["config"] = "cfg5"
    log = logs.write(tmp_path / "routing.jsonl",
                     [logs.config_loaded("cfg5", shares), b"garbage", *traffic])  # fmt: skip
    config.write_text(TABLE.format(log=log))
    compact(capsys, str(log), "-o", str(tmp_path / "lake"))
    from router.rollout.logs import epoch

    now = (epoch(traffic[-1]["ts"]) or 0.0) + 10
    decided = [
        Controller(config, [source], 30.0, dry_run=True, clock=lambda: now).evaluate()[0]
        for source in (str(log), str(tmp_path / "lake"), str(tmp_path / "lake/*/*.parquet"))
    ]
    lines, lake, files = ({k: v for k, v in d.items() if k != "ts"} for d in decided)
    assert lake == lines
    assert files == lines
    assert lake["decision"] == "rollback"
    assert main(["rollout", "--config", str(config), "--log", str(tmp_path / "lake"), "--once",
                 "--dry-run"]) == 0  # fmt: skip
    (line,) = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["users"] == lake["users"]  # read; today the log has long stopped growing


WITHOUT_DUCKDB = "import sys; sys.modules['duckdb'] = None; from router.cli import main; "


def test_without_duckdb_compact_and_rollout_on_a_directory_name_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DuckDB comes with the `report` extra, and with `rollout`'s. Python is made to fail the
    import as it does when the package is missing."""
    log = logs.write(tmp_path / "routing.jsonl", [logs.config_loaded("cfg5", {"v1": 100.0})])
    compact(capsys, str(log), "-o", str(tmp_path / "lake"))
    config = tmp_path / "routes.yaml"
    config.write_text(TABLE.format(log=log))
    compact_again = ["logs", "compact", str(log), "-o", str(tmp_path / "again")]
    rollout = ["rollout", "--config", str(config), "--log", str(tmp_path / "lake"), "--once"]
    for extra, args in [("report", compact_again), ("rollout", rollout)]:
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_DUCKDB + f"sys.exit(main({args!r}))"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"needs the {extra} extra (duckdb is missing)" in done.stderr
        assert f"pip install 'model-router[{extra}]'" in done.stderr
        assert done.stderr.count("\n") == 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=3),
    max_leaves=6,
)  # fmt: skip
KEYS = st.sampled_from([*FIELDS, "day", "_line", "_extra"]) | st.text(max_size=8)
TS = st.sampled_from(["2026-11-25T12:00:00.000Z", "2026-12-31T23:59:59.999Z", "yesterday"])


@settings(
    deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.dictionaries(KEYS, JSON, max_size=8) | st.builds(
    lambda d, ts: {**d, "ts": ts}, st.dictionaries(KEYS, JSON, max_size=6), TS),
    min_size=1, max_size=6))  # fmt: skip
@example([{"latency_ms": 2**60 + 1, "status": 2**64 - 1, "agree": 1, "bucket": 1.0, "ts": 5}])
def test_any_json_object_round_trips(tmp_path_factory: pytest.TempPathFactory,
                                     records: list[dict[str, Any]]) -> None:  # fmt: skip
    """Whatever a record holds, known fields of any type, unknown ones, nulls, nesting."""
    directory = tmp_path_factory.mktemp("any")
    log = logs.write(directory / "routing.jsonl", records)
    assert main(["logs", "compact", str(log), "-o", str(directory / "lake")]) == 0
    back = list(read_records(files_in(str(directory / "lake"))))
    assert [canonical(r) for r in back] == [canonical(r) for r in records]
