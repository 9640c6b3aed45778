"""Big routing tables: `check` time, router memory, and request latency through reloads.

    python bench/table_bench.py [--quick] [--sizes 1x0,2000x20,users] [--reloads 5]
                                [--baseline-s 15]

For each table size (models x rules per model, and one model whose single rule lists
50,000 users, `users`) a table is generated in a temporary directory: every model has v1
and v2 on an nginx static backend (bench/proxy_bench.py's, answering ~100 bytes of JSON),
a 90/10 split, and N rules `match: {header: {X-Tenant: tenant-K}} -> v2`. Then:

- `check`: the wall time of `python -m router check FILE`, best of 2, against a child
  process that only runs `yaml.load(text, Loader=yaml.CSafeLoader)` on the same file (best
  of 2; its wall time, and the load alone as it timed it) and the ratios; the child then
  loads the file again with the cyclic collector off, as the router reads a table, timed
  apart (and left out of its wall time);
- start: `python -m router serve` (one process), the time until its `serving on` banner,
  and its resident memory (VmRSS) then;
- baseline: wrk (`-t1 -c4`, POST to a random model of the table with a random X-User-ID
  and X-Tenant) for --baseline-s seconds, after a short warm-up, with no reload; VmRSS
  after it (every version has had requests: its metrics exist);
- reloads: wrk again, started with a long duration; after 2 s the bench rewrites the
  table with model-0's split flipped (90/10 <-> 89/11), POSTs /admin/reload, waits for
  the answer (the reload time) and 1 s more, --reloads times; then it stops wrk with
  SIGINT, on which wrk ends the run and prints its summary (its `done` hook included), so
  the run covers every reload however long each takes. The file watcher may load a new
  file before the admin does (the admin then answers `unchanged`, after the watcher's
  reload, since reloads take a lock): either way the answer's digest must be the new one.
  The watcher leaves alone a file the admin has read. Then VmRSS and VmHWM (peak) again,
  and the reloads by result from /metrics;
- scrapes: wrk for --baseline-s seconds while a thread GETs /metrics once a second (a
  Prometheus scrapes every 15 to 60 s: this is the worst case), timing each scrape.

Prints three markdown tables (check and memory; latency and req/s through reloads;
/metrics size, scrape time and latency through scrapes) and writes every number
to bench/results/tables.json (after each size, so a sweep cut short keeps what it has).
`--quick` runs 1x0, 100x20 and 2000x20 with a 5 s baseline.
The issue's goal for 2000x20: worst latency during the reloads within 20 ms of the
baseline p99, RSS under 150 MB, check at most 1.5x CSafeLoader; printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).parent))
import proxy_bench as pb  # free_port, wait_port, the nginx backend, stop

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "tables.json"
USERS = 50_000
START_TIMEOUT_S = 900.0
LEAD_S = 2.0  # wrk runs this long before the first reload
SETTLE_S = 1.0  # the wait after each reload's answer
SCRAPE_EVERY_S = 1.0  # Prometheus scrapes every 15-60 s; once a second shows the worst
BANNER = re.compile(r"serving on (http://\S+) \(admin (http://\S+)\)")
MIB = 2**20

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = '{"features": [17.99, 10.38, 122.8, 1001.0]}'
wrk.headers["Content-Type"] = "application/json"
local models = MODELS
request = function()
  wrk.headers["X-User-ID"] = "user-" .. math.random(0, 99999)
  wrk.headers["X-Tenant"] = "tenant-" .. math.random(0, 39)
  return wrk.format(nil, "/models/model-" .. math.random(0, models - 1) .. "/predict")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
"""

# A child process that times libyaml alone: read the file, then parse it (the timed part),
# then parse it again with the cyclic collector off, as the router reads a table.
CSAFE = """
import gc, sys, time, yaml
text = open(sys.argv[1], encoding="utf-8").read()
started = time.perf_counter()
yaml.load(text, Loader=yaml.CSafeLoader)
print(time.perf_counter() - started)
gc.collect()
gc.disable()
started = time.perf_counter()
yaml.load(text, Loader=yaml.CSafeLoader)
print(time.perf_counter() - started)
"""


@dataclass(frozen=True)
class Size:
    name: str
    models: int
    rules: int
    users: int = 0  # > 0: one rule listing this many user ids (with models=1)


SIZES = [
    Size("1x0", 1, 0), Size("100x0", 100, 0), Size("100x20", 100, 20),
    Size("1000x0", 1000, 0), Size("1000x20", 1000, 20), Size("2000x20", 2000, 20),
    Size("10000x0", 10000, 0), Size("10000x20", 10000, 20), Size("users", 1, 0, USERS),
]  # fmt: skip
QUICK = ("1x0", "100x20", "2000x20")


@dataclass
class Load:
    """One wrk run, from its `done` hook."""

    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    requests: int
    errors: int
    non2xx: int


@dataclass
class Row:
    size: str
    models: int
    rules: int
    users: int
    file_mib: float
    check_s: float = 0.0
    csafe_wall_s: float = 0.0
    csafe_load_s: float = 0.0
    csafe_load_no_gc_s: float = 0.0  # the load again with the cyclic collector off
    ready_s: float = 0.0
    rss_start_mib: float = 0.0
    rss_baseline_mib: float = 0.0  # after the baseline load, before any reload
    rss_after_mib: float = 0.0
    rss_peak_mib: float = 0.0
    reload_s: list[float] = field(default_factory=list)
    reload_results: list[str] = field(default_factory=list)
    # model_router_reloads_total by result at the end: the watcher's reloads of a file
    # the admin already loaded count as unchanged
    reload_counts: dict[str, float] = field(default_factory=dict)
    outside_cpu_pct: float = 0.0  # of one core, by processes outside the bench
    commit: str = ""  # HEAD when the size started (see git_head)
    baseline: Load | None = None
    reloading: Load | None = None
    scraping: Load | None = None  # wrk while /metrics is scraped every SCRAPE_EVERY_S
    scrape_s: list[float] = field(default_factory=list)
    metrics_mib: float = 0.0


def table_text(size: Size, backend: int, log: Path, split: tuple[int, int]) -> str:
    """The routing table as YAML; `split` is model-0's (the one the reloads flip)."""
    lines = [
        f"server: {{listen: 127.0.0.1:{pb.free_port()}, admin_listen: 127.0.0.1:{pb.free_port()}}}",
        f"log: {{path: {log}}}",
        "models:",
    ]
    url = f"http://127.0.0.1:{backend}"
    for index in range(size.models):
        v1, v2 = split if index == 0 else (90, 10)
        lines += [
            f"  model-{index}:",
            "    versions:",
            f'      v1: {{url: "{url}"}}',
            f'      v2: {{url: "{url}/v2"}}',
            f"    split: {{v1: {v1}, v2: {v2}}}",
        ]
        if size.rules or size.users:
            lines.append("    rules:")
        for rule in range(size.rules):
            lines.append(f'      - match: {{header: {{X-Tenant: "tenant-{rule}"}}}}')
            lines.append("        version: v2")
        if size.users:
            users = ", ".join(f"user-{n}" for n in range(size.users))
            lines.append(f"      - match: {{user_id: [{users}]}}")
            lines.append("        version: v2")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Rename a whole file over the table, so neither the router nor its watcher reads half."""
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def time_check(path: Path) -> tuple[float, float, float, float]:
    """Best of 2: `router check` wall, the CSafeLoader child's wall, its load alone, and
    its load with the collector off (its wall time covers the first load only)."""
    check, wall, load, no_gc = [], [], [], []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "router", "check", str(path)], cwd=ROOT,
                       stdout=subprocess.DEVNULL, check=True)  # fmt: skip
        check.append(time.perf_counter() - started)
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CSAFE, str(path)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        first, second = out.split()
        wall.append(time.perf_counter() - started - float(second))
        load.append(float(first))
        no_gc.append(float(second))
    return min(check), min(wall), min(load), min(no_gc)


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak) of a process, in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024 / MIB
    return found


def start_router(tmp: Path, config: Path) -> tuple[subprocess.Popen[bytes], float, str, str]:
    """The router on `config`; its process, seconds to the banner, public and admin URLs."""
    err = tmp / "router.err"
    argv = [sys.executable, "-m", "router", "serve", "--config", str(config)]
    started = time.perf_counter()
    with err.open("wb") as sink:
        proc = subprocess.Popen(argv, stderr=sink, stdout=subprocess.DEVNULL, cwd=ROOT)
    while time.perf_counter() - started < START_TIMEOUT_S:
        found = BANNER.search(err.read_text(errors="replace"))
        if found:
            return proc, time.perf_counter() - started, found.group(1), found.group(2)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_router(proc)
    raise RuntimeError(f"the router did not start:\n{err.read_text(errors='replace')[-2000:]}")


def parse_wrk(out: str) -> Load:
    found = re.search(r"RESULT (\{.*\})", out)
    if found is None:
        raise RuntimeError(f"wrk gave no result:\n{out[-2000:]}")
    d = json.loads(found.group(1))
    return Load(
        rps=d["requests"] / (d["duration_us"] / 1e6), p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000, p999_ms=d["p999_us"] / 1000, max_ms=d["max_us"] / 1000,
        requests=d["requests"], errors=d["errors"], non2xx=d["non2xx"],
    )  # fmt: skip


def wrk_argv(url: str, script: Path, seconds: float) -> list[str]:
    return ["wrk", "-t1", "-c4", f"-d{max(1, round(seconds))}s", "-s", str(script), url]


def wrk(url: str, script: Path, seconds: float) -> Load:
    argv = wrk_argv(url, script, seconds)
    return parse_wrk(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def reload_once(admin: str, config: Path, text: str, previous: str) -> tuple[float, str, str]:
    """Put `text` in the file, POST /admin/reload; seconds to the answer, result, digest."""
    write_atomically(config, text)
    started = time.perf_counter()
    request = urllib.request.Request(f"{admin}/admin/reload", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as answer:
        body = json.loads(answer.read())
    seconds = time.perf_counter() - started
    if body["result"] not in ("loaded", "unchanged") or body["config"] == previous:
        raise RuntimeError(f"the reload did not put the new table in force: {body}")
    return seconds, body["result"], body["config"]


def current_digest(admin: str) -> str:
    with urllib.request.urlopen(f"{admin}/readyz", timeout=30) as answer:
        return str(json.loads(answer.read())["config"])


def reload_counts(admin: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{admin}/metrics", timeout=60) as answer:
        text = answer.read().decode()
    found = re.findall(r'^model_router_reloads_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return {result: float(count) for result, count in found}


def under_reloads(
    url: str, admin: str, script: Path, texts: list[str], config: Path, row: Row
) -> Load:
    """wrk for as long as the reloads take: started long, stopped with SIGINT after them."""
    argv = wrk_argv(url, script, 24 * 3600)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(LEAD_S)
        digest = current_digest(admin)
        for text in texts:
            seconds, result, digest = reload_once(admin, config, text, digest)
            row.reload_s.append(seconds)
            row.reload_results.append(result)
            print(f"    reload {len(row.reload_s)}: {result} in {seconds:.3f} s", flush=True)
            time.sleep(SETTLE_S)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return parse_wrk(out + err)


def under_scrapes(url: str, admin: str, script: Path, seconds: float, row: Row) -> Load:
    """wrk while another thread GETs /metrics every SCRAPE_EVERY_S, timing each scrape."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(f"{admin}/metrics", timeout=60) as answer:
                row.metrics_mib = len(answer.read()) / MIB
            row.scrape_s.append(time.perf_counter() - started)
            stop.wait(SCRAPE_EVERY_S)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        return wrk(url, script, seconds)
    finally:
        stop.set()
        scraper.join()


def bench_size(size: Size, tmp: Path, backend: int, args: argparse.Namespace) -> Row:
    config, log = tmp / "routes.yaml", tmp / "routing.jsonl"
    flips = [(89, 11) if n % 2 == 0 else (90, 10) for n in range(args.reloads)]
    texts = [table_text(size, backend, log, split) for split in [(90, 10), *flips]]
    write_atomically(config, texts[0])
    row = Row(size.name, size.models, size.rules, size.users, config.stat().st_size / MIB)
    row.commit = git_head()
    print(f"{size.name}: {row.file_mib:.1f} MiB; timing check", flush=True)
    row.check_s, row.csafe_wall_s, row.csafe_load_s, row.csafe_load_no_gc_s = time_check(config)
    proc, row.ready_s, url, admin = start_router(tmp, config)
    try:
        row.rss_start_mib = memory(proc.pid)["VmRSS"]
        print(f"  ready in {row.ready_s:.2f} s, {row.rss_start_mib:.0f} MiB", flush=True)
        script = tmp / "tables.lua"
        script.write_text(WRK_SCRIPT.replace("MODELS", str(size.models)))
        wrk(url, script, args.warm_up_s)
        row.baseline = wrk(url, script, args.baseline_s)
        row.rss_baseline_mib = memory(proc.pid)["VmRSS"]
        print(f"  baseline: {fmt_load(row.baseline)}, {row.rss_baseline_mib:.0f} MiB", flush=True)
        row.reloading = under_reloads(url, admin, script, texts[1:], config, row)
        print(f"  reloads:  {fmt_load(row.reloading)}", flush=True)
        mem = memory(proc.pid)
        row.rss_after_mib, row.rss_peak_mib = mem["VmRSS"], mem["VmHWM"]
        row.reload_counts = reload_counts(admin)
        row.scraping = under_scrapes(url, admin, script, args.baseline_s, row)
        print(f"  scraping: {fmt_load(row.scraping)}, /metrics {row.metrics_mib:.1f} MiB in "
              f"{statistics.median(row.scrape_s):.3f} s (median)", flush=True)  # fmt: skip
    finally:
        stop_router(proc)
    return row


def cpu_seconds(nginx: subprocess.Popen[bytes]) -> tuple[float, float, float]:
    """Wall clock, the machine's busy CPU (user, nice, system), and the bench's own: this
    process, its reaped children (wrk, routers and their reload children), and nginx."""
    machine = psutil.cpu_times()
    me = psutil.Process().cpu_times()
    own = me.user + me.system + me.children_user + me.children_system
    with contextlib.suppress(psutil.NoSuchProcess):
        master = psutil.Process(nginx.pid)
        for proc in (master, *master.children(recursive=True)):
            times = proc.cpu_times()
            own += times.user + times.system
    return time.monotonic(), machine.user + machine.nice + machine.system, own


def outside_percent(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Percent of one core that processes outside the bench used meanwhile (a noisy run)."""
    wall, busy, own = (b - a for a, b in zip(before, after, strict=True))
    return max(0.0, busy - own) / wall * 100


def stop_router(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then end the reload child it may leave (a watcher's reload under way goes on
    parsing after the router is gone), so that it cannot slow the next size's timings."""
    children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    pb.stop(proc)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    psutil.wait_procs(children, timeout=10)


def git_head() -> str:
    """The commit under test, "+" if router/ has edits, so that a sweep across a commit
    shows it row by row."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "router")
    return git("rev-parse", "--short", "HEAD") + ("+" if dirty else "")


def fmt_load(load: Load) -> str:
    return (f"{load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
            f"max {load.max_ms:.2f} ms, errors {load.errors}, non-2xx {load.non2xx}")  # fmt: skip


def print_tables(rows: list[Row]) -> None:
    print("\n| table | file MiB | check s | CSafeLoader s (process / load / load, no GC) "
          "| check x CSafeLoader (process / load) | ready s | RSS start MiB | RSS after load MiB "
          "| RSS after reloads MiB | peak MiB | outside CPU % | commit |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r.size} | {r.file_mib:.1f} | {r.check_s:.2f} | {r.csafe_wall_s:.2f} / "
              f"{r.csafe_load_s:.2f} / {r.csafe_load_no_gc_s:.2f} | "
              f"{r.check_s / r.csafe_wall_s:.2f} / "
              f"{r.check_s / r.csafe_load_s:.1f} | {r.ready_s:.2f} | {r.rss_start_mib:.0f} "
              f"| {r.rss_baseline_mib:.0f} | {r.rss_after_mib:.0f} | {r.rss_peak_mib:.0f} "
              f"| {r.outside_cpu_pct:.0f} | {r.commit} |")  # fmt: skip
    print("\n| table | reload s (first / median / max) | loaded / unchanged | req/s | p99 ms "
          "| max ms | req/s reloading | p99 ms reloading | max ms reloading "
          "| max - baseline p99 |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        b, d, n = r.baseline, r.reloading, r.reload_counts
        assert b is not None
        assert d is not None
        print(f"| {r.size} | {r.reload_s[0]:.2f} / {statistics.median(r.reload_s):.2f} / "
              f"{max(r.reload_s):.2f} | {n.get('loaded', 0):.0f} / {n.get('unchanged', 0):.0f} "
              f"| {b.rps:,.0f} | {b.p99_ms:.2f} | {b.max_ms:.2f} | {d.rps:,.0f} | "
              f"{d.p99_ms:.2f} | {d.max_ms:.2f} | {d.max_ms - b.p99_ms:+.2f} ms |")  # fmt: skip
    print("\n| table | /metrics MiB | scrape s (median / max) | req/s scraping | p99 ms scraping "
          "| max ms scraping |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r.scraping is None:
            continue
        print(f"| {r.size} | {r.metrics_mib:.1f} | {statistics.median(r.scrape_s):.3f} / "
              f"{max(r.scrape_s):.3f} | {r.scraping.rps:,.0f} | {r.scraping.p99_ms:.2f} | "
              f"{r.scraping.max_ms:.2f} |")  # fmt: skip


def print_goal(rows: list[Row]) -> None:
    """The issue's done-when, on the 2,000 x 20 table if it ran."""
    for r in rows:
        if r.size != "2000x20" or r.baseline is None or r.reloading is None:
            continue
        gap = r.reloading.max_ms - r.baseline.p99_ms
        rss = max(r.rss_start_mib, r.rss_after_mib) * MIB / 1e6
        ratio = r.check_s / r.csafe_wall_s
        print(f"\n2000x20: worst during reloads - baseline p99 = {gap:.2f} ms (goal <= 20): "
              f"{'met' if gap <= 20 else 'NOT met'}; router RSS {rss:.0f} MB (goal < 150): "
              f"{'met' if rss < 150 else 'NOT met'}; check {ratio:.2f}x CSafeLoader's process"
              f" (goal <= 1.5): {'met' if ratio <= 1.5 else 'NOT met'}")  # fmt: skip


def write_json(rows: list[Row], args: argparse.Namespace) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": vars(args), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [asdict(r) for r in rows],
    }  # fmt: skip
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, 5 s")
    parser.add_argument("--sizes", help=f"comma-separated, of {', '.join(s.name for s in SIZES)}")
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--baseline-s", type=float, default=None, help="default 15 (quick 5)")
    args = parser.parse_args(argv)
    names = args.sizes.split(",") if args.sizes else QUICK if args.quick else None
    unknown = set(names or ()) - {s.name for s in SIZES}
    if unknown:
        parser.error(f"unknown sizes: {', '.join(sorted(unknown))}")
    args.sizes = [s.name for s in SIZES if names is None or s.name in names]
    if args.baseline_s is None:
        args.baseline_s = 5.0 if args.quick else 15.0
    args.warm_up_s = 1.0 if args.quick else 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: `make bench-tables` installs it", file=sys.stderr)
            return 1
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="model-router-tables-") as name:
        tmp = Path(name)
        backend, unused = pb.free_port(), pb.free_port()
        nginx = pb.backend(tmp, backend, unused)
        try:
            pb.wait_port(backend)
            for size in (s for s in SIZES if s.name in args.sizes):
                before = cpu_seconds(nginx)
                with tempfile.TemporaryDirectory(dir=tmp, prefix=f"{size.name}-") as sub:
                    rows.append(bench_size(size, Path(sub), backend, args))
                rows[-1].outside_cpu_pct = outside_percent(before, cpu_seconds(nginx))
                write_json(rows, args)  # after each size: a long sweep cut short keeps them
        finally:
            pb.stop(nginx)
            if rows:
                print_tables(rows)
                print_goal(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
