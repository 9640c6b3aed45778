"""What span export costs (issue 24): the router with no `tracing` section (propagation only)
against `server.tracing` at sample 0.01 and at 1.0, exporting to a real OTLP/HTTP receiver.

    python bench/tracing_bench.py [--rounds 3] [--duration 10] [--workers 2]

The shape is `make bench`'s (bench/proxy_bench.py: an nginx backend on two ports, wrk with
one thread, POST with a random X-User-ID, 64 connections for throughput and 1 for the
latency added). The variants run in turns, round after round, so the machine's drift hits
each alike; the table gives each variant's median req/s as a ratio of "off" in the same
run. The receiver (bench/otlp_sink.py, its own process) decodes every batch and counts the
spans, so the exported share can be checked against the sample rate.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_bench import (  # a sibling script, not a package
    ROOT,
    WRK_SCRIPT,
    backend,
    free_port,
    router,
    stop,
    wait_port,
    wrk,
)

VARIANTS = (("off", None), ("sample 0.01", 0.01), ("sample 1.0", 1.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _ in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="model-router-tracing-") as name:
        tmp = Path(name)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        v1, v2, sink_port = free_port(), free_port(), free_port()
        counts = tmp / "spans.txt"
        sink = subprocess.Popen([sys.executable, str(ROOT / "bench" / "otlp_sink.py"),
                                 str(sink_port), str(counts)])  # fmt: skip
        procs = [backend(tmp, v1, v2), sink]
        try:
            wait_port(v1)
            wait_port(sink_port)
            direct = wrk(f"http://127.0.0.1:{v1}/predict", 1, args.duration / 2, script)
            assert direct is not None
            for _ in range(args.rounds):
                for label, sample in VARIANTS:
                    sink_url = f"http://127.0.0.1:{sink_port}"
                    found = one(tmp, args, script, (v1, v2), sink_url, sample, counts, label,
                                direct.p50_ms)  # fmt: skip
                    runs[label].append(found)
        finally:
            for proc in procs:
                stop(proc)
    report(runs, args)
    return 0


def one(tmp: Path, args: argparse.Namespace, script: Path, backends: tuple[int, int], sink: str,
        sample: float | None, counts: Path, label: str, direct_p50_ms: float,
        ) -> tuple[float, float, int]:  # fmt: skip
    """One variant once: req/s at 64 connections, added p50 at 1 (us), spans received."""
    before = _received(counts)
    port = free_port()
    tracing = "" if sample is None else f', tracing: {{otlp_endpoint: "{sink}", sample: {sample}}}'
    proc = router(tmp, port, *backends, args.workers, tracing)
    try:
        wait_port(port)
        time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/models/cancer/predict"
        wrk(url, args.connections, 2, script)  # warm-up
        many = wrk(url, args.connections, args.duration, script)
        single = wrk(url, 1, args.duration / 2, script)
        assert many is not None
        assert single is not None
    finally:
        stop(proc)  # its spans still queued are sent at the stop
    time.sleep(1.5)
    spans = _received(counts) - before
    added = (single.p50_ms - direct_p50_ms) * 1000
    print(f"  {label:<12} {many.rps:>9,.0f} req/s  added p50 at c=1 {added:5.0f} us  "
          f"spans received {spans:,}", flush=True)  # fmt: skip
    return many.rps, added, spans


def _received(counts: Path) -> int:
    os.kill(int(counts.with_suffix(".pid").read_text()), signal.SIGUSR1)
    time.sleep(0.2)
    return int(counts.read_text() or 0)


def report(runs: dict[str, list[tuple[float, float, int]]], args: argparse.Namespace) -> None:
    off = statistics.median(r[0] for r in runs["off"])
    print(f"\n{'variant':<14}{'req/s (median)':>16}{'x off':>8}{'added p50 at c=1':>19}"
          f"{'spans':>12}")  # fmt: skip
    rows = []
    for label, found in runs.items():
        rps = statistics.median(r[0] for r in found)
        added = statistics.median(r[1] for r in found)
        spans = sum(r[2] for r in found)
        rows.append({"variant": label, "rps": rps, "x_off": rps / off, "added_p50_us": added,
                     "spans": spans, "rounds": [list(r) for r in found]})  # fmt: skip
        print(f"{label:<14}{rps:>16,.0f}{rps / off:>8.3f}{added:>16.0f} us{spans:>12,}")
    out = ROOT / "bench" / "results" / "tracing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
