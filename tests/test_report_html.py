"""The HTML report (contract section 7): one self-contained page with inline SVG charts.

The page is built from a small log written here, parsed with the standard library's HTML
parser, and opened in headless Chromium through the DevTools protocol to check that it
loads without an error and draws its charts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.report import make_report, render
from tests.support import logs

HOSTILE = "<b>beta</b>"  # a version name the router would refuse, but a log can hold anything
SCRIPT = "<script>alert(1)</script>"
# charts per model: latency, share over time, error rate over time, error rate, accuracy
CHARTS = {"cancer": 5, "books": 4, "solo": 0}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip
URL_ATTRIBUTES = {"src", "href", "xlink:href", "srcset", "action", "poster", "data", "formaction"}
TIMEOUT = 20.0


def write_log(path: Path) -> None:
    """cancer: v1/v2 split 90/10 with errors, pinned traffic and feedback; books: a sample
    ratio mismatch and no feedback; solo: pinned traffic only. Record i arrives at second i."""
    split = {"cancer": {"split": {"v1": 90, "v2": 10}},
             "books": {"split": {"v1.0-rc_2": 50, "v2": 50}}}  # fmt: skip
    lines: list[dict[str, Any] | bytes] = [
        {**logs.config_loaded("c1", {}), "models": split},
        b'{"event": "request", "ts": broken',
    ]
    for k in range(1200):
        i, user = 7 * k, k % 400
        version = "v2" if user % 10 == 0 else "v1"
        outcome = "server_error" if k % (13 if version == "v2" else 61) == 0 else "ok"
        if version == "v2" and k % 97 == 0:
            outcome = "timeout"
        latency = (8 if version == "v1" else 12) * (1 + (k * 7919 % 100) / 40)
        record = logs.request(i, version=version, user=f"u{user}", outcome=outcome,
                              latency_ms=latency, config="c1", prediction=k % 2)  # fmt: skip
        if k == 5:
            record["response"] = {"prediction": SCRIPT}
        lines.append(record)
        if k % 3 == 0:
            label = SCRIPT if k == 6 else (k % 2 if k % 7 else 1 - k % 2)
            lines.append(logs.feedback(f"req-{i}", label))
    for k in range(40):
        i = 7 * k
        lines.append(logs.request(i + 1, version="v2", assigned_by="pinned", config="c1",
                                  latency_ms=30.0 + k))  # fmt: skip
        lines.append(logs.request(i + 2, version=HOSTILE, assigned_by="header", config="c1",
                                  outcome="server_error"))  # fmt: skip
        lines.append(logs.request(i + 3, model="solo", version="v9", assigned_by="pinned",
                                  config="c1", latency_ms=2.0))  # fmt: skip
    for k in range(400):
        user = k % 200
        version = "v2" if user % 10 == 0 else "v1.0-rc_2"
        lines.append(logs.request(7 * k + 4, model="books", version=version, user=f"b{user}",
                                  config="c1", latency_ms=400.0 + k))  # fmt: skip
    logs.write(path, lines)


class Page(HTMLParser):
    """Checks tags nest and close, and collects svgs, text, titles and resource references."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.svgs = 0
        self.titles: list[str] = []
        self.text: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.svgs += tag == "svg"
        for name, value in attrs:
            if name in URL_ATTRIBUTES or (name == "style" and "url(" in (value or "")):
                self.urls.append(f"{tag} {name}={value}")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "title" and "svg" not in self.stack:
            self.titles.append(data)
        self.text.append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("report") / "routing.jsonl"
    write_log(log)
    return render(make_report([str(log)]), "html")


def parse(html: str) -> Page:
    parsed = Page()
    parsed.feed(html)
    parsed.close()
    return parsed


def sections(html: str) -> dict[str, str]:
    """Model name -> the markup of its section."""
    parts = re.split(r'(?=<section class="model)', html)[1:]
    return {re.findall(r'id="model-([^"]+)"', part)[0]: part for part in parts}


def test_page_is_well_formed_with_one_svg_per_chart(page: str) -> None:
    parsed = parse(page)
    assert parsed.problems == []
    assert parsed.stack == [], "tags left open"
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == page.count("</svg>") == parsed.svgs == sum(CHARTS.values())
    assert {name: part.count("<svg") for name, part in sections(page).items()} == CHARTS
    assert parsed.titles == ["model-router report: books, cancer, solo"]


def test_page_names_models_versions_and_the_numbers(page: str) -> None:
    text = " ".join(parse(page).text)
    for name in ("cancer", "books", "solo", "v1", "v2", "v1.0-rc_2", "v9", "pinned"):
        assert name in text
    cancer = sections(page)["cancer"]
    assert "baseline" in cancer
    assert "v2 vs v1: error rate" in cancer
    assert "Latency distribution" in cancer
    assert "Accuracy per version" in cancer
    assert "Accuracy per version" not in sections(page)["books"]
    assert "No randomised traffic" in sections(page)["solo"]
    assert "1 line could not be read" in text
    for tick in (">1<", ">10<", ">100<"):
        assert tick in cancer  # the log latency axis is labelled at powers of ten
    assert re.search(r">\d\d:\d\d<", cancer)  # time axis in HH:MM


def test_sample_ratio_mismatch_opens_the_page(page: str) -> None:
    first = page.index("<body>")
    banner = page[first : page.index("</div>", first)]
    assert 'class="banner"' in banner
    assert "Sample ratio mismatch" in banner
    assert "<code>books</code>" in banner
    assert "the comparison cannot be trusted" in banner
    assert page.count('class="banner"') == 1  # cancer's 90/10 split holds


def test_each_verdict_links_to_what_its_numbers_mean(page: str) -> None:
    verdicts = re.findall(r"<li[^>]*>([^<]*) vs [^<]*<a class=\"how\" href=\"#([\w-]+)\"", page)
    assert verdicts, "no verdict with a link"
    anchors = {anchor for _, anchor in verdicts}
    assert "how-error" in anchors
    assert "how-latency" in anchors
    for anchor in anchors:
        assert page.count(f'id="{anchor}"') == 1
    assert "docs/statistics.md" in page


def test_nothing_is_fetched_from_the_network(page: str) -> None:
    parsed = parse(page)
    assert all(url.startswith("a href=#") for url in parsed.urls)  # links within the page
    assert not {"script", "link", "img", "iframe", "object", "embed"} & parsed.tags
    assert not re.search(r"https?://|@import|url\(", page)
    assert "default-src 'none'" in page  # and the page forbids loading anything anyway


def test_names_and_values_from_the_log_are_escaped(page: str) -> None:
    assert "<script" not in page.lower()
    assert HOSTILE not in page
    assert "&lt;b&gt;beta&lt;/b&gt;" in page
    assert HOSTILE in " ".join(parse(page).text)
    assert "<code>v1.0-rc_2</code>" in page


def test_a_regression_model_shows_mae_and_rmse(tmp_path: Path) -> None:
    records: list[Any] = [logs.config_loaded("cfg1", {"v1": 50.0, "v2": 50.0})]
    for i in range(40):
        version = "v1" if i % 2 else "v2"
        records.append(logs.request(i, version=version, user=f"u{i}", prediction=1.5 + i % 3))
        records.append(logs.feedback(f"req-{i}", 2.25))
    html = render(make_report([str(logs.write(tmp_path / "reg.jsonl", records))]), "html")
    parsed = parse(html)
    assert parsed.problems == []
    assert "MAE [95% CI]" in html
    assert "RMSE" in html
    assert "accuracy [95% CI]" not in html
    rows = re.findall(r"<tr>(.*?)</tr>", html.split("<h3>Versions</h3>")[1].split("</table>")[0])
    assert len({row.count("<t") for row in rows}) == 1  # every row as wide as the header
    assert 'href="#how-quality"' in html


def test_a_report_without_models_renders() -> None:
    report = {"files": ["x.jsonl"], "records": 0, "bad_lines": 0, "first": None, "last": None,
              "models": {}}  # fmt: skip
    html = render(report, "html")
    assert parse(html).problems == []
    assert "No requests" in html


# Headless Chromium --------------------------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools protocol client over one websocket, flat sessions."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._ids = 0
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._arrived = asyncio.Event()

    async def read(self) -> None:
        async for message in self.ws:
            data = orjson.loads(message.data)
            if "id" in data:
                reply = self._replies.pop(data["id"], None)
                if reply is not None and not reply.done():
                    reply.set_result(data)
            else:
                self.events.append(data)
                self._arrived.set()

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        reply = asyncio.get_running_loop().create_future()
        self._replies[self._ids] = reply
        await self.ws.send_str(orjson.dumps(message).decode())  # DevTools reads text frames only
        data = await asyncio.wait_for(reply, TIMEOUT)
        assert "error" not in data, f"{method}: {data['error']}"
        result: dict[str, Any] = data["result"]
        return result

    async def event(self, method: str, after: int) -> dict[str, Any]:
        """The first `method` event from the `after`-th event on, waiting for it if need be."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for event in self.events[after:]:
                    if event["method"] == method:
                        return event
                self._arrived.clear()
                await self._arrived.wait()

    def errors(self) -> list[dict[str, Any]]:
        """Exceptions, console errors and browser log errors seen so far."""
        return [
            e for e in self.events
            if e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
            or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]  # fmt: skip


async def _devtools_url(stream: asyncio.StreamReader, seen: list[str]) -> str:
    while line := await stream.readline():
        seen.append(line.decode(errors="replace"))
        if match := re.search(r"DevTools listening on (ws://\S+)", seen[-1]):
            return match[1]
    raise AssertionError("chromium exited before listening:\n" + "".join(seen))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[str]:
    """Headless Chromium in its own process group; yields its DevTools websocket URL."""
    proc = await asyncio.create_subprocess_exec(
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--remote-debugging-port=0", "about:blank",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        seen: list[str] = []
        url = await asyncio.wait_for(_devtools_url(proc.stderr, seen), TIMEOUT)
        drain = asyncio.create_task(_drain(proc.stderr))  # a full pipe would stall Chromium
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), TIMEOUT)
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def open_in_chromium(html_file: Path, profile: Path) -> tuple[Any, Any, list[Any], bytes]:
    """Loads the file; returns the number of svgs, the title, errors seen, a PNG screenshot."""
    async with (
        chromium(profile) as url,
        aiohttp.ClientSession() as http,
        http.ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws,
    ):
        devtools = DevTools(ws)
        reader = asyncio.create_task(devtools.read())
        try:
            target = await devtools.send("Target.createTarget", {"url": "about:blank"})
            attached = await devtools.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )
            session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await devtools.send(f"{domain}.enable", session=session)
            await devtools.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1200, "height": 1600, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            mark = len(devtools.events)
            navigated = await devtools.send("Page.navigate", {"url": html_file.as_uri()}, session)
            assert "errorText" not in navigated, navigated
            await devtools.event("Page.loadEventFired", mark)
            values = []
            for expression in ("location.href", "document.querySelectorAll('svg').length",
                               "document.title"):  # fmt: skip
                answer = await devtools.send(
                    "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
                )
                values.append(answer["result"]["value"])
            assert values[0] == html_file.as_uri()
            shot = await devtools.send("Page.captureScreenshot", {"format": "png"}, session)
            return values[1], values[2], devtools.errors(), base64.b64decode(shot["data"])
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def test_chromium_loads_the_page_without_errors(page: str, tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed")
    html_file = tmp_path / "report.html"
    html_file.write_text(page, encoding="utf-8")
    svgs, title, errors, png = await open_in_chromium(html_file, tmp_path / "profile")
    assert errors == []
    assert svgs == sum(CHARTS.values())
    assert title == "model-router report: books, cancer, solo"
    (tmp_path / "report.png").write_bytes(png)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 20_000
