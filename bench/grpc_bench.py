"""gRPC through the router against the same client calling the backend directly, in one run.

    python bench/grpc_bench.py [--duration 6] [--concurrency 16] [--rounds 2]
                               [--stream-messages 2000] [--profile-s 6]

Starts the example breast-cancer backend v1 with its Open Inference Protocol gRPC service
(`python -m backends --grpc-port`, a real logistic-regression prediction per call) and two
routers in front of it (`model-router serve`, `--workers 1` and `--workers 2`, each on its own
ports, model `cancer` whose version v1 has only a `grpc_url`). The load generator is this
process: a grpcio asyncio channel per target, one ModelInferRequest serialised once (one row,
FP64 [1, 30], in `raw_input_contents`, as tritonclient.grpc sends it) and sent as raw bytes,
so the client spends nothing on protobuf; a random `x-user-id` per call.

(a) Unary ModelInfer: N coroutines call back to back for `--duration` s (throughput and
    latency at `--concurrency`), then one for half as long (the latency the router adds);
    direct, router with 1 worker, router with 2 workers, in turn, `--rounds` times.
(b) ModelStreamInfer (bidirectional), per message: `--stream-messages` requests on one call,
    written as fast as the stream takes them while a reader counts the answers (messages/s),
    then a quarter as many one at a time, each written after the previous answer (the
    per-message round trip); direct and through the 1-worker router, alternating.

Then, unless `--profile-s 0`, py-spy samples the 1-worker router under (a)'s load and the
heaviest frames are printed. Writes bench/results/grpc.json. Everything runs on loopback and
stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
from tritonclient.grpc import service_pb2

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import proxy_bench as pb  # the port helpers and stop()

from backends.model import sample_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "grpc.json"
LOOPBACK = "127.0.0.1"
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@dataclass
class Unary:
    target: str
    concurrency: int
    calls: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


@dataclass
class Stream:
    target: str
    messages: int
    messages_per_s: float  # pipelined: written as fast as the stream takes them
    round_trip_p50_ms: float  # one at a time
    round_trip_p99_ms: float


def request_bytes() -> bytes:
    """One ModelInferRequest for model `cancer`: the first held-out row, FP64 [1, 30]."""
    row = np.array([sample_rows(1)[0][0]], dtype="<f8")
    tensor = service_pb2.ModelInferRequest.InferInputTensor
    message = service_pb2.ModelInferRequest(
        model_name="cancer",
        id="bench",
        inputs=[tensor(name="input-0", datatype="FP64", shape=[1, 30])],
        raw_input_contents=[row.tobytes()],
    )
    data: bytes = message.SerializeToString()
    return data


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def unary(address: str, payload: bytes, concurrency: int, duration: float) -> Unary:
    """``concurrency`` loops calling ModelInfer back to back for ``duration`` s."""
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER)  # no serializers: bytes in, bytes out
        await call(payload)  # connected before the clock starts
        stop_at = time.perf_counter() + duration

        async def loop() -> None:
            nonlocal errors
            while (started := time.perf_counter()) < stop_at:
                user = f"user-{random.randrange(1_000_000)}"
                try:
                    await call(payload, metadata=(("x-user-id", user),))
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return Unary(
        address,
        concurrency,
        len(latencies),
        errors,
        len(latencies) / elapsed,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
    )


async def stream(address: str, payload: bytes, messages: int) -> Stream:
    """ModelStreamInfer: pipelined messages/s, then one-at-a-time round trips."""
    metadata = (("x-user-id", "streamer"),)
    async with grpc.aio.insecure_channel(address) as channel:
        open_stream = channel.stream_stream(STREAM)
        call = open_stream(metadata=metadata)
        for _ in range(20):  # warm up: the connection, the route, the backend's first calls
            await call.write(payload)
            await call.read()
        began = time.perf_counter()

        async def writer() -> None:
            for _ in range(messages):
                await call.write(payload)

        async def reader() -> int:
            got = 0
            for _ in range(messages):
                answer = await call.read()
                assert isinstance(answer, bytes), answer
                got += 1
            return got

        _, got = await asyncio.gather(writer(), reader())
        rate = got / (time.perf_counter() - began)
        trips = []
        for _ in range(max(1, messages // 4)):
            started = time.perf_counter()
            await call.write(payload)
            await call.read()
            trips.append(time.perf_counter() - started)
        await call.done_writing()
        if await call.read() is not grpc.aio.EOF or await call.code() != grpc.StatusCode.OK:
            raise RuntimeError(f"{address}: the stream did not end cleanly")
    return Stream(
        address,
        messages,
        rate,
        percentile(trips, 50) * 1000,
        percentile(trips, 99) * 1000,
    )


def check_answer(address: str, payload: bytes) -> None:
    """One call, decoded: fail early unless the target answers a prediction for `cancer`."""

    async def one() -> Any:
        async with grpc.aio.insecure_channel(address) as channel:
            return await channel.unary_unary(INFER)(payload)

    answer = service_pb2.ModelInferResponse.FromString(asyncio.run(one()))
    if answer.model_name != "cancer" or len(answer.raw_output_contents) != 2:
        raise RuntimeError(f"{address} answered {answer}")


def routing_table(tmp: Path, name: str, grpc_backend: int) -> tuple[Path, int]:
    """A table serving gRPC on a free port, in front of the backend; (file, gRPC port)."""
    port = pb.free_port()
    config = tmp / f"{name}.yaml"
    config.write_text(f"""
server:
  listen: "{LOOPBACK}:{pb.free_port()}"
  admin_listen: "{LOOPBACK}:{pb.free_port()}"
  grpc_listen: "{LOOPBACK}:{port}"
log: {{path: "{tmp}/{name}.jsonl"}}
models:
  cancer:
    versions:
      v1: {{grpc_url: "{LOOPBACK}:{grpc_backend}"}}
    split: {{v1: 100}}
""")
    return config, port


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile(pid: int, address: str, payload: bytes, args: argparse.Namespace, out: Path) -> Any:
    """py-spy on the router `pid` under the unary load; the heaviest frames, self and total."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists() and shutil.which("py-spy") is None:
        return {"skipped": "py-spy is not installed"}
    argv = [str(py_spy if py_spy.exists() else "py-spy"), "record", "--pid", str(pid),
            "--duration", str(round(args.profile_s)), "--rate", "250", "--format", "raw",
            "--output", str(out), "--nonblocking"]  # fmt: skip
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    asyncio.run(unary(address, payload, args.concurrency, args.profile_s + 0.5))
    _, err = sampler.communicate(timeout=60)
    if sampler.returncode != 0 or not out.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"}
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        n = int(count)
        samples += n
        own[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            total[frame] += n
    share = {k: round(100 * v / samples, 1) for k, v in own.most_common(15)}
    inclusive = {k: round(100 * v / samples, 1) for k, v in total.most_common(25)}
    return {"samples": samples, "self_pct": share, "total_pct": inclusive}


def _short(frame: str) -> str:
    """`handle (router/proxy/grpc_call.py:77)` -> `handle (router/proxy/grpc_call.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = path.removeprefix(str(ROOT) + "/")
    return f"{name} ({path})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per unary run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream-messages", type=int, default=2000)
    parser.add_argument("--profile-s", type=int, default=6, help="0: no py-spy profile")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    payload = request_bytes()
    http, grpc_backend = pb.free_port(), pb.free_port()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="model-router-grpc-") as name:
        tmp = Path(name)
        backend = [python, "-m", "backends", "--version", "v1", "--port", str(http),
                   "--grpc-port", str(grpc_backend)]  # fmt: skip
        procs = [spawn(backend)]
        try:
            pb.wait_port(http, 60)
            targets = {"direct": f"{LOOPBACK}:{grpc_backend}"}
            routers = {}
            for workers in (1, 2):
                config, port = routing_table(tmp, f"w{workers}", grpc_backend)
                proc = spawn([python, "-m", "router", "serve", "--config", str(config),
                              "--workers", str(workers)])  # fmt: skip
                procs.append(proc)
                pb.wait_port(port)
                targets[f"router-{workers}w"] = f"{LOOPBACK}:{port}"
                routers[workers] = proc
            time.sleep(1.0)  # every worker up
            for address in targets.values():
                check_answer(address, payload)
                asyncio.run(unary(address, payload, args.concurrency, 1.0))  # warm-up
            runs: list[Unary] = []
            for _ in range(args.rounds):
                for target, address in targets.items():
                    for c, seconds in ((args.concurrency, args.duration), (1, args.duration / 2)):
                        run = asyncio.run(unary(address, payload, c, seconds))
                        run.target = target
                        runs.append(run)
                        print(f"  {target:<10} c={c:<3} {run.rps:>8,.0f} calls/s "
                              f"p50 {run.p50_ms:.3f} ms", flush=True)  # fmt: skip
            streams: list[Stream] = []
            for _ in range(args.rounds):
                for target in ("direct", "router-1w"):
                    result = asyncio.run(stream(targets[target], payload, args.stream_messages))
                    result.target = target
                    streams.append(result)
                    rate, trip = result.messages_per_s, result.round_trip_p50_ms
                    print(f"  {target:<10} stream {rate:>8,.0f} msg/s, round trip p50 "
                          f"{trip:.3f} ms", flush=True)  # fmt: skip
            profiled: Any = {"skipped": "--profile-s 0"}
            if args.profile_s > 0:
                profiled = profile(
                    routers[1].pid, targets["router-1w"], payload, args, tmp / "py-spy.txt"
                )
        finally:
            for proc in reversed(procs):
                pb.stop(proc)
    args.load_1min = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    report(runs, streams, profiled, args)
    return 0


def report(
    runs: list[Unary], streams: list[Stream], profiled: Any, args: argparse.Namespace
) -> None:
    def mean(target: str, c: int, key: str) -> float:
        return statistics.fmean(
            getattr(r, key) for r in runs if r.target == target and r.concurrency == c
        )

    def stream_mean(target: str, key: str) -> float:
        return statistics.fmean(getattr(s, key) for s in streams if s.target == target)

    c = args.concurrency
    summary: dict[str, float] = {}
    print(f"\nUnary ModelInfer, means of {args.rounds} rounds:")
    print(f"{'target':<11}{'calls/s c=' + str(c):>14}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'calls/s c=1':>13}{'p50 ms c=1':>12}")  # fmt: skip
    for target in ("direct", "router-1w", "router-2w"):
        print(f"{target:<11}{mean(target, c, 'rps'):>14,.0f}{mean(target, c, 'p50_ms'):>9.3f}"
              f"{mean(target, c, 'p99_ms'):>9.3f}{mean(target, 1, 'rps'):>13,.0f}"
              f"{mean(target, 1, 'p50_ms'):>12.3f}")  # fmt: skip
    for target in ("router-1w", "router-2w"):
        ratio = mean(target, c, "rps") / mean("direct", c, "rps")
        added = (mean(target, 1, "p50_ms") - mean("direct", 1, "p50_ms")) * 1000
        summary[f"{target}_throughput_ratio"] = round(ratio, 3)
        summary[f"{target}_added_p50_us_at_c1"] = round(added)
        print(f"{target}: {ratio:.2f}x direct's throughput (goal with 2 workers: >= 0.4); "
              f"added p50 {added:.0f} us at c=1")  # fmt: skip
    print(f"\nModelStreamInfer, {args.stream_messages} messages on one call, means:")
    print(f"{'target':<11}{'msg/s':>10}{'round trip p50 ms':>19}{'p99 ms':>9}")
    for target in ("direct", "router-1w"):
        print(f"{target:<11}{stream_mean(target, 'messages_per_s'):>10,.0f}"
              f"{stream_mean(target, 'round_trip_p50_ms'):>19.3f}"
              f"{stream_mean(target, 'round_trip_p99_ms'):>9.3f}")  # fmt: skip
    rate = stream_mean("router-1w", "messages_per_s") / stream_mean("direct", "messages_per_s")
    per_message = stream_mean("router-1w", "round_trip_p50_ms") - stream_mean(
        "direct", "round_trip_p50_ms"
    )
    summary["stream_rate_ratio"] = round(rate, 3)
    summary["stream_added_round_trip_p50_us"] = round(per_message * 1000)
    print(f"through the router: {rate:.2f}x the messages/s; {per_message * 1000:.0f} us added "
          "per message's round trip at p50")  # fmt: skip
    if "self_pct" in profiled:
        print(f"\npy-spy, router (1 worker) under the unary load, {profiled['samples']} samples:")
        print("  own time:")
        for frame, pct in profiled["self_pct"].items():
            print(f"    {pct:>5.1f}%  {frame}")
        print("  including callees:")
        for frame, pct in profiled["total_pct"].items():
            print(f"    {pct:>5.1f}%  {frame}")
    else:
        print(f"\nno profile: {profiled['skipped']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "grpcio": grpc.__version__, "platform": platform.platform()},
        "settings": vars(args), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary, "unary": [asdict(r) for r in runs],
        "stream": [asdict(s) for s in streams], "profile": profiled,
    }, indent=2) + "\n")  # fmt: skip
    print(f"1-minute load average before and after: {args.load_1min} on {os.cpu_count()} CPUs")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
