"""Two whole guarded rollouts in one command, for ``make rollout-demo``: one promoted, one
rolled back.

    python -m examples.rollout_demo [--only good|bad] [--timeout 60] [--rate 300]
        [--concurrency 16] [--seed 1]

Each rollout runs on its own copy of examples/rollout.yaml (v1 in place, v2 the candidate at
0, steps of 5 s) in logs/rollout-demo/<name>/, with its own routing log:

1. starts backends v1 and v2 (``python -m backends --delay-ms 10``: see MODEL_MS; for the
   bad rollout v2 also runs with ``--fail-rate 0.05``: one prediction in twenty is a 500)
   and the router on the copy (``python -m router serve``), each in a process group of its
   own, their output in files beside the table;
2. sends traffic through the stable URL: 300 requests a second (a few in flight at a
   time), each user new and sending one or two, rows of the dataset's held-out quarter;
3. runs the controller, ``python -m router rollout --config <copy> --log <log> --interval
   1``, as a child, and prints each of its JSON lines as it arrives (the decision, the split,
   each guardrail's difference and bounds against its margin, the reason); the raw lines go
   to controller.jsonl. The controller rewrites the copy; the router, which watches the
   file, loads each new split within a second, and the controller counts a step only from
   the router's `config_loaded` on;
4. stops at the controller's `promote` or `rollback` (or after ``--timeout`` seconds), waits
   until the router has loaded that last table, then stops the controller, the traffic, the
   router (SIGTERM: it drains and writes its last log records) and the backends;
5. shows the table's final split and `state`, and the difference between the table before
   and after: split numbers and `state`, nothing else.

The exit status is 0 when the healthy candidate was promoted and the failing one rolled
back, 1 otherwise (or when a process failed to start), 130 on Ctrl-C. Every child is stopped
on every way out: success, failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import IO, Any

import aiohttp

from backends.model import sample_rows
from examples.traffic import DATASET_ROWS
from router.config.model import Rollout
from router.config.validate import parse_text

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "examples" / "rollout.yaml"
RUNS = ROOT / "logs" / "rollout-demo"
MODEL = "cancer"
HOST = "127.0.0.1"
ROUTER_PORT = 8090  # server.listen in TABLE
BACKEND_PORTS = {"v1": 9011, "v2": 9012}  # the versions' urls in TABLE
URL = f"http://{HOST}:{ROUTER_PORT}"
INTERVAL_S = 1.0  # the controller's --interval
# Both backends answer this much later (`--delay-ms`), standing in for a real model's
# inference time. The example models take about a millisecond, v2's gradient boosting
# some 0.3-0.8 ms more than v1's logistic regression: bare, v2's p95 reads +70% to +200%
# against v1's, beyond the latency guardrail's +50%, and the "healthy" candidate is rightly
# rolled back on latency. Behind 10 ms of model time the same difference is under +10%.
MODEL_MS = 10
START_TIMEOUT = 60.0  # for the backends to train and answer /health, and the router to listen
LOADED_TIMEOUT = 5.0  # for the router to load the controller's last table
STOP_TIMEOUT = 15.0  # per child, after SIGTERM (the router drains for drain_s: 5 s)
# The controller gets SIGINT, on which it exits 0 (its table writes are atomic in any case).
# A process started with SIGINT ignored (a background job of a script) passes that on to
# its children; the controller is then killed after this long.
CONTROLLER_STOP_TIMEOUT = 2.0
POLL_S = 0.1


@dataclass(frozen=True)
class Scenario:
    name: str  # its directory under RUNS
    title: str
    candidate_args: tuple[str, ...]  # extra flags of backend v2
    expected: str  # the controller's last decision: promote or rollback


SCENARIOS = (
    Scenario("good", "a healthy candidate", (), "promote"),
    Scenario(
        "bad",
        "a candidate failing 5% of its predictions (v2 --fail-rate 0.05)",
        ("--fail-rate", "0.05"),
        "rollback",
    ),
)


class DemoFailed(Exception):
    """A process did not start or died; the message says which and where its output is."""


def say(message: str) -> None:
    print(f"\nrollout-demo: {message}", flush=True)


# ---------------------------------------------------------------------------------------
# Processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    output: Path | None  # where its stdout and stderr go, if to a file

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self) -> DemoFailed:
        where = f"; its output is in {_rel(self.output)}" if self.output else ""
        return DemoFailed(f"{self.name} exited with code {self.proc.returncode}{where}")


def spawn(name: str, argv: list[str], output: Path | None, stdout: int | None = None) -> Child:
    """Start a child in a process group of its own (a Ctrl-C reaches only this script, which
    then stops the children in order), from the top of the checkout."""
    sink: IO[bytes] | None = output.open("wb") if output is not None else None
    try:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else sink,
            stderr=sink,
            process_group=0,
        )
    finally:
        if sink is not None:
            sink.close()  # the child has its own copy
    return Child(name, proc, output)


async def stop(child: Child, signum: int = signal.SIGTERM, grace: float = STOP_TIMEOUT) -> None:
    """Signal the child's process group, wait for it, kill it if it lingers."""
    if not child.alive():
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.proc.pid, signum)
    try:
        await asyncio.to_thread(child.proc.wait, grace)
    except subprocess.TimeoutExpired:
        say(f"{child.name} did not stop within {grace:g} s of {signal.Signals(signum).name}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(child.proc.wait)


async def accepts_tcp(port: int) -> bool:
    try:
        async with asyncio.timeout(0.5):
            _reader, writer = await asyncio.open_connection(HOST, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def answers_health(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://{HOST}:{port}/health") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_until(what: str, ready: Any, children: Sequence[Child]) -> None:
    """Poll the coroutine function `ready` until true; fail if a child dies or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while not await ready():
        for child in children:
            if not child.alive():
                raise child.died()
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what} within {START_TIMEOUT:.0f} s")
        await asyncio.sleep(POLL_S)


# ---------------------------------------------------------------------------------------
# Traffic


@dataclass
class Traffic:
    """New users, one or two requests each, `rate` requests a second at most, at most
    `concurrency` of them in flight.

    Paced rather than flat out: on a small machine, flat-out traffic saturates the CPU, and
    then whichever backend gets the larger share of it queues more and answers slower. A
    rollout changes the shares, so it would measure the load it causes, not the versions.
    """

    prefix: str
    concurrency: int
    rate: float
    seed: int = 1
    versions: Counter[str] = field(default_factory=Counter)  # answers by X-Model-Version
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # no answer at all
    users: int = 0

    async def run(self) -> None:
        rows = sample_rows(DATASET_ROWS)
        bodies = [json.dumps({"features": features}).encode() for features, _label in rows]
        rng = Random(self.seed)
        numbers = itertools.count(1)
        slots = itertools.count()
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def paced() -> None:
            """Wait for the next free slot of the schedule, one every 1/rate seconds."""
            nonlocal start, slots
            due = start + next(slots) / self.rate
            late = loop.time() - due
            if late > 1.0:  # fell far behind (a stalled router): start the schedule afresh
                start, slots = loop.time(), itertools.count(1)
            elif late < 0:
                await asyncio.sleep(-late)

        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=30),
            trust_env=False,  # an http_proxy in the environment must not take loopback traffic
        ) as session:

            async def user() -> None:
                while True:  # until cancelled
                    n = next(numbers)
                    self.users += 1
                    headers = {"X-User-ID": f"{self.prefix}-user-{n}"}
                    for _ in range(rng.randint(1, 2)):
                        body = bodies[rng.randrange(len(bodies))]
                        await paced()
                        await self._predict(session, body, headers)

            async with asyncio.TaskGroup() as tasks:
                for _ in range(self.concurrency):
                    tasks.create_task(user())

    async def _predict(
        self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> None:
        headers = {**headers, "Content-Type": "application/json"}
        try:
            async with session.post(
                f"{URL}/models/{MODEL}/predict", data=body, headers=headers
            ) as r:
                await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures[type(exc).__name__] += 1
            await asyncio.sleep(POLL_S)  # the router is gone: do not spin
            return
        self.statuses[r.status] += 1
        self.versions[r.headers.get("X-Model-Version", "(none)")] += 1

    def summary(self, seconds: float) -> str:
        requests = sum(self.statuses.values())
        versions = ", ".join(f"{v} {n:,}" for v, n in sorted(self.versions.items()))
        statuses = ", ".join(f"{s} x{n:,}" for s, n in sorted(self.statuses.items()))
        text = (
            f"traffic: {self.users:,} users sent {requests:,} requests in {seconds:.1f} s "
            f"({requests / max(seconds, 1e-9):.0f}/s); answered by {versions or 'none'}; "
            f"statuses {statuses or 'none'}"
        )
        if self.failures:
            text += "; no answer: " + ", ".join(f"{k} x{n}" for k, n in self.failures.items())
        return text


@contextlib.asynccontextmanager
async def running(traffic: Traffic) -> AsyncIterator[None]:
    task = asyncio.create_task(traffic.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------------------------------
# The controller's lines, for people


def split_text(split: dict[str, Any]) -> str:
    return " / ".join(f"{v} {p:g}" for v, p in split.items())


# How each guardrail's numbers read: a scale and a unit.
GUARD_UNITS = {"error_rate": (100.0, "pp"), "latency_p95": (100.0, "%"), "accuracy": (100.0, "pp")}


def _number(value: float | None, scale: float) -> str:
    return "n/a" if value is None else f"{value * scale:+.2f}"


def describe(line: dict[str, Any], rollout: Rollout, elapsed: float) -> list[str]:
    """A controller line as text: the decision, the split and the users; the reason; and
    each guardrail's difference (how much worse the candidate is) and its one-sided bounds
    against the margin."""
    decision = line["decision"]
    before, after = line["split_before"], line["split_after"]
    split = (
        split_text(before) if before == after else f"{split_text(before)} -> {split_text(after)}"
    )
    users = line["users"]
    out = [
        f"{elapsed:6.1f} s  {decision if decision == 'hold' else decision.upper():<8}  "
        f"{split}  ({line['candidate']} {users['candidate']:,} users, others "
        f"{users['control']:,})",
        f"{'':10}{line['reason']}",
    ]
    for name, g in line["guardrails"].items():
        scale, unit = GUARD_UNITS.get(name, (1.0, ""))
        margin = rollout.guardrails.get(name, float("nan")) * scale
        verdict = "VIOLATED" if g["violated"] else "within" if g["within"] else "undecided"
        low, high = (_number(b, scale) for b in g["bounds"])
        out.append(
            f"{'':10}{name:<12} worse by {_number(g['diff'], scale):>7} {unit:<2}  "
            f"bounds [{low:>7}, {high:>7}] {unit:<2}  margin {margin:+g} {unit:<2}  {verdict}"
        )
    return out


# ---------------------------------------------------------------------------------------
# One rollout


@dataclass
class Outcome:
    scenario: Scenario
    decision: str | None  # the controller's last promote or rollback; None on a timeout
    seconds: float  # wall time, start-up to the last child stopped
    evaluations: int
    path: list[float]  # the candidate's percent, first and after each applied change

    @property
    def as_expected(self) -> bool:
        return self.decision == self.scenario.expected


def config_loaded(log: Path, digest: str) -> bool:
    """The router logged a `config_loaded` of the table with this digest."""
    if not log.exists():
        return False
    for raw in log.read_bytes().splitlines():
        if b'"config_loaded"' in raw and digest.encode() in raw:
            with contextlib.suppress(ValueError):
                if json.loads(raw).get("config") == digest:
                    return True
    return False


def digest_of(table: Path) -> str:
    return parse_text(table.read_text(encoding="utf-8")).digest


async def wait_loaded(digest: str, log: Path) -> None:
    """Wait until the router has loaded the table with this digest, and say when it did."""
    waited = time.monotonic()
    for _ in range(round(LOADED_TIMEOUT / POLL_S)):
        if config_loaded(log, digest):
            say(
                f"the router loaded the final table (config {digest}) "
                f"{time.monotonic() - waited:.1f} s after the decision"
            )
            return
        await asyncio.sleep(POLL_S)
    say(f"the router had not loaded the final table (config {digest}) after {LOADED_TIMEOUT:g} s")


async def ports_taken() -> list[int]:
    ports = [ROUTER_PORT, *BACKEND_PORTS.values()]
    taken = await asyncio.gather(*(accepts_tcp(port) for port in ports))
    return [port for port, busy in zip(ports, taken, strict=True) if busy]


@dataclass(frozen=True)
class Settings:
    timeout_s: float = 60.0  # for the controller to promote or roll back
    rate: float = 300.0  # requests a second
    concurrency: int = 16  # requests in flight at most
    seed: int = 1  # of the traffic: how many requests each user sends, which rows


async def roll(scenario: Scenario, settings: Settings, runs: Path = RUNS) -> Outcome:
    """One whole rollout (steps 1 to 5 of the module's docstring), in `runs`/<name>/."""
    started = time.monotonic()
    run = runs / scenario.name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    table, log = run / "routes.yaml", run / "routing.jsonl"
    shutil.copyfile(TABLE, table)
    before = table.read_text(encoding="utf-8")
    rollout = parse_text(before, str(table)).models[MODEL].rollout
    assert rollout is not None, f"{TABLE} has no rollout block for {MODEL}"

    if taken := await ports_taken():
        raise DemoFailed(
            f"port(s) {', '.join(map(str, taken))} already in use, perhaps by an earlier demo "
            "still running; stop it first"
        )
    say(f"{scenario.name}: {scenario.title}; files in {_rel(run)}/")
    children: list[Child] = []
    decision: str | None = None
    evaluations = 0
    path: list[float] = []
    traffic = Traffic(scenario.name, settings.concurrency, settings.rate, settings.seed)
    controller: Child | None = None
    try:
        for version, port in BACKEND_PORTS.items():
            argv = [sys.executable, "-m", "backends", "--version", version, "--port", str(port)]
            argv += ["--delay-ms", f"{MODEL_MS:g}"]
            if version == rollout.candidate:
                argv += scenario.candidate_args
            children.append(spawn(f"backend {version}", argv, run / f"backend-{version}.out"))
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=1), trust_env=False
        ) as session:
            for version, port in BACKEND_PORTS.items():
                await wait_until(
                    f"backend {version} did not answer /health on port {port}",
                    functools.partial(answers_health, session, port),
                    children,
                )
        router_argv = [sys.executable, "-m", "router", "serve", "--config", str(table)]
        router = spawn("router", [*router_argv, "--log", str(log)], run / "router.out")
        children.append(router)
        await wait_until(
            f"the router did not listen on {URL}", lambda: accepts_tcp(ROUTER_PORT), children
        )
        faulty = " ".join(scenario.candidate_args)
        say(
            f"backends v1 and v2 (both --delay-ms {MODEL_MS:g}{'; v2 ' + faulty if faulty else ''}"
            f") and the router up after {time.monotonic() - started:.1f} s; traffic on, then the "
            f"controller (steps {', '.join(f'{s:g}' for s in rollout.steps)}%, "
            f"{rollout.step_s:g} s and {rollout.min_users} users on {rollout.candidate} each):"
        )
        async with running(traffic):
            traffic_started = time.monotonic()
            argv = [sys.executable, "-m", "router", "rollout", "--config", str(table)]
            argv += ["--log", str(log), "--interval", f"{INTERVAL_S:g}"]
            controller = spawn("controller", argv, run / "controller.err", subprocess.PIPE)
            decision, evaluations, path = await follow(
                controller, rollout, run, settings.timeout_s, router
            )
            if decision is not None:
                await wait_loaded(digest_of(table), log)
        print(traffic.summary(time.monotonic() - traffic_started), flush=True)
    finally:
        if controller is not None:
            await stop(controller, signal.SIGINT, CONTROLLER_STOP_TIMEOUT)
        # The router first, so it never proxies to a backend already gone; then the rest.
        for child in sorted(children, key=lambda c: c.name != "router"):
            await stop(child)
    after = table.read_text(encoding="utf-8")
    show_table(table, before, after)
    return Outcome(scenario, decision, time.monotonic() - started, evaluations, path)


async def follow(
    controller: Child, rollout: Rollout, run: Path, timeout_s: float, router: Child
) -> tuple[str | None, int, list[float]]:
    """Print the controller's lines until promote or rollback; that decision (None at the
    timeout), how many lines came, and the candidate's percent after each applied change.
    The controller is stopped on the way out, before its pipe is closed, so it never
    writes into a closed pipe."""
    assert controller.proc.stdout is not None
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), controller.proc.stdout
    )
    started = time.monotonic()
    evaluations = 0
    path: list[float] = []
    try:
        with (run / "controller.jsonl").open("wb") as raw:
            while True:
                left = timeout_s - (time.monotonic() - started)
                if left <= 0:
                    say(f"no promote or rollback within {timeout_s:g} s; giving up")
                    return None, evaluations, path
                try:
                    data = await asyncio.wait_for(reader.readline(), timeout=left)
                except TimeoutError:
                    continue
                if not data:
                    await asyncio.to_thread(controller.proc.wait)
                    raise controller.died()
                if not router.alive():
                    raise router.died()
                raw.write(data)
                raw.flush()
                line = json.loads(data)
                if line.get("event") != "rollout" or line.get("model") != MODEL:
                    continue
                evaluations += 1
                for text in describe(line, rollout, time.monotonic() - started):
                    print(text, flush=True)
                if not path:
                    path.append(line["split_before"][rollout.candidate])
                if line["applied"] and line["split_after"] != line["split_before"]:
                    path.append(line["split_after"][rollout.candidate])
                if line["decision"] in ("promote", "rollback") and line["applied"]:
                    return line["decision"], evaluations, path
    finally:
        await stop(controller, signal.SIGINT, CONTROLLER_STOP_TIMEOUT)
        transport.close()


def show_table(table: Path, before: str, after: str) -> None:
    final = parse_text(after, str(table)).models[MODEL]
    state = final.rollout.state if final.rollout is not None else None
    split = ", ".join(f"{v} {p}%" for v, p in final.split.shares())
    say(f"{_rel(table)} now: split {split}; state {state or '(none)'}. Its changes:")
    diff = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile="examples/rollout.yaml",
        tofile=str(_rel(table)),
        n=1,
    )
    sys.stdout.writelines(diff)
    sys.stdout.flush()


def _rel(path: Path) -> Path:
    try:
        return path.relative_to(ROOT)
    except ValueError:
        return path


# ---------------------------------------------------------------------------------------


async def demo(only: str | None, settings: Settings) -> list[Outcome]:
    # SIGTERM unwinds like Ctrl-C (which asyncio.run turns into a cancellation too), through
    # the finally blocks that stop the children.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    outcomes = []
    for scenario in SCENARIOS:
        if only is None or scenario.name == only:
            outcomes.append(await roll(scenario, settings))
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.rollout_demo",
        description="Two guarded rollouts with the real router, backends and controller: a "
        "healthy candidate promoted, a failing one rolled back.",
    )
    parser.add_argument("--only", choices=[s.name for s in SCENARIOS], help="run one rollout")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up on a rollout after S seconds of controller (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        metavar="N",
        help="requests in flight (default %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=300.0,
        metavar="N",
        help="requests a second at most (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, metavar="N", help="seed of the traffic (default %(default)s)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        settings = Settings(args.timeout, args.rate, args.concurrency, args.seed)
        outcomes = asyncio.run(demo(args.only, settings))
    except DemoFailed as exc:
        print(f"rollout-demo: {exc}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("rollout-demo: interrupted; every process has been stopped", file=sys.stderr)
        return 130
    say(f"done in {time.monotonic() - started:.1f} s:")
    for o in outcomes:
        got = o.decision or "no decision (timeout)"
        mark = "as expected" if o.as_expected else f"EXPECTED {o.scenario.expected.upper()}"
        steps = " -> ".join(f"{p:g}%" for p in o.path)
        print(
            f"  {o.scenario.name}: {got} ({mark}); the candidate went {steps}; {o.evaluations} "
            f"evaluations, {o.seconds:.1f} s in all"
        )
    return 0 if all(o.as_expected for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
