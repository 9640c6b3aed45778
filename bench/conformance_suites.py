"""Public HTTP/1.1 conformance suites, model-router and nginx side by side.

    python bench/conformance_suites.py [--timeout 2] [--only SUBSTRING] [--concurrency 16]
        [--router-src DIR] [-o OUT.json]

`--router-src` runs the router of another checkout, say `git archive OLD | tar -x -C DIR`,
to compare verdicts across commits.

Sends the raw cases of uNetworking/h1spec, aws/http-desync-guardian and MDA2AV/Http11Probe
(bench/conformance/cases.json, made by bench/conformance/extract_cases.py from the
suites' own files) over fresh sockets to a model-router and to nginx as a reverse proxy,
both in front of the same echo backend. The backend is a few lines of asyncio that never
refuses anything, so that every refusal seen is the proxy's own: it answers 200 with the
request body ("OK" for none), or the request's header lines on a path ending in /echo,
and marks its answers `X-Backend: echo`. The path of an origin-form target (`/...` after
the method) or of an absolute-form one (`http://authority/...`) is prefixed with
/models/m, the router's route to the backend, so the form itself is kept; asterisk-form
and malformed targets go as they are. Each answer is reduced to an outcome (the first
status line, the final answer's headers and body, whether the server then closed the
connection or kept it open, or sent nothing before the timeout), and the case's rules
give a verdict.

Rules are `[condition, verdict]`, the first whose condition holds wins, none means "fail".
A condition is terms joined by `&`; a term starting with `!` is negated:
  *                       always
  none / resp             no answer / an answer
  closed|open|timeout     the connection's state after the answer (or without one)
  400, 4xx, 200-299, a|b  the first status line (false without an answer)
  header:NAME             the final answer has the header
  body:TEXT, echo:TEXT    the final answer's body is TEXT (echo: or the backend's "OK")
  body-has:TEXT           the body holds TEXT (any case); empty-body: nothing after the head
  imf-date                Date is an IMF-fixdate
  echoed:NAME=VALUE       the backend saw the header (echoed-exact: name in the same case)

Prints a table per suite (scored MUST cases apart from SHOULD, MAY, ambiguous, unlevelled
and unscored ones; "warn" verdicts, the suites' "acceptable but not preferred", count as
passes) and
every case the router fails, then writes bench/results/conformance.json. nginx runs with
its defaults (underscores_in_headers off, proxy_request_buffering on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "bench" / "conformance" / "cases.json"
RESULTS = ROOT / "bench" / "results" / "conformance.json"
PREFIX = b"/models/m"
# After the answer: how long a server has to close the connection to count as closing it.
CLOSE_GRACE_S = 0.3
MAX_READ = 1 << 20
TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# The method, its whitespace and an absolute-form target's scheme and authority.
TARGET_PATH = re.compile(rb"^((?:\r?\n)*" + TCHAR + rb"+[ \t]+(?:https?://[^/\s]*)?)/")
MUST = "must"


@dataclass
class Outcome:
    status: int | None = None  # the first status line (a 1xx included)
    state: str = "timeout"  # closed, open or timeout
    headers: dict[str, str] = field(default_factory=dict)  # the final answer's, lower case
    body: bytes = b""
    extra: bytes = b""  # bytes after the final answer's end
    raw: bytes = b""

    @property
    def origin(self) -> str:
        """Who made the final answer: the backend marks its own."""
        return "backend" if "x-backend" in self.headers else "proxy"

    def short(self) -> str:
        if self.status is None:
            return "no answer, " + ("closed" if self.state == "closed" else "timed out")
        return f"{self.status}, {self.state}"


# ---------------------------------------------------------------- rules


def status_holds(term: str, status: int | None) -> bool:
    if status is None:
        return False
    for item in term.split("|"):
        if m := re.fullmatch(r"(\d)xx", item):
            low = high = int(m.group(1)) * 100
            high += 99
        else:
            low_text, _, high_text = item.partition("-")
            low, high = int(low_text), int(high_text or low_text)
        if low <= status <= high:
            return True
    return False


def echoed(outcome: Outcome, spec: str, exact: bool) -> bool:
    name, _, value = spec.rpartition("=")
    for line in outcome.body.decode("latin-1").split("\n"):
        seen, colon, seen_value = line.partition(":")
        same = seen == name if exact else seen.lower() == name.lower()
        if colon and same and seen_value.strip().lower() == value.lower():
            return True
    return False


def imf_date(outcome: Outcome) -> bool:
    date = outcome.headers.get("date", "").strip()
    if not re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", date):
        return False
    try:
        parsedate_to_datetime(date)
    except ValueError:
        return False
    return True


def term_holds(term: str, o: Outcome) -> bool:
    if term.startswith("!"):
        inner = term[1:]
        return (o.status is not None and not status_holds(inner, o.status)
                if inner[0].isdigit() else not term_holds(inner, o))  # fmt: skip
    kind, _, arg = term.partition(":")
    checks: dict[str, Callable[[], bool]] = {
        "*": lambda: True,
        "none": lambda: o.status is None,
        "resp": lambda: o.status is not None,
        "header": lambda: arg.lower() in o.headers,
        "body": lambda: o.body == arg.encode("latin-1"),
        "echo": lambda: o.body.rstrip(b"\r\n") in (arg.encode("latin-1"), b"OK"),
        "body-has": lambda: arg.lower().encode("latin-1") in o.body.lower(),
        "empty-body": lambda: not o.body and not o.extra,
        "imf-date": lambda: imf_date(o),
        "echoed": lambda: echoed(o, arg, exact=False),
        "echoed-exact": lambda: echoed(o, arg, exact=True),
    }
    if kind in checks:
        return bool(checks[kind]())
    if term[0].isdigit():
        return status_holds(term, o.status)
    return o.state in term.split("|")


def verdict(rules: list[list[str]], outcome: Outcome) -> str:
    for cond, result in rules:
        if all(term_holds(t, outcome) for t in cond.split("&")):
            return result
    return "fail"


# ---------------------------------------------------------------- payloads


def payload(case: dict[str, Any], host: str) -> bytes:
    parts = []
    for seg in case["payload"]:
        if isinstance(seg, str):
            parts.append(seg)
        elif "repeat" in seg:
            parts.append(seg["repeat"] * seg["times"])
        else:
            numbered = seg["numbered"]
            parts.append("".join(numbered.replace("{i}", str(i)) for i in range(seg["times"])))
    raw = "".join(parts).replace("{HOST}", host).encode("latin-1")
    return TARGET_PATH.sub(lambda m: m.group(1) + PREFIX + b"/", raw, count=1)


# ---------------------------------------------------------------- one exchange


class Reader:
    """Reads answers from a socket until a deadline; EOF and resets mark it closed."""

    def __init__(self, reader: asyncio.StreamReader, deadline: float) -> None:
        self.reader, self.deadline, self.buf, self.eof = reader, deadline, b"", False
        self.raw = b""

    async def fill(self, until: float | None = None) -> bool:
        """Reads more; False at EOF or when the deadline passes."""
        left = (until or self.deadline) - time.monotonic()
        if self.eof or left <= 0:
            return False
        try:
            chunk = await asyncio.wait_for(self.reader.read(65536), left)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        self.raw = (self.raw + chunk)[:4096]
        return True

    async def head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_READ or not await self.fill():
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n and await self.fill():
            pass
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    async def line(self) -> bytes:
        while b"\r\n" not in self.buf and await self.fill():
            pass
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line


def parse_head(head: bytes) -> tuple[int | None, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return (int(m.group(1)) if m else None), headers


async def chunked_body(r: Reader) -> bytes:
    body = b""
    while True:
        size = int(((await r.line()).split(b";")[0].strip() or b"0"), 16)
        if size == 0:
            while await r.line():  # trailer fields, up to the empty line
                pass
            return body
        body += await r.exactly(size)
        await r.exactly(2)


async def answer_body(r: Reader, status: int, headers: dict[str, str], head_request: bool) -> bytes:
    if head_request or status in (204, 304) or status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await chunked_body(r)
    if "content-length" in headers:
        return await r.exactly(int(headers["content-length"].split(",")[0]))
    while await r.fill():  # no framing: the close ends it
        pass
    data, r.buf = r.buf, b""
    return data


async def read_outcome(r: Reader, head_request: bool) -> Outcome:
    o = Outcome()
    while (head := await r.head()) is not None:
        status, headers = parse_head(head)
        o.status = (status or 0) if o.status is None else o.status
        if status is not None and 100 <= status < 200 and status != 101:
            continue  # an interim answer: the final one follows
        o.headers = headers
        try:
            o.body = await answer_body(r, status or 0, headers, head_request)
        except ValueError:  # broken framing: keep what came
            o.body, r.buf = r.buf, b""
        break
    if o.status is not None:
        grace = time.monotonic() + CLOSE_GRACE_S
        while await r.fill(until=grace):
            pass
    o.extra, o.raw = r.buf, r.raw
    o.state = "closed" if r.eof else ("open" if o.status is not None else "timeout")
    return o


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server answered and closed before taking it all: read what it said


async def exchange(port: int, data: bytes, wait_s: float) -> Outcome:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sending = asyncio.create_task(send(writer, data))
    try:
        head_request = data.lstrip(b"\r\n").startswith(b"HEAD ")
        return await read_outcome(Reader(reader, time.monotonic() + wait_s), head_request)
    finally:
        sending.cancel()
        writer.transport.abort()


# ---------------------------------------------------------------- the three servers

BACKEND = r"""
import asyncio

async def body(reader, fields):
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        data = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            data += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
        return data
    return await reader.readexactly(int(fields.get(b"content-length", b"0") or b"0"))

async def serve(reader, writer):
    try:
        while True:
            lines = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
            method, target = (lines[0].split(b" ") + [b"", b""])[:2]
            pairs = (x.partition(b":") for x in lines[1:])
            fields = {n.strip().lower(): v.strip() for n, _, v in pairs}
            data = await body(reader, fields)
            if target.split(b"?")[0].endswith(b"/echo"):
                data = b"".join(line + b"\n" for line in lines[1:])
            data = data or b"OK"
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: echo\r\n"
            head += b"Content-Length: %d\r\n\r\n" % len(data)
            writer.write(head + (b"" if method == b"HEAD" else data))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=1 << 20)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def start_backend() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", BACKEND], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def start_router(tmp: Path, backend: int, src: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = tmp / "routes.yaml"
    config.write_text(f"""
log: {{path: "{tmp}/routing.jsonl"}}
models:
  m:
    versions:
      v1: {{url: "http://127.0.0.1:{backend}"}}
    split: {{v1: 100}}
""")
    stderr = tmp / "router.err"
    argv = [sys.executable, "-m", "router", "serve", "--config", str(config),
            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]  # fmt: skip
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stderr=err, cwd=src)  # -m imports src's router
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if m := re.search(r"serving on http://[\d.]+:(\d+)", stderr.read_text()):
            return proc, int(m.group(1))
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"model-router did not start: {stderr.read_text()[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(tmp: Path, backend: int) -> tuple[subprocess.Popen[bytes], int]:
    """nginx with its defaults as a reverse proxy: HTTP/1.1 and keep-alive upstream."""
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Stops a child (nginx wants SIGQUIT for a graceful stop)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- running and reporting


@dataclass
class Result:
    case: dict[str, Any]
    outcomes: dict[str, Outcome]
    verdicts: dict[str, str]

    def passed(self, target: str) -> bool:
        return self.verdicts[target] in ("pass", "warn")


async def run_case(case: dict[str, Any], ports: dict[str, int], wait_s: float,
                   gate: asyncio.Semaphore) -> Result:  # fmt: skip
    outcomes: dict[str, Outcome] = {}
    async with gate:
        for target, port in ports.items():
            data = payload(case, f"127.0.0.1:{port}")
            try:
                outcomes[target] = await exchange(port, data, wait_s)
            except OSError as error:
                outcomes[target] = Outcome(state="closed", raw=str(error).encode())
    verdicts = {t: verdict(case["rules"], o) for t, o in outcomes.items()}
    return Result(case, outcomes, verdicts)


async def run_all(cases: list[dict[str, Any]], ports: dict[str, int],
                  args: argparse.Namespace) -> list[Result]:  # fmt: skip
    gate = asyncio.Semaphore(args.concurrency)
    return list(await asyncio.gather(*(run_case(c, ports, args.timeout, gate) for c in cases)))


def is_must(case: dict[str, Any]) -> bool:
    return bool(case["level"] == MUST and case["scored"])


def counts(results: list[Result]) -> dict[str, int]:
    must = [r for r in results if is_must(r.case)]
    other = [r for r in results if not is_must(r.case)]
    return {
        "cases": len(results),
        "must": len(must),
        "must_router": sum(r.passed("router") for r in must),
        "must_nginx": sum(r.passed("nginx") for r in must),
        "other": len(other),
        "other_router": sum(r.passed("router") for r in other),
        "other_nginx": sum(r.passed("nginx") for r in other),
        "warn_router": sum(r.verdicts["router"] == "warn" for r in results),
        "warn_nginx": sum(r.verdicts["nginx"] == "warn" for r in results),
    }


def by_suite(results: list[Result]) -> Iterator[tuple[str, dict[str, int]]]:
    for suite in dict.fromkeys(r.case["suite"] for r in results):
        yield suite, counts([r for r in results if r.case["suite"] == suite])
    yield "total", counts(results)


def print_table(results: list[Result]) -> None:
    print(f"\n{'suite':<22}{'cases':>6} |{'MUST':>5}{'router':>7}{'nginx':>6} |"
          f"{'other':>6}{'router':>7}{'nginx':>6} |{'warn: router':>13}{'nginx':>6}")  # fmt: skip
    for suite, c in by_suite(results):
        print(f"{suite:<22}{c['cases']:>6} |{c['must']:>5}{c['must_router']:>7}"
              f"{c['must_nginx']:>6} |{c['other']:>6}{c['other_router']:>7}{c['other_nginx']:>6}"
              f" |{c['warn_router']:>13}{c['warn_nginx']:>6}")  # fmt: skip
    print("MUST: scored MUST cases; other: SHOULD, MAY, ambiguous, unlevelled and unscored;")
    print("a warn (the suite's acceptable but not preferred answer) counts as a pass")


def print_failures(results: list[Result]) -> None:
    failed = [r for r in results if not r.passed("router")]
    failed.sort(key=lambda r: (not is_must(r.case), r.case["suite"], r.case["id"]))
    print(f"\nthe router fails {len(failed)} cases:")
    for r in failed:
        c = r.case
        level = c["level"] + ("" if c["scored"] else ", unscored")
        print(f"  [{level}] {c['suite']} {c['id']!r}\n"
              f"      expected {c['expected']}; router {r.outcomes['router'].short()};"
              f" nginx {r.outcomes['nginx'].short()} ({r.verdicts['nginx']})")  # fmt: skip


def case_record(r: Result) -> dict[str, Any]:
    def side(target: str) -> dict[str, Any]:
        o = r.outcomes[target]
        return {"verdict": r.verdicts[target], "status": o.status, "state": o.state,
                "origin": o.origin, "answer": o.raw[:160].decode("latin-1")}  # fmt: skip

    keep = ("suite", "id", "level", "scored", "expected")
    return {**{k: r.case[k] for k in keep}, "router": side("router"), "nginx": side("nginx")}


def write_results(results: list[Result], sources: dict[str, Any], args: argparse.Namespace) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "settings": {"timeout_s": args.timeout, "only": args.only,
                     "router_src": str(args.router_src)},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": sources,
        "summary": dict(by_suite(results)),
        "cases": [case_record(r) for r in results],
    }, indent=1) + "\n")  # fmt: skip
    print(f"\nwritten to {args.output}")


@contextlib.contextmanager
def running(tmp: Path, router_src: Path = ROOT) -> Iterator[dict[str, int]]:
    """The backend, and model-router and nginx in front of it; their public ports."""
    with contextlib.ExitStack() as stack:
        backend, backend_port = start_backend()
        stack.callback(stop, backend)
        router, router_port = start_router(tmp, backend_port, router_src)
        stack.callback(stop, router)
        nginx, nginx_port = start_nginx(tmp, backend_port)
        stack.callback(stop, nginx, signal.SIGQUIT)
        yield {"router": router_port, "nginx": nginx_port}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait per case")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--only", default="", help="cases whose id holds this text")
    parser.add_argument(
        "--router-src",
        type=Path,
        default=ROOT,
        help="run the router of another checkout (a worktree of an older commit)",
    )
    parser.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if shutil.which("nginx") is None:
        print("nginx is not installed: `make bench-conformance` installs it", file=sys.stderr)
        return 1
    data = json.loads(CASES.read_text())
    cases = [c for c in data["cases"] if args.only.lower() in c["id"].lower()]
    with (
        tempfile.TemporaryDirectory(prefix="model-router-conformance-") as name,
        running(Path(name), args.router_src.resolve()) as ports,
    ):
        results = asyncio.run(run_all(cases, ports, args))
    print_table(results)
    print_failures(results)
    write_results(results, data["sources"], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
