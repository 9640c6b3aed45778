"""The report's `shadow` section (contract sections 7 and 8): from hand-made logs with a known
truth, from seeded simulations, and from a real router's log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from router.report import make_report, render
from tests.support import logs
from tests.support.running import router_running, serve

SPLIT = {"v1": 90.0, "v2": 10.0}


def report_of(path: Path) -> dict[str, Any]:
    return make_report([str(path)])


def test_the_shadow_section_counts_copies_agreement_latency_and_quality(tmp_path: Path) -> None:
    records: list[Any] = [logs.config_loaded("cfg1", SPLIT)]
    for i in range(40):
        primary = "v1" if i % 4 else "v2"
        records.append(logs.request(i, version=primary, user=f"u{i}", prediction=1))
        records.append(logs.feedback(f"req-{i}", 1 if i % 5 else 0))  # 8 of 40 labelled 0
    for i in range(30):  # 30 answered copies: 24 agree; the shadow predicts 0 on 6 of them
        primary = "v1" if i % 4 else "v2"
        records.append(logs.shadow(i, primary=primary, user=f"u{i}", agree=i >= 6,
                                   prediction=0 if i < 6 else 1,
                                   upstream_ms=20.0 + i, primary_upstream_ms=10.0))  # fmt: skip
    records.append(logs.shadow(30, outcome="server_error", agree=None, user="u30"))
    records += [logs.shadow(31 + k, outcome="dropped", agree=None, drop_reason="overloaded",
                            upstream_ms=None, primary_upstream_ms=None)
                for k in range(3)]  # fmt: skip
    path = logs.write(tmp_path / "shadow.jsonl", records)
    v3 = report_of(path)["models"]["cancer"]["shadow"]["v3"]
    assert (v3["copies"], v3["dropped"], v3["drop_reasons"]) == (34, 3, {"overloaded": 3})
    assert v3["error_rate"] == pytest.approx(1 / 31)
    assert v3["judged"] == 30
    assert v3["agreement"] == pytest.approx(24 / 30)
    low, high = v3["agreement_ci95"]
    assert low < 0.8 < high
    assert v3["latency_diff_ms"]["p50"] == pytest.approx(np.median(np.arange(30) + 10.0))
    assert set(v3["by_primary"]) == {"v1", "v2"}
    assert v3["by_primary"]["v1"]["copies"] + v3["by_primary"]["v2"]["copies"] == 34
    # Quality on the same labelled requests: 30 answered copies, each with a label.
    assert v3["labelled"] == 30
    labels = [1 if i % 5 else 0 for i in range(30)]
    shadow_right = sum((0 if i < 6 else 1) == labels[i] for i in range(30))
    primary_right = sum(labels)
    assert v3["accuracy"] == pytest.approx(shadow_right / 30)
    assert v3["primary_accuracy"] == pytest.approx(primary_right / 30)
    assert v3["accuracy_diff"] == pytest.approx((shadow_right - primary_right) / 30)
    text = render(report_of(tmp_path / "shadow.jsonl"), "text")
    assert "shadow v3: 34 copies (3 dropped: overloaded 3)" in text
    assert "shadow v3: agrees with the primary on 80.0%" in text
    html = render(report_of(tmp_path / "shadow.jsonl"), "html")
    assert "<h3>Shadow traffic</h3>" in html


def test_the_agreement_interval_covers_a_known_fraction(tmp_path: Path) -> None:
    """A shadow that agrees with the primary on 70% of answers, users agreeing more or less
    than others, some users sending many requests: the 95% interval holds 0.7 in at least
    19 of 20 seeded runs."""
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        users = 300
        copies = 1 + rng.poisson(3, users)
        copies[:3] = 60  # three heavy users
        propensity = rng.beta(7, 3, users)  # mean 0.7, whatever a user's number of copies
        records: list[Any] = []
        i = 0
        for u in range(users):
            for _ in range(copies[u]):
                agree = bool(rng.random() < propensity[u])
                records.append(logs.shadow(i, user=f"u{u}", agree=agree))
                i += 1
        path = logs.write(tmp_path / f"run-{seed}.jsonl", records)
        low, high = report_of(path)["models"]["cancer"]["shadow"]["v3"]["agreement_ci95"]
        covered += low <= 0.7 <= high
    assert covered >= 19


async def test_a_real_routers_shadow_is_reported(
    backends: dict[str, str], aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"prediction": 0})  # the echo primaries predict 1

    app = web.Application()
    app.router.add_post("/predict", answer)
    shadow_url = await serve(aiohttp_server, app)
    models = {"m": {"versions": {"v1": {"url": backends["v1"]}, "v3": {"url": shadow_url}},
                    "split": {"v1": 100}, "log_response": ["prediction"],
                    "shadow": {"version": "v3"}}}  # fmt: skip
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        for i in range(20):
            headers = {"X-User-ID": f"user-{i}"}
            async with client.post(f"{r.url}/models/m/predict", json={}, headers=headers) as resp:
                request_id = resp.headers["X-Request-ID"]
            feedback = {"request_id": request_id, "label": 0 if i < 15 else 1}
            async with client.post(f"{r.url}/feedback/m", json=feedback) as resp:
                assert resp.status == 202
    v3 = make_report([str(r.log_path)])["models"]["m"]["shadow"]["v3"]
    assert (v3["copies"], v3["dropped"], v3["error_rate"]) == (20, 0, 0.0)
    assert v3["agreement"] == 0.0  # it predicts 0 where the primary predicts 1
    assert (v3["labelled"], v3["accuracy"], v3["primary_accuracy"]) == (20, 0.75, 0.25)
    assert v3["latency_diff_ms"] is not None
