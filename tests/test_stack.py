"""The example stack (backends/stack.py) starts the example backends its routing table names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backends.stack import (
    Backend,
    StackFailed,
    backends_of,
    example_grpc_port,
    example_port,
    parse_args,
)
from router.config.validate import load_table, parse_table

ROOT = Path(__file__).resolve().parent.parent


def table(**versions: Any) -> dict[str, Any]:
    """Model `m` with `versions` (name: url), the first of them taking the whole split."""
    first = next(iter(versions))
    return {
        "models": {
            "m": {
                "versions": {name: {"url": url} for name, url in versions.items()},
                "split": {first: 100},
            }
        }
    }


def test_make_run_starts_v1_and_v2_only_with_grpc() -> None:
    assert backends_of(load_table(ROOT / "config/routes.yaml")) == [
        ("v1", 9001, 9011),
        ("v2", 9002, 9012),
    ]


def test_a_backend_with_a_grpc_port_is_started_with_it() -> None:
    assert Backend("v1", 9001, 9011).argv()[-4:] == ["--port", "9001", "--grpc-port", "9011"]
    assert Backend("v1", 9001).argv()[-2:] == ["--port", "9001"]


def test_the_demo_adds_v3() -> None:
    demo = load_table(ROOT / "examples/demo.yaml")
    assert backends_of(demo) == [("v1", 9001, None), ("v2", 9002, None), ("v3", 9003, None)]


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://127.0.0.1:9003", 9003),
        ("http://127.0.0.1:9003/", 9003),
        ("http://127.0.0.1", None),  # no port: nothing to start it on
        ("http://localhost:9003", None),
        ("http://10.0.0.5:9003", None),
        ("https://127.0.0.1:9003", None),
        ("http://127.0.0.1:9003/api", None),  # the example backends serve at the root
        ("http://127.0.0.1:99999", None),
    ],
)
def test_only_plain_loopback_urls_are_example_backends(url: str, port: int | None) -> None:
    assert example_port(url) == port


def test_other_versions_and_urls_are_left_alone() -> None:
    data = table(
        v1="http://127.0.0.1:9101",
        v3="http://127.0.0.1:9103",
        v9="http://127.0.0.1:9109",  # not an example version
        v2="http://10.0.0.5:9002",  # served elsewhere
    )
    assert backends_of(parse_table(data)) == [("v1", 9101, None), ("v3", 9103, None)]


def test_a_version_shared_by_two_models_starts_once() -> None:
    data = table(v1="http://127.0.0.1:9001")
    data["models"]["n"] = data["models"]["m"]
    assert backends_of(parse_table(data)) == [("v1", 9001, None)]


@pytest.mark.parametrize(
    ("grpc_url", "port"),
    [
        ("127.0.0.1:9011", 9011),
        (None, None),
        ("grpcs://127.0.0.1:9011", None),  # TLS: not an example backend's
        ("localhost:9011", None),
        ("10.0.0.5:9011", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1:99999", None),
    ],
)
def test_only_plain_loopback_grpc_urls_are_example_backends(
    grpc_url: str | None, port: int | None
) -> None:
    assert example_grpc_port(grpc_url) == port


def with_grpc(data: dict[str, Any], model: str, version: str, grpc_url: str) -> dict[str, Any]:
    data["models"][model]["versions"][version]["grpc_url"] = grpc_url
    return data


def test_a_grpc_url_in_one_model_turns_grpc_on_for_the_shared_backend() -> None:
    data = table(v1="http://127.0.0.1:9001")
    data["models"]["n"] = {
        "versions": {"v1": {"url": "http://127.0.0.1:9001", "grpc_url": "127.0.0.1:9011"}},
        "split": {"v1": 100},
    }
    assert backends_of(parse_table(data)) == [("v1", 9001, 9011)]


def test_one_backend_with_two_grpc_ports_is_refused() -> None:
    data = with_grpc(table(v1="http://127.0.0.1:9001"), "m", "v1", "127.0.0.1:9011")
    data["models"]["n"] = {
        "versions": {"v1": {"url": "http://127.0.0.1:9001", "grpc_url": "127.0.0.1:9021"}},
        "split": {"v1": 100},
    }
    with pytest.raises(StackFailed, match="backend v1 on port 9001 two grpc_urls"):
        backends_of(parse_table(data))


def test_a_grpc_port_on_another_versions_port_is_refused() -> None:
    data = table(v1="http://127.0.0.1:9001", v2="http://127.0.0.1:9002")
    with_grpc(data, "m", "v2", "127.0.0.1:9001")
    with pytest.raises(StackFailed, match="v1 and v2 both on port 9001"):
        backends_of(parse_table(data))


def test_two_versions_on_one_port_are_refused() -> None:
    data = table(v1="http://127.0.0.1:9001", v2="http://127.0.0.1:9001")
    with pytest.raises(StackFailed, match="v1 and v2 both on port 9001"):
        backends_of(parse_table(data))


def test_a_table_without_example_backends_starts_none() -> None:
    assert backends_of(parse_table(table(v1="http://10.0.0.5:9001"))) == []


def test_help_names_the_three_versions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "v1, v2 or v3" in " ".join(capsys.readouterr().out.split())  # however it wraps
