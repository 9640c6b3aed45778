"""`model-router report` end to end: logs written to disk, the real CLI, parsed output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.cli import main
from router.report import make_report
from tests.support import logs
from tests.support.running import router_running

SPLIT = {"v1": 90.0, "v2": 10.0}


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", *args, "--format", "json"]) == 0
    data: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return data


def standard_log(tmp_path: Path, name: str = "routing.jsonl", **kw: Any) -> Path:
    records: list[Any] = [logs.config_loaded("cfg1", SPLIT)]
    records += logs.split_traffic(6000, SPLIT, error_rates={"v1": 0.01, "v2": 0.05}, **kw)
    return logs.write(tmp_path / name, records)


def test_json_has_the_contract_keys_and_honest_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = report_json(capsys, str(standard_log(tmp_path)))
    model = data["models"]["cancer"]
    assert model["baseline"] == "v1"  # the first version of the split in force
    assert set(model["srm"]) >= {"p_value", "mismatch"}
    assert model["srm"]["mismatch"] is False
    v1, v2 = model["versions"]["v1"], model["versions"]["v2"]
    for v in (v1, v2):
        assert set(v) >= {"requests", "users", "share", "error_rate", "latency_ms", "accuracy",
                          "mae", "rmse", "labelled", "vs_baseline"}  # fmt: skip
        low, high = v["error_rate_ci95"]  # the user as the unit here too
        assert 0 <= low <= v["error_rate"] <= high <= 1
        assert set(v["latency_ms"]) == {"p50", "p95", "p99"}
    assert v1["vs_baseline"] is None
    assert v1["requests"] + v2["requests"] == 6000
    assert v1["share"] + v2["share"] == pytest.approx(1.0)
    vs = v2["vs_baseline"]
    assert set(vs) >= {"error_rate_diff", "ci95", "p_value", "always_valid", "latency_ms",
                       "accuracy_diff", "accuracy_ci95", "accuracy_p_value"}  # fmt: skip
    # One period: the users' difference is the difference of the two error rates.
    assert vs["error_rate_diff"] == pytest.approx(v2["error_rate"] - v1["error_rate"])
    low, high = vs["ci95"]
    av_low, av_high = vs["always_valid"]["ci95"]
    assert av_low < low < vs["error_rate_diff"] < high < av_high
    assert vs["p_value"] < 0.05  # 5% against 1% on ~600 requests
    assert vs["p_value"] < vs["always_valid"]["p_value"]
    assert model["p_value_adjustment"] is None  # one candidate: nothing to adjust
    latency = vs["latency_ms"]
    assert set(latency) == {"p50_diff", "p50_ci95", "p95_diff", "p95_ci95"}
    # A difference's point estimate is the difference of the quantiles the table shows.
    assert latency["p50_diff"] == v2["latency_ms"]["p50"] - v1["latency_ms"]["p50"]
    assert latency["p95_ci95"][0] < latency["p95_diff"] < latency["p95_ci95"][1]


def test_text_gives_one_verdict_line_per_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(standard_log(tmp_path))]) == 0
    out = capsys.readouterr().out
    verdicts = [line.strip() for line in out.splitlines() if "vs v1: error rate" in line]
    assert len(verdicts) == 1
    assert verdicts[0].startswith("v2 vs v1: error rate +")
    assert verdicts[0].endswith("significantly higher")
    assert not out.startswith("sample ratio mismatch")


def test_plain_gzip_and_globs_are_read_once_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [logs.config_loaded("cfg1", SPLIT)]
    records += logs.split_traffic(2000, SPLIT, error_rates={"v1": 0.01, "v2": 0.01})
    logs.write(tmp_path / "a.jsonl", records[:1000])
    logs.write(tmp_path / "b.jsonl.gz", records[1000:])
    glob = str(tmp_path / "*.jsonl*")
    data = report_json(capsys, glob, str(tmp_path / "a.jsonl"))
    assert data["records"] == 2000
    assert len(data["files"]) == 2


def test_bad_lines_are_counted_never_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records: list[Any] = [logs.config_loaded("cfg1", SPLIT)]
    records += logs.split_traffic(500, SPLIT, error_rates={"v1": 0.0, "v2": 0.0})
    records[10:10] = [b'{"event": "request", "model": "canc', b"\x00\x01 not json", b"[1, 2]"]
    path = logs.write(tmp_path / "bad.jsonl", records)
    data = report_json(capsys, str(path))
    assert data["bad_lines"] == 3
    assert data["records"] == 500
    assert main(["report", str(path)]) == 0
    assert "3 lines could not be read" in capsys.readouterr().out


def test_sample_ratio_mismatch_opens_the_text_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = standard_log(tmp_path, drop={"v2": 0.3})
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sample ratio mismatch")
    data = report_json(capsys, str(path))
    assert data["models"]["cancer"]["srm"]["mismatch"] is True
    assert data["models"]["cancer"]["srm"]["p_value"] < 0.001


def test_the_split_in_force_is_matched_per_config_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ramp half-way: each record is checked against the split of its own digest."""
    ramp = {"v1": 50.0, "v2": 50.0}
    first = logs.split_traffic(3000, SPLIT, error_rates={"v1": 0, "v2": 0}, seed=1)
    second = logs.split_traffic(3000, ramp, error_rates={"v1": 0, "v2": 0}, seed=2)
    for record in second:
        record["config"] = "cfg2"
    path = logs.write(tmp_path / "ramp.jsonl", [
        logs.config_loaded("cfg1", SPLIT), *first, logs.config_loaded("cfg2", ramp), *second,
    ])  # fmt: skip
    data = report_json(capsys, str(path))
    assert data["models"]["cancer"]["srm"]["mismatch"] is False
    # Against the first split alone, the pooled traffic would look badly skewed.
    for record in second:
        record["config"] = "cfg1"
    logs.write(path, [logs.config_loaded("cfg1", SPLIT), *first, *second])
    assert report_json(capsys, str(path))["models"]["cancer"]["srm"]["mismatch"] is True


def test_only_randomised_traffic_is_compared_by_assigned_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records: list[Any] = [logs.config_loaded("cfg1", SPLIT)]
    records += [logs.request(i, version="v1", user=f"u{i}") for i in range(90)]
    records += [logs.request(100 + i, version="v2", user=f"w{i}") for i in range(8)]
    # Two of v2's requests fell back to v1: they still count for v2 (intent to treat).
    records += [logs.request(200 + i, version="v2", user=f"x{i}", answered_by="v1")
                for i in range(2)]  # fmt: skip
    records += [logs.request(300 + i, version="v2", assigned_by="pinned", outcome="server_error")
                for i in range(50)]  # fmt: skip
    records += [
        logs.request(400 + i, version="v1", assigned_by="no_user_random") for i in range(10)
    ]
    data = report_json(capsys, str(logs.write(tmp_path / "mix.jsonl", records)))
    versions = data["models"]["cancer"]["versions"]
    assert versions["v2"]["requests"] == 10
    assert versions["v2"]["error_rate"] == 0  # the pinned errors are not in the comparison
    assert versions["v1"]["requests"] == 100  # split and no_user_random
    other = [r for r in data["models"]["cancer"]["by_assigned_by"] if not r["randomised"]]
    latency = {"p50": 10.0, "p95": 10.0, "p99": 10.0}
    assert other == [{"assigned_by": "pinned", "version": "v2", "requests": 50, "users": 0,
                      "randomised": False, "error_rate": 1.0, "timeout_rate": 0.0,
                      "latency_ms": latency}]  # fmt: skip


def test_accuracy_joins_feedback_by_request_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records: list[Any] = [logs.config_loaded("cfg1", SPLIT)]
    records += [logs.request(i, version="v1", user=f"u{i}", prediction=1) for i in range(10)]
    records += [logs.feedback(f"req-{i}", 1) for i in range(6)]  # right
    records += [logs.feedback(f"req-{i}", 0) for i in range(6, 8)]  # wrong
    records += [logs.feedback("req-0", 0), logs.feedback("req-0", 1)]  # the last label wins
    records += [logs.feedback("no-such-request", 1)]
    data = report_json(capsys, str(logs.write(tmp_path / "fb.jsonl", records)))
    v1 = data["models"]["cancer"]["versions"]["v1"]
    assert v1["labelled"] == 8
    assert v1["accuracy"] == pytest.approx(6 / 8)
    low, high = v1["accuracy_ci95"]
    assert low < 0.75 < high


def test_baseline_and_model_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(standard_log(tmp_path))
    data = report_json(capsys, path, "--baseline", "v2", "--model", "cancer")
    versions = data["models"]["cancer"]["versions"]
    assert data["models"]["cancer"]["baseline"] == "v2"
    assert versions["v2"]["vs_baseline"] is None
    assert versions["v1"]["vs_baseline"]["error_rate_diff"] < 0
    assert main(["report", path, "--model", "books"]) == 2
    assert "no model 'books'" in capsys.readouterr().err
    assert main(["report", path, "--baseline", "v9"]) == 2
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such log file" in capsys.readouterr().err


def test_output_file(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert main(["report", str(standard_log(tmp_path)), "--format", "json", "-o", str(out)]) == 0
    assert "cancer" in orjson.loads(out.read_bytes())["models"]


async def test_report_on_a_real_routers_log_with_feedback(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """The whole loop: traffic through the router, labels posted back, the report reads it."""
    models = {"m": {"versions": {"v1": {"url": backends["v1"]}, "v2": {"url": backends["v2"]}},
                    "split": {"v1": 50, "v2": 50}, "log_response": ["prediction"]}}  # fmt: skip
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        for i in range(40):
            headers = {"X-User-ID": f"user-{i}"}
            async with client.post(f"{r.url}/models/m/predict", json={}, headers=headers) as resp:
                assert resp.status == 200
                request_id = resp.headers["X-Request-ID"]
            label = 1 if i % 4 else 0  # the echo backends always predict 1
            feedback = {"request_id": request_id, "label": label}
            async with client.post(f"{r.url}/feedback/m", json=feedback) as resp:
                assert resp.status == 202
    report = make_report([str(r.log_path)])
    versions = report["models"]["m"]["versions"]
    assert sum(v["requests"] for v in versions.values()) == 40
    assert sum(v["labelled"] for v in versions.values()) == 40
    correct = sum(v["accuracy"] * v["labelled"] for v in versions.values())
    assert correct == pytest.approx(30)
    assert report["models"]["m"]["srm"]["mismatch"] is False


def test_sample_ratio_is_not_checked_when_it_cannot_be(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No config_loaded event to match, or no user pseudonyms: say so, claim nothing."""
    records = logs.split_traffic(2000, SPLIT, error_rates={"v1": 0.0, "v2": 0.0})
    data = report_json(capsys, str(logs.write(tmp_path / "no-config.jsonl", records)))
    srm = data["models"]["cancer"]["srm"]
    assert (srm["checked"], srm["p_value"], srm["mismatch"]) == (False, None, False)
    assert "config_loaded" in srm["reason"]
    for record in records:
        record["user"] = None
    path = logs.write(tmp_path / "omit.jsonl", [logs.config_loaded("cfg1", SPLIT), *records])
    assert main(["report", str(path)]) == 0
    assert "sample ratio: not checked: the log has no user pseudonyms" in capsys.readouterr().out


def test_a_file_that_cannot_be_read_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = logs.write(
        tmp_path / "whole.jsonl.gz",
        logs.split_traffic(3000, SPLIT, error_rates={"v1": 0.0, "v2": 0.0}),
    )
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for path, says in ((truncated, "GZIP"), (tmp_path, "is a directory")):
        assert main(["report", str(path)]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("model-router report: ")
        assert says in line


def test_a_user_is_counted_once_by_the_sample_ratio_check_across_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reload (a new digest, the same split) between two halves of the same users' traffic:
    each user still counts once, under the table of their first request."""
    first = logs.split_traffic(3000, SPLIT, error_rates={"v1": 0.0, "v2": 0.0}, users=500)
    second = logs.split_traffic(3000, SPLIT, error_rates={"v1": 0.0, "v2": 0.0}, users=500, seed=2)
    for record in second:
        record["config"] = "cfg2"
        record["request_id"] += "-again"
        record["ts"] = record["ts"].replace("2026-11-25", "2026-11-26")
    records = [
        logs.config_loaded("cfg1", SPLIT),
        logs.config_loaded("cfg2", SPLIT),
        *first,
        *second,
    ]
    data = report_json(capsys, str(logs.write(tmp_path / "reload.jsonl", records)))
    srm = data["models"]["cancer"]["srm"]
    users = {r["user"] for r in first + second}
    assert sum(srm["observed"].values()) == len(users)
    assert srm["mismatch"] is False


def test_the_same_log_gives_byte_identical_json(tmp_path: Path) -> None:
    path = str(standard_log(tmp_path))
    outputs = []
    for run in range(2):
        out = tmp_path / f"run-{run}.json"
        assert main(["report", path, "--format", "json", "-o", str(out)]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_object_labels_compare_as_values_whatever_the_key_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predictions = [{"a": 1, "b": [1, 2.0]}, {"b": [1, 2], "a": 1.0}, {"a": True}, [1, {"x": 1}]]
    labels = [{"b": [1.0, 2], "a": 1}, {"a": 1, "b": [1, 2]}, {"a": 1}, [1.0, {"x": 1.0}]]
    records: list[Any] = [logs.config_loaded("cfg1", {"v1": 100.0})]
    records += [logs.request(i, version="v1", user=f"u{i}", prediction=p)
                for i, p in enumerate(predictions)]  # fmt: skip
    records += [logs.feedback(f"req-{i}", label) for i, label in enumerate(labels)]
    data = report_json(capsys, str(logs.write(tmp_path / "objects.jsonl", records)))
    v1 = data["models"]["cancer"]["versions"]["v1"]
    assert v1["labelled"] == 4
    assert v1["accuracy"] == pytest.approx(3 / 4)  # all but {"a": true} against {"a": 1}


def test_labels_compare_as_json_values_and_feedback_is_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1 equals 1.0; true is not 1; "1" is not 1. Feedback that matches no request and a
    request id logged twice are counted, never dropped silently."""
    requests = [logs.request(i, version="v1", user=f"user-{i}", prediction=1) for i in range(4)]
    duplicated = logs.request(9, version="v1", user="user-9", prediction=0)
    labels = [1.0, True, "1", 1]
    records: list[Any] = [logs.config_loaded("cfg1", {"v1": 100.0}), *requests]
    records += [duplicated, dict(duplicated)]
    records += [logs.feedback(f"req-{i}", label) for i, label in enumerate(labels)]
    records += [logs.feedback("req-nobody-sent", 1)]
    data = report_json(capsys, str(logs.write(tmp_path / "labels.jsonl", records)))
    model = data["models"]["cancer"]
    v1 = model["versions"]["v1"]
    assert v1["labelled"] == 4
    assert v1["accuracy"] == pytest.approx(2 / 4)  # 1.0 and 1 match; true and "1" do not
    assert model["feedback"] == {"joined": 4, "unmatched": 1, "duplicate_request_ids": 1}


def test_real_valued_labels_give_mae_and_rmse_with_a_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A regression model: one fractional label makes the labels real-valued; accuracy
    gives way to mean absolute error and RMSE, each against the baseline."""
    records: list[Any] = [logs.config_loaded("cfg1", SPLIT)]
    errors = {"v1": [0.5, -0.5, 1.5, -1.5] * 10, "v2": [2.0, -2.0, 3.0, -3.0] * 10}
    i = 0
    for version, misses in errors.items():
        for miss in misses:
            records.append(logs.request(i, version=version, user=f"u{i}", prediction=10 + miss))
            records.append(logs.feedback(f"req-{i}", 10))
            i += 1
    records.append(logs.feedback("req-0", 10.25))  # the later line wins: v1's first miss 0.25
    model = report_json(capsys, str(logs.write(tmp_path / "reg.jsonl", records)))["models"]
    cancer = model["cancer"]
    assert cancer["labels"] == "real"
    v1, v2 = cancer["versions"]["v1"], cancer["versions"]["v2"]
    assert v1["accuracy"] is None
    assert v1["labelled"] == 40
    # At full precision (contract section 14): the errors sum exactly, one division left.
    assert v1["mae"] == (40 * 1.0 - 0.5 + 0.25) / 40
    assert v2["mae"] == 2.5
    assert v2["rmse"] == (6.5) ** 0.5
    low, high = v2["mae_ci95"]
    assert low < 2.5 < high
    vs = v2["vs_baseline"]
    assert vs["accuracy_diff"] is None
    assert vs["mae_diff"] == pytest.approx(v2["mae"] - v1["mae"], rel=1e-12)
    assert vs["mae_ci95"][0] > 0
    assert vs["mae_p_value"] < 0.001
    assert main(["report", str(tmp_path / "reg.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "MAE [95% CI], RMSE" in text
    assert "v2 vs v1: mean absolute error +1.506" in text


def test_the_later_line_wins_a_tie_in_feedback_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two labels for one request with the same `ts`: the later line wins, every time
    (not whichever a parallel scan happens to see last)."""
    records: list[Any] = [logs.config_loaded("cfg1", {"v1": 100.0})]
    records += [logs.request(i, version="v1", user=f"u{i}", prediction=1) for i in range(300)]
    records += [logs.feedback(f"req-{i}", 0) for i in range(300)]
    records += [logs.feedback(f"req-{i}", 1) for i in range(300)]  # same ts, later lines
    data = report_json(capsys, str(logs.write(tmp_path / "tie.jsonl", records)))
    assert data["models"]["cancer"]["versions"]["v1"]["accuracy"] == 1.0


def test_the_always_valid_tuning_constant_is_an_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--always-valid-users N` moves where the confidence sequence is tightest: the
    always-valid interval changes, the fixed-horizon one does not."""
    path = str(standard_log(tmp_path))
    default = report_json(capsys, path)
    tuned = report_json(capsys, path, "--always-valid-users", "300")
    assert default["always_valid"]["t_opt"] == 5000
    assert tuned["always_valid"]["t_opt"] == 300
    vs_default = default["models"]["cancer"]["versions"]["v2"]["vs_baseline"]
    vs_tuned = tuned["models"]["cancer"]["versions"]["v2"]["vs_baseline"]
    assert vs_tuned["ci95"] == vs_default["ci95"]
    assert vs_tuned["always_valid"]["ci95"] != vs_default["always_valid"]["ci95"]
    with pytest.raises(SystemExit):
        main(["report", path, "--always-valid-users", "0"])
    assert "at least 1" in capsys.readouterr().err
