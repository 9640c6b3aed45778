"""Run one example backend: ``python -m backends --version v1 --port 9001 [--host 127.0.0.1]``."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from backends.app import create_app
from backends.model import VERSIONS


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 1 to 65535, got {text!r}")
    return port


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backends",
        description="Serve one version of the example breast-cancer classifier over HTTP.",
    )
    parser.add_argument("--version", required=True, choices=VERSIONS, help="model version")
    parser.add_argument("--port", required=True, type=_port, help="TCP port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then return 0; return 1 if the port cannot be bound."""
    args = parse_args(argv)
    app = create_app(args.version)
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 literal
    ready = f"backend {args.version} listening on http://{host}:{args.port}"

    def announce(_banner: str) -> None:
        # run_app calls its `print` once every site is bound: the moment we are ready.
        # Printing our own line in its place replaces aiohttp's multi-line banner.
        print(ready, flush=True)

    try:
        # run_app turns SIGINT and SIGTERM into a graceful shutdown and then returns.
        web.run_app(app, host=args.host, port=args.port, print=announce)
    except OSError as exc:
        print(
            f"backend {args.version} cannot listen on {args.host}:{args.port}: {exc.strerror}; "
            "stop whatever holds the port or pass another --port",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
