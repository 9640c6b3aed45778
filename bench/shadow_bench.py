"""What a shadow at 100% costs clients: throughput, p50 and p99 against the same run with none.

    python bench/shadow_bench.py [--duration 20] [--connections 16] [--rounds 2]
                                 [--primary-ms 5] [--slow-factor 10] [--max-in-flight 64]

Three small aiohttp backends, each in a process of its own, answer POST /predict with
`{"prediction": 1}` after an `asyncio.sleep`: the primary v1 and the healthy shadow after
--primary-ms, the slow shadow after --slow-factor times that. For each scenario a fresh
`model-router serve` (one process, routing log to a file) routes every user to v1 and
copies every request to v3:

- no shadow: the same table without its `shadow` block (the baseline);
- (a) healthy: v3 answers as fast as v1;
- (b) slow: v3 answers 10 times slower, so at most `max_in_flight` copies wait on it and
  the rest are dropped (`overloaded`);
- (c) down: nothing listens on v3's port (a socket bound there and never listening), so
  each copy meets a refused connection.

wrk (one thread, POST with a random X-User-ID, p50 and p99 from its `done` hook) warms up
for 2 s, then measures for --duration seconds. Meanwhile the router's resident memory
(VmRSS in /proc) is read once a second, and the CPU time of the router, the backends, wrk
and the whole machine is taken before and after. The scenarios run in rounds (no shadow,
a, b, c, no shadow, a, ...), so drift shows as a difference between the rounds' baselines.
After each run the admin /metrics is scraped for model_router_shadow_requests_total, the
router is stopped with SIGTERM, and its log is read: request records, and shadow records by
outcome and drop reason, which the counter should match.

Prints three tables (latency with ratios against the baseline of the same round and means
over the rounds; memory and copies; CPU), warns when processes outside the bench kept the
machine busy, and writes the numbers to bench/results/shadow.json. Nothing is asserted.
Exits 1, with nothing written, when wrk is missing, a backend or the router does not
start, or wrk gives no result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import proxy_bench as pb  # the same wrk script and port helper (as soak.py)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "shadow.json"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
WARM_UP_S = 2
EARLY_S = 5  # memory growth is counted from this many seconds into the measured run
OTHER_LIMIT = 10  # percent of one core used by processes outside the bench: a noisy run
MIB = 2**20

# A backend, written to backend.py in the temporary directory and run as `python backend.py
# PORT DELAY_MS`: POST /predict answers {"prediction": 1} after the delay. It stops on
# SIGTERM or SIGINT, or when its parent is gone (a bench killed with SIGKILL leaves no
# backend behind).
BACKEND = """
import asyncio, os, signal, sys
from aiohttp import web

port, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000
ANSWER = b'{"prediction": 1}'

async def predict(request):
    await request.read()
    await asyncio.sleep(delay)
    return web.Response(body=ANSWER, content_type="application/json")

async def main():
    app = web.Application()
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    while not stop.is_set() and os.getppid() == parent:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    await runner.cleanup()

try:
    import uvloop
except ImportError:
    asyncio.run(main())
else:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
"""

BANNER = re.compile(r"serving on (\S+) \(admin (\S+?)\)")
METRIC = re.compile(
    r"^model_router_shadow_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)$"
)


class BenchError(Exception):
    """Something that leaves no results to report."""


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    shadow: str | None  # the shadow's backend: "healthy", "slow", "down"; None: no shadow


SCENARIOS = (
    Scenario("baseline", "no shadow", None),
    Scenario("healthy", "(a) healthy shadow", "healthy"),
    Scenario("slow", "(b) shadow 10x slower", "slow"),
    Scenario("down", "(c) shadow down", "down"),
)


@dataclass
class Run:
    scenario: str
    round: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non2xx: int
    cpu: dict[str, float]  # percent of one core while measured: router, backends, wrk, ...
    rss_idle_mib: float
    rss_early_mib: float  # EARLY_S seconds into the measured run
    rss_end_mib: float
    rss_max_mib: float
    log_requests: int
    log_request_outcomes: dict[str, int]
    shadow_records: int
    shadow_outcomes: dict[str, int]  # "dropped" split by reason: "dropped:overloaded"
    metrics_outcomes: dict[str, int]
    router_exit: int
    rss_samples_mib: list[float] = field(repr=False)

    @property
    def rss_growth_mib(self) -> float:
        return self.rss_end_mib - self.rss_early_mib


# --- processes ---------------------------------------------------------------------------


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what}: nothing listens on port {port} after {START_TIMEOUT_S:.0f} s")


def stop(proc: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL if it is still there after `timeout`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


@contextmanager
def backend(script: Path, delay_ms: float, what: str, pids: list[int]) -> Iterator[int]:
    """The backend `script` answering after `delay_ms`, in a process of its own; its port.
    Its pid goes into `pids` (for the CPU it uses)."""
    port = pb.free_port()
    argv = [sys.executable, str(script), str(port), f"{delay_ms:g}"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
    pids.append(proc.pid)
    try:
        wait_port(port, proc, what)
        yield port
    finally:
        stop(proc)


@contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port bound and never listening: a connection there is refused, and no
    other process can take the port while the bench runs."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        yield int(s.getsockname()[1])


def table(tmp: Path, primary: int, shadow: int, with_shadow: bool, max_in_flight: int) -> Path:
    path = tmp / f"routes-{'shadow' if with_shadow else 'none'}-{shadow}.yaml"
    block = (
        f"    shadow: {{version: v3, percent: 100, max_in_flight: {max_in_flight}}}\n"
        if with_shadow
        else ""
    )
    path.write_text(
        f'server: {{listen: "{LOOPBACK}:0", admin_listen: "{LOOPBACK}:0"}}\n'
        "models:\n"
        "  m:\n"
        "    versions:\n"
        f'      v1: {{url: "http://{LOOPBACK}:{primary}"}}\n'
        f'      v3: {{url: "http://{LOOPBACK}:{shadow}", timeout_s: 2}}\n'
        "    split: {v1: 100}\n"
        "    log_response: [prediction]\n" + block
    )
    return path


class Router:
    """`model-router serve` on free ports (read from its banner), logging to `log`."""

    def __init__(self, config: Path, log: Path) -> None:
        argv = [sys.executable, "-m", "router", "serve", "--config", str(config),
                "--listen", f"{LOOPBACK}:0", "--admin-listen", f"{LOOPBACK}:0",
                "--log", str(log)]  # fmt: skip
        self.stderr: list[str] = []
        self._banner: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        # Read stderr to its end in a thread: the banner, then whatever else, so the
        # router never blocks on a full pipe.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            found = self._banner.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            found = None
        if found is None:
            self.stop()
            tail = "".join(self.stderr[-15:]).rstrip() or "(nothing on stderr)"
            raise BenchError(f"the router did not start:\n{tail}")
        self.url, self.admin_url = found

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            found = BANNER.search(line)
            if found:
                self._banner.put((found.group(1), found.group(2)))
        self._banner.put(None)

    def rss_bytes(self) -> int | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(found.group(1)) * 1024 if found else None

    def stop(self) -> int:
        code = stop(self.proc)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


class Sampler(threading.Thread):
    """The router's VmRSS once a second, from the moment it starts."""

    def __init__(self, router: Router) -> None:
        super().__init__(daemon=True)
        self.router = router
        self.samples: list[tuple[float, int]] = []
        self.began = time.monotonic()
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            rss = self.router.rss_bytes()
            if rss is not None:
                self.samples.append((time.monotonic() - self.began, rss))
            if self._done.wait(1.0):
                return

    def finish(self) -> list[tuple[float, int]]:
        self._done.set()
        self.join()
        return self.samples


# --- one run ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system time process `pid` has used so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far, all cores (/proc/stat)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait


class CpuMeter:
    """CPU used between `__init__` and `stop`, in percent of one core: the router, the
    backends, wrk and this script (the children reaped meanwhile: wrk alone), and every
    other process on the machine. `other` is what the machine spent busy minus all that:
    other work on the machine, which makes the latencies of that run suspect."""

    def __init__(self, router: int, backends: list[int]) -> None:
        self.router, self.backends = router, backends
        self._start = self._read()
        self._began = time.monotonic()

    def _read(self) -> dict[str, float]:
        own, children = (resource.getrusage(who) for who in
                         (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # fmt: skip
        return {
            "router": cpu_seconds(self.router),
            "backends": sum(cpu_seconds(pid) for pid in self.backends),
            "wrk": children.ru_utime + children.ru_stime,
            "bench": own.ru_utime + own.ru_stime,
            "machine": busy_seconds(),
        }

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._began
        end = self._read()
        used = {k: 100 * (end[k] - self._start[k]) / wall for k in end}
        used["other"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
        return {k: round(v, 1) for k, v in used.items()}


def wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, int]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = re.search(r"RESULT (\{.*\})", done.stdout)
    if done.returncode != 0 or found is None:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise BenchError(f"wrk gave no result (exit {done.returncode}):\n{tail}")
    result: dict[str, int] = orjson.loads(found.group(1))
    return result


def scrape_shadow_metrics(admin_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        found = METRIC.match(line)
        if found:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group("labels")))
            counts[labels.get("outcome", "?")] += int(float(found.group("value")))
    return dict(sorted(counts.items()))


def read_log(path: Path) -> tuple[Counter[str], Counter[str]]:
    """Request records by outcome, and shadow records by outcome ("dropped:<reason>")."""
    requests: Counter[str] = Counter()
    shadows: Counter[str] = Counter()
    if not path.exists():
        return requests, shadows
    for line in path.read_bytes().splitlines():
        if not line:
            continue
        record = orjson.loads(line)
        if record.get("event") == "request":
            requests[record.get("outcome", "?")] += 1
        elif record.get("event") == "shadow":
            outcome = record.get("outcome", "?")
            if outcome == "dropped":
                outcome = f"dropped:{record.get('drop_reason')}"
            shadows[outcome] += 1
    return requests, shadows


def measure(
    scenario: Scenario, round_no: int, config: Path, tmp: Path, args: argparse.Namespace,
    script: Path, backends: list[int],
) -> Run:  # fmt: skip
    log = tmp / f"routing-{scenario.name}-{round_no}.jsonl"
    router = Router(config, log)
    try:
        time.sleep(0.5)
        idle = router.rss_bytes() or 0
        url = f"{router.url}/models/m/predict"
        wrk(url, args.connections, WARM_UP_S, script)
        sampler = Sampler(router)
        sampler.start()
        meter = CpuMeter(router.proc.pid, backends)
        try:
            result = wrk(url, args.connections, args.duration, script)
        finally:
            samples = sampler.finish()
        cpu = meter.stop()
        time.sleep(1.0)  # copies in flight finish: the slow shadow answers in 50 ms
        metrics = scrape_shadow_metrics(router.admin_url)
    finally:
        exit_code = router.stop()
    request_outcomes, shadow_outcomes = read_log(log)
    log.unlink(missing_ok=True)
    rss = [b for _, b in samples] or [idle]
    early = [b for t, b in samples if t <= EARLY_S] or rss
    seconds = result["duration_us"] / 1e6
    return Run(
        scenario=scenario.name, round=round_no, requests=result["requests"],
        rps=result["requests"] / seconds, p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000, socket_errors=result["errors"],
        non2xx=result["non2xx"], cpu=cpu, rss_idle_mib=idle / MIB, rss_early_mib=early[-1] / MIB,
        rss_end_mib=rss[-1] / MIB, rss_max_mib=max(rss) / MIB,
        log_requests=sum(request_outcomes.values()),
        log_request_outcomes=dict(sorted(request_outcomes.items())),
        shadow_records=sum(shadow_outcomes.values()),
        shadow_outcomes=dict(sorted(shadow_outcomes.items())), metrics_outcomes=metrics,
        router_exit=exit_code, rss_samples_mib=[round(b / MIB, 1) for b in rss],
    )  # fmt: skip


# --- the report ---------------------------------------------------------------------------


def copies(run: Run) -> str:
    if run.shadow_records == 0:
        return "-"
    return ", ".join(f"{k} {v:,}" for k, v in sorted(run.shadow_outcomes.items()))


def metrics_agree(run: Run) -> bool:
    """The counter's total by outcome equals the log's shadow records by outcome."""
    logged: Counter[str] = Counter()
    for outcome, n in run.shadow_outcomes.items():
        logged[outcome.partition(":")[0]] += n
    return dict(logged) == {k: v for k, v in run.metrics_outcomes.items() if v}


def latency_table(runs: list[Run], summary: dict[str, dict[str, float]]) -> str:
    head = (f"{'scenario':<24}{'round':>6}{'req/s':>9}{'x':>6}{'p50 ms':>9}{'x':>6}"
            f"{'p99 ms':>9}{'x':>6}{'errors':>8}")  # fmt: skip
    lines = [head]
    base = {r.round: r for r in runs if r.scenario == "baseline"}
    labels = {s.name: s.label for s in SCENARIOS}
    for r in runs:
        b = base[r.round]
        lines.append(
            f"{labels[r.scenario]:<24}{r.round:>6}{r.rps:>9,.0f}{r.rps / b.rps:>6.2f}"
            f"{r.p50_ms:>9.2f}{r.p50_ms / b.p50_ms:>6.2f}{r.p99_ms:>9.2f}"
            f"{r.p99_ms / b.p99_ms:>6.2f}{r.socket_errors + r.non2xx:>8}"
        )
    lines.append("")
    for s in SCENARIOS:
        m = summary[s.name]
        lines.append(
            f"{s.label:<24}{'mean':>6}{m['rps']:>9,.0f}{m['x_rps']:>6.2f}{m['p50_ms']:>9.2f}"
            f"{m['x_p50']:>6.2f}{m['p99_ms']:>9.2f}{m['x_p99']:>6.2f}"
        )
    return "\n".join(lines)


def memory_table(runs: list[Run]) -> str:
    labels = {s.name: s.label for s in SCENARIOS}
    lines = [
        f"{'scenario':<24}{'round':>6}{'RSS MiB: idle':>14}{'5 s':>7}{'end':>7}{'max':>7}"
        f"{'growth':>8}{'requests':>10}{'copies':>9}  outcomes (log; metrics agree?)"
    ]
    for r in runs:
        check = "" if r.shadow_records == 0 else ("; yes" if metrics_agree(r) else "; NO")
        lines.append(
            f"{labels[r.scenario]:<24}{r.round:>6}{r.rss_idle_mib:>14.1f}{r.rss_early_mib:>7.1f}"
            f"{r.rss_end_mib:>7.1f}{r.rss_max_mib:>7.1f}{r.rss_growth_mib:>+8.1f}"
            f"{r.log_requests:>10,}{r.shadow_records:>9,}  {copies(r)}{check}"
        )
    return "\n".join(lines)


def cpu_table(runs: list[Run]) -> str:
    labels = {s.name: s.label for s in SCENARIOS}
    keys = ("router", "backends", "wrk", "bench", "other", "machine")
    lines = [f"{'scenario':<24}{'round':>6}" + "".join(f"{k:>10}" for k in keys)]
    for r in runs:
        lines.append(
            f"{labels[r.scenario]:<24}{r.round:>6}" + "".join(f"{r.cpu[k]:>9.0f}%" for k in keys)
        )
    return "\n".join(lines)


def summarise(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Per scenario, the mean over rounds, and its ratio to the baselines' mean."""
    means: dict[str, dict[str, float]] = {}
    for s in SCENARIOS:
        mine = [r for r in runs if r.scenario == s.name]
        means[s.name] = {
            "rps": statistics.fmean(r.rps for r in mine),
            "p50_ms": statistics.fmean(r.p50_ms for r in mine),
            "p99_ms": statistics.fmean(r.p99_ms for r in mine),
            "router_cpu_pct": statistics.fmean(r.cpu["router"] for r in mine),
            "other_cpu_pct": statistics.fmean(r.cpu["other"] for r in mine),
            "rss_growth_mib_max": max(r.rss_growth_mib for r in mine),
        }
    base = means["baseline"]
    for m in means.values():
        m["x_rps"] = m["rps"] / base["rps"]
        m["x_p50"] = m["p50_ms"] / base["p50_ms"]
        m["x_p99"] = m["p99_ms"] / base["p99_ms"]
    return means


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    unfinished = path.with_name(path.name + ".tmp")
    unfinished.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(unfinished, path)


def warnings(runs: list[Run]) -> list[str]:
    """What makes these numbers suspect: a busy machine, a router that exited badly."""
    found = []
    noisy = [r for r in runs if r.cpu["other"] > OTHER_LIMIT]
    if noisy:
        worst = max(r.cpu["other"] for r in noisy)
        found.append(f"other processes used more than {OTHER_LIMIT}% of a core in {len(noisy)} "
                     f"of {len(runs)} runs (up to {worst:.0f}%): the machine was not quiet, so "
                     "these latencies are suspect; run again")  # fmt: skip
    found += [f"the router of {r.scenario}, round {r.round}, exited with {r.router_exit} on "
              "SIGTERM" for r in runs if r.router_exit != 0]  # fmt: skip
    return found


def results(runs: list[Run], summary: dict[str, Any], args: argparse.Namespace) -> object:
    rows = []
    for r in runs:
        row = asdict(r)
        row["rss_growth_mib"] = r.rss_growth_mib
        row["metrics_agree_with_log"] = metrics_agree(r) if r.shadow_records else None
        rows.append(row)
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {**vars(args), "warm_up_s": WARM_UP_S, "early_s": EARLY_S,
                     "other_cpu_limit_pct": OTHER_LIMIT,
                     "shadow_percent": 100, "shadow_timeout_s": 2},
        "scenarios": {s.name: s.label for s in SCENARIOS},
        "warnings": warnings(runs),
        "runs": rows,
        "summary": summary,
    }  # fmt: skip


# --- main ---------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: `make bench-shadow` installs it (as root)")
    slow_ms = args.primary_ms * args.slow_factor
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shadow-bench-")))
        script = tmp / "post.lua"
        script.write_text(pb.WRK_SCRIPT)
        server = tmp / "backend.py"
        server.write_text(BACKEND)
        pids: list[int] = []
        primary = stack.enter_context(backend(server, args.primary_ms, "the primary", pids))
        ports = {
            "healthy": stack.enter_context(backend(server, args.primary_ms, "shadow (a)", pids)),
            "slow": stack.enter_context(backend(server, slow_ms, "shadow (b)", pids)),
            "down": stack.enter_context(dead_port()),
        }
        no_shadow = table(tmp, primary, ports["healthy"], False, args.max_in_flight)
        print(f"backends: v1 {args.primary_ms:g} ms; shadow v3 (a) {args.primary_ms:g} ms, "
              f"(b) {slow_ms:g} ms, (c) nothing on port {ports['down']}; wrk -c"
              f"{args.connections}, {args.duration} s per run, {args.rounds} rounds",
              flush=True)  # fmt: skip
        runs: list[Run] = []
        for round_no in range(1, args.rounds + 1):
            for s in SCENARIOS:
                config = (
                    no_shadow
                    if s.shadow is None
                    else table(tmp, primary, ports[s.shadow], True, args.max_in_flight)
                )
                run = measure(s, round_no, config, tmp, args, script, pids)
                runs.append(run)
                print(f"  {s.label:<24} round {round_no}: {run.rps:>7,.0f} req/s  "
                      f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
                      f"RSS {run.rss_early_mib:.1f} -> {run.rss_end_mib:.1f} MiB  "
                      f"router CPU {run.cpu['router']:.0f}%  other {run.cpu['other']:.0f}%  "
                      f"copies {copies(run)}", flush=True)  # fmt: skip
    report(runs, args)


def report(runs: list[Run], args: argparse.Namespace) -> None:
    summary = summarise(runs)
    print()
    print(latency_table(runs, summary))
    print()
    print(memory_table(runs))
    print()
    print(cpu_table(runs))
    cores = os.cpu_count() or 1
    print(f"""
x: against the no-shadow run of the same round (mean rows: against the mean of the no-shadow
   runs); errors: socket errors and non-2xx answers seen by wrk.
RSS: the router's, idle before the warm-up, then {EARLY_S} s into the measured run, at its end
   and the largest; growth = end - {EARLY_S} s. requests, copies: the router's log of the whole
   run, warm-up included; metrics agree: model_router_shadow_requests_total by outcome equals
   the log's shadow records.
CPU: percent of one core while measured ({cores} cores: {100 * cores}%); bench is this
   script; other is the machine's busy time minus all of these, that is processes that are
   not the bench's (a few % either way is the accounting's noise); machine is all of it.""")
    for warning in warnings(runs):
        print(f"\nWARNING: {warning}")
    write_json(RESULTS, results(runs, summary, args))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds measured per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="of all four scenarios")
    parser.add_argument("--primary-ms", type=float, default=5.0, help="v1's (and a's) delay")
    parser.add_argument("--slow-factor", type=float, default=10.0, help="(b)'s delay / v1's")
    parser.add_argument("--max-in-flight", type=int, default=64, help="the shadow's")
    args = parser.parse_args(argv)
    if args.duration < EARLY_S + 1 or args.rounds < 1 or args.connections < 1:
        parser.error(f"--duration must be {EARLY_S + 1} or more, --rounds and --connections 1+")
    signal.signal(signal.SIGTERM, interrupted)  # stop the children on the way out
    try:
        bench(args)
    except BenchError as error:
        print(f"shadow_bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shadow_bench: interrupted; nothing written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
