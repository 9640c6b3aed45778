"""Throughput and added latency: model-router side by side with nginx, in one run.

    python bench/proxy_bench.py [--duration 10] [--workers 2] [--connections 64]

Starts an nginx static backend (two ports, one per model version, answering ~100 bytes of
JSON to any POST, so the backend is never the bottleneck), then measures with wrk (one
thread, POST with a random X-User-ID):

- direct: wrk straight to the backend (the floor);
- nginx: nginx as the proxy, `split_clients` on the user id, upstream keep-alive;
- bare aiohttp proxy: bench/bare_proxy.py, aiohttp with no features (the floor);
- model-router with 1 worker, and with N workers, every feature on (routing log written to
  a file, metrics counted);

each at 64 connections (throughput) and at 1 connection (latency added per request). Prints
a table with req/s, p50, p99 and the ratios against nginx and direct, and writes it as JSON
to bench/results/proxy.json. Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = '{"prediction": 1, "probability": 0.9731, "version": "v1", "model": "cancer", "ok": true}'

# A wrk script: POST `BODY_LUA` (a Lua string expression) with a random X-User-ID, and print
# one RESULT line of JSON at the end. Other benches post their own bodies with it.
POST_SCRIPT = r"""
wrk.method = "POST"
wrk.body = BODY_LUA
wrk.headers["Content-Type"] = "application/json"
request = function()
  wrk.headers["X-User-ID"] = "user-" .. math.random(1, 1000000)
  return wrk.format()
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def post_script(body_lua: str) -> str:
    return POST_SCRIPT.replace("BODY_LUA", body_lua)


WRK_SCRIPT = post_script(
    "'{\"features\": [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471]}'"
)


@dataclass
class Result:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non2xx: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def nginx_conf(tmp: Path, body: str, servers: str, workers: str) -> Path:
    conf = tmp / f"nginx-{len(list(tmp.glob('nginx-*')))}.conf"
    conf.write_text(f"""
daemon off;
worker_processes {workers};
pid {tmp}/{conf.stem}.pid;
error_log {tmp}/{conf.stem}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    {body}
    {servers}
}}
""")
    return conf


def start_nginx(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(conf.parent)],
                            stderr=subprocess.DEVNULL)  # fmt: skip


def backend(tmp: Path, v1: int, v2: int) -> subprocess.Popen[bytes]:
    def server(port: int) -> str:
        return (f"server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;"
                f" return 200 '{BODY}'; }} }}")  # fmt: skip

    return start_nginx(nginx_conf(tmp, "", server(v1) + server(v2), "1"))


def nginx_proxy(tmp: Path, port: int, v1: int, v2: int) -> subprocess.Popen[bytes]:
    body = f"""
    upstream v1 {{ server 127.0.0.1:{v1}; keepalive 64; }}
    upstream v2 {{ server 127.0.0.1:{v2}; keepalive 64; }}
    split_clients "${{http_x_user_id}}" $version {{ 90% v1; * v2; }}
    """
    server = f"""
    server {{
        listen 127.0.0.1:{port};
        location /models/cancer/ {{
            proxy_pass http://$version/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Model-Version $version;
        }}
    }}
    """
    return start_nginx(nginx_conf(tmp, body, server, "auto"))


def router(
    tmp: Path, port: int, v1: int, v2: int, workers: int, server: str = ""
) -> subprocess.Popen[bytes]:
    """`server`: more keys of the table's `server` section, as YAML flow (`, k: v`)."""
    config = tmp / "routes.yaml"
    config.write_text(f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{free_port()}"{server}}}
log: {{path: "{tmp}/routing.jsonl"}}
models:
  cancer:
    versions:
      v1: {{url: "http://127.0.0.1:{v1}"}}
      v2: {{url: "http://127.0.0.1:{v2}"}}
    split: {{v1: 90, v2: 10}}
""")
    argv = [sys.executable, "-m", "router", "serve", "--config", str(config),
            "--workers", str(workers)]  # fmt: skip
    return subprocess.Popen(argv, stderr=subprocess.DEVNULL, cwd=ROOT)


def bare_proxy(port: int, v1: int, v2: int) -> subprocess.Popen[bytes]:
    """bench/bare_proxy.py: aiohttp with no features, the floor of an aiohttp proxy."""
    argv = [sys.executable, str(ROOT / "bench" / "bare_proxy.py"), str(port),
            f"http://127.0.0.1:{v1}", f"http://127.0.0.1:{v2}"]  # fmt: skip
    return subprocess.Popen(argv, stderr=subprocess.DEVNULL)


def wrk(url: str, connections: int, duration: float, script: Path) -> Result | None:
    seconds = max(1, round(duration))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = re.search(r"RESULT (\{.*\})", out)
    if found is None:
        return None
    data = json.loads(found.group(1))
    return Result(
        target="", connections=connections, rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        errors=data["errors"], non2xx=data["non2xx"],
    )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if proc.args[0] != "nginx" else signal.SIGQUIT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(name: str, url: str, args: argparse.Namespace, script: Path) -> list[Result]:
    results = []
    wrk(url, args.connections, 2, script)  # warm-up: pools, caches, JIT-free but lazy paths
    for connections, duration in ((args.connections, args.duration), (1, args.duration / 2)):
        result = wrk(url, connections, duration, script)
        if result is None:
            raise RuntimeError(f"wrk gave no result for {name}")
        result.target = name
        results.append(result)
        print(f"  {name:<22} c={connections:<3} {result.rps:>9,.0f} req/s  "
              f"p50 {result.p50_ms:6.3f} ms  p99 {result.p99_ms:6.3f} ms  "
              f"errors {result.errors}  non-2xx {result.non2xx}", flush=True)  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: `make bench` installs it", file=sys.stderr)
            return 1
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="model-router-bench-") as name:
        tmp = Path(name)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        v1, v2 = free_port(), free_port()
        procs = [backend(tmp, v1, v2)]
        try:
            wait_port(v1)
            results += measure("direct", f"http://127.0.0.1:{v1}/predict", args, script)
            targets = [
                ("nginx split_clients", lambda p: nginx_proxy(tmp, p, v1, v2)),
                ("bare aiohttp proxy", lambda p: bare_proxy(p, v1, v2)),
            ]
            for workers in sorted({1, args.workers}):
                label = f"model-router {workers} worker{'s' if workers > 1 else ''}"
                targets.append((label, lambda p, w=workers: router(tmp, p, v1, v2, w)))
            for label, start in targets:
                port = free_port()
                proc = start(port)
                procs.append(proc)
                wait_port(port)
                time.sleep(0.5)
                results += measure(label, f"http://127.0.0.1:{port}/models/cancer/predict",
                                   args, script)  # fmt: skip
                stop(proc)
        finally:
            for proc in procs:
                stop(proc)
    report(results, args)
    return 0


def report(results: list[Result], args: argparse.Namespace) -> None:
    by = {(r.target, r.connections): r for r in results}
    direct = by[("direct", args.connections)]
    nginx = by[("nginx split_clients", args.connections)]
    direct1, nginx1 = by[("direct", 1)], by[("nginx split_clients", 1)]
    print(f"\n{'target':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x nginx':>9}{'x direct':>10}"
          f"{'added p50 at c=1':>19}")  # fmt: skip
    rows = []
    for r in results:
        if r.connections != args.connections:
            continue
        one = by[(r.target, 1)]
        added_us = (one.p50_ms - direct1.p50_ms) * 1000
        rows.append({**asdict(r), "x_nginx": r.rps / nginx.rps, "x_direct": r.rps / direct.rps,
                     "c1_p50_ms": one.p50_ms, "added_p50_us_at_c1": added_us})  # fmt: skip
        print(f"{r.target:<24}{r.rps:>10,.0f}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}"
              f"{r.rps / nginx.rps:>9.2f}{r.rps / direct.rps:>10.2f}"
              f"{added_us:>16.0f} us")  # fmt: skip
    print(f"\nnginx adds {(nginx1.p50_ms - direct1.p50_ms) * 1000:.0f} us at p50, concurrency 1")
    out = ROOT / "bench" / "results" / "proxy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": vars(args), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
