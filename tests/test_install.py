"""A lean install: `serve` and `check` need only the core dependencies, `report` names its
extra, and pyproject.toml declares exactly what router/ imports. (A fresh `pip install .`
in a new venv is measured in the README; these tests run in the suite's venv with the
extras' modules made unimportable.)"""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path

import aiohttp
import yaml

from tests.support.running import LOOPBACK, RouterProcess, table_data

ROOT = Path(__file__).resolve().parent.parent
EXTRAS_MODULES = (
    "duckdb", "numpy", "scipy", "sklearn", "uvloop", "pandas", "grpc", "opentelemetry",
)  # fmt: skip
# Python code that makes the extras unimportable, then runs the command line.
WITHOUT_EXTRAS = (
    "import sys\n"
    f"for name in {EXTRAS_MODULES!r}:\n"
    "    sys.modules[name] = None\n"
    "from router.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
# Import names of the core distributions, where they differ.
DISTRIBUTION = {"yaml": "PyYAML", "prometheus_client": "prometheus-client"}


def cli_without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_check_works_without_the_extras(tmp_path: Path) -> None:
    # config/routes.yaml asks for gRPC (the extra): the same table without it, on the core.
    table = yaml.safe_load((ROOT / "config/routes.yaml").read_text())
    del table["server"]["grpc_listen"]
    for version in table["models"]["cancer"]["versions"].values():
        del version["grpc_url"]
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(table))
    done = cli_without_extras("check", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cancer: v1 90%, v2 10%")


def test_check_names_the_grpc_extra_for_a_table_that_asks_for_grpc(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    models = {"m": {"versions": {"v1": {"grpc_url": "127.0.0.1:9011"}}, "split": {"v1": 100}}}
    config.write_text(yaml.safe_dump(table_data(models, tmp_path / "log.jsonl")))
    done = cli_without_extras("check", str(config))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "models.m.versions.v1.grpc_url: gRPC needs the extra" in line
    assert "pip install 'model-router[grpc]'" in line
    served = {**table_data({}, tmp_path / "log.jsonl", grpc_listen="127.0.0.1:0")}
    served["models"] = {"m": {"versions": {"v1": {"url": "http://x"}}, "split": {"v1": 100}}}
    config.write_text(yaml.safe_dump(served))
    done = cli_without_extras("check", str(config))
    assert "server.grpc_listen: gRPC needs the extra" in done.stderr


def test_check_and_serve_name_the_otel_extra_for_a_table_that_asks_for_tracing(
    tmp_path: Path,
) -> None:
    config = tmp_path / "routes.yaml"
    models = {"m": {"versions": {"v1": {"url": "http://127.0.0.1:9"}}, "split": {"v1": 100}}}
    tracing = {"otlp_endpoint": "http://127.0.0.1:4318", "sample": 0.1}
    config.write_text(yaml.safe_dump(table_data(models, tmp_path / "log.jsonl", tracing=tracing)))
    done = cli_without_extras("check", str(config))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "server.tracing: tracing needs the extra: pip install 'model-router[otel]'" in line
    done = cli_without_extras("serve", "--config", str(config))
    assert done.returncode == 1  # cannot start, as with a port that is taken
    assert "server.tracing needs the extra: pip install 'model-router[otel]'" in done.stderr


def test_report_without_its_extra_says_which_to_install(tmp_path: Path) -> None:
    log = tmp_path / "routing.jsonl"
    log.write_text("")
    done = cli_without_extras("report", str(log))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "pip install 'model-router[report]'" in line


def test_rollout_without_its_extra_says_which_to_install(tmp_path: Path) -> None:
    """The controller counts its evidence with the report's per-user pass (DuckDB, NumPy):
    its own extra brings them, and is the one named."""
    done = cli_without_extras("rollout", "--config", str(tmp_path / "routes.yaml"), "--once")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "model-router rollout: needs the rollout extra" in line
    assert "pip install 'model-router[rollout]'" in line
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    rollout = extras["optional-dependencies"]["rollout"]
    assert rollout == ["model-router[report]"]  # DuckDB and NumPy among them


async def test_serve_works_without_the_extras(backends: dict[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "routing.jsonl"
    config = tmp_path / "routes.yaml"
    models = {"m": {"versions": {"v1": {"url": backends["v1"]}}, "split": {"v1": 100}}}
    config.write_text(yaml.safe_dump(table_data(models, log_path)))
    launcher = (sys.executable, "-c", WITHOUT_EXTRAS)
    proc = await asyncio.to_thread(RouterProcess, config, log_path, launcher=launcher)
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{proc.url}/models/m/echo", headers={"X-User-ID": "u"}) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["X-Model-Version"] == "v1"
        proc.signal()
        assert await proc.wait() == 0
    finally:
        proc.stop()
    assert LOOPBACK in proc.url


def _third_party_imports() -> set[str]:
    """Top-level modules that router/ (but its report and statistics) imports, other than
    its own and the standard library's; imports inside `try` (optional ones) left out."""
    found: set[str] = set()
    for path in (ROOT / "router").rglob("*.py"):
        if {"report", "stats", "rollout"} & set(path.relative_to(ROOT / "router").parts):
            continue  # the `report` extra's
        if "rpc" in path.parts or path.name == "grpc_call.py":
            continue  # the `grpc` extra's: imported only when a table asks for gRPC
        if path.name == "otlp.py":
            continue  # the `otel` extra's: imported only when a table asks for tracing
        if path.name == "parquet.py":
            continue  # DuckDB's: imported only by the report, the rollout and `logs compact`
        tree = ast.parse(path.read_text())
        optional = {
            id(node) for t in ast.walk(tree) if isinstance(t, ast.Try) for node in ast.walk(t)
        }
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names} - {"router"}


def test_the_core_dependencies_are_what_router_imports() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    declared = {
        dep.split(">")[0].split("=")[0].split(";")[0].strip().lower()
        for dep in project["dependencies"]
    }
    imported = {DISTRIBUTION.get(name, name).lower() for name in _third_party_imports()}
    assert imported == declared
    # The example backends are not installed as a package of their own.
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["router*"]
