"""`model-router check PATH` (contract section 1), and `serve` refusing a bad table.

The CLI is thin (`main(argv) -> int`), so most tests call `main([...])` in-process; one runs the
real `python -m router` to prove the exit status end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

import router.app
from router.cli import main
from router.config.validate import load_table

ROOT = Path(__file__).parent.parent

GOOD = """\
models:
  cancer:
    versions:
      v1: {url: "http://127.0.0.1:9001"}
      v2: {url: "http://127.0.0.1:9002"}
    split:
      v1: 90
      v2: 10
  books:
    versions:
      a: {url: "http://127.0.0.1:9101"}
      b: {url: "http://127.0.0.1:9102"}
      old: {url: "http://127.0.0.1:9100", state: retired, successor: a}
    split: {a: 33.33, b: 66.67, old: 0}
"""

BAD = """\
server:
  listen: nowhere
models:
  cancer:
    versions:
      v1: {url: "http://127.0.0.1:9001"}
      v2: {url: "http://127.0.0.1:9002"}
    split:
      v1: 90
      v2: 5
    fallback: v9
"""


def _bad_messages(path: Path) -> list[str]:
    return [
        f"{path}:2: server.listen: 'nowhere' is not HOST:PORT (for example 127.0.0.1:8080)",
        f"{path}:8: models.cancer.split: percentages add up to 95, not 100",
        f"{path}:11: models.cancer.fallback: no version 'v9'; versions: v1, v2",
    ]


def _write(tmp_path: Path, text: str, name: str = "routes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_check_prints_each_model_with_its_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, GOOD)

    assert main(["check", str(path)]) == 0

    out, err = capsys.readouterr()
    assert out.splitlines() == ["cancer: v1 90%, v2 10%", "books: a 33.33%, b 66.67%, old 0%"]
    assert err == ""


def test_check_reports_every_problem_on_stderr_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, BAD)

    assert main(["check", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == _bad_messages(path)


def test_check_a_missing_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.yaml"

    assert main(["check", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"{path}: cannot read the file: ")


def test_check_a_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "models:\n  cancer:\n    split: v1: 90\n")

    assert main(["check", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"{path}:3: not valid YAML: mapping values are not allowed here"]


def test_check_an_impossible_date_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # YAML reads 2027-31-03 as a timestamp and PyYAML raises a bare ValueError for it.
    text = GOOD.replace("state: retired,", "state: deprecated, sunset: 2027-31-03,")
    path = _write(tmp_path, text)

    assert main(["check", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"{path}:13: ")


def test_the_repository_routing_table_passes(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "config" / "routes.yaml"

    assert main(["check", str(path)]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    printed = [line.split(":")[0] for line in out.splitlines()]
    assert printed == list(load_table(path).models)
    assert all(line.endswith("%") for line in out.splitlines())


def test_check_as_a_real_process_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, BAD)

    done = subprocess.run(
        [sys.executable, "-m", "router", "check", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == _bad_messages(path)


def test_serve_refuses_a_bad_table_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("serve must not start with an invalid table")

    monkeypatch.setattr(router.app, "serve", never)
    path = _write(tmp_path, BAD)

    assert main(["serve", "--config", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == _bad_messages(path)
