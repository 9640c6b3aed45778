"""Run one example backend: ``python -m backends --version v1 --port 9001 [--host 127.0.0.1]``.

``--grpc-port P`` also serves the Open Inference Protocol over gRPC on port P
(backends/oip_grpc.py), the same model with the same faults; 0, the default, serves none.

``--fail-rate F`` and ``--delay-ms N`` make it faulty on purpose (a share F of predictions
answered with a 500, every /predict and OIP infer answer N ms late), for rollout demos;
off by default. The failures are drawn from ``--fault-seed``, so a run repeats.
"""

from __future__ import annotations

import argparse
import math
import sys

from aiohttp import web

from backends import oip_grpc
from backends.app import Faults, create_app
from backends.model import VERSIONS


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 1 to 65535, got {text!r}")
    return port


def _grpc_port(text: str) -> int:
    if text.strip() == "0":
        return 0
    try:
        return _port(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a TCP port from 1 to 65535, or 0 for none, got {text!r}"
        ) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds >= 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backends",
        description=(
            "Serve one version of the example breast-cancer classifier over HTTP "
            "(and over gRPC with --grpc-port)."
        ),
    )
    parser.add_argument("--version", required=True, choices=VERSIONS, help="model version")
    parser.add_argument("--port", required=True, type=_port, help="TCP port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--grpc-port",
        type=_grpc_port,
        default=0,
        metavar="P",
        help="also serve the Open Inference Protocol over gRPC on port P (default 0: none)",
    )
    faults = parser.add_argument_group("injected faults (for rollout demos; off by default)")
    faults.add_argument(
        "--fail-rate",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="share of predictions answered with a 500 and a JSON error (default 0)",
    )
    faults.add_argument(
        "--delay-ms",
        type=_milliseconds,
        default=0.0,
        metavar="N",
        help="extra milliseconds before every /predict and infer answer (default 0)",
    )
    faults.add_argument(
        "--fault-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the draws that pick the failing requests (default 0)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then return 0; return 1 if the port cannot be bound."""
    args = parse_args(argv)
    faults = Faults(args.fail_rate, args.delay_ms, args.fault_seed)
    app = create_app(args.version, faults=faults)
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 literal
    ready = f"backend {args.version} listening on http://{host}:{args.port}"
    if args.grpc_port:
        app.cleanup_ctx.append(oip_grpc.cleanup_ctx(args.host, args.grpc_port))
        ready += f" and grpc {host}:{args.grpc_port}"
    if faults:
        ready += f" (faulty on purpose: {faults.describe()})"

    def announce(_banner: str) -> None:
        # run_app calls its `print` once every site is bound: the moment we are ready.
        # Printing our own line in its place replaces aiohttp's multi-line banner.
        print(ready, flush=True)

    try:
        # run_app turns SIGINT and SIGTERM into a graceful shutdown and then returns.
        web.run_app(app, host=args.host, port=args.port, print=announce)
    except OSError as exc:
        if exc.strerror is None:  # gRPC's port: grpcio does not say why (see oip_grpc.bind)
            where, why, flag = f"gRPC on {args.host}:{args.grpc_port}", "", "--grpc-port"
        else:
            where, why, flag = f"{args.host}:{args.port}", f": {exc.strerror}", "--port"
        print(
            f"backend {args.version} cannot listen on {where}{why}; "
            f"stop whatever holds the port or pass another {flag}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
