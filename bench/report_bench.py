"""Time `model-router report` on a large synthetic log, against the floor of a DuckDB scan.

    python bench/report_bench.py [--records 5000000] [--seed 1] [--gzip] [--repeat 1] [--keep]

1. The log: bench/gen_logs.py writes it to bench/data/ (git-ignored); an existing file of the
   same size and seed is reused. Without --keep, a log this run wrote is deleted at the end.
2. The baseline: DuckDB reading every line of the same file and counting records per model,
   in a child process. Any DuckDB-based report parses the whole file at least once, so this
   is the floor it can approach.
3. The report: `python -m router report LOG --format json -o /dev/null`, in a child process.
4. `model-router logs compact LOG -o DIR` (contract section 14), its records/s, then the
   report on DIR, against the report on the JSON lines. DIR is removed at the end unless
   --keep (then a later run reuses neither: compact is timed each time).

Each child is timed by wall clock and its peak RSS read from its own rusage (`os.wait4`), so
the numbers do not mix. With --repeat N each is run N times and the fastest run is kept (the
file is in the page cache after the first read either way). The table goes to stdout and the
numbers to bench/results/report.json. Exit 1, with nothing written, when the report command
is missing or fails: there are no results to fake.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson

ROOT = Path(__file__).resolve().parents[1]
GEN_LOGS = ROOT / "bench" / "gen_logs.py"
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results" / "report.json"

# Run in a child: parse every line, count request records per model.
BASELINE = """
import sys, duckdb
path = sys.argv[1].replace("'", "''")
rows = duckdb.sql(
    f"SELECT model, count(*) FROM read_json('{path}', format='newline_delimited', "
    "ignore_errors=true) GROUP BY model ORDER BY model"
).fetchall()
print(rows)
"""


class BenchError(Exception):
    """Something that leaves no results to report."""


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_mib: float
    stdout: str
    cpu_seconds: float = 0.0  # user + system: steadier than wall time on a shared machine

    def row(self, records: int) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "records_per_s": round(records / self.seconds),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
        }


def run_child(argv: Sequence[str], what: str) -> Run:
    """Run `argv` from the repository root; its wall time and its own peak RSS.

    `os.wait4` gives the rusage of that one child (RUSAGE_CHILDREN would be the largest of
    all children so far).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        child = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - began
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if child.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {child.returncode}):\n{tail}")
    # Linux reports KiB, macOS bytes.
    peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return Run(seconds, peak, stdout, usage.ru_utime + usage.ru_stime)


def best_of(argv: Sequence[str], what: str, repeat: int) -> Run:
    return min((run_child(argv, what) for _ in range(repeat)), key=lambda run: run.seconds)


def report_available() -> None:
    """Fail early, before writing gigabytes, when there is no `report` command to time."""
    argv = [sys.executable, "-m", "router", "report", "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BenchError(
            "`model-router report` is not available yet, so there is nothing to time: "
            f"`python -m router report --help` exited {done.returncode}: {last}"
        )


def log_path(records: int, seed: int, compress: bool) -> Path:
    return DATA / f"routing-{records}-seed{seed}.jsonl{'.gz' if compress else ''}"


def ensure_log(path: Path, records: int, seed: int) -> Run | None:
    """Write the log unless a previous run kept it; the generator's run, or None if reused."""
    if path.exists():
        print(f"reusing {path.relative_to(ROOT)}")
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(GEN_LOGS), str(path), "--records", str(records),
            "--seed", str(seed)]  # fmt: skip
    run = run_child(argv, "bench/gen_logs.py")
    print(run.stdout.strip())
    return run


def table(records: int, runs: dict[str, Run]) -> str:
    lines = [f"{'':<16}{'records':>12}{'seconds':>10}{'CPU s':>8}{'records/s':>13}"
             f"{'peak RSS MiB':>14}"]  # fmt: skip
    for name, run in runs.items():
        lines.append(
            f"{name:<16}{records:>12,}{run.seconds:>10.2f}{run.cpu_seconds:>8.1f}"
            f"{records / run.seconds:>13,.0f}{run.peak_rss_mib:>14,.0f}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Lake:
    """`logs compact` of the log, and the report on the directory it wrote."""

    compact: Run
    report: Run
    lines: int  # every record compact wrote (requests, feedback, config_loaded)
    bytes: int

    def row(self, records: int, json_report: Run) -> dict[str, object]:
        return {
            "compact": {"what": "model-router logs compact LOG -o DIR", "lines": self.lines,
                        "lines_per_s": round(self.lines / self.compact.seconds),
                        "parquet_bytes": self.bytes, **self.compact.row(records)},
            "report": {"what": "model-router report DIR --format json", **self.report.row(records)},
            "vs_json_lines": {
                "seconds": round(self.report.seconds / json_report.seconds, 2),
                "peak_rss": round(self.report.peak_rss_mib / json_report.peak_rss_mib, 2),
            },
        }  # fmt: skip


def parquet(path: Path, repeat: int, keep: bool) -> Lake:
    """Compact the log into a fresh directory beside it, then time the report on that."""
    out = path.with_name(path.name.partition(".")[0] + "-parquet")
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "router", "logs", "compact", str(path), "-o", str(out)]
    try:
        compacted = run_child(argv, "model-router logs compact")
        lines = int(compacted.stdout.split()[1].replace(",", ""))  # "wrote N records ..."
        size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
        report_argv = [sys.executable, "-m", "router", "report", str(out),
                       "--format", "json", "-o", os.devnull]  # fmt: skip
        report = best_of(report_argv, "model-router report on Parquet", repeat)
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return Lake(compacted, report, lines, size)


def results(
    path: Path, size: int, seed: int, records: int, generated: Run | None, baseline: Run,
    report: Run, lake: Lake,
) -> dict[str, object]:  # fmt: skip
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "duckdb": duckdb.__version__,
        },
        "log": {
            "file": str(path.relative_to(ROOT)), "records": records, "seed": seed,
            "bytes": size, "gzip": path.suffix == ".gz",
            "generated_s": round(generated.seconds, 3) if generated else None,
        },
        "baseline": {"what": "DuckDB read_json + count(*) by model", **baseline.row(records)},
        "report": {"what": "model-router report --format json", **report.row(records)},
        "ratio": {
            "seconds": round(report.seconds / baseline.seconds, 2),
            "peak_rss": round(report.peak_rss_mib / baseline.peak_rss_mib, 2),
        },
        "parquet": lake.row(records, report),
    }  # fmt: skip


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    unfinished = path.with_name(path.name + ".tmp")
    unfinished.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(unfinished, path)


def bench(records: int, seed: int, compress: bool, repeat: int, keep: bool) -> None:
    report_available()
    path = log_path(records, seed, compress)
    generated = ensure_log(path, records, seed)
    size = path.stat().st_size
    try:
        baseline = best_of([sys.executable, "-c", BASELINE, str(path)], "the DuckDB scan", repeat)
        report_argv = [sys.executable, "-m", "router", "report", str(path),
                       "--format", "json", "-o", os.devnull]  # fmt: skip
        report = best_of(report_argv, "model-router report", repeat)
        lake = parquet(path, repeat, keep)
    finally:
        if generated is not None and not keep:
            path.unlink()
    runs = {"duckdb scan": baseline, "report": report, "logs compact": lake.compact,
            "report parquet": lake.report}  # fmt: skip
    print(table(records, runs))
    print(
        f"report / baseline: {report.seconds / baseline.seconds:.2f}x the time, "
        f"{report.peak_rss_mib / baseline.peak_rss_mib:.2f}x the peak memory"
    )
    print(
        f"logs compact: {lake.lines / lake.compact.seconds:,.0f} lines/s, "
        f"{size / 2**20:,.0f} MiB of JSON lines -> {lake.bytes / 2**20:,.0f} MiB of Parquet; "
        f"report on it: {lake.report.seconds / report.seconds:.2f}x the time, "
        f"{lake.report.peak_rss_mib / report.peak_rss_mib:.2f}x the peak memory of the lines'"
    )
    write_json(RESULTS, results(path, size, seed, records, generated, baseline, report, lake))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--records", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gzip", action="store_true", help="bench a .gz log")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest counts")
    parser.add_argument("--keep", action="store_true", help="keep the log for the next run")
    args = parser.parse_args(argv)
    try:
        bench(args.records, args.seed, args.gzip, max(1, args.repeat), args.keep)
    except BenchError as error:
        print(f"report_bench: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
