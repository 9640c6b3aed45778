"""The whole story in one command, for ``make demo``: serve, send traffic, stop, report.

    python examples/demo.py [--users 3000]

1. starts the example stack (backends v1, v2 and v3, and the router on examples/demo.yaml,
   which logs to logs/demo.jsonl; an old log is removed first, so the report covers this run
   only);
2. waits until the router accepts connections;
3. runs examples/traffic.py (as `python -m examples.traffic`, from the top of the
   checkout, where `backends` is found): a few thousand simulated users, 90% of them on v1
   and 10% on v2 by bucket, plus pinned and anonymous requests, each answer followed by its
   true label as feedback; it returns only once the last feedback has been answered. The
   router also copies the requests it routes (not the pinned ones) to v3, the table's
   shadow, at most 64 in flight (a copy beyond that is dropped and logged as dropped); v3's
   answers never reach a client;
4. stops the stack with SIGTERM and waits for it: the router writes every queued log record
   before it exits, so the log is complete only then;
5. runs ``model-router report`` on the log: the text report here, the HTML one to a file.

The stack runs in its own process group, so a Ctrl-C reaches only this script, which then
stops the stack in order (the stack stops the router before the backends). The stack is
stopped on every way out: success, failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path("examples/demo.yaml")  # relative to ROOT, where every child runs
LOG = Path("logs/demo.jsonl")  # must match log.path in CONFIG
HTML = Path("logs/demo-report.html")
HOST, PORT = "127.0.0.1", 8080  # must match server.listen in CONFIG
URL = f"http://{HOST}:{PORT}"
START_TIMEOUT = 90.0
# The stack gives the router, then the backends, 15 s each to stop before it kills them.
STOP_TIMEOUT = 45.0
POLL_INTERVAL = 0.2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DemoFailed(Exception):
    """A step failed; the message says which and what to look at."""


def say(message: str) -> None:
    print(f"\ndemo: {message}", flush=True)


def accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def check_port_free() -> None:
    """Checked here too, not only by the stack: otherwise the wait for the router could take
    another process for it before the stack gives up."""
    if accepts_tcp(HOST, PORT):
        raise DemoFailed(
            f"something already listens on {HOST}:{PORT}, perhaps `make run` or an earlier "
            "demo; stop it first"
        )


def start_stack() -> subprocess.Popen[bytes]:
    say(f"starting the example stack on {CONFIG} (backends v1, v2 and v3 train first)")
    return subprocess.Popen(
        [sys.executable, "-m", "backends.stack", "--config", str(CONFIG)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        # Its banner offers curl lines and Ctrl-C, which do not apply here; its stderr
        # (the router's banner, the stack's own messages and any failure) stays visible.
        stdout=subprocess.DEVNULL,
        process_group=0,
    )


def wait_until_serving(stack: subprocess.Popen[bytes]) -> float:
    """Seconds until the router accepted a connection; fails if the stack exits first."""
    started = time.monotonic()
    while not accepts_tcp(HOST, PORT):
        if stack.poll() is not None:
            raise DemoFailed(
                f"the stack exited with code {stack.returncode} before the router started; "
                "its messages are above"
            )
        if time.monotonic() - started > START_TIMEOUT:
            raise DemoFailed(f"the router did not listen on {URL} within {START_TIMEOUT:.0f} s")
        time.sleep(POLL_INTERVAL)
    return time.monotonic() - started


def stop_stack(stack: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM the stack and wait for it; its exit code, or None if it had to be killed."""
    if stack.poll() is not None:
        return stack.returncode
    # A second Ctrl-C must not cut this wait short: that would leave the stack running.
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        stack.terminate()
        try:
            return stack.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            say(f"the stack did not stop within {STOP_TIMEOUT:.0f} s; killing it")
            stack.kill()
            stack.wait()
            return None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_step(argv: list[str], what: str) -> None:
    code = subprocess.run(argv, cwd=ROOT, check=False).returncode
    if code != 0:
        raise DemoFailed(f"{what} failed with exit code {code}")


def demo(users: int) -> None:
    timings: dict[str, float] = {}
    check_port_free()  # before removing anything: the demo may already be running
    (ROOT / LOG).parent.mkdir(exist_ok=True)
    (ROOT / LOG).unlink(missing_ok=True)
    (ROOT / HTML).unlink(missing_ok=True)

    stack = start_stack()
    try:
        timings["start-up"] = wait_until_serving(stack)
        say(f"router up on {URL} after {timings['start-up']:.1f} s; sending traffic")
        started = time.monotonic()
        # The generator returns once the last feedback has been answered.
        run_step(
            [sys.executable, "-m", "examples.traffic", "--url", URL, "--users", str(users)],
            "the traffic generator",
        )
        timings["traffic"] = time.monotonic() - started
        if stack.poll() is not None:
            raise DemoFailed(f"the stack exited with code {stack.returncode} during the traffic")
        say("stopping the stack (the router writes its last log records on the way out)")
    finally:
        started = time.monotonic()
        code = stop_stack(stack)
        timings["shutdown"] = time.monotonic() - started
    if code != 0:
        raise DemoFailed(f"the stack exited with code {code} on SIGTERM; its messages are above")
    records = sum(1 for _ in (ROOT / LOG).open("rb"))
    say(f"{LOG} holds {records} lines; the report:")

    started = time.monotonic()
    report = [sys.executable, "-m", "router", "report", str(LOG)]
    run_step(report, "model-router report")
    run_step([*report, "--format", "html", "-o", str(HTML)], "model-router report --format html")
    timings["report"] = time.monotonic() - started

    spent = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items())
    say(f"done ({spent}).\nOpen the HTML report: {(ROOT / HTML).as_uri()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python examples/demo.py",
        description="Start the example stack, send it traffic, stop it, and report on the log.",
    )
    parser.add_argument("--users", type=int, default=3000, help="users (default %(default)s)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, through the finally that stops the stack.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo(args.users)
    except DemoFailed as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the stack has been stopped", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
