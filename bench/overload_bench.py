"""Overload: what the router's default limits do to a crowd and to a slowloris attack.

    python bench/overload_bench.py [--clients 10000] [--slowloris 5000] [--duration 20]
                                   [--delay 1.0] [--quick]

One `model-router serve` (one process, the default limits of contract section 10:
`max_in_flight` 1024 and `queue_s` 1 per version, `server.max_connections` 10000; routing
log to a file) per part:

- (a) a crowd: --clients asyncio clients in this script, all started at once, each opens one
  connection, sends one GET with `Connection: close` and reads the answer to its end (60 s
  at most). The backend is a small aiohttp app in a process of its own that answers after
  --delay seconds, so at most 1024 requests are in flight and the rest wait their turn for
  up to a second, then get 503 `overloaded`. Counted per client: 200, 503 `overloaded`
  (its JSON code, with `Retry-After: 1`), other answers, and dropped (refused, reset, closed
  without a whole answer, or no answer within 60 s). A client that waits in the listen
  backlog is not dropped: it is only slow to connect. Afterwards the router is stopped with
  SIGTERM and its log must hold one request record per answered request, status for status.
- (b) slowloris: the nginx static backend of proxy_bench.py; wrk (one thread, 16
  connections, proxy_bench's POST script) measures the ordinary clients for --duration
  seconds with no attack (the baseline), then again while --slowloris connections each send
  the head `GET /models/m/x HTTP/1.1` one byte a second and never finish it. Reported:
  req/s, p50, p99 and their ratios to the baseline, and what became of the slow connections
  (still held, or closed by the router: answered 408, closed, reset).

Throughout, the router's resident memory (VmRSS in /proc) is read every 0.2 s; in (a) also
the admin /metrics every 0.5 s, for the largest `model_router_upstream_in_flight` and
`_queued` seen (not in (b): a scrape is work for the router's loop while wrk measures). The
CPU time of the router, the backend, wrk, this script and the whole machine is taken around
each measurement; when processes outside the bench used more than 15% of a core meanwhile, a
warning says that the numbers are suspect (all of them share the machine's cores).

Goals: none dropped in (a), the ordinary p99 under attack within 2x of the baseline in (b).
Prints a markdown table per part and writes the numbers to bench/results/overload.json.
Everything runs on loopback and stops by itself; its processes are stopped on the way out,
Ctrl-C and errors included. --quick: 1000 clients, 500 slowloris, 5 s (a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import errno
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import proxy_bench as pb  # the wrk script, the nginx backend and free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "overload.json"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 60.0  # a crowd client that has no whole answer by then is dropped
RSS_EVERY_S = 0.2
METRICS_EVERY_S = 0.5
WARM_UP_S = 2
WRK_CONNECTIONS = 16
OTHER_LIMIT = 15  # percent of one core used by processes outside the bench: a noisy run
HEADER_TIMEOUT_S = 60  # the router's, for a head that never ends (408)
MIB = 2**20
T = TypeVar("T")

REQUEST = b"GET /models/m/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
# A slowloris head: one byte a second, never ended; past the first lines it pads.
SLOW_HEAD = b"GET /models/m/x HTTP/1.1\r\nHost: a\r\n"
SLOW_PAD = b"X-Pad: x\r\n"

# The slow backend, written to backend.py and run as `python backend.py PORT DELAY_S`: any
# method on any path answers a small JSON body after the delay. It stops on SIGTERM or
# SIGINT, or when its parent is gone.
BACKEND = """
import asyncio, os, signal, sys
from aiohttp import web

port, delay = int(sys.argv[1]), float(sys.argv[2])
ANSWER = b'{"prediction": 1, "probability": 0.97, "ok": true}'

async def answer(request):
    await request.read()
    await asyncio.sleep(delay)
    return web.Response(body=ANSWER, content_type="application/json")

async def main():
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
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

BANNER = re.compile(r"serving on (\S+) \(admin (\S+?)\).*open files (\d+)")
SAID_ALWAYS = re.compile(r"serving on |^model-router: stopping")  # not worth showing
METRIC = re.compile(r"^(?P<name>model_router_\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")


class BenchError(Exception):
    """Something that leaves no results to report."""


# --- processes ---------------------------------------------------------------------------


def raise_open_files() -> int:
    """This script holds a socket per client: the soft open-files limit goes up to the hard."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def stop_group(proc: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM to the process group `proc` leads, SIGKILL after `timeout`; its exit code."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return int(proc.returncode)


def wait_port(port: int, proc: subprocess.Popen[Any], what: str) -> None:
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


@contextmanager
def slow_backend(tmp: Path, delay_s: float) -> Iterator[tuple[int, int]]:
    """The aiohttp backend answering after `delay_s`, in a process group of its own: its
    port and pid."""
    script = tmp / "backend.py"
    script.write_text(BACKEND)
    port = pb.free_port()
    argv = [sys.executable, str(script), str(port), f"{delay_s:g}"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, proc, "the slow backend")
        yield port, proc.pid
    finally:
        stop_group(proc)


@contextmanager
def fast_backend(tmp: Path) -> Iterator[tuple[int, int]]:
    """proxy_bench's nginx static backend (two ports; the first is used): port and pid."""
    if shutil.which("nginx") is None:
        raise BenchError("nginx is not installed: `make bench-overload` installs it (as root)")
    port, unused = pb.free_port(), pb.free_port()
    proc = pb.backend(tmp, port, unused)
    try:
        wait_port(port, proc, "nginx")
        yield port, proc.pid
    finally:
        pb.stop(proc)


def table(tmp: Path, backend_port: int, name: str) -> Path:
    """A routing table with one model `m` on one version, and every limit left default."""
    path = tmp / f"routes-{name}.yaml"
    path.write_text(
        f'server: {{listen: "{LOOPBACK}:0", admin_listen: "{LOOPBACK}:0"}}\n'
        "models:\n"
        "  m:\n"
        "    versions:\n"
        f'      v1: {{url: "http://{LOOPBACK}:{backend_port}"}}\n'
        "    split: {v1: 100}\n"
    )
    return path


class Router:
    """`model-router serve` on free ports (read from its banner) in a process group of its
    own, logging to `log`; its stderr is kept."""

    def __init__(self, config: Path, log: Path) -> None:
        argv = [sys.executable, "-m", "router", "serve", "--config", str(config),
                "--listen", f"{LOOPBACK}:0", "--admin-listen", f"{LOOPBACK}:0",
                "--log", str(log)]  # fmt: skip
        self.log = log
        self.stderr: list[str] = []
        self._banner: queue.Queue[re.Match[str] | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )  # fmt: skip
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
        self.url, self.admin_url = found.group(1), found.group(2)
        self.port = int(self.url.rpartition(":")[2])
        self.open_files = int(found.group(3))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            found = BANNER.search(line)
            if found:
                self._banner.put(found)
        self._banner.put(None)

    def rss_bytes(self) -> int | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(found.group(1)) * 1024 if found else None

    def stop(self) -> int:
        code = stop_group(self.proc)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def other_stderr(self) -> list[str]:
        """What the router said besides its banner and its stopping: warnings, tracebacks."""
        return [line.rstrip() for line in self.stderr if not SAID_ALWAYS.search(line)]


@contextmanager
def running_router(config: Path, log: Path) -> Iterator[Router]:
    router = Router(config, log)
    try:
        yield router
    finally:
        router.stop()


# --- watching the router ------------------------------------------------------------------


class Every(threading.Thread):
    """Calls `fn` every `seconds` until `finish`."""

    def __init__(self, seconds: float, fn: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.seconds, self.fn = seconds, fn
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.fn()
            if self._done.wait(self.seconds):
                return

    def finish(self) -> None:
        self._done.set()
        self.join()


class Watch:
    """The router's VmRSS every 0.2 s and, with `gauges`, its in-flight and queued gauges
    every 0.5 s (not while wrk measures: a scrape is work for the router's loop)."""

    def __init__(self, router: Router, gauges: bool = False) -> None:
        self.router = router
        self.began = time.monotonic()
        self.rss: list[tuple[float, int]] = []
        self.gauges_max = {"in_flight": 0, "queued": 0}
        self._threads = [Every(RSS_EVERY_S, self._rss)]
        if gauges:
            self._threads.append(Every(METRICS_EVERY_S, self._gauges))
        for thread in self._threads:
            thread.start()

    def now(self) -> float:
        return time.monotonic() - self.began

    def _rss(self) -> None:
        rss = self.router.rss_bytes()
        if rss is not None:
            self.rss.append((self.now(), rss))

    def _gauges(self) -> None:
        with suppress(OSError):  # a router too busy to answer in time: skip this one
            metrics = scrape(self.router.admin_url, timeout=2)
            for key in ("in_flight", "queued"):
                seen = int(sum(metrics.get(f"model_router_upstream_{key}", {}).values()))
                self.gauges_max[key] = max(self.gauges_max[key], seen)

    def rss_mib(self, since: float = 0.0, until: float = math.inf) -> tuple[float, float]:
        """The last and the largest RSS sampled between `since` and `until`, in MiB."""
        window = [b for t, b in self.rss if since <= t <= until] or [b for _, b in self.rss[-1:]]
        return (window[-1] / MIB, max(window) / MIB) if window else (0.0, 0.0)

    def finish(self) -> None:
        for thread in self._threads:
            thread.finish()


def cpu_seconds(pid: int) -> float:
    """User and system time process `pid` and its children (nginx's worker) have used so
    far; 0 for a process that is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) for child in children)


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far, all cores (/proc/stat)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait


class CpuMeter:
    """CPU used between `__init__` and `stop`, in percent of one core: by the processes in
    `pids`, this script, wrk (its children reaped meanwhile), and `other`: the machine's busy
    time minus all of these, that is processes that are not the bench's. Other work on the
    machine makes the latencies of that run suspect."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.began = time.monotonic()
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        own, children = (resource.getrusage(who) for who in
                         (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # fmt: skip
        used = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        used["this script"] = own.ru_utime + own.ru_stime
        used["wrk"] = children.ru_utime + children.ru_stime
        return {**used, "machine": busy_seconds()}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.began
        end = self._read()
        used = {k: 100 * (end[k] - self.start[k]) / wall for k in end}
        used["other"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
        return {k: round(v) for k, v in used.items()}


def scrape(admin_url: str, timeout: float = 10) -> dict[str, dict[str, float]]:
    """The router's own metrics: name -> labels (as written) -> value."""
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=timeout) as answer:
        text = answer.read().decode()
    metrics: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        found = METRIC.match(line)
        if found:
            metrics.setdefault(found["name"], {})[found["labels"]] = float(found["value"])
    return metrics


def overloaded_by_reason(admin_url: str) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for labels, value in scrape(admin_url).get("model_router_overloaded_total", {}).items():
        reason = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("reason", "?")
        counts[reason] += int(value)
    return dict(sorted(counts.items()))


def percentiles(values: Sequence[float], scale: float = 1.0) -> dict[str, float] | None:
    """p50, p99 and max (nearest rank), times `scale`; None for no values."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * scale

    return {"p50": rank(50), "p99": rank(99), "max": ordered[-1] * scale}


def read_log(path: Path) -> dict[str, Any]:
    """The request records of the routing log: by status and outcome, the time they spent in
    the router (`latency_ms`) by status, and the time the 200s waited on the backend."""
    statuses: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    latency: dict[int, list[float]] = {200: [], 503: []}
    upstream: list[float] = []
    for line in path.read_bytes().splitlines() if path.exists() else []:
        record = orjson.loads(line) if line else {}
        if record.get("event") == "request":
            statuses[record.get("status", 0)] += 1
            outcomes[record.get("outcome", "?")] += 1
            latency.setdefault(record.get("status", 0), []).append(record["latency_ms"])
            if record.get("status") == 200 and record.get("upstream_ms") is not None:
                upstream.append(record["upstream_ms"])
    return {"requests": statuses.total(), "by_status": dict(sorted(statuses.items())),
            "by_outcome": dict(sorted(outcomes.items())),
            "latency_ms": {str(k): percentiles(latency[k]) for k in (200, 503)},
            "upstream_ms_200": percentiles(upstream)}  # fmt: skip


# --- (a) the crowd ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    kind: str  # "200", "503 overloaded", "404 unknown_model", "dropped: ECONNRESET", ...
    status: int | None  # None: dropped
    connect_s: float | None  # from the client's start to its connection open; None: never
    answer_s: float | None  # from then (the request sent) to the end of the answer, or the drop


def failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no whole answer in {CLIENT_TIMEOUT_S:g} s"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def error_code(body: bytes) -> str | None:
    """The `code` of the router's own JSON error, or None for any other body."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def classify(raw: bytes) -> tuple[str, int | None]:
    """An answer read to its end: its kind and status, or a drop."""
    head, found, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if not found or len(parts) < 2 or not parts[1].isdigit():
        return ("dropped: closed without answer" if not raw else "dropped: torn answer"), None
    status = int(parts[1])
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in lines[1:])
    )
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and len(body) < int(length):
        return "dropped: answer cut short", None
    code = error_code(body)
    if status == 503 and code == "overloaded" and headers.get(b"retry-after") != b"1":
        return "503 overloaded without Retry-After: 1", status
    return (f"{status} {code}" if code else str(status)), status


async def one_client(port: int) -> Answer:
    began = time.monotonic()
    connected = None
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            connected = time.monotonic()
            try:
                writer.write(REQUEST)
                raw = await reader.read()  # to the end: the request said Connection: close
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        kind, status = f"dropped: {failure(exc)}", None
    else:
        kind, status = classify(raw)
    if connected is None:
        return Answer(kind, status, None, None)
    return Answer(kind, status, connected - began, time.monotonic() - connected)


async def crowd(port: int, clients: int) -> tuple[list[Answer], float]:
    """`clients` clients at once; their answers and the wall time they took."""
    began = time.monotonic()
    answers = await asyncio.gather(*(one_client(port) for _ in range(clients)))
    return answers, time.monotonic() - began


def part_a(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    print(f"(a) {args.clients:,} clients at once, backend answering after {args.delay:g} s",
          flush=True)  # fmt: skip
    with ExitStack() as stack:
        port, backend = stack.enter_context(slow_backend(tmp, args.delay))
        router = stack.enter_context(running_router(table(tmp, port, "a"), tmp / "a.jsonl"))
        time.sleep(0.5)
        watch = Watch(router, gauges=True)
        try:
            meter = CpuMeter({"router": router.proc.pid, "backend": backend})
            answers, wall_s = run(crowd(router.port, args.clients))
            cpu = meter.stop()
            time.sleep(0.5)
        finally:
            watch.finish()
        reasons = overloaded_by_reason(router.admin_url)
        exit_code = router.stop()
    result = crowd_result(answers, wall_s, watch, read_log(router.log))
    result.update(cpu_pct=cpu, overloaded_total=reasons, router_exit=exit_code,
                  router_open_files=router.open_files,
                  router_stderr=router.other_stderr()[-20:])  # fmt: skip
    return result


def crowd_result(
    answers: list[Answer], wall_s: float, watch: Watch, log: dict[str, Any]
) -> dict[str, Any]:
    kinds = Counter(a.kind for a in answers)
    answered = Counter(a.status for a in answers if a.status is not None)
    idle, _ = watch.rss_mib(until=0.3)
    end, peak = watch.rss_mib()
    ok, overloaded = kinds["200"], kinds["503 overloaded"]
    dropped = sum(n for k, n in kinds.items() if k.startswith("dropped"))
    return {
        "clients": len(answers), "wall_s": wall_s, "outcomes": dict(kinds.most_common()),
        "ok": ok, "overloaded": overloaded, "other": len(answers) - ok - overloaded - dropped,
        "dropped": dropped, "answered": answered.total(),
        "answer_ms": {str(s): percentiles([a.answer_s or 0 for a in answers if a.status == s],
                                          1000) for s in (200, 503)},
        "connect_s": percentiles([a.connect_s for a in answers if a.connect_s is not None]),
        "rss_mib": {"idle": idle, "peak": peak, "end": end},
        "gauges_max": dict(watch.gauges_max), "log": log,
        "log_matches": log["by_status"] == dict(sorted(answered.items())),
    }  # fmt: skip


# --- (b) slowloris ------------------------------------------------------------------------


class Slowloris:
    """`n` connections that send a head one byte a second and never end it."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.sent: dict[socket.socket, int] = {}  # the open ones: bytes sent so far
        self.open_failed: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()  # closed by the router, by how

    async def open(self) -> float:
        """Connect them all at once; the seconds it took."""
        began = time.monotonic()
        await asyncio.gather(*(self._connect() for _ in range(self.n)))
        return time.monotonic() - began

    async def _connect(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, self.port))
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.open_failed[failure(exc)] += 1
            return
        self.sent[sock] = 0

    async def drip(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.tick()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def tick(self) -> None:
        """One more byte to each open connection; note those the router has ended."""
        for sock in list(self.sent):
            ended = self._step(sock)
            if ended is not None:
                self.ended[ended] += 1
                del self.sent[sock]
                sock.close()

    def _step(self, sock: socket.socket) -> str | None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            data = None
        except OSError as exc:
            return failure(exc)
        if data is not None:
            status = data.split(b" ", 2)[1].decode(errors="replace") if b" " in data else "?"
            return f"answered {status}" if data else "closed without answer"
        at = self.sent[sock]
        pad = (at - len(SLOW_HEAD)) % len(SLOW_PAD)
        byte = SLOW_HEAD[at : at + 1] if at < len(SLOW_HEAD) else SLOW_PAD[pad : pad + 1]
        try:
            sock.send(byte)
        except OSError as exc:
            return failure(exc)
        self.sent[sock] = at + 1
        return None

    def close(self) -> None:
        for sock in self.sent:
            sock.close()


def measure_wrk(
    url: str, seconds: int, script: Path, pids: dict[str, int] | None = None
) -> dict[str, Any]:
    """wrk's numbers, and with `pids` the CPU that they and the rest used meanwhile."""
    meter = CpuMeter(pids or {})
    try:
        result = pb.wrk(url, WRK_CONNECTIONS, seconds, script)
    except subprocess.CalledProcessError as error:
        raise BenchError(f"wrk failed (exit {error.returncode}):\n{error.stderr}") from error
    if result is None:
        raise BenchError("wrk gave no result")
    return {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
            "errors": result.errors, "non2xx": result.non2xx, "cpu_pct": meter.stop()}  # fmt: skip


async def attack(
    router: Router, args: argparse.Namespace, url: str, script: Path, watch: Watch,
    pids: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    """wrk for --duration seconds while the slowloris connections drip."""
    slow = Slowloris(router.port, args.slowloris)
    stop = asyncio.Event()
    try:
        open_s = await slow.open()
        dripping = asyncio.create_task(slow.drip(stop))
        await asyncio.sleep(1.0)
        began = watch.now()
        measured = await asyncio.to_thread(measure_wrk, url, args.duration, script, pids)
        _, measured["rss_peak_mib"] = watch.rss_mib(since=began)
        stop.set()
        await dripping
        slow.tick()
    finally:
        stop.set()
        slow.close()
    return {"wrk": measured, "opened": args.slowloris - slow.open_failed.total(),
            "open_failed": dict(slow.open_failed), "open_s": open_s,
            "held_at_end": len(slow.sent), "closed_by_router": dict(slow.ended),
            "bytes_sent_each_max": max(slow.sent.values(), default=0)}  # fmt: skip


def part_b(args: argparse.Namespace, tmp: Path, script: Path) -> dict[str, Any]:
    print(f"(b) wrk -c{WRK_CONNECTIONS} for {args.duration} s, without and then with "
          f"{args.slowloris:,} slowloris connections", flush=True)  # fmt: skip
    with ExitStack() as stack:
        port, nginx = stack.enter_context(fast_backend(tmp))
        router = stack.enter_context(running_router(table(tmp, port, "b"), tmp / "b.jsonl"))
        url = f"{router.url}/models/m/predict"
        pids = {"router": router.proc.pid, "backend": nginx}
        time.sleep(0.5)
        watch = Watch(router)
        try:
            measure_wrk(url, WARM_UP_S, script)
            began = watch.now()
            baseline = measure_wrk(url, args.duration, script, pids)
            _, baseline["rss_peak_mib"] = watch.rss_mib(since=began)
            under = run(attack(router, args, url, script, watch, pids))
        finally:
            watch.finish()
        exit_code = router.stop()
    attacked = under.pop("wrk")
    ratio = {k: attacked[k] / baseline[k] if baseline[k] else math.nan
             for k in ("rps", "p50_ms", "p99_ms", "rss_peak_mib")}  # fmt: skip
    return {"baseline": baseline, "attack": attacked, "ratio": ratio, "slowloris": under,
            "log": read_log(router.log), "router_exit": exit_code,
            "router_open_files": router.open_files,
            "router_stderr": router.other_stderr()[-20:]}  # fmt: skip


# --- the report ---------------------------------------------------------------------------


def ms(p: dict[str, float] | None) -> str:
    return "-" if p is None else f"{p['p50']:,.0f} / {p['p99']:,.0f} / {p['max']:,.0f} ms"


def counts(found: dict[Any, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in found.items()) or "none"


def table_a(a: dict[str, Any]) -> str:
    connect = a["connect_s"]
    others = {k: v for k, v in a["outcomes"].items() if k not in ("200", "503 overloaded")}
    rows = [
        ("clients (one GET each, all at once)", f"{a['clients']:,}"),
        ("wall time", f"{a['wall_s']:.1f} s"),
        ("200", f"{a['ok']:,}"),
        ("503 overloaded (Retry-After: 1)", f"{a['overloaded']:,}"),
        ("other answers", f"{a['other']:,}"),
        ("dropped (goal: 0)", f"{a['dropped']:,}"),
        ("other answers and drops, by kind", counts(others)),
        ("connect p50 / p99 / max", "-" if connect is None else
         f"{connect['p50']:.2f} / {connect['p99']:.2f} / {connect['max']:.2f} s"),
        ("200: answer after connect p50 / p99 / max", ms(a["answer_ms"]["200"])),
        ("503: answer after connect p50 / p99 / max", ms(a["answer_ms"]["503"])),
        ("router log: 200 in router p50 / p99 / max", ms(a["log"]["latency_ms"]["200"])),
        ("router log: 200 on backend p50 / p99 / max", ms(a["log"]["upstream_ms_200"])),
        ("router log: 503 in router p50 / p99 / max", ms(a["log"]["latency_ms"]["503"])),
        ("CPU during the crowd, % of one core",
         counts({k: v for k, v in a["cpu_pct"].items() if k != "wrk"})),
        ("router RSS idle / peak / end", "{idle:.0f} / {peak:.0f} / {end:.0f} MiB"
         .format(**a["rss_mib"])),
        ("router in flight / queued (largest seen)",
         f"{a['gauges_max']['in_flight']:,} / {a['gauges_max']['queued']:,}"),
        ("model_router_overloaded_total by reason", counts(a["overloaded_total"])),
        ("log: request records by status", f"{a['log']['requests']:,} ("
         f"{counts(a['log']['by_status'])})"),
        ("one record per answered request", f"{'yes' if a['log_matches'] else 'NO'} "
         f"({a['answered']:,} answered)"),
    ]  # fmt: skip
    return "| (a) crowd | |\n| --- | ---: |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def table_b(b: dict[str, Any], slowloris: int) -> str:
    lines = [
        "| (b) ordinary clients | req/s | p50 ms | p99 ms | errors | non-2xx | "
        "router RSS peak MiB | CPU %: router, other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in (("no attack", b["baseline"]), (f"{slowloris:,} slowloris", b["attack"])):
        lines.append(
            f"| {label} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']:,} | {r['non2xx']:,} | {r['rss_peak_mib']:.0f} | "
            f"{r['cpu_pct']['router']}, {r['cpu_pct']['other']} |"
        )
    x = b["ratio"]
    lines.append(
        f"| attack / no attack | {x['rps']:.2f}x | {x['p50_ms']:.2f}x | "
        f"{x['p99_ms']:.2f}x (goal: 2x at most) | | | {x['rss_peak_mib']:.2f}x | |"
    )
    s = b["slowloris"]
    lines += ["", "| slowloris connections | |", "| --- | ---: |",
              f"| opened (in {s['open_s']:.1f} s) | {s['opened']:,} |",
              f"| failed to open | {counts(s['open_failed'])} |",
              f"| still held at the end | {s['held_at_end']:,} |",
              f"| closed by the router | {counts(s['closed_by_router'])} |",
              f"| head bytes sent per connection | {s['bytes_sent_each_max']} |",
              f"| log: request records by status | {b['log']['requests']:,} "
              f"({counts(b['log']['by_status'])}) |"]  # fmt: skip
    return "\n".join(lines)


def busy(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The measurements during which processes outside the bench kept the machine busy."""
    found = []
    for what, cpu in (("(a) the crowd", a["cpu_pct"]), ("(b) no attack", b["baseline"]["cpu_pct"]),
                      ("(b) attack", b["attack"]["cpu_pct"])):  # fmt: skip
        if cpu["other"] > OTHER_LIMIT:
            found.append(
                f"during {what}, processes outside the bench used {cpu['other']}% of a core: "
                "the machine was not quiet, so these numbers are suspect"
            )
    return found


def report(a: dict[str, Any], b: dict[str, Any], args: argparse.Namespace) -> None:
    print("\n" + table_a(a) + "\n\n" + table_b(b, args.slowloris))
    print(f"""
(a) connect: from a client's start to its connection open (a SYN the full listen backlog
    dropped is sent again after 1 s); answer after connect: from the request sent to the end
    of its answer (time in the router's accept backlog included); in router, on backend: the
    log's latency_ms and upstream_ms. The clients, the router and the backend share the
    machine's {os.cpu_count()} cores.
(b) a head still unfinished after the router's header timeout ({HEADER_TIMEOUT_S} s by default) is
    closed; an attack of {args.duration} s ends with its connections still held, as expected:
    they cost memory, not throughput. One run each: p99 varies from run to run.""")
    for warning in busy(a, b):
        print(f"\nWARNING: {warning}")
    for part, found in (("a", a), ("b", b)):
        if found["router_exit"] != 0:
            print(f"\nWARNING: ({part}) the router exited with {found['router_exit']} on SIGTERM")
        if found["router_stderr"]:
            print(f"\n({part}) the router's stderr (last 20 lines):")
            print("\n".join(f"    {line}" for line in found["router_stderr"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {**vars(args), "wrk_connections": WRK_CONNECTIONS,
                     "client_timeout_s": CLIENT_TIMEOUT_S},
        "warnings": busy(a, b), "crowd": a, "slowloris": b,
    }, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")  # fmt: skip
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


# --- main ---------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`coro` on uvloop where it is installed (as the router), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def bench(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: `make bench-overload` installs it (as root)")
    limit = raise_open_files()
    if limit < args.clients + 100 or limit < args.slowloris + 100:
        raise BenchError(f"this script may open only {limit} files; raise the hard limit")
    with tempfile.TemporaryDirectory(prefix="overload-bench-") as name:
        tmp = Path(name)
        script = tmp / "post.lua"
        script.write_text(pb.WRK_SCRIPT)
        a = part_a(args, tmp)
        print(f"    200 {a['ok']:,}, 503 overloaded {a['overloaded']:,}, other {a['other']:,}, "
              f"dropped {a['dropped']:,} in {a['wall_s']:.1f} s", flush=True)  # fmt: skip
        b = part_b(args, tmp, script)
    report(a, b, args)


def interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--duration", type=int, help="seconds per wrk run in (b); 20")
    parser.add_argument("--clients", type=int, help="the crowd in (a); 10000")
    parser.add_argument("--slowloris", type=int, help="slow connections in (b); 5000")
    parser.add_argument("--delay", type=float, default=1.0, help="the slow backend's, seconds")
    parser.add_argument("--quick", action="store_true", help="1000 clients, 500 slowloris, 5 s")
    args = parser.parse_args(argv)
    for key, full, quick in (("duration", 20, 5), ("clients", 10_000, 1000),
                             ("slowloris", 5000, 500)):  # fmt: skip
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.duration < 1 or args.clients < 1 or args.slowloris < 1 or args.delay < 0:
        parser.error("--duration, --clients and --slowloris must be 1 or more, --delay 0+")
    signal.signal(signal.SIGTERM, interrupted)  # stop the children on the way out
    try:
        bench(args)
    except BenchError as error:
        print(f"overload_bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("overload_bench: interrupted; nothing written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
