"""Soak: a minute of load through several workers; nothing fails, nothing is lost, no leak.

    python bench/soak.py [--seconds 60] [--connections 256] [--workers 2]

Starts the nginx static backend of proxy_bench.py and `model-router serve --workers N` on
it, drives wrk (POST, random X-User-ID) for the given time while sampling every worker's
resident memory each second, then stops the router with SIGTERM and checks:

- no non-2xx answer and no socket error on wrk's side;
- the routing log holds a record for every request wrk completed (a few more may be there:
  requests in flight when wrk stopped were answered to nobody, and logged, as 200 or as
  499 `client_closed`);
- memory after warm-up (the first 10 s) grows less than 10%.

Prints the numbers, writes them to bench/results/soak.json, and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
import proxy_bench as pb

WARM_UP_S = 10


def sample_memory(
    root: psutil.Process, stop: threading.Event, out: list[tuple[float, int]]
) -> None:
    start = time.monotonic()
    while not stop.wait(1.0):
        workers = [p for p in root.children() if p.is_running()]
        rss = sum(p.memory_info().rss for p in workers)
        out.append((time.monotonic() - start, rss))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="model-router-soak-") as name:
        tmp = Path(name)
        script = tmp / "post.lua"
        script.write_text(pb.WRK_SCRIPT)
        v1, v2, port = pb.free_port(), pb.free_port(), pb.free_port()
        backend = pb.backend(tmp, v1, v2)
        router = pb.router(tmp, port, v1, v2, args.workers)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        try:
            pb.wait_port(v1)
            pb.wait_port(port)
            time.sleep(1.0)
            sampler = threading.Thread(
                target=sample_memory, args=(psutil.Process(router.pid), stop, samples)
            )
            sampler.start()
            url = f"http://127.0.0.1:{port}/models/cancer/predict"
            argv_wrk = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s",
                        "-s", str(script), url]  # fmt: skip
            out = subprocess.run(argv_wrk, capture_output=True, text=True, check=True).stdout
            stop.set()
            sampler.join()
            time.sleep(1.0)
            router.send_signal(signal.SIGTERM)
            exit_code = router.wait(timeout=60)
        finally:
            stop.set()
            pb.stop(router)
            pb.stop(backend)
        wrk_result = json.loads(re.search(r"RESULT (\{.*\})", out).group(1))  # type: ignore[union-attr]
        lines = (tmp / "routing.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    requests = [r for r in records if r["event"] == "request"]
    ok = sum(r["status"] == 200 for r in requests)
    after = [rss for t, rss in samples if t >= WARM_UP_S]
    growth = (after[-1] - after[0]) / after[0] if len(after) > 1 else 0.0
    result = {
        "seconds": args.seconds, "connections": args.connections, "workers": args.workers,
        "wrk_requests": wrk_result["requests"],
        "rps": wrk_result["requests"] / (wrk_result["duration_us"] / 1e6),
        "socket_errors": wrk_result["errors"], "non_2xx": wrk_result["non2xx"],
        "records": len(requests), "records_200": ok, "exit_code": exit_code,
        "rss_mib_after_warm_up": after[0] / 2**20 if after else None,
        "rss_mib_at_end": after[-1] / 2**20 if after else None,
        "rss_growth": growth,
    }  # fmt: skip
    checks = {
        "no non-2xx or socket error": result["non_2xx"] == 0 and result["socket_errors"] == 0,
        "a record for every completed request": (
            0 <= ok - result["wrk_requests"] <= args.connections
        ),
        # wrk closes its connections at the end: what was in flight then is logged 499.
        "the rest are requests wrk left at the end": all(
            r["status"] == 200 or r["outcome"] == "client_closed" for r in requests
        ) and len(requests) - ok <= args.connections,
        "memory flat after warm-up (< 10%)": growth < 0.10,
        "clean exit": exit_code == 0,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    for check, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {check}")
    out_path = Path(__file__).parent / "results" / "soak.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps({**result, "checks": checks}, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
