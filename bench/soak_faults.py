"""Fault soak (issue 21, contract section 13): load through 2 workers while faults strike on
a schedule; at the end every answered request has exactly one record, or is counted as
dropped, and nothing leaks.

    python bench/soak_faults.py [--connections 64] [--workers 2] [--phase 10] [--faults 40]

Two nginx backends (v1 90 %, v2 10 %, v1 the fallback), `model-router serve --workers 2`,
and wrk POSTing with a unique X-Request-ID each; wrk notes the id and status of every
answer it gets. Three phases of load: `--phase` s calm, `--faults` s of faults, `--phase` s
calm again. The faults, at these seconds into the faults phase:

- 2: the log's filesystem fills (a 256 MiB tmpfs mounted for the run; skipped, with the
  reason, where mounting is not allowed); 8: it frees;
- 10: the v2 backend is killed; 14: started again;
- 17: a worker is SIGKILLed (the supervisor starts another);
- 22: a SIGHUP storm, 40 signals in 2 s, the table's split edited between them;
- 25: 500 slowloris feedback posts, one byte every 3 s (body_timeout_s is 2 s).

Then SIGTERM, and the routing log and the workers' metric files are read. Each answered
request's record is looked up by its id; a missing one must be explained by
`model_router_log_records_dropped_total{reason}` or by the SIGKILL (a killed worker loses
what it answered in its last FLUSH_S, 50 ms, that no counter can say). Descriptors and
memory of the worker that lived through it all, and of the supervisor, are compared at a
quiet moment before and after the faults. Prints a table, writes
bench/results/soak_faults.json, and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import multiprocess

sys.path.insert(0, str(Path(__file__).parent))
import proxy_bench as pb

ROOT = Path(__file__).resolve().parent.parent
FLUSH_S = 0.05  # router/observe/sink.py: a record reaches the file within this long
SLOWLORIS = 500
SPLITS = ({"v1": 90, "v2": 10}, {"v1": 80, "v2": 20})

WRK_SCRIPT = r"""
local counter, threads, out = 0, 0, nil
function setup(thread)
  threads = threads + 1
  thread:set("prefix", PREFIX .. "-" .. threads)
end
function init(args)
  out = io.open(IDS .. "." .. prefix, "w")
  out:setvbuf("line")
  wrk.method = "POST"
  wrk.body = '{"features": [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001]}'
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  counter = counter + 1
  wrk.headers["X-Request-ID"] = prefix .. "-" .. counter
  wrk.headers["X-User-ID"] = "user-" .. math.random(1, 1000000)
  return wrk.format()
end
function response(status, headers, body)
  local rid = headers["X-Request-ID"] or headers["x-request-id"] or "?"
  out:write(rid .. " " .. status .. " " .. os.time() .. "\n")
end
"""


@dataclass
class Run:
    """What the run saw, for the table at the end."""

    tmp: Path
    log_dir: Path
    tmpfs: str | None = None  # why the disk-full fault was skipped, or None when it ran
    events: list[str] = field(default_factory=list)
    killed_worker: int | None = None
    at: dict[str, float] = field(default_factory=dict)  # wall-clock time of each fault
    slowloris: collections.Counter[str] = field(default_factory=collections.Counter)
    quiet: dict[str, dict[str, float]] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {what}")
        print(f"soak-faults: {what}", file=sys.stderr, flush=True)


def mount_tmpfs(run: Run) -> None:
    """The log's own small filesystem, so that it can be filled for real."""
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(run.log_dir)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        stderr = getattr(exc, "stderr", "") or str(exc)
        run.tmpfs = f"cannot mount a tmpfs ({stderr.strip()}): the disk-full fault is skipped"
        run.note(run.tmpfs)


def fill(run: Run) -> Path | None:
    """Fill the log's filesystem to the last byte; the file that does it, to free it."""
    if run.tmpfs is not None:
        return None
    filler = run.log_dir / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:  # the last partial MiB
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    run.note(f"log filesystem full ({filler.stat().st_size >> 20} MiB of filler)")
    return filler


def write_table(config: Path, tmp: Path, log: Path, ports: dict[str, int], split: int) -> None:
    shares = SPLITS[split]
    config.write_text(f"""
server: {{listen: "127.0.0.1:{ports["router"]}", admin_listen: "127.0.0.1:{ports["admin"]}",
         body_timeout_s: 2}}
log: {{path: "{log}", buffer_mb: 2}}
models:
  cancer:
    versions:
      v1: {{url: "http://127.0.0.1:{ports["v1"]}"}}
      v2: {{url: "http://127.0.0.1:{ports["v2"]}"}}
    split: {{v1: {shares["v1"]}, v2: {shares["v2"]}}}
    fallback: v1
""")


def nginx_backend(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """One version's nginx, in a session of its own so that killing it kills its workers
    too (a worker orphaned by a killed master goes on serving the port)."""
    server = (f"server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;"
              f" return 200 '{pb.BODY}'; }} }}")  # fmt: skip
    conf_dir = tmp / f"nginx-{port}"
    conf_dir.mkdir(exist_ok=True)
    conf = pb.nginx_conf(conf_dir, "", server, "1")
    return subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(conf_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def kill_backend(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def workers_of(supervisor: psutil.Process) -> list[psutil.Process]:
    return [
        p
        for p in supervisor.children()
        if p.is_running() and "multiprocessing.spawn" in " ".join(p.cmdline())
    ]


def sample(run: Run, name: str, supervisor: psutil.Process) -> None:
    """Descriptors (by kind) and memory at a quiet moment (no load for 2 s)."""
    time.sleep(2.0)
    values: dict[str, Any] = {"supervisor_fds": supervisor.num_fds(),
                              "supervisor_rss_mib": _mib(supervisor)}  # fmt: skip
    for worker in workers_of(supervisor):
        values[f"worker_{worker.pid}_fds"] = worker.num_fds()
        kinds = fd_kinds(worker.pid)
        values[f"worker_{worker.pid}_socket_fds"] = kinds.get("socket", 0)
        values[f"worker_{worker.pid}_other_fds"] = worker.num_fds() - kinds.get("socket", 0)
        states = collections.Counter(c.status for c in worker.net_connections("tcp"))
        values[f"worker_{worker.pid}_close_wait"] = states.get("CLOSE_WAIT", 0)
        values[f"worker_{worker.pid}_rss_mib"] = _mib(worker)
    run.quiet[name] = values


def fd_kinds(pid: int) -> dict[str, int]:
    """A process's descriptors by kind: socket, pipe, anon_inode:[eventfd], a file..."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        kinds[target.split(":[")[0] if ":[" in target else "file"] += 1
    return dict(kinds)


def _mib(proc: psutil.Process) -> float:
    return round(proc.memory_info().rss / 2**20, 1)


def wrk(script: Path, url: str, seconds: int, connections: int) -> subprocess.Popen[str]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def slowloris(run: Run, port: int) -> threading.Thread:
    """SLOWLORIS feedback posts that send their body a byte every 3 s; each answer's status."""

    async def one(i: int) -> str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            return f"connect {exc.__class__.__name__}"
        head = (f"POST /feedback/cancer HTTP/1.1\r\nHost: x\r\nX-Request-ID: slow-{i}\r\n"
                "Content-Type: application/json\r\nContent-Length: 64\r\n\r\n{")  # fmt: skip
        try:
            writer.write(head.encode())
            for _ in range(20):
                try:
                    line = await asyncio.wait_for(reader.readline(), 3.0)
                    return line.split(b" ")[1].decode() if line else "closed"
                except TimeoutError:
                    writer.write(b" ")
            return "no answer"
        except OSError as exc:
            return f"error {exc.__class__.__name__}"
        finally:
            writer.close()

    async def all_of_them() -> None:
        statuses = await asyncio.gather(*(one(i) for i in range(SLOWLORIS)))
        run.slowloris.update(statuses)

    thread = threading.Thread(target=asyncio.run, args=(all_of_them(),))
    thread.start()
    return thread


def faults(run: Run, supervisor: psutil.Process, backends: dict[str, Any], args: Any) -> None:
    """The schedule of the faults phase, in seconds from its start."""
    start = time.monotonic()

    def at(second: float) -> None:
        time.sleep(max(0.0, start + second - time.monotonic()))

    at(2)
    run.at["full"] = time.time()
    filler = fill(run)
    at(8)
    if filler is not None:
        filler.unlink()
        run.note("log filesystem freed")
    run.at["freed"] = time.time()
    at(10)
    kill_backend(backends["v2"])
    run.note("backend v2 killed (master and worker)")
    at(14)
    backends["v2"] = nginx_backend(run.tmp, args.ports["v2"])
    run.note("backend v2 started again")
    at(17)
    victim = workers_of(supervisor)[0]
    run.killed_worker = victim.pid
    run.at["sigkill"] = time.time()
    victim.kill()
    run.note(f"worker {victim.pid} SIGKILLed")
    at(22)
    for i in range(40):
        if i % 10 == 0:
            write_table(args.config, run.tmp, args.log, args.ports, (i // 10) % 2)
        supervisor.send_signal(signal.SIGHUP)
        time.sleep(0.05)
    run.note("40 SIGHUPs sent, the split edited 4 times between them")
    at(25)
    run.note(f"{SLOWLORIS} slowloris feedback posts")
    slowloris(run, args.ports["router"]).join()
    run.note(f"slowloris answers: {dict(run.slowloris)}")


def answered(tmp: Path) -> dict[str, tuple[str, int]]:
    """Every answer wrk got: request id -> (status, the second it came, wall clock)."""
    ids: dict[str, tuple[str, int]] = {}
    for path in tmp.glob("ids.*"):
        for line in path.read_text().splitlines():
            rid, status, second = line.split(" ")
            ids[rid] = (status, int(second))
    return ids


def classify(run: Run, missing: list[tuple[str, int]]) -> dict[str, int]:
    """Where each answer without a record came: while the disk was full (the counter's to
    explain), about the SIGKILL (nothing can count those), or elsewhere (unexplained).
    wrk's clock is whole seconds: each window is widened by 2 s."""
    where: collections.Counter[str] = collections.Counter()
    for _, second in missing:
        if run.at.get("full", 1e18) - 2 <= second <= run.at.get("freed", 0) + 2:
            where["while the disk was full"] += 1
        elif run.at["sigkill"] - 2 <= second <= run.at["sigkill"] + 2:
            where["about the SIGKILL"] += 1
        else:
            where["elsewhere"] += 1
    return dict(where)


def dropped(metrics_dir: Path) -> dict[str, float]:
    """model_router_log_records_dropped_total by reason, summed over every worker's file
    (those of the killed worker included)."""
    files = [str(p) for p in metrics_dir.glob("counter_*.db")]
    by_reason: dict[str, float] = collections.defaultdict(float)
    for family in multiprocess.MultiProcessCollector.merge(files, accumulate=False):
        if family.name == "model_router_log_records_dropped":
            for s in family.samples:
                if s.name.endswith("_total"):
                    by_reason[s.labels["reason"]] += s.value
    return dict(by_reason)


def read_records(log: Path) -> tuple[collections.Counter[str], list[str], int]:
    """Request records per request id, the lines that do not parse, and lines in all."""
    counts: collections.Counter[str] = collections.Counter()
    bad: list[str] = []
    lines = 0
    with log.open("rb") as f:
        for line in f:
            lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                bad.append(repr(line[:300]))
                continue
            if record.get("event") == "request":
                counts[record["request_id"]] += 1
    return counts, bad, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--phase", type=int, default=10, help="seconds of calm load")
    parser.add_argument("--faults", type=int, default=40, help="seconds of the faults phase")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="model-router-soak-faults-") as name:
        tmp = Path(name)
        run = Run(tmp, tmp / "logfs")
        run.log_dir.mkdir()
        mount_tmpfs(run)
        try:
            result = soak(run, args)
        finally:
            if run.tmpfs is None:
                subprocess.run(["umount", "-l", str(run.log_dir)], check=False)
    return report(run, result)


def soak(run: Run, args: Any) -> dict[str, Any]:
    tmp = run.tmp
    args.ports = {k: pb.free_port() for k in ("v1", "v2", "router", "admin")}
    args.config, args.log = tmp / "routes.yaml", run.log_dir / "routing.jsonl"
    write_table(args.config, tmp, args.log, args.ports, 0)
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    backends = {v: nginx_backend(tmp, args.ports[v]) for v in ("v1", "v2")}
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    router_err = (tmp / "router.stderr").open("w")
    router = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--config", str(args.config),
         "--workers", str(args.workers)],
        stderr=router_err, cwd=ROOT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{args.ports['router']}/models/cancer/predict"
    outputs = []
    try:
        for port in (args.ports["v1"], args.ports["v2"], args.ports["router"]):
            pb.wait_port(port)
        supervisor = psutil.Process(router.pid)
        time.sleep(1.0)
        for phase, seconds in (("calm", args.phase), ("faults", args.faults),
                               ("calm-again", args.phase)):  # fmt: skip
            script = tmp / f"{phase}.lua"
            script.write_text(f'PREFIX = "{phase}"\nIDS = "{tmp}/ids"\n' + WRK_SCRIPT)
            run.note(f"phase {phase}: {seconds} s of wrk at {args.connections} connections")
            load = wrk(script, url, seconds, args.connections)
            if phase == "faults":
                faults(run, supervisor, backends, args)
            outputs.append(load.communicate()[0])
            sample(run, f"after {phase}", supervisor)
        router.send_signal(signal.SIGTERM)
        exit_code = router.wait(timeout=60)
    finally:
        pb.stop(router)
        for proc in backends.values():
            kill_backend(proc)
        router_err.close()
    answers = answered(tmp)
    records, bad, lines = read_records(args.log)
    return {
        "answers": answers, "records": records, "bad_lines": bad, "lines": lines,
        "dropped": dropped(metrics_dir), "exit_code": exit_code, "faults_s": args.faults,
        "connections": args.connections,
        "wrk": [_wrk_summary(out) for out in outputs],
        "router_stderr": (tmp / "router.stderr").read_text().splitlines()[-20:],
    }  # fmt: skip


def _wrk_summary(out: str) -> str:
    found = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return (found.group(0) if found else "?") + (
        f"; socket errors: {errors.group(1)}" if errors else ""
    )


def report(run: Run, result: dict[str, Any]) -> int:
    answers: dict[str, tuple[str, int]] = result["answers"]
    records: collections.Counter[str] = result["records"]
    statuses = collections.Counter(status for status, _ in answers.values())
    missing = [(rid, second) for rid, (_, second) in answers.items() if records[rid] == 0]
    twice = [rid for rid in answers if records[rid] > 1]
    where = classify(run, missing)
    full = result["dropped"].get("buffer_full", 0.0)
    # What one SIGKILL can take: the answers of the killed worker not yet written, about
    # FLUSH_S of its traffic when the writer thread keeps up; shown next to the router's
    # whole rate over FLUSH_S (the killed worker had about half of it).
    rate = sum(rid.startswith("faults-") for rid in answers) / result["faults_s"]
    args_connections = result["connections"]
    before, after = run.quiet["after calm"], run.quiet["after calm-again"]
    same = [k for k in before if k in after and k.endswith(("_fds", "_rss_mib", "_wait"))]
    growth = {k: round(after[k] - before[k], 1) for k in same}
    rows = [
        ("answered requests (wrk, by id)", len(answers)),
        ("  by status", dict(statuses)),
        ("slowloris feedback posts, answers", dict(run.slowloris)),
        ("request records in the log", sum(records.values())),
        ("answered with exactly one record", len(answers) - len(missing) - len(twice)),
        ("answered with two or more records", len(twice)),
        ("answered with no record", len(missing)),
        ("  by when they were answered", where),
        ("model_router_log_records_dropped_total", result["dropped"]),
        ("the router's rate x FLUSH_S (50 ms)", math.ceil(rate * FLUSH_S)),
        ("log lines that do not parse", len(result["bad_lines"])),
        ("quiet growth, same processes (fds, MiB)", growth),
        ("supervisor exit code", result["exit_code"]),
    ]
    checks = {
        "no answer logged twice": not twice,
        "no missing record outside the disk-full window and the SIGKILL": (
            where.get("elsewhere", 0) == 0
        ),
        "records missing while the disk was full <= dropped (buffer_full)": (
            where.get("while the disk was full", 0) <= full
        ),
        "every log line parses": not result["bad_lines"],
        "every slowloris post answered 408": run.slowloris.get("408", 0) == SLOWLORIS,
        # Sockets at a quiet moment are the upstream pool's idle keep-alive connections,
        # as many as the busiest moment needed (the survivor took all the load after the
        # SIGKILL): bounded by the client connections, never CLOSE_WAIT (a peer's close
        # not acted on). Every other descriptor (files, pipes, eventfds) comes back exact.
        "no descriptor leak (same process: other fds +0, sockets <= clients + 16)": all(
            (v <= 0 if k.endswith("_other_fds") else v <= args_connections + 16)
            for k, v in growth.items()
            if k.endswith(("_other_fds", "_socket_fds"))
        ),
        "supervisor: at most 4 descriptors more": growth.get("supervisor_fds", 0) <= 4,
        "no socket left in CLOSE_WAIT": all(
            v == 0 for k, v in after.items() if k.endswith("_close_wait")
        ),
        "no memory leak (same process, RSS < +25 %)": all(
            after[k] <= before[k] * 1.25 for k in same if k.endswith("_rss_mib")
        ),
        "clean exit": result["exit_code"] == 0,
    }
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for line in result["wrk"]:
        print(f"wrk: {line}")
    if run.tmpfs:
        print(f"skipped: {run.tmpfs}")
    for check, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {check}")
    out = ROOT / "bench" / "results" / "soak_faults.json"
    out.parent.mkdir(exist_ok=True)
    record = {
        "rows": {name: value for name, value in rows},
        "checks": checks,
        "events": run.events,
        "bad_lines": result["bad_lines"][:5],
        "quiet": run.quiet,
        "router_stderr": result["router_stderr"],
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
