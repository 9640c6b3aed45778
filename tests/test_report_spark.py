"""`model-router report --engine spark` (contract section 14): the same JSON as DuckDB's, on
logs with heavy users, a ramp, labels of both kinds, shadow records, `.gz` files and garbage
lines; on one SparkSession for the module (a JVM takes seconds to start), and once on a real
standalone cluster (a master and a worker from pyspark's own `spark-class`)."""

from __future__ import annotations

import functools
import math
import operator
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.cli import main
from router.report.engine import DuckEngine
from tests.support import logs

pyspark = pytest.importorskip("pyspark")  # the spark extra is in dev: CI has it
from pyspark.sql import SparkSession  # noqa: E402

from router.report.spark import SparkEngine  # noqa: E402

# A JVM to start and Spark's jobs to schedule: on a loaded 2-core machine a report on the
# small logs here can take minutes.
pytestmark = pytest.mark.timeout(600)

RAMP = ({"v1": 90.0, "v2": 10.0}, {"v1": 50.0, "v2": 30.0, "v3": 20.0})


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    """One local session on 2 cores for the module; `report --engine spark` uses it."""
    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def assert_same(a: Any, b: Any, where: str = "$") -> None:
    """The two JSON trees have the same shape, strings and flags, and every number within
    1e-9 of the other, relative (contract section 14)."""
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list), where
        assert len(a) == len(b), f"{where}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float | int) and not isinstance(a, bool):
        assert isinstance(b, float | int), f"{where}: {a!r} != {b!r}"
        assert not isinstance(b, bool), f"{where}: {a!r} != {b!r}"
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _traffic(rng: random.Random, model: str, real: bool) -> list[Any]:
    """A ramp (two tables, the second adding v3), heavy users (a tenth of the users send
    most requests), some users without an id, labels and predictions."""
    records: list[Any] = [logs.config_loaded(f"{model}-cfg1", RAMP[0], model)]
    heavy = [f"{model}-heavy-{k}" for k in range(8)]
    for i in range(1500):
        if i == 700:
            records.append(logs.config_loaded(f"{model}-cfg2", RAMP[1], model))
        split = RAMP[0] if i < 700 else RAMP[1]
        user = rng.choice(heavy) if rng.random() < 0.6 else f"{model}-u{rng.randrange(400)}"
        user_or_none = None if rng.random() < 0.05 else user
        version = rng.choices(list(split), weights=list(split.values()))[0]
        outcome = rng.choices(["ok", "server_error", "timeout"], weights=[90, 7, 3])[0]
        value: Any = round(rng.gauss(3, 1), 3) if real else rng.choice(["cat", "dog", 1, 1.0])
        rid = f"{model}-{i}"
        latency = round(rng.lognormvariate(2.3, 0.4), 3)
        first_byte = round(rng.uniform(1, 5), 3) if i % 3 else None
        record = logs.request(i, version=version, user=user_or_none, model=model,
                              outcome=outcome, latency_ms=latency, prediction=value,
                              config=f"{model}-cfg{1 if i < 700 else 2}",
                              first_byte_ms=first_byte)  # fmt: skip
        record["request_id"] = rid
        records.append(record)
        if rng.random() < 0.5:
            label = round(value + rng.gauss(0, 0.5), 3) if real else rng.choice(["cat", 1, "1"])
            records.append(logs.feedback(rid, label, model))
    return records


def _shadows(rng: random.Random) -> list[Any]:
    """Shadow copies of the categorical model's requests: agreement, latency, quality."""
    out: list[Any] = []
    for i in range(0, 1500, 3):
        outcome = rng.choices(["ok", "server_error", "dropped"], weights=[85, 5, 10])[0]
        ok = outcome == "ok"
        record = logs.shadow(i, primary="v1", version="v9", outcome=outcome, model="cancer",
                             user=f"cancer-u{i % 50}", agree=rng.random() < 0.8 if ok else None,
                             upstream_ms=rng.uniform(5, 20),
                             primary_upstream_ms=rng.uniform(5, 15),
                             prediction=rng.choice(["cat", "dog"]) if ok else None,
                             drop_reason="overloaded" if not ok and outcome == "dropped"
                             else None)  # fmt: skip
        record["request_id"] = f"cancer-{i}"
        out.append(record)
    return out


def _extras() -> list[Any]:
    """The label tie rule (same `ts`: the later line wins), feedback matching no request,
    a request id logged twice, and labels that are objects (compared as values)."""
    tie = "2026-11-25T23:59:59.000Z"
    return [
        {**logs.feedback("cancer-3", "dog"), "ts": tie},
        {**logs.feedback("cancer-3", "cat"), "ts": tie},
        logs.feedback("nobody", "cat"),
        logs.request(5, version="v1", user="cancer-u1", prediction={"b": [1, 2.0], "a": 1}),
        logs.feedback("req-5", {"a": 1.0, "b": [1, 2]}),
        {**logs.request(7, version="v1", user="cancer-u1", prediction="cat"),
         "request_id": "cancer-7"},  # a second record of cancer-7
    ]  # fmt: skip


@pytest.fixture(scope="module")
def log_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three files, one gzipped, with garbage lines among the records."""
    rng = random.Random(23)
    records = _traffic(rng, "cancer", False) + _traffic(rng, "house", True) + _shadows(rng)
    records += _extras()
    records[100:100] = [b'{"event": "request", "model": "canc', b"\x00\x01 not json", b"[1, 2]"]
    where = tmp_path_factory.mktemp("spark-logs")
    third = len(records) // 3
    logs.write(where / "a.jsonl", records[:third])
    logs.write(where / "b.jsonl.gz", records[third : 2 * third])
    logs.write(where / "c.jsonl", records[2 * third :])
    return [str(where / "*.jsonl*")]


def report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", *args, "--format", "json"]) == 0
    data: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return data


def test_both_engines_give_the_same_json(
    spark: SparkSession, log_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    duck = report(capsys, *log_files)
    sparked = report(capsys, *log_files, "--engine", "spark", "--spark-master", "local[2]")
    assert_same(duck, sparked)
    # The logs hold what the comparison is about, so agreement means something.
    assert duck["bad_lines"] == 3
    assert len(duck["files"]) == 3
    cancer, house = duck["models"]["cancer"], duck["models"]["house"]
    assert cancer["labels"] == "categorical"
    assert house["labels"] == "real"
    assert set(cancer["versions"]) == {"v1", "v2", "v3"}
    assert cancer["shadow"]["v9"]["accuracy_diff_ci95"] is not None
    assert house["versions"]["v2"]["vs_baseline"]["mae_ci95"] is not None
    assert cancer["feedback"]["unmatched"] == 1
    assert cancer["feedback"]["duplicate_request_ids"] == 1


def test_both_engines_read_a_compacted_directory(
    spark: SparkSession,
    log_files: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`model-router logs compact` writes Parquet by day; Spark reads the directory, as
    DuckDB does, to the report on the lines (but for the files named and the bad lines,
    which compact counted and skipped)."""
    lake = str(tmp_path / "lake")
    assert main(["logs", "compact", *log_files, "-o", lake]) == 0
    capsys.readouterr()
    sparked = report(capsys, lake, "--engine", "spark")
    assert_same(report(capsys, lake), sparked)
    apart = {"files": [], "bad_lines": 0}
    assert_same({**report(capsys, *log_files), **apart}, {**sparked, **apart})


def test_the_label_tie_goes_to_the_later_line_on_spark(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two labels for one request in the same millisecond: the later line's counts, in
    whichever file order the lines come (a second file after the first)."""
    tie = "2026-11-25T23:59:59.000Z"
    requests = [logs.config_loaded("cfg1", {"v1": 50.0, "v2": 50.0})]
    requests += [logs.request(i, version="v1", user=f"u{i}", prediction="cat") for i in range(4)]
    logs.write(tmp_path / "a.jsonl", [*requests, {**logs.feedback("req-0", "dog"), "ts": tie}])
    logs.write(tmp_path / "b.jsonl", [{**logs.feedback("req-0", "cat"), "ts": tie}])
    for order in (["a.jsonl", "b.jsonl"], ["b.jsonl", "a.jsonl"]):
        paths = [str(tmp_path / name) for name in order]
        duck = report(capsys, *paths)
        sparked = report(capsys, *paths, "--engine", "spark")
        assert_same(duck, sparked)
        accuracy = duck["models"]["cancer"]["versions"]["v1"]["accuracy"]
        assert accuracy == (1.0 if order[-1] == "b.jsonl" else 0.0)


def test_spark_runs_are_byte_identical(
    spark: SparkSession, log_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = set()
    for _ in range(2):
        assert main(["report", *log_files, "--format", "json", "--engine", "spark"]) == 0
        outputs.add(capsys.readouterr().out)
    assert len(outputs) == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=40))
def test_a_sorted_sum_is_the_same_double_on_both_engines(
    spark: SparkSession, values: list[float]
) -> None:
    """The per-user error sums (Dialect.sorted_sum) add in ascending order, one value at a
    time, from 0: the same double from run to run and on both engines, where a plain SUM
    depends on how rows fell to threads or tasks (contract sections 7 and 14)."""
    expected = functools.reduce(operator.add, sorted(values), 0.0)
    rows = [("u", v) for v in values]
    for engine in (DuckEngine(duckdb.connect()), SparkEngine(spark, owned=False)):
        engine.table("t", {"unit": "VARCHAR", "x": "DOUBLE"}, rows)
        sql = f"SELECT unit, {engine.dialect.sorted_sum('x')} AS s FROM t GROUP BY unit"
        assert engine.query(sql)["s"].tolist() == [expected], engine.dialect.name


def test_without_java_a_one_line_error_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = logs.write(tmp_path / "a.jsonl", [logs.request(1, version="v1")])
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert main(["report", str(path), "--engine", "spark"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Java 17" in err
    assert "JAVA_HOME" in err


def test_a_missing_log_is_named_on_spark(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope-*.jsonl")
    assert main(["report", missing, "--engine", "spark"]) == 2
    assert capsys.readouterr().err == f"model-router report: {missing}: no such log file\n"


def test_a_uri_is_expanded_by_hadoop(
    spark: SparkSession, log_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A path with a scheme (here file://, as hdfs:// or s3a:// on a cluster) is globbed by
    Hadoop's FileSystem: the same report, the files named as Hadoop names them."""
    sparked = report(capsys, f"file://{log_files[0]}", "--engine", "spark")
    assert len(sparked["files"]) == 3
    assert all(name.startswith("file:/") for name in sparked["files"])
    assert_same({**report(capsys, *log_files), "files": []}, {**sparked, "files": []})
    missing = f"file://{log_files[0]}.nope"
    assert main(["report", missing, "--engine", "spark"]) == 2
    assert capsys.readouterr().err == f"model-router report: {missing}: no such log file\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(port: int, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the Spark daemon exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[str]:
    """A standalone Spark cluster on 127.0.0.1: a master and one worker (1 core, 1 GiB),
    started from pyspark's own `spark-class`, stopped after the test."""
    home = os.path.dirname(pyspark.__file__)
    env = {**os.environ, "SPARK_HOME": home, "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(tmp_path), "SPARK_WORKER_DIR": str(tmp_path / "work")}  # fmt: skip
    master_port, worker_port = _free_port(), _free_port()
    spark_class = os.path.join(home, "bin", "spark-class")
    master = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(master_port), "--webui-port", str(_free_port())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"spark://127.0.0.1:{master_port}"
    worker = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
         "--port", str(worker_port), "--webui-port", str(_free_port()), "--cores", "1",
         "--memory", "1g"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(master_port, master)
        _wait_for(worker_port, worker)
        yield url
    finally:
        for process in (worker, master):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.timeout(600)
def test_a_standalone_cluster_runs_the_report(
    standalone: str, log_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The real CLI in a process of its own, its driver on 127.0.0.1, the work done by the
    cluster's executor; the same JSON as DuckDB's."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    command = [sys.executable, "-m", "router", "report", *log_files, "--format", "json",
               "--engine", "spark", "--spark-master", standalone]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, timeout=540, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert_same(report(capsys, *log_files), orjson.loads(done.stdout))
