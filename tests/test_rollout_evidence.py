"""The rollout controller's evidence is the report's per-user pass (issue 23: one definition):
on the same logs, a step's per-user arrays equal the report's per-user rows for the step's
periods, pooled per arm (the candidate against the rest). Same users, same unit (the user,
else the request), same label (the latest by `ts`, on a tie the later line), same errors
and correct answers, same latencies."""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from router.observe.record import RANDOMISED
from router.report.read import load
from router.report.users import IN_PASS, per_user
from router.rollout.decide import Arm
from router.rollout.evidence import step_of
from router.rollout.logs import LogFollower, Records
from tests.support import logs

MODELS = ("cancer", "price")  # a categorical label, and a real-valued one


def ts(second: float) -> str:
    """The log's time `second` seconds into the day, to the millisecond, as routers write."""
    ms = round(second * 1000)
    hms = f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}"
    return f"2026-11-25T{hms}.{ms % 1000:03d}Z"


def loaded(at: float, digest: str, v2: float) -> dict[str, Any]:
    """A `config_loaded` naming both models, the candidate v2 at `v2` percent of each."""
    split = {"v1": 100 - v2, "v2": v2}
    return {**logs.config_loaded(digest, split), "ts": ts(at),
            "models": {m: {"split": split} for m in MODELS}}  # fmt: skip


@dataclass(frozen=True)
class Arms:
    """An arm as plain sorted tuples: (n, errors, labelled, correct) per user, in the order
    of their units, and (user index, latency) of every timed request."""

    sums: list[tuple[float, ...]]
    latencies: list[tuple[int, float]]


def of_arm(arm: Arm) -> Arms:
    sums = list(zip(arm.n, arm.errors, arm.labelled, arm.correct, strict=True))
    latencies = sorted(zip(arm.latency_user.tolist(), arm.latency.tolist(), strict=True))
    return Arms([tuple(map(float, s)) for s in sums], latencies)


def controller_arms(files: list[Path], model: str, v2: float) -> tuple[Arms, Arms, float | None]:
    """The controller's evidence: the logs followed into Records, then the step."""
    records, follower = Records(), LogFollower([str(f) for f in files])
    for record in follower.read():
        records.add(record, set(MODELS))
    step = step_of(records, model, "v2", Decimal(str(v2)))
    return of_arm(step.candidate), of_arm(step.control), step.started


def report_arms(files: list[Path], model: str, configs: set[str]) -> tuple[Arms, Arms]:
    """The report's per-user rows of the step's periods, pooled per arm and user, and each
    arm's latencies straight from the report's `requests` table."""
    source = load([str(f) for f in files])
    versions = {v: {"latency_ms": None, "first_byte_ms": None} for v in ("v1", "v2")}
    users = per_user(source.con, model, versions)
    mine = np.isin(users.config, list(configs))
    times = source.con.execute(
        f"SELECT assigned_version, unit, latency_ms FROM requests r WHERE {IN_PASS} "
        "AND r.latency_ms IS NOT NULL AND list_contains($configs, r.config)",
        {"model": model, "configs": sorted(configs)},
    ).fetchall()
    source.con.close()
    out = []
    for candidate in (True, False):
        rows = mine & ((users.version == "v2") == candidate)
        per: dict[str, list[float]] = {}
        for i in np.flatnonzero(rows):
            sums = per.setdefault(str(users.unit[i]), [0.0, 0.0, 0.0, 0.0])
            for k, name in enumerate(("n", "errors", "labelled", "correct")):
                sums[k] += float(users.columns[name][i])
        index = {unit: i for i, unit in enumerate(sorted(per))}
        latencies = sorted(
            (index[unit], float(latency))
            for version, unit, latency in times
            if (version == "v2") == candidate
        )
        out.append(Arms([tuple(per[u]) for u in sorted(per)], latencies))
    return out[0], out[1]


def a_ramp(seed: int) -> tuple[list[list[dict[str, Any]]], set[str]]:
    """Two replicas' logs of a ramp 0 -> 5 -> 25 (the 25% step loaded under two digests,
    the second by a reload that changed nothing for these models), with heavy users,
    requests without a user id (and odd ids), errors, both kinds of labels (late, tied, null,
    some naming another model), and a request id used twice. Returns the files' records
    and the 25% step's digests."""
    rng = random.Random(seed)
    a: list[dict[str, Any]] = [loaded(0, "c0", 0), loaded(100, "c5", 5), loaded(1000, "c25", 25)]
    b: list[dict[str, Any]] = [loaded(1500, "c25b", 25)]
    heavy = [f"heavy-{i}" for i in range(3)]
    i = 0
    for second in np.linspace(50, 3000, 1500):
        config = "c0" if second < 100 else "c5" if second < 1000 else "c25"
        config = "c25b" if second > 1500 and rng.random() < 0.5 else config
        for model in MODELS:
            i += 1
            user: Any = rng.choice(heavy) if rng.random() < 0.4 else f"user-{rng.randrange(60)}"
            user = None if rng.random() < 0.15 else user
            odd = rng.random() < 0.04  # an empty id is a user too; a number is its text
            user = rng.choice(["", 12]) if odd else user
            v2 = {"c0": 0, "c5": 5}.get(config, 25) > rng.random() * 100
            prediction = rng.choice(["benign", "malignant"]) if model == "cancer" else round(
                rng.uniform(0, 10), 2)  # fmt: skip
            r = logs.request(i, version="v2" if v2 else "v1", user=user, model=model,
                             config=config, prediction=prediction,
                             outcome=rng.choice(["ok"] * 8 + ["server_error", "timeout"]),
                             latency_ms=round(rng.lognormvariate(2.3, 0.4), 3),
                             assigned_by=rng.choice([*RANDOMISED, "split", "header"]))  # fmt: skip
            r["ts"] = ts(second)
            (a if rng.random() < 0.6 else b).append(r)
            if rng.random() < 0.7:  # a label, late: somewhere after its request
                label = prediction if rng.random() < 0.6 else (
                    rng.choice(["benign", "malignant", 1, True, {"k": [1, 2]}])
                    if model == "cancer" else rng.choice([prediction, 3.25, 7]))  # fmt: skip
                late = second + rng.uniform(0, 600)
                named = model if rng.random() < 0.95 else "other"  # a client's mistake
                fb = {**logs.feedback(r["request_id"], label, named), "ts": ts(late)}
                (a if rng.random() < 0.5 else b).append(fb)
                if rng.random() < 0.2:  # a second label at the same time: the later line wins
                    other = {**fb, "label": rng.choice([prediction, "benign", 2.5, None])}
                    (a if fb in a else b).append(other)
    # A request with a null prediction (labelled, never correct), and one id used twice.
    a.append({**logs.request(10**6, version="v2", config="c25", user="u-null"),
              "response": {"prediction": None}, "ts": ts(2000)})  # fmt: skip
    a.append({**logs.feedback("req-1000000", "benign"), "ts": ts(2001)})
    a.append({**logs.request(10**6, version="v1", config="c25", user="u-twice"), "ts": ts(2002)})
    # Interleave each file by time, as a router writes it; feedback stays after its request.
    for records in (a, b):
        records.sort(key=lambda r: r["ts"])
    return [a, b], {"c25", "c25b"}


def write(tmp_path: Path, files: list[list[dict[str, Any]]]) -> list[Path]:
    return [logs.write(tmp_path / f"replica-{i}.jsonl", f) for i, f in enumerate(files)]


def test_the_controller_counts_each_user_as_the_report_does(tmp_path: Path) -> None:
    files, configs = a_ramp(seed=7)
    paths = write(tmp_path, files)
    for model in MODELS:
        candidate, control, started = controller_arms(paths, model, 25)
        assert started is not None
        want_candidate, want_control = report_arms(paths, model, configs)
        assert candidate == want_candidate, model
        assert control == want_control, model
        # The log has what the comparison is about: heavy users, users without an id
        # (each request its own unit), labels, errors, on both arms.
        for arm in (candidate, control):
            assert max(s[0] for s in arm.sums) >= 10  # a heavy user
            assert sum(1 for s in arm.sums if s[0] == 1) >= 5
            assert sum(s[1] for s in arm.sums) > 0
            assert sum(s[2] for s in arm.sums) > 0
            assert sum(s[3] for s in arm.sums) > 0


def test_a_tie_between_two_labels_goes_to_the_later_line(tmp_path: Path) -> None:
    """Two labels for one request at the same `ts`: the later line's counts, in the
    controller as in the report. A later null label leaves the request without one, in
    both (the latest wins, whatever it says)."""
    base = [loaded(0, "c5", 5)]
    base += [{**logs.request(i, version=v, user=f"u{i}", prediction="a", config="c5"),
              "ts": ts(10 + i)} for i, v in enumerate(["v1"] * 30 + ["v2"] * 30)]  # fmt: skip
    labels = []
    for i in range(60):
        first, second = ("a", "b") if i % 2 else ("b", "a")
        labels += [{**logs.feedback(f"req-{i}", first), "ts": ts(500)},
                   {**logs.feedback(f"req-{i}", second), "ts": ts(500)}]  # fmt: skip
        if i % 4 == 0:
            labels.append({**logs.feedback(f"req-{i}", None), "ts": ts(600)})
    paths = write(tmp_path, [base + labels])
    candidate, control, _ = controller_arms(paths, "cancer", 5)
    want = report_arms(paths, "cancer", {"c5"})
    assert (candidate, control) == want
    # The later line says "a" (the prediction) for even requests; every 4th has none.
    mine = range(30, 60)
    assert sum(s[2] for s in candidate.sums) == sum(1 for i in mine if i % 4)
    assert sum(s[3] for s in candidate.sums) == sum(1 for i in mine if i % 2 == 0 and i % 4)


records = st.fixed_dictionaries({
    "user": st.sampled_from([None, "", "u1", "u2", "u3", 12, True]),
    "version": st.sampled_from(["v1", "v2"]),
    "config": st.sampled_from(["c5", "c5b", "c0"]),
    "outcome": st.sampled_from(["ok", "server_error", "timeout", "client_error", "rejected"]),
    "latency": st.one_of(st.none(), st.floats(0, 1000)),
    "prediction": st.sampled_from(["absent", None, 1, 1.0, "1", True, [1, 2], {"a": 1}]),
    "labels": st.lists(st.tuples(st.integers(0, 2), st.sampled_from(
        [None, 1, 1.5, "1", True, [1, 2], {"a": 1.0}, "x"])), max_size=3),
})  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(records, min_size=1, max_size=40), st.integers(0, 1))
def test_any_log_gives_the_controller_the_report_s_users(
    tmp_path_factory: Any, drawn: list[dict[str, Any]], layout: int
) -> None:
    """Any mix of users (none, empty, not a string), outcomes, predictions and labels (of
    any JSON kind, several per request, tied in time): the same arrays."""
    tmp_path = tmp_path_factory.mktemp("log")
    lines: list[dict[str, Any]] = [loaded(0, "c0", 0), loaded(10, "c5", 5), loaded(20, "c5b", 5)]
    for i, d in enumerate(drawn):
        r = {**logs.request(i, version=d["version"], config=d["config"]), "ts": ts(30 + i),
             "user": d["user"], "outcome": d["outcome"], "latency_ms": d["latency"]}  # fmt: skip
        if d["prediction"] != "absent":
            r["response"] = {"prediction": d["prediction"]}
        lines.append(r)
        for late, label in d["labels"]:
            lines.append({**logs.feedback(f"req-{i}", label), "ts": ts(100 + late)})
    if layout:  # the labels before the requests in the file: still joined
        lines.sort(key=lambda r: r["event"] != "feedback")
    paths = write(tmp_path, [lines])
    candidate, control, _ = controller_arms(paths, "cancer", 5)
    assert (candidate, control) == report_arms(paths, "cancer", {"c5", "c5b"})


def test_a_tie_across_files_read_in_two_rounds_goes_to_the_later_file(tmp_path: Path) -> None:
    """Two replicas label one request at the same `ts`; the second file's label is read
    first, the first file's in a later round. The report, reading both at once, takes the
    later file's; so does the controller, whatever the order it read them in."""
    first, second = tmp_path / "replica-0.jsonl", tmp_path / "replica-1.jsonl"
    requests = [loaded(0, "c5", 5)]
    requests += [{**logs.request(i, version=v, user=f"u{i}", prediction="a", config="c5"),
                  "ts": ts(10 + i)} for i, v in enumerate(["v1"] * 30 + ["v2"] * 30)]  # fmt: skip
    logs.write(first, requests)
    logs.write(second, [{**logs.feedback(f"req-{i}", "a"), "ts": ts(500)} for i in range(60)])
    records, follower = Records(), LogFollower([str(tmp_path / "replica-*.jsonl")])
    for record in follower.read():
        records.add(record, {"cancer"}, follower.place)
    with first.open("ab") as f:  # the first replica's labels arrive later, at the same ts
        for i in range(60):
            f.write(orjson.dumps({**logs.feedback(f"req-{i}", "b"), "ts": ts(500)}) + b"\n")
    for record in follower.read():
        records.add(record, {"cancer"}, follower.place)
    step = step_of(records, "cancer", "v2", Decimal(5))
    candidate, control = of_arm(step.candidate), of_arm(step.control)
    assert (candidate, control) == report_arms([first, second], "cancer", {"c5"})
    assert sum(s[3] for s in candidate.sums) == 30  # the second file's "a": all correct
