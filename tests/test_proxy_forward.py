"""What crosses the proxy, each way: target, method, body, headers (contract section 4).

The echo backend reports what it received, so each test compares what the client sent
with what the backend saw, and what the backend answered with what the client got.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from tests.support import tables
from tests.support.echo import GZIP_BODY, GZIP_PLAIN
from tests.support.running import router_running

MIB = 1024 * 1024
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")
HTTP_DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\Z")


def model(backends: dict[str, str], **settings: Any) -> dict[str, Any]:
    """Model `m` over the two echo backends; everyone goes to v1 unless pinned."""
    return tables.model(backends, {"v1": 100, "v2": 0}, **settings)


def received(echo: dict[str, Any]) -> CIMultiDict[str]:
    """The headers the echo backend received, repeats kept."""
    return CIMultiDict((name, value) for name, value in echo["headers"])


async def echo_of(
    client: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Any = None,
    data: Any = None,
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    async with client.request(method, URL(url, encoded=True), headers=headers, data=data) as resp:
        assert resp.status == 200, await resp.text()
        return resp, await resp.json()


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ("/models/m/echo?b=%2F&a=1&a=2&c=%zz", "/echo?b=%2F&a=1&a=2&c=%zz"),
        (
            "/models/m/echo?e=a+b&f=%7e&g=%C3%A9&h&=&;k=!$'()*,:@/?",
            "/echo?e=a+b&f=%7e&g=%C3%A9&h&=&;k=!$'()*,:@/?",
        ),
        ("/models/m/echo/a%20b/c%7Ed?x=%25", "/echo/a%20b/c%7Ed?x=%25"),
        ("/models/m/versions/v1/echo?q=%2f%2F", "/echo?q=%2f%2F"),
        ("/models/m/echo", "/echo"),
        ("/models/m/", "/"),
    ],
)
async def test_target_reaches_the_backend_byte_for_byte(
    backends: dict[str, str], tmp_path: Path, sent: str, forwarded: str
) -> None:
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        _, echo = await echo_of(client, "GET", r.url + sent)
    assert echo["target"] == forwarded
    (record,) = r.records()
    assert record["path"] == sent.partition("?")[0]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_method_and_body_pass_through(
    backends: dict[str, str], tmp_path: Path, method: str
) -> None:
    data = os.urandom(100_000)
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        _, echo = await echo_of(client, method, f"{r.url}/models/m/echo", data=data)
    assert echo["method"] == method
    assert echo["body_bytes"] == len(data)
    assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()


async def test_head_gets_the_headers_and_no_body(backends: dict[str, str], tmp_path: Path) -> None:
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        # /predict answers the same body whatever the request, so the lengths compare
        async with client.get(f"{r.url}/models/m/predict") as resp:
            length = resp.headers["Content-Length"]
        async with client.head(f"{r.url}/models/m/predict") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == length
            assert resp.headers["X-Model-Version"] == "v1"
            assert await resp.read() == b""
    _, head = r.records()
    assert (head["method"], head["outcome"]) == ("HEAD", "ok")


async def test_large_bodies_stream_through_both_ways(
    backends: dict[str, str], tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB)
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        async with client.post(f"{r.url}/models/m/upload", data=io.BytesIO(data)) as resp:
            assert await resp.json() == {
                "body_bytes": len(data),
                "body_sha256": hashlib.sha256(data).hexdigest(),
            }
        async with client.get(f"{r.url}/models/m/download?mb=3") as resp:
            assert resp.status == 200
            assert resp.content_length == 3 * MIB
            assert await resp.read() == b"\0" * (3 * MIB)


async def test_hop_by_hop_request_headers_stay_behind(
    backends: dict[str, str], tmp_path: Path
) -> None:
    headers = CIMultiDict(
        {
            "Connection": "X-Foo",
            "X-Foo": "listed in Connection",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-Checksum",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Proxy-Connection": "keep-alive",
            "X-Ordinary": "yes",
            "Authorization": "Bearer end-to-end",
            "User-Agent": "probe/1.0",
            "Accept-Encoding": "br",
        }
    )
    headers.add("X-Repeated", "one")
    headers.add("X-Repeated", "two")
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        _, echo = await echo_of(client, "GET", f"{r.url}/models/m/echo", headers)
    got = received(echo)
    hop_by_hop = ["X-Foo", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization"]
    for name in [*hop_by_hop, "Proxy-Connection"]:
        assert name not in got, name
    assert "x-foo" not in got.get("Connection", "").lower()
    assert got.getall("X-Ordinary") == ["yes"]
    assert got.getall("Authorization") == ["Bearer end-to-end"]
    assert got.getall("User-Agent") == ["probe/1.0"]
    assert got.getall("Accept-Encoding") == ["br"]
    assert ", ".join(got.getall("X-Repeated")) == "one, two"


async def test_forwarded_headers_and_the_backends_own_host(
    backends: dict[str, str], tmp_path: Path
) -> None:
    headers = {
        "Host": "public.example:8443",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Proto": "https",  # set by the router, not taken from the client
        "X-Forwarded-Host": "spoofed.example",
    }
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        _, echo = await echo_of(client, "GET", f"{r.url}/models/m/echo", headers)
    got = received(echo)
    assert got.getall("X-Forwarded-For") == ["10.0.0.1, 127.0.0.1"]
    assert got.getall("X-Forwarded-Proto") == ["http"]
    assert got.getall("X-Forwarded-Host") == ["public.example:8443"]
    backend = URL(backends["v1"])
    assert got.getall("Host") == [f"{backend.host}:{backend.port}"]


async def test_forwarded_for_is_started_when_absent(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        _, echo = await echo_of(client, "GET", f"{r.url}/models/m/echo")
    got = received(echo)
    assert got.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert got.getall("X-Forwarded-Host") == [URL(r.url).raw_authority]


async def test_hop_by_hop_response_headers_stay_behind(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with (
        router_running(model(backends), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/hop") as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"ok": True}
        for name in ("X-Secret", "Keep-Alive", "Proxy-Authenticate", "Upgrade"):
            assert name not in resp.headers, name
        assert "x-secret" not in resp.headers.get("Connection", "").lower()
        assert resp.headers["X-Kept"] == "yes"


async def test_repeated_set_cookie_headers_all_arrive(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        async with client.get(f"{backends['v1']}/cookies") as resp:
            direct = resp.headers.getall("Set-Cookie")
        async with client.get(f"{r.url}/models/m/cookies") as resp:
            assert resp.status == 200
            proxied = resp.headers.getall("Set-Cookie")
    assert proxied == direct
    assert sorted(cookie.partition(";")[0] for cookie in proxied) == [
        "second=2",
        "session=from-v1",
    ]


async def test_one_clients_cookies_never_reach_another_clients_request(
    backends: dict[str, str], tmp_path: Path
) -> None:
    # A cookie jar keeps nothing from an IP address: name the backend by host name, so
    # that a jar shared by the router's clients would show here.
    named = {name: url.replace("127.0.0.1", "localhost") for name, url in backends.items()}
    async with router_running(model(named), tmp_path) as r:
        async with aiohttp.ClientSession() as alice:
            for _ in range(2):
                async with alice.get(f"{r.url}/models/m/cookies") as resp:
                    assert len(resp.headers.getall("Set-Cookie")) == 2
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bob,
            bob.get(f"{r.url}/models/m/cookies") as resp,
        ):
            assert await resp.json() == {"cookies": {}}
        async with aiohttp.ClientSession() as carol:
            _, echo = await echo_of(carol, "GET", f"{r.url}/models/m/echo")
    assert "Cookie" not in received(echo)


async def test_gzip_answer_arrives_byte_identical_and_still_compressed(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(model(backends), tmp_path) as r:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as client,
            client.get(f"{r.url}/models/m/gzip", headers={"Accept-Encoding": "gzip"}) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Encoding"] == "gzip"
            assert await resp.read() == GZIP_BODY
        async with aiohttp.ClientSession() as client, client.get(f"{r.url}/models/m/gzip") as resp:
            assert await resp.read() == GZIP_PLAIN


@pytest.mark.parametrize("given", ["req-123.abc_X", "a" * 128, "0"])
async def test_valid_request_id_is_kept_sent_and_returned(
    backends: dict[str, str], tmp_path: Path, given: str
) -> None:
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        resp, echo = await echo_of(client, "GET", f"{r.url}/models/m/echo", {"X-Request-ID": given})
    assert resp.headers["X-Request-ID"] == given
    assert received(echo).getall("X-Request-ID") == [given]
    (record,) = r.records()
    assert record["request_id"] == given


@pytest.mark.parametrize("given", ["a" * 129, "bad id", "semi;colon", "slash/y", "ünï", ""])
async def test_invalid_request_id_is_replaced(
    backends: dict[str, str], tmp_path: Path, given: str
) -> None:
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        resp, echo = await echo_of(client, "GET", f"{r.url}/models/m/echo", {"X-Request-ID": given})
        _, other = await echo_of(client, "GET", f"{r.url}/models/m/echo", {"X-Request-ID": given})
    new = resp.headers["X-Request-ID"]
    assert new != given
    assert REQUEST_ID.match(new)
    assert received(echo).getall("X-Request-ID") == [new]
    assert received(other)["X-Request-ID"] != new  # a new one for each request
    first, _ = r.records()
    assert first["request_id"] == new


async def test_model_version_header_both_ways(backends: dict[str, str], tmp_path: Path) -> None:
    async with router_running(model(backends), tmp_path) as r, aiohttp.ClientSession() as client:
        split, split_echo = await echo_of(client, "GET", f"{r.url}/models/m/echo")
        asked, asked_echo = await echo_of(
            client, "GET", f"{r.url}/models/m/echo", {"X-Model-Version": "v2"}
        )
    assert received(split_echo).getall("X-Model-Version") == ["v1"]
    assert split.headers.getall("X-Model-Version") == ["v1"]
    assert received(asked_echo).getall("X-Model-Version") == ["v2"]
    assert asked.headers.getall("X-Model-Version") == ["v2"]


async def test_deprecated_version_announces_its_sunset_and_successor(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends)
    models["m"]["versions"]["v1"].update(state="deprecated", sunset="2027-03-31", successor="v2")
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        old, _ = await echo_of(client, "GET", f"{r.url}/models/m/echo")
        new, _ = await echo_of(client, "GET", f"{r.url}/models/m/versions/v2/echo")
    assert old.headers.getall("Deprecation") == ["true"]
    (sunset,) = old.headers.getall("Sunset")
    assert HTTP_DATE.match(sunset), sunset
    assert email.utils.parsedate_to_datetime(sunset).date().isoformat() == "2027-03-31"
    assert old.headers.getall("Link") == ['</models/m/versions/v2>; rel="successor-version"']
    for name in ("Deprecation", "Sunset", "Link"):
        assert name not in new.headers


async def test_deprecated_version_without_sunset_or_successor(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends)
    models["m"]["versions"]["v1"]["state"] = "deprecated"
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        resp, _ = await echo_of(client, "GET", f"{r.url}/models/m/echo")
    assert resp.headers["Deprecation"] == "true"
    assert "Sunset" not in resp.headers
    assert "Link" not in resp.headers
