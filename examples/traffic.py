"""Simulated users for the example stack: live traffic through the stable URL, then ground truth.

    python -m examples.traffic [--url http://127.0.0.1:8080] [--model cancer] [--users 3000]
        [--requests-per-user 1..3] [--concurrency 32] [--feedback-delay 0.5] [--seed 1]

Each user ``user-<n>`` sends one to three ``POST /models/<model>/predict`` requests carrying
``X-User-ID`` and a row of the breast-cancer dataset, so the router splits users between the
versions by bucket. Shortly after each answer, the row's true label goes back as feedback,
``POST /feedback/<model>`` naming the answer's ``X-Request-ID``, as a labelling pipeline
would; the delay runs in its own task, so it never holds up other users.

Two small shares of requests are not randomised, as in real traffic: an app that needs one
version's response format calls the pinned endpoint (``/models/<model>/versions/v2/predict``),
and some requests carry no user id. The routing log marks them (``assigned_by`` ``pinned`` and
``no_user_random``), so a report can keep them apart from the comparison of versions.

Everything random (how many requests each user sends, which are pinned or anonymous) is drawn
up front from ``--seed``, so the plan of a run does not depend on timing. The exit status is 0
when every request got an HTTP answer (whatever its status), 1 when the router could not be
reached for some or all of them, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from random import Random
from urllib.parse import quote

import aiohttp
from yarl import URL

from backends.model import sample_rows

DATASET_ROWS = 569  # the whole Wisconsin breast-cancer dataset, in its own order
CONNECT_TIMEOUT = 5.0


class Kind(StrEnum):
    """How a request reaches the router, and so how the router picks its version."""

    ROUTED = "routed"  # stable URL with X-User-ID: the split decides, per user
    PINNED = "pinned"  # the pinned endpoint, for an app that needs one version's format
    ANONYMOUS = "anonymous"  # stable URL without a user id: a random bucket per request


LABELS = {Kind.ROUTED: "by user id", Kind.PINNED: "pinned", Kind.ANONYMOUS: "no user id"}


@dataclass(frozen=True)
class Settings:
    url: str = "http://127.0.0.1:8080"
    model: str = "cancer"
    users: int = 3000
    requests_per_user: tuple[int, int] = (1, 3)
    concurrency: int = 32
    feedback_delay: float = 0.5
    seed: int = 1
    pinned_share: float = 0.05
    anonymous_share: float = 0.05
    pinned_version: str = "v2"
    timeout: float = 30.0  # per HTTP request, in seconds

    def __post_init__(self) -> None:
        low, high = self.requests_per_user
        problems = [
            (self.users < 0, "users must be >= 0"),
            (not 1 <= low <= high, "requests per user must be LOW..HIGH, 1 <= LOW <= HIGH"),
            (self.concurrency < 1, "concurrency must be >= 1"),
            (self.feedback_delay < 0, "feedback delay must be >= 0"),
            (self.timeout <= 0, "timeout must be > 0"),
            (
                min(self.pinned_share, self.anonymous_share) < 0
                or self.pinned_share + self.anonymous_share > 1,
                "pinned and anonymous shares must be >= 0 and add up to at most 1",
            ),
        ]
        messages = [message for failed, message in problems if failed]
        if messages:
            raise ValueError("; ".join(messages))


@dataclass(frozen=True)
class Planned:
    kind: Kind
    row: int  # index into the dataset rows


@dataclass(frozen=True)
class User:
    user_id: str
    requests: tuple[Planned, ...]


def plan(settings: Settings, n_rows: int = DATASET_ROWS) -> list[User]:
    """Every user's requests, drawn from the seed; rows are used in turn, cycling."""
    rng = Random(settings.seed)
    rows = itertools.cycle(range(n_rows))
    low, high = settings.requests_per_user
    pinned_below = settings.pinned_share
    anonymous_below = settings.pinned_share + settings.anonymous_share
    users = []
    for n in range(1, settings.users + 1):
        requests = []
        for _ in range(rng.randint(low, high)):
            draw = rng.random()
            if draw < pinned_below:
                kind = Kind.PINNED
            elif draw < anonymous_below:
                kind = Kind.ANONYMOUS
            else:
                kind = Kind.ROUTED
            requests.append(Planned(kind, next(rows)))
        users.append(User(f"user-{n}", tuple(requests)))
    return users


@dataclass
class Summary:
    """What a run did; every count is of HTTP exchanges, as the client saw them."""

    users: int = 0
    sent: Counter[Kind] = field(default_factory=Counter)  # predictions sent, by kind
    versions: Counter[str] = field(default_factory=Counter)  # answers by X-Model-Version
    statuses: Counter[int] = field(default_factory=Counter)  # answers by status
    errors: Counter[str] = field(default_factory=Counter)  # no answer at all, by exception
    feedback_sent: int = 0
    feedback_accepted: int = 0
    feedback_refused: Counter[int] = field(default_factory=Counter)  # status other than 202
    elapsed: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.sent.values())

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def unreachable(self) -> bool:
        """Some request (prediction or feedback) never got an HTTP answer."""
        return bool(self.errors)

    def format(self, url: str, model: str) -> str:
        total = self.requests + self.feedback_sent
        rate = total / self.elapsed if self.elapsed > 0 else 0.0
        kinds = ", ".join(f"{LABELS[kind]} {self.sent[kind]}" for kind in Kind)
        lines = [
            f"traffic: {self.users} users, {self.requests} predictions and {self.feedback_sent} "
            f"feedback posts to {url}/models/{model} in {self.elapsed:.1f} s ({rate:.0f} req/s)",
            f"  requests sent: {self.requests} ({kinds})",
            f"  answers by X-Model-Version: {_shares(self.versions)}",
            f"  statuses: {_counts(self.statuses)}",
            f"  feedback: {self.feedback_sent} sent, {self.feedback_accepted} accepted"
            + (f", refused: {_counts(self.feedback_refused)}" if self.feedback_refused else ""),
        ]
        if self.errors:
            lines.append(f"  no answer (router unreachable?): {_counts(self.errors)}")
        return "\n".join(lines)


def _counts(counter: Counter[int] | Counter[str]) -> str:
    return ", ".join(f"{key} x{n}" for key, n in sorted(counter.items())) or "none"


def _shares(counter: Counter[str]) -> str:
    total = sum(counter.values())
    return (
        ", ".join(f"{key} {n} ({100 * n / total:.1f}%)" for key, n in sorted(counter.items()))
        or "none"
    )


class RouterUnreachable(Exception):
    """Nothing accepts connections at the router's address."""


async def check_reachable(url: str) -> None:
    """Open (and close) one TCP connection, so a wrong URL fails at once, not per request.

    A plain connection rather than an HTTP request: it leaves no record in the routing log.
    """
    parsed = URL(url)
    if parsed.host is None or parsed.port is None:
        raise RouterUnreachable(f"{url} is not an http:// URL with a host")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    except (OSError, TimeoutError) as exc:
        raise RouterUnreachable(f"cannot connect to the router at {url}: {exc}") from exc
    writer.close()
    await writer.wait_closed()


class Traffic:
    """One run: a pool of workers takes users in turn; feedback runs in tasks of its own."""

    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, summary: Summary
    ) -> None:
        self.settings = settings
        self.session = session
        self.summary = summary
        rows = sample_rows(DATASET_ROWS)
        # Encoded once: 30 floats a row, sent thousands of times.
        self.bodies = [json.dumps({"features": features}).encode() for features, _ in rows]
        self.labels = [label for _, label in rows]
        base = settings.url.rstrip("/")
        model = quote(settings.model, safe="")
        self.predict_url = f"{base}/models/{model}/predict"
        version = quote(settings.pinned_version, safe="")
        self.pinned_url = f"{base}/models/{model}/versions/{version}/predict"
        self.feedback_url = f"{base}/feedback/{model}"
        # Bounds every HTTP request in flight, predictions and feedback alike.
        self.in_flight = asyncio.Semaphore(settings.concurrency)

    async def run(self, users: Sequence[User]) -> None:
        queue = iter(users)  # shared by the workers: next() never awaits, so no lock is needed
        async with asyncio.TaskGroup() as tasks:
            for _ in range(min(self.settings.concurrency, len(users))):
                tasks.create_task(self._worker(queue, tasks))
        # The group waits for the feedback tasks the workers added too.

    async def _worker(self, queue: Iterator[User], tasks: asyncio.TaskGroup) -> None:
        for user in queue:
            # One user's requests follow each other, as from one client.
            for planned in user.requests:
                request_id = await self._predict(user.user_id, planned)
                if request_id is not None:
                    tasks.create_task(self._feedback(request_id, self.labels[planned.row]))

    async def _predict(self, user_id: str, planned: Planned) -> str | None:
        """Send one prediction; the answer's X-Request-ID when it succeeded."""
        headers = {"Content-Type": "application/json"}
        if planned.kind is not Kind.ANONYMOUS:
            headers["X-User-ID"] = user_id
        url = self.pinned_url if planned.kind is Kind.PINNED else self.predict_url
        self.summary.sent[planned.kind] += 1
        try:
            async with (
                self.in_flight,
                self.session.post(url, data=self.bodies[planned.row], headers=headers) as resp,
            ):
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.summary.errors[type(exc).__name__] += 1
            return None
        self.summary.statuses[resp.status] += 1
        self.summary.versions[resp.headers.get("X-Model-Version", "(none)")] += 1
        return resp.headers.get("X-Request-ID") if 200 <= resp.status < 300 else None

    async def _feedback(self, request_id: str, label: int) -> None:
        """Post the true label a moment after the answer, as a labelling pipeline would."""
        await asyncio.sleep(self.settings.feedback_delay)
        self.summary.feedback_sent += 1
        payload = {"request_id": request_id, "label": label}
        try:
            async with self.in_flight, self.session.post(self.feedback_url, json=payload) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.summary.errors[type(exc).__name__] += 1
            return
        if resp.status == 202:
            self.summary.feedback_accepted += 1
        else:
            self.summary.feedback_refused[resp.status] += 1


async def run(settings: Settings) -> Summary:
    """Drive every planned user through the router; returns once the last feedback is answered.

    Raises RouterUnreachable when nothing listens at ``settings.url``.
    """
    await check_reachable(settings.url)
    users = plan(settings)
    summary = Summary(users=len(users))
    started = time.monotonic()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.concurrency),
        timeout=aiohttp.ClientTimeout(total=settings.timeout),
        trust_env=False,  # an http_proxy in the environment must not take loopback traffic
    ) as session:
        await Traffic(settings, session, summary).run(users)
    summary.elapsed = time.monotonic() - started
    return summary


def request_range(text: str) -> tuple[int, int]:
    """``1..3`` or ``2``."""
    low, sep, high = text.partition("..")
    try:
        bounds = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LOW..HIGH, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= LOW <= HIGH, got {text!r}")
    return bounds


def parse_args(argv: Sequence[str] | None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m examples.traffic",
        description="Send simulated users' predictions through the router, then their labels.",
    )
    add = parser.add_argument
    add("--url", default=defaults.url, help="the router's public URL (default %(default)s)")
    add("--model", default=defaults.model, help="model name (default %(default)s)")
    add("--users", type=int, default=defaults.users, help="users (default %(default)s)")
    add(
        "--requests-per-user",
        type=request_range,
        default=defaults.requests_per_user,
        metavar="LOW..HIGH",
        help="predictions per user, drawn uniformly (default 1..3)",
    )
    add(
        "--concurrency",
        type=int,
        default=defaults.concurrency,
        help="HTTP requests in flight at most (default %(default)s)",
    )
    add(
        "--feedback-delay",
        type=float,
        default=defaults.feedback_delay,
        metavar="SECONDS",
        help="wait between an answer and its feedback (default %(default)s)",
    )
    add("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    add(
        "--pinned-share",
        type=float,
        default=defaults.pinned_share,
        metavar="FRACTION",
        help="share of requests sent to the pinned endpoint (default %(default)s)",
    )
    add(
        "--pinned-version",
        default=defaults.pinned_version,
        help="the version the pinned app calls (default %(default)s)",
    )
    add(
        "--anonymous-share",
        type=float,
        default=defaults.anonymous_share,
        metavar="FRACTION",
        help="share of requests without a user id (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        return Settings(
            url=args.url,
            model=args.model,
            users=args.users,
            requests_per_user=args.requests_per_user,
            concurrency=args.concurrency,
            feedback_delay=args.feedback_delay,
            seed=args.seed,
            pinned_share=args.pinned_share,
            anonymous_share=args.anonymous_share,
            pinned_version=args.pinned_version,
        )
    except ValueError as exc:
        parser.error(str(exc))  # exits with status 2


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        summary = asyncio.run(run(settings))
    except RouterUnreachable as exc:
        print(f"traffic: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("traffic: interrupted", file=sys.stderr)
        return 130
    print(summary.format(settings.url.rstrip("/"), settings.model), flush=True)
    if summary.unreachable:
        print("traffic: some requests got no answer from the router", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
