"""The inference protocols through the router against the same calls made directly, in one run.

    python bench/protocols_bench.py [--duration 10] [--connections 16] [--rounds 2]
                                    [--ttft-requests 500] [--token-delay-ms 5] [--workers 1]

Starts the example breast-cancer backend v1 (`python -m backends`), the OpenAI-compatible
example backend (`python -m backends.llm`, serving `llama-3-8b-v1`, a pause between streamed
tokens) and model-router in front of both (model `cancer`, and model `llama` whose version's
`upstream_model` is the served name, so the router rewrites the body's model). Then:

(a) Open Inference Protocol `infer`: wrk (one thread, a random X-User-ID) posts one row as
    OIP JSON (`inputs[0]`, FP64, shape [1, 30]) to `/v2/models/cancer/infer`, directly and
    through the router, alternating, `--rounds` times, at `--connections` connections
    (throughput) and at 1 (the latency the router adds). The backend computes a real
    prediction, so on two cores it is the bottleneck of both paths.
(b) Time to first token: `--ttft-requests` streamed chat completions one after the other,
    each way, alternating direct and routed (which goes first alternates too); an asyncio
    client (aiohttp) times from sending the request to reading the first server-sent event
    whose delta has content, then reads the rest of the answer. p50 and p95 each way and
    their difference; the goal is within 1 ms.

Prints both tables and writes them to bench/results/protocols.json. Everything runs on
loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import proxy_bench as pb  # the wrk runner and the port helpers

from backends.model import sample_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "protocols.json"
LOOPBACK = "127.0.0.1"
SERVED = "llama-3-8b-v1"
MESSAGE = "hello there world"  # answered in 4 tokens: "llama-3-8b-v1: dlrow ereht olleh"

# OIP infer of one row; ROW is put in at run time.
WRK_SCRIPT = pb.post_script(
    '\'{"id": "bench", "inputs": [{"name": "input-0", "datatype": "FP64", \' ..\n'
    '  \'"shape": [1, 30], "data": ROW}]}\''
)


@dataclass
class Ttft:
    target: str
    requests: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    last_byte_p50_ms: float


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_health(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answers GET /health on port {port} after {timeout} s")


def routing_table(tmp: Path, port: int, backend: int, llm: int) -> Path:
    config = tmp / "routes.yaml"
    config.write_text(f"""
server: {{listen: "{LOOPBACK}:{port}", admin_listen: "{LOOPBACK}:{pb.free_port()}"}}
log: {{path: "{tmp}/routing.jsonl"}}
models:
  cancer:
    versions:
      v1: {{url: "http://{LOOPBACK}:{backend}"}}
    split: {{v1: 100}}
    prediction: /outputs/0/data/0
  llama:
    versions:
      v1: {{url: "http://{LOOPBACK}:{llm}", upstream_model: {SERVED}}}
    split: {{v1: 100}}
""")
    return config


def oip_row() -> list[float]:
    return sample_rows(1)[0][0]


def check_infer(url: str) -> None:
    """One infer, to fail early if the path does not answer as the protocol says."""
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30]}]}
    body["inputs"][0]["data"] = oip_row()
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        outputs = json.loads(answer.read())["outputs"]
    if outputs[0]["name"] != "predict":
        raise RuntimeError(f"{url} answered {outputs}")


def bench_oip(direct: str, routed: str, args: argparse.Namespace, script: Path) -> list[Any]:
    for url in (direct, routed):
        check_infer(url)
        pb.wrk(url, args.connections, 2, script)  # warm-up: pools, caches
    rows = []
    for round_ in range(args.rounds):
        for connections, duration in ((args.connections, args.duration), (1, args.duration / 2)):
            for name, url in (("direct", direct), ("router", routed)):
                result = pb.wrk(url, connections, duration, script)
                if result is None:
                    raise RuntimeError(f"wrk gave no result for {name}")
                result.target = name
                rows.append({**asdict(result), "round": round_ + 1})
                print(f"  oip {name:<7} c={connections:<3} {result.rps:>8,.0f} req/s  "
                      f"p50 {result.p50_ms:6.3f} ms  p99 {result.p99_ms:6.3f} ms  "
                      f"errors {result.errors}  non-2xx {result.non2xx}", flush=True)  # fmt: skip
    return rows


async def first_token(session: aiohttp.ClientSession, url: str, model: str) -> tuple[float, float]:
    """(ms to the first event with content, ms to the end) of one streamed chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": MESSAGE}], "stream": True}
    started = time.perf_counter()
    first = None
    async with session.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {await response.text()}")
        async for line in response.content:
            if first is None and line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if chunk["model"] != SERVED:
                    raise RuntimeError(f"{url} streamed the model {chunk['model']!r}")
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
        if first is None:
            raise RuntimeError(f"{url} streamed no token")
    done = time.perf_counter()
    return (first - started) * 1000, (done - started) * 1000


async def bench_ttft(direct: str, routed: str, n: int) -> list[Ttft]:
    targets = {"direct": (direct, SERVED), "router": (routed, "llama")}
    firsts: dict[str, list[float]] = {name: [] for name in targets}
    lasts: dict[str, list[float]] = {name: [] for name in targets}
    async with aiohttp.ClientSession() as session:  # one pool: keep-alive both ways
        for url, model in targets.values():
            for _ in range(20):  # warm-up
                await first_token(session, url, model)
        for i in range(n):
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for name in order:
                first, last = await first_token(session, *targets[name])
                firsts[name].append(first)
                lasts[name].append(last)
    results = []
    for name, times in firsts.items():
        p50, p95, mean = percentile(times, 50), percentile(times, 95), statistics.fmean(times)
        results.append(Ttft(name, n, p50, p95, mean, percentile(lasts[name], 50)))
    return results


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="direct/router pairs of wrk runs")
    parser.add_argument("--ttft-requests", type=int, default=500, help="streamed, each way")
    parser.add_argument("--token-delay-ms", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1, help="router worker processes")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make bench-protocols` installs it", file=sys.stderr)
        return 1
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    backend, llm, port = pb.free_port(), pb.free_port(), pb.free_port()
    with tempfile.TemporaryDirectory(prefix="model-router-protocols-") as name:
        tmp = Path(name)
        script = tmp / "infer.lua"
        script.write_text(WRK_SCRIPT.replace("ROW", json.dumps(oip_row())))
        python = sys.executable
        llm_argv = [python, "-m", "backends.llm", "--port", str(llm), "--model", SERVED,
                    "--token-delay-ms", str(args.token_delay_ms)]  # fmt: skip
        procs = [
            spawn([python, "-m", "backends", "--version", "v1", "--port", str(backend)]),
            spawn(llm_argv),
        ]
        try:
            wait_health(backend)
            wait_health(llm)
            config = routing_table(tmp, port, backend, llm)
            procs.append(spawn([python, "-m", "router", "serve", "--config", str(config),
                                "--workers", str(args.workers)]))  # fmt: skip
            pb.wait_port(port)
            time.sleep(0.5)
            oip = bench_oip(
                f"http://{LOOPBACK}:{backend}/v2/models/cancer/infer",
                f"http://{LOOPBACK}:{port}/v2/models/cancer/infer",
                args,
                script,
            )
            path = "/v1/chat/completions"
            ttft = asyncio.run(
                bench_ttft(f"http://{LOOPBACK}:{llm}{path}", f"http://{LOOPBACK}:{port}{path}",
                           args.ttft_requests)
            )  # fmt: skip
        finally:
            for proc in reversed(procs):
                pb.stop(proc)
    args.load_1min = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    report(oip, ttft, args)
    return 0


def report(oip: list[dict[str, Any]], ttft: list[Ttft], args: argparse.Namespace) -> None:
    def mean(target: str, connections: int, key: str) -> float:
        values = [r[key] for r in oip if r["target"] == target and r["connections"] == connections]
        return statistics.fmean(values)

    c = args.connections
    summary = {
        "throughput_ratio": mean("router", c, "rps") / mean("direct", c, "rps"),
        "added_p50_us_at_c1": (mean("router", 1, "p50_ms") - mean("direct", 1, "p50_ms")) * 1000,
        "added_p50_us_at_c": (mean("router", c, "p50_ms") - mean("direct", c, "p50_ms")) * 1000,
    }
    print(f"\nOIP infer, means of {args.rounds} rounds:")
    print(f"{'target':<8}{'req/s c=' + str(c):>14}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'req/s c=1':>11}{'p50 ms c=1':>12}")  # fmt: skip
    for target in ("direct", "router"):
        print(f"{target:<8}{mean(target, c, 'rps'):>14,.0f}{mean(target, c, 'p50_ms'):>9.3f}"
              f"{mean(target, c, 'p99_ms'):>9.3f}{mean(target, 1, 'rps'):>11,.0f}"
              f"{mean(target, 1, 'p50_ms'):>12.3f}")  # fmt: skip
    print(f"router / direct throughput {summary['throughput_ratio']:.2f}; added p50 "
          f"{summary['added_p50_us_at_c1']:.0f} us at c=1, "
          f"{summary['added_p50_us_at_c']:.0f} us at c={c}")  # fmt: skip
    by = {t.target: t for t in ttft}
    summary["ttft_added_p50_ms"] = by["router"].p50_ms - by["direct"].p50_ms
    summary["ttft_added_p95_ms"] = by["router"].p95_ms - by["direct"].p95_ms
    print(f"\nTime to first token, {args.ttft_requests} streamed chat completions each way "
          f"(token delay {args.token_delay_ms:g} ms):")  # fmt: skip
    print(f"{'target':<8}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'last byte p50 ms':>18}")
    for t in ttft:
        print(f"{t.target:<8}{t.p50_ms:>9.3f}{t.p95_ms:>9.3f}{t.mean_ms:>9.3f}"
              f"{t.last_byte_p50_ms:>18.3f}")  # fmt: skip
    print(f"router adds {summary['ttft_added_p50_ms']:.3f} ms at p50, "
          f"{summary['ttft_added_p95_ms']:.3f} ms at p95 (goal: within 1 ms)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": vars(args), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary, "oip": oip, "ttft": [asdict(t) for t in ttft],
    }, indent=2) + "\n")  # fmt: skip
    print(f"1-minute load average before and after: {args.load_1min} on {os.cpu_count()} CPUs")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
