"""Time `model-router report` on Apache Spark beside DuckDB (issue 23, contract section 14).

    python bench/report_spark_bench.py [--records 5000000,20000000] [--master local[2]]
                                       [--seed 1] [--keep]

For each size: bench/gen_logs.py writes the log to bench/data/ (an existing file of the same
size and seed is reused; without --keep, a log this run wrote is deleted at the end); then
`python -m router report LOG --format json` runs once with `--engine duckdb` and once with
`--engine spark --spark-master MASTER`, each in a child process. Each run is timed by wall
clock, and its peak memory is the largest sum of the resident sets of the child and all its
descendants, sampled every 0.2 s: Spark's driver is a JVM that pyspark starts as a child,
whose memory the child's own rusage does not show (in local mode that JVM is the executors
too). Both JSON outputs are compared (every number within 1e-9, relative), so a fast wrong
answer does not count. Per-core throughput (records/s over the cores Spark used) is the
basis of docs/performance.md's estimate of where a cluster overtakes one DuckDB machine.

The table goes to stdout and the numbers to bench/results/report_spark.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_bench import ROOT, BenchError, ensure_log, log_path, write_json

RESULTS = ROOT / "bench" / "results" / "report_spark.json"


@dataclass(frozen=True)
class Timed:
    seconds: float
    peak_mib: float
    output: bytes


def run_tree(argv: Sequence[str], what: str) -> Timed:
    """Run `argv`; its wall time and the peak of its process tree's summed RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        child = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err)
        root = psutil.Process(child.pid)
        peak = 0
        while child.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(_rss(p) for p in tree))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.2)
        seconds = time.perf_counter() - began
        out.seek(0)
        err.seek(0)
        output, stderr = out.read(), err.read().decode(errors="replace")
    if child.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {child.returncode}):\n{tail}")
    return Timed(seconds, peak / 2**20, output)


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


def differences(a: Any, b: Any, where: str = "$") -> list[str]:
    """Where the two JSON trees differ (numbers beyond 1e-9 relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return [f"{where}: keys differ"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: lengths differ"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{where}[{i}]")]  # fmt: skip
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300) else [f"{where}: {a} {b}"]
    return [] if a == b else [f"{where}: {a!r} {b!r}"]


def _maybe(argv: Sequence[str], what: str) -> Timed | str:
    """The run, or why it failed (its error's last lines)."""
    try:
        return run_tree(argv, what)
    except BenchError as error:
        return str(error)


def _cause(error: str) -> str:
    """The line of a failure's message that says what went wrong."""
    lines = [line for line in error.splitlines() if "Error" in line or "error" in line]
    return (lines or error.splitlines() or ["?"])[-1].strip()


def _spark_row(spark: Timed, master: str, records: int) -> dict[str, Any]:
    used = cores(master)
    rate = round(records / spark.seconds / used) if used else None
    return {"seconds": round(spark.seconds, 2), "peak_mib": round(spark.peak_mib),
            "master": master, "cores": used, "records_per_core_s": rate}  # fmt: skip


def cores(master: str) -> int:
    """The cores a local master uses (local[N], local[*]); 0 when not local."""
    if master == "local":
        return 1
    if master.startswith("local["):
        inside = master[6:].split(",")[0].rstrip("]")
        return os.cpu_count() or 1 if inside == "*" else int(inside)
    return 0


def bench_size(records: int, seed: int, master: str, keep: bool) -> dict[str, Any]:
    path = log_path(records, seed, False)
    generated = ensure_log(path, records, seed)
    report = [sys.executable, "-m", "router", "report", str(path), "--format", "json"]
    try:
        duck = _maybe(report, "report --engine duckdb")
        spark = run_tree([*report, "--engine", "spark", "--spark-master", master],
                         "report --engine spark")  # fmt: skip
    finally:
        if generated is not None and not keep:
            path.unlink()
    print(f"{records:>12,}  spark {spark.seconds:8.1f} s {spark.peak_mib:7,.0f} MiB", flush=True)
    if isinstance(duck, str):  # DuckDB failed (out of memory): Spark's numbers stand alone
        print(f"{records:>12,}  duckdb failed: {_cause(duck)}", flush=True)
        return {"records": records, "duckdb": {"failed": _cause(duck)},
                "spark": _spark_row(spark, master, records), "same_json": None}  # fmt: skip
    diff = differences(orjson.loads(duck.output), orjson.loads(spark.output))
    row = {
        "records": records,
        "bytes": path.stat().st_size if path.exists() else None,
        "duckdb": {"seconds": round(duck.seconds, 2), "peak_mib": round(duck.peak_mib)},
        "spark": _spark_row(spark, master, records),
        "same_json": not diff,
        "differences": diff[:10],
    }  # fmt: skip
    print(
        f"{records:>12,}  duckdb {duck.seconds:8.1f} s {duck.peak_mib:7,.0f} MiB   "
        f"spark {spark.seconds:8.1f} s {spark.peak_mib:7,.0f} MiB   same JSON: {not diff}",
        flush=True,
    )
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--records", default="5000000,20000000", help="sizes, comma-separated")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the logs for the next run")
    args = parser.parse_args(argv)
    rows = []
    try:
        for size in (int(s) for s in args.records.split(",")):
            rows.append(bench_size(size, args.seed, args.master, args.keep))
    except BenchError as error:
        print(f"report_spark_bench: {error}", file=sys.stderr)
        return 1
    write_json(RESULTS, {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
        "runs": rows,
    })  # fmt: skip
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(row["same_json"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
