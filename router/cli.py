"""`model-router serve | check | report | rollout | logs compact`: argument parsing, and the
only place that exits."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from router.config import churn
from router.config.apart import load_apart_now
from router.config.model import DEFAULT_CONFIG, ConfigError, Overrides, Table, parse_address
from router.config.validate import load_table
from router.stats.sequential import DEFAULT_T_OPT

REPORT_FORMATS = ("text", "json", "html")
REPORT_ENGINES = ("duckdb", "spark")
EXIT_OK = 0
EXIT_USAGE = 2  # also: the routing table has problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    return command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-router",
        description="Split live traffic between model versions behind one stable URL.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _serve_parser(commands.add_parser("serve", help="run the router"))

    check = commands.add_parser("check", help="validate a routing table")
    check.add_argument("path", metavar="PATH")
    check.add_argument(
        "--against", metavar="OLD", help="also show which users would move from OLD to PATH"
    )
    check.set_defaults(command=_check)

    _report_parser(commands.add_parser("report", help="compare versions from routing logs"))
    _rollout_parser(commands.add_parser(
        "rollout", help="ramp rollout candidates step by step, roll back on evidence"
    ))  # fmt: skip
    _logs_parser(commands.add_parser("logs", help="routing logs for the data lake"))
    return parser


def _report_parser(report: argparse.ArgumentParser) -> None:
    report.add_argument(
        "logs",
        nargs="+",
        metavar="LOG",
        help="routing logs, plain or .gz, or a directory `logs compact` wrote; globs allowed",
    )
    report.add_argument("--model", metavar="NAME", help="only this model")
    report.add_argument(
        "--baseline",
        metavar="VERSION",
        help="compare against it (default: the first version of the last split in the log)",
    )
    report.add_argument(
        "--always-valid-users",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_T_OPT,
        help="the number of users at which the always-valid interval is tightest, its one "
        f"tuning constant (default {DEFAULT_T_OPT:,}; docs/statistics.md)",
    )
    report.add_argument("--format", choices=REPORT_FORMATS, default="text")
    report.add_argument(
        "--engine",
        choices=REPORT_ENGINES,
        default="duckdb",
        help="who computes the per-user aggregates: DuckDB, embedded (default), or Apache "
        "Spark (the spark extra, Java 17+); the statistics and the JSON are the same",
    )
    report.add_argument(
        "--spark-master",
        metavar="URL",
        default="local[*]",
        help="with --engine spark: local[N], spark://HOST:PORT, yarn, k8s://... (default local[*])",
    )
    report.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    report.set_defaults(command=_report)


def _logs_parser(logs: argparse.ArgumentParser) -> None:
    actions = logs.add_subparsers(required=True, metavar="ACTION")
    compact = actions.add_parser("compact", help="rewrite routing logs as Parquet, by day")
    compact.add_argument(
        "logs", nargs="+", metavar="LOG", help="routing logs, plain or .gz; globs allowed"
    )
    compact.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="the directory to write into"
    )
    compact.add_argument(
        "--append",
        action="store_true",
        help="DIR may hold files already: add new ones beside them (default: refuse)",
    )
    compact.set_defaults(command=_compact)


def _serve_parser(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"routing table (default: {DEFAULT_CONFIG})",
    )
    serve.add_argument(
        "--listen",
        type=_address,
        metavar="HOST:PORT",
        help="public address; overrides server.listen",
    )
    serve.add_argument(
        "--admin-listen",
        type=_address,
        metavar="HOST:PORT",
        help="admin address; overrides server.admin_listen",
    )
    serve.add_argument(
        "--log", metavar="PATH", help="routing log ('-' is stdout); overrides log.path"
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="worker processes sharing the port: a number, or 'auto' for one per CPU this "
        "process may run on (default 1)",
    )
    serve.set_defaults(command=_serve)


def _address(text: str) -> Any:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _rollout_parser(rollout: argparse.ArgumentParser) -> None:
    rollout.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"the routing table to read and rewrite (default {DEFAULT_CONFIG})",
    )
    rollout.add_argument(
        "--log",
        action="append",
        metavar="GLOB",
        help="routing logs to read, every replica's (repeatable; default: the table's log.path)",
    )
    rollout.add_argument(
        "--interval",
        type=_positive_seconds,
        default=30.0,
        metavar="S",
        help="seconds between evaluations (default 30)",
    )
    rollout.add_argument("--once", action="store_true", help="evaluate once and exit")
    rollout.add_argument(
        "--dry-run", action="store_true", help="print the decisions, write nothing"
    )
    rollout.set_defaults(command=_rollout)  # fmt: skip


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds above 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of users, at least 1")
    return value


def _load(path: str, *, apart: bool = False) -> Table | None:
    """The table in `path`, or None with its problems on stderr; `apart`: read in a child
    process (config/apart.py), so that a server never holds the parse's garbage."""
    try:
        return load_apart_now(Path(path)) if apart else load_table(path)
    except ConfigError as exc:
        for message in exc.messages():
            print(message, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    table = _load(args.path)
    if table is None:
        return EXIT_USAGE
    for name, model in table.models.items():
        shares = ", ".join(f"{v} {p.normalize():f}%" for v, p in model.split.shares())
        shadow = model.shadow
        copies = f"; shadow {shadow.version} gets {shadow.percent:g}% as copies" if shadow else ""
        print(f"{name}: {shares}{copies}")
    if args.against is not None:
        old = _load(args.against)
        if old is None:
            return EXIT_USAGE
        for line in _churn_lines(old, table):
            print(line)
    return EXIT_OK


def _churn_lines(old: Table, new: Table) -> list[str]:
    lines = churn.render(churn.churn(old, new))
    lines += [f"{name}: new model" for name in new.models if name not in old.models]
    lines += [f"{name}: removed" for name in old.models if name not in new.models]
    return lines


def _workers(text: str) -> int:
    """`--workers N`, or `auto`: one per CPU the process may run on (its affinity, as
    nginx's `worker_processes auto`), which is what a production router wants."""
    if text == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of workers or 'auto'") from None


def _serve(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("model-router: --workers needs 1 or more", file=sys.stderr)
        return EXIT_USAGE
    table = _load(args.config, apart=True)
    if table is None:
        return EXIT_USAGE
    overrides = Overrides(args.listen, args.admin_listen, args.log)
    if args.workers > 1:
        made = _share_metrics()  # before prometheus-client is first imported
        from router import workers

        main = workers.supervise(overrides(table), args.config, overrides, args.workers, made)
    else:
        from router.app import serve  # aiohttp is only needed when serving

        main = serve(overrides(table), args.config, overrides)
    from router.app import ServeError, run_loop

    try:
        return run_loop(main)
    except ServeError as exc:
        print(f"model-router: {exc}", file=sys.stderr)
        return 1


def _share_metrics() -> str | None:
    """Workers share their metrics through files (prometheus-client's multiprocess mode),
    which it reads from PROMETHEUS_MULTIPROC_DIR when first imported; the workers inherit
    it. The operator's directory is used as it is; else a new one is made here, and its
    path returned so that it is removed at exit."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return None
    made = tempfile.mkdtemp(prefix="model-router-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def _needs_extra(extra: str, exc: ImportError, command: str | None = None) -> int:
    """The command's extra (named as the command unless `command` is given) is not
    installed: say which to install."""
    print(
        f"model-router {command or extra}: needs the {extra} extra ({exc.name} is missing): "
        f"pip install 'model-router[{extra}]'",
        file=sys.stderr,
    )
    return EXIT_USAGE


def _rollout(args: argparse.Namespace) -> int:
    try:
        # NumPy and DuckDB (the report's per-user pass counts the evidence): the extra
        from router.rollout.controller import Controller, dumps
    except ImportError as exc:
        return _needs_extra("rollout", exc)
    controller = Controller(Path(args.config), args.log, args.interval, dry_run=args.dry_run)
    try:
        controller.run(args.once, lambda line: print(dumps(line), flush=True))
    except ConfigError as exc:
        for message in exc.messages():
            print(message, file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"model-router rollout: {args.config}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:  # any part of the extra imported late (Parquet's reader)
        return _needs_extra("rollout", exc)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _compact(args: argparse.Namespace) -> int:
    try:
        from router.report.compact import compact  # DuckDB: the `report` extra
        from router.report.read import LogError
    except ImportError as exc:
        return _needs_extra("report", exc, "logs compact")
    try:
        done = compact(args.logs, args.output, append=args.append)
    except LogError as exc:
        print(f"model-router logs compact: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"wrote {done.records:,} records to {args.output} ({done.partitions:,} day "
        f"partition{'s' if done.partitions != 1 else ''}); skipped {done.bad_lines:,} "
        f"line{'s' if done.bad_lines != 1 else ''} that are not JSON objects"
    )
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    try:
        from router import report  # DuckDB, NumPy and SciPy: the `report` extra
    except ImportError as exc:
        return _needs_extra("report", exc)

    engine = (args.engine, args.spark_master)
    try:
        data = report.make_report(
            args.logs, args.model, args.baseline, t_opt=args.always_valid_users, engine=engine
        )
    except ImportError as exc:  # pyspark, imported only for --engine spark
        print(
            f"model-router report: --engine spark needs the spark extra ({exc.name} is "
            "missing): pip install 'model-router[spark]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except (report.LogError, report.ReportError, report.EngineError) as exc:
        print(f"model-router report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = report.render(data, args.format)
    if args.output is None:
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    return EXIT_OK
