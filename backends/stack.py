"""Run the whole example stack for ``make run``: the example backends, then the router in front.

    python -m backends.stack [--config config/routes.yaml] [--listen 127.0.0.1:8080]

The routing table says which backends to start: one for each version named v1, v2 or v3 (the
example model versions) whose url is ``http://127.0.0.1:PORT``, on that port, and also serving
the Open Inference Protocol over gRPC on GPORT when the version's grpc_url is
``127.0.0.1:GPORT``. Other versions are left to whatever serves them. config/routes.yaml names
v1 and v2 (ports 9001 and 9002, gRPC 9011 and 9012); examples/demo.yaml adds v3 on port 9003.

A small process supervisor on the standard library alone. Each child runs in its own process
group, so a Ctrl-C in the terminal reaches only this process, which then stops the children
in order: the router first (so it never proxies to a backend that is already gone), then the
backends. The price: if this process is killed with SIGKILL, the children keep running.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NamedTuple
from urllib.parse import urlsplit

from backends.model import VERSIONS, sample_rows
from router.config.model import Address, ConfigError, Table, parse_address
from router.config.validate import load_table

LOOPBACK = "127.0.0.1"
MODEL_NAME = "cancer"  # the model's name in config/routes.yaml
HEALTH_TIMEOUT = 60.0
ROUTER_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.2
PROBE_TIMEOUT = 0.5


class Backend(NamedTuple):
    """One example backend to start: its version, HTTP port and gRPC port (None: no gRPC)."""

    version: str
    port: int
    grpc_port: int | None = None

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "backends",
            "--version",
            self.version,
            "--port",
            str(self.port),
        ]
        return argv + ([] if self.grpc_port is None else ["--grpc-port", str(self.grpc_port)])


class StackFailed(Exception):
    """Start-up failed or a child died; the message says which and what to do."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop everything and exit 0."""


def probe_host(address: Address) -> str:
    """Where to connect to reach a server bound to `address` (a wildcard means loopback)."""
    return {"": LOOPBACK, "0.0.0.0": LOOPBACK, "::": "::1"}.get(address.host, address.host)


def url_of(address: Address) -> str:
    host = probe_host(address)
    return f"http://[{host}]:{address.port}" if ":" in host else f"http://{host}:{address.port}"


def listen_address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]

    def exit_status(self) -> str:
        code = self.proc.returncode
        if code is not None and code < 0:
            try:
                return f"on signal {signal.Signals(-code).name}"
            except ValueError:  # a signal without a name, such as a real-time one
                return f"on signal {-code}"
        return f"with code {code}"


class Supervisor:
    """Owns the children: starts them, watches them, and stops them in order."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.signalled: int | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only note it: the polling loops notice within POLL_INTERVAL and unwind cleanly,
        # which raising from here (in the middle of a Popen, say) would not.
        self.signalled = signum

    def spawn(self, name: str, argv: list[str]) -> Child:
        # Own process group: see the module docstring. stdout/stderr are inherited.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0)
        child = Child(name, proc)
        self.children.append(child)
        return child

    def wait_for(self, ready: Callable[[], bool], deadline: float | None, failure: str) -> None:
        """Poll ``ready`` until it is true; raise if a signal arrives, a child dies, or time
        runs out (``failure`` is the message then). ``deadline`` is on time.monotonic()."""
        while True:
            if self.signalled is not None:
                raise Interrupted
            for child in self.children:
                if child.proc.poll() is not None:
                    raise StackFailed(
                        f"{child.name} exited {child.exit_status()}; its output is above"
                    )
            if ready():
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise StackFailed(failure)
            time.sleep(POLL_INTERVAL)

    def stop_all(self) -> None:
        """SIGTERM the router, wait for it, then the same for the backends."""
        live = [c.name for c in self.children if c.proc.poll() is None]
        if live:
            say(f"stopping {', '.join(sorted(live, key=lambda name: name != 'router'))}")
        routers = [c for c in self.children if c.name == "router"]
        self._stop(routers)
        self._stop([c for c in self.children if c not in routers])

    def _stop(self, group: list[Child]) -> None:
        live = [child for child in group if child.proc.poll() is None]
        for child in live:
            child.proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in live:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM; killing it")
                child.proc.kill()
                child.proc.wait()


def say(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


def accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


# No proxies: an http_proxy in the environment must not swallow probes of loopback ports.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers_health(port: int) -> bool:
    try:
        with _direct.open(f"http://{LOOPBACK}:{port}/health", timeout=PROBE_TIMEOUT) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):  # URLError and HTTPError are OSErrors
        return False


def curl_examples(router_url: str) -> list[str]:
    """Two ready-to-paste curl lines on the dataset's first row: routed, and pinned to v2."""
    features, _label = sample_rows(1)[0]
    body = shlex.quote(json.dumps({"features": features}))
    curl = f"curl -s -H 'X-User-ID: alice' -H 'Content-Type: application/json' -d {body}"
    base = f"{router_url}/models/{MODEL_NAME}"
    return [f"{curl} {base}/predict", f"{curl} {base}/versions/v2/predict"]


def tritonclient_example(router_url: str) -> list[str]:
    """Python lines that send the first row to the model with tritonclient.http, over the
    Open Inference Protocol (``tritonclient[http]`` is in the dev extra)."""
    features, _label = sample_rows(1)[0]
    return [
        "import numpy as np, tritonclient.http as httpclient",
        f"client = httpclient.InferenceServerClient({urlsplit(router_url).netloc!r})",
        f"row = httpclient.InferInput('input-0', [1, {len(features)}], 'FP64')",
        f"row.set_data_from_numpy(np.array([{features}]), binary_data=False)",
        f"answer = client.infer({MODEL_NAME!r}, [row], headers={{'X-User-ID': 'alice'}})",
        "print(answer.get_response()['model_version'], answer.as_numpy('predict'))",
        "client.close()",
    ]


def tritonclient_grpc_example(address: str) -> list[str]:
    """Python lines that send the first row to the model with tritonclient.grpc at
    ``address`` (HOST:PORT), over the Open Inference Protocol's gRPC service."""
    features, _label = sample_rows(1)[0]
    return [
        "import numpy as np, tritonclient.grpc as grpcclient",
        f"client = grpcclient.InferenceServerClient({address!r})",
        f"row = grpcclient.InferInput('input-0', [1, {len(features)}], 'FP64')",
        f"row.set_data_from_numpy(np.array([{features}]))",
        f"answer = client.infer({MODEL_NAME!r}, [row], headers={{'x-user-id': 'alice'}})",
        "print(answer.get_response().model_version, answer.as_numpy('predict'))",
        "client.close()",
    ]


def stopped_by_ctrl_c(backends: list[Backend]) -> str:
    """What the banner's Ctrl-C line stops: "all three" for make run's two backends."""
    if not backends:
        return "the router"
    words = {2: "two", 3: "three", 4: "four"}
    n = len(backends) + 1
    return f"all {words.get(n, str(n))}"


def example_port(url: str) -> int | None:
    """The port of ``http://127.0.0.1:PORT`` (a trailing slash allowed); None for other urls."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    plain = parts.scheme == "http" and parts.path in ("", "/") and not parts.query
    return port if plain and parts.hostname == LOOPBACK and port is not None else None


def example_grpc_port(grpc_url: str | None) -> int | None:
    """The port of a grpc_url ``127.0.0.1:PORT``; None for none, TLS or another host."""
    host, _, port = (grpc_url or "").rpartition(":")
    if host != LOOPBACK or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return int(port)


def backends_of(table: Table) -> list[Backend]:
    """The example backends the table names, in the table's order.

    A version named v1, v2 or v3 at ``http://127.0.0.1:PORT`` is one, serving gRPC too when
    its grpc_url is ``127.0.0.1:GPORT``; the same version on the same ports in several models
    is started once. Two versions on one port cannot both be, nor one backend with two gRPC
    ports.
    """
    found: dict[int, Backend] = {}
    owners: dict[int, str] = {}  # every port, HTTP or gRPC: the version it is for
    for model in table.models.values():
        for version in model.versions.values():
            port = example_port(version.url)
            if version.name not in VERSIONS or port is None:
                continue
            backend = Backend(version.name, port, example_grpc_port(version.grpc_url))
            known = found.setdefault(port, backend)
            if known.version == backend.version and None in (known.grpc_port, backend.grpc_port):
                # One model's version with a grpc_url, another's without: one backend, gRPC on.
                found[port] = known._replace(grpc_port=known.grpc_port or backend.grpc_port)
            elif known.version == backend.version and known != backend:
                raise StackFailed(
                    f"the routing table gives backend {version.name} on port {port} two "
                    "grpc_urls; an example backend serves gRPC on one port"
                )
            for taken in (backend.port, backend.grpc_port):
                if taken is not None and owners.setdefault(taken, version.name) != version.name:
                    raise StackFailed(
                        f"the routing table puts versions {owners[taken]} and {version.name} "
                        f"both on port {taken}; an example backend serves one version per port"
                    )
    return list(found.values())


def preflight(backends: list[Backend], listen: Address, grpc_listen: Address | None) -> None:
    """Fail before starting anything if a port is taken."""
    for backend in backends:
        for port in (backend.port, backend.grpc_port):
            if port is not None and accepts_tcp(LOOPBACK, port):
                raise StackFailed(
                    f"port {port} (backend {backend.version}) is already in use, perhaps by a "
                    "stack left from an earlier run; stop that process first"
                )
    if accepts_tcp(probe_host(listen), listen.port):
        raise StackFailed(
            f"{listen} (the router) is already in use; stop that process or pass --listen HOST:PORT"
        )
    if grpc_listen is not None and accepts_tcp(probe_host(grpc_listen), grpc_listen.port):
        raise StackFailed(
            f"{grpc_listen} (the router's server.grpc_listen) is already in use; stop that "
            "process or edit the routing table"
        )


def run(args: argparse.Namespace, supervisor: Supervisor) -> None:
    config: Path = args.config
    try:
        table = load_table(config)
    except ConfigError as exc:
        raise StackFailed(f"the routing table has problems:\n{exc}") from exc
    listen: Address = args.listen or table.server.listen
    grpc_listen = table.server.grpc_listen
    backends = backends_of(table)
    preflight(backends, listen, grpc_listen)
    if not backends:
        say(f"{config} names no example backend (v1, v2 or v3 at http://{LOOPBACK}:PORT)")

    started = time.monotonic()
    for backend in backends:
        supervisor.spawn(f"backend {backend.version}", backend.argv())
    # A backend binds its gRPC port before its HTTP one: /health answering means both are up.
    for version, port, _grpc in backends:
        supervisor.wait_for(
            functools.partial(answers_health, port),
            started + HEALTH_TIMEOUT,
            f"backend {version} did not answer GET http://{LOOPBACK}:{port}/health within "
            f"{HEALTH_TIMEOUT:.0f} s",
        )

    router_argv = [sys.executable, "-m", "router", "serve", "--config", str(config)]
    if args.listen is not None:
        router_argv += ["--listen", str(args.listen)]
    supervisor.spawn("router", router_argv)
    for address in (listen, grpc_listen):
        if address is None:
            continue
        supervisor.wait_for(
            functools.partial(accepts_tcp, probe_host(address), address.port),
            time.monotonic() + ROUTER_TIMEOUT,
            f"the router did not accept connections on {address} within {ROUTER_TIMEOUT:.0f} s",
        )

    print(f"model-router is up: {url_of(listen)}")
    first, pinned = curl_examples(url_of(listen))
    print(f"Try it (traffic split by X-User-ID):\n  {first}")
    print(f"Or pin a version:\n  {pinned}")
    snippet = "\n".join(tritonclient_example(url_of(listen)))
    python = shlex.quote(sys.executable)
    print(f"Or with tritonclient (Open Inference Protocol):\n  {python} - <<'EOF'\n{snippet}\nEOF")
    if grpc_listen is not None:
        target = f"{probe_host(grpc_listen)}:{grpc_listen.port}"
        snippet = "\n".join(tritonclient_grpc_example(target))
        print(f"Or over gRPC (tritonclient.grpc):\n  {python} - <<'EOF'\n{snippet}\nEOF")
    print(f"Ctrl-C stops {stopped_by_ctrl_c(backends)}.", flush=True)
    supervisor.wait_for(lambda: False, None, "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backends.stack",
        description=(
            "Start an example backend for each version v1, v2 or v3 that the routing table "
            f"puts at http://{LOOPBACK}:PORT (v1 on 9001 and v2 on 9002 in config/routes.yaml), "
            f"with gRPC where its grpc_url is {LOOPBACK}:PORT, then the router."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("config/routes.yaml"),
        help="routing table for the router (default %(default)s)",
    )
    parser.add_argument(
        "--listen",
        type=listen_address,
        default=None,
        help="HOST:PORT for the router (default: server.listen of the routing table)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """0 after a Ctrl-C or SIGTERM; 1 if start-up fails or a child exits on its own."""
    args = parse_args(argv)
    supervisor = Supervisor()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)
    try:
        run(args, supervisor)
    except Interrupted:
        pass
    except StackFailed as exc:
        say(str(exc))
        return 1
    finally:
        supervisor.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
