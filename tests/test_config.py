"""The routing table (contract section 2): parsing into frozen dataclasses, and validation.

Every bad table is checked against the exact messages `check` would print:
`FILE:LINE: key.path: message`, lines 1-based, pointing at the offending key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from router.config.model import (
    Address,
    ConfigError,
    LogSettings,
    Model,
    Rule,
    ServerSettings,
    Split,
    Table,
    UserIdSource,
    Version,
)
from router.config.validate import load_table, parse_table, parse_text
from router.proxy.headers import lifecycle_headers

SOURCE = "routes.yaml"

# The example of contract section 2, plus a deprecated version v3 with a sunset and a successor.
FULL_TABLE = """\
server:
  listen: 127.0.0.1:8080          # where clients connect
  admin_listen: 127.0.0.1:8081    # admin API, health, metrics
  admin_token_env: ROUTER_ADMIN_TOKEN
  max_body_mb: 10
  drain_s: 10

log:
  path: logs/routing.jsonl
  user_ids: hash

models:
  cancer:
    salt: cancer-2026-11
    user_id:
      - header: X-User-ID
      - cookie: uid
      - query: user_id
    when_no_user_id: random
    timeout_s: 10
    versions:
      v1: {url: "http://127.0.0.1:9001"}
      v2: {url: "http://127.0.0.1:9002", timeout_s: 2}
      v0: {url: "http://127.0.0.1:9000", state: retired, successor: v1}
      v3: {url: "http://127.0.0.1:9003/", state: deprecated, sunset: 2027-03-31, successor: v1}
    split:
      v1: 85
      v2: 10
      v3: 5
    rules:
      - match: {header: {X-Beta-Tester: "true"}}
        version: v2
      - match: {user_id: [alice, bob]}
        version: v2
    fallback: v1
    log_response: [prediction]
"""


def test_full_table_parses_into_the_expected_dataclasses() -> None:
    table = parse_text(FULL_TABLE, SOURCE)

    assert table.server == ServerSettings(
        listen=Address("127.0.0.1", 8080),
        admin_listen=Address("127.0.0.1", 8081),
        admin_token_env="ROUTER_ADMIN_TOKEN",
        max_body_mb=10.0,
        drain_s=10.0,
    )
    assert table.log == LogSettings(path="logs/routing.jsonl", user_ids="hash")
    assert list(table.models) == ["cancer"]
    cancer = table.models["cancer"]
    assert lifecycle_headers("cancer", cancer.versions["v3"]) == (
        ("Deprecation", "true"),
        ("Sunset", "Wed, 31 Mar 2027 00:00:00 GMT"),
        ("Link", '</models/cancer/versions/v1>; rel="successor-version"'),
    )
    assert cancer == Model(
        name="cancer",
        salt="cancer-2026-11",
        user_id=(
            UserIdSource("header", "X-User-ID"),
            UserIdSource("cookie", "uid"),
            UserIdSource("query", "user_id"),
        ),
        when_no_user_id="random",
        versions={
            "v1": Version("v1", "http://127.0.0.1:9001", timeout_s=10.0),
            "v2": Version("v2", "http://127.0.0.1:9002", timeout_s=2.0),
            "v0": Version(
                "v0", "http://127.0.0.1:9000", timeout_s=10.0, state="retired", successor="v1"
            ),
            "v3": Version(
                "v3",
                "http://127.0.0.1:9003",
                timeout_s=10.0,
                state="deprecated",
                sunset=dt.date(2027, 3, 31),
                successor="v1",
            ),
        },
        split=Split(
            versions=("v1", "v2", "v3"),
            percents=(Decimal(85), Decimal(10), Decimal(5)),
            edges=(8500, 9500, 10000),
        ),
        rules=(
            Rule("v2", headers=(("X-Beta-Tester", "true"),)),
            Rule("v2", user_ids=frozenset({"alice", "bob"})),
        ),
        fallback="v1",
        log_response=("prediction",),
    )
    assert list(cancer.versions) == ["v1", "v2", "v0", "v3"]
    assert cancer.split.ranges() == {
        "v1": range(0, 8500),
        "v2": range(8500, 9500),
        "v3": range(9500, 10000),
    }


def test_defaults_fill_what_the_table_leaves_out() -> None:
    table = parse_text(
        "models:\n  books:\n    versions:\n      a: {url: 'https://books.internal/a/'}\n"
        "    split: {a: 100}\n",
        SOURCE,
    )

    assert table.server == ServerSettings(
        listen=Address("127.0.0.1", 8080),
        admin_listen=Address("127.0.0.1", 8081),
        admin_token_env=None,
        max_body_mb=10.0,
        drain_s=10.0,
    )
    assert table.log == LogSettings(path="logs/routing.jsonl", user_ids="hash")
    assert table.models["books"] == Model(
        name="books",
        salt="books",
        user_id=(UserIdSource("header", "X-User-ID"),),
        when_no_user_id="random",
        versions={"a": Version("a", "https://books.internal/a", timeout_s=30.0)},
        split=Split(versions=("a",), percents=(Decimal(100),), edges=(10000,)),
        rules=(),
        fallback=None,
        log_response=(),
    )


def test_a_retired_version_may_keep_a_zero_share() -> None:
    table = parse_text(
        "models:\n  m:\n    versions:\n      old: {url: 'http://a', state: retired}\n"
        "      new: {url: 'http://b'}\n    split: {old: 0, new: 100}\n",
        SOURCE,
    )

    assert table.models["m"].split.edges == (0, 10000)
    assert table.models["m"].split.version_at(0) == "new"


def _part(table: Table, part: str) -> object:
    cancer = table.models["cancer"]
    parts: dict[str, object] = {
        "table": table,
        "server": table.server,
        "log": table.log,
        "model": cancer,
        "version": cancer.versions["v3"],
        "split": cancer.split,
        "rule": cancer.rules[0],
    }
    return parts[part]


@pytest.mark.parametrize(
    ("part", "attribute"),
    [
        ("table", "digest"),
        ("server", "drain_s"),
        ("log", "path"),
        ("model", "salt"),
        ("version", "url"),
        ("split", "edges"),
        ("rule", "version"),
    ],
)
def test_parsed_table_is_frozen(part: str, attribute: str) -> None:
    obj = _part(parse_text(FULL_TABLE, SOURCE), part)

    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attribute, None)


def test_parsed_mappings_are_read_only() -> None:
    table = parse_text(FULL_TABLE, SOURCE)
    models: Any = table.models
    versions: Any = table.models["cancer"].versions

    with pytest.raises(TypeError):
        models["books"] = None
    with pytest.raises(TypeError):
        versions["v9"] = None


# --- bad tables ---------------------------------------------------------------------------

# Lines 1-6; a case's own lines start at 7.
MODEL = """\
models:
  cancer:
    versions:
      v1: {url: "http://127.0.0.1:9001"}
      v2: {url: "http://127.0.0.1:9002"}
      v0: {url: "http://127.0.0.1:9000", state: retired, successor: v1}
"""
# Lines 7-9 after MODEL; a case's own lines then start at 10.
SPLIT = """\
    split:
      v1: 90
      v2: 10
"""
TWO_DECIMALS = "must be a number from 0 to 100 with at most two decimals"

BAD_TABLES = [
    # split
    pytest.param(
        MODEL + "    split:\n      v1: 90\n      v2: 5\n",
        ["routes.yaml:7: models.cancer.split: percentages add up to 95, not 100"],
        id="split-adds-up-to-95",
    ),
    pytest.param(
        MODEL + "    split:\n      v1: 89.995\n      v2: 10.005\n",
        [
            f"routes.yaml:8: models.cancer.split.v1: {TWO_DECIMALS}, not 89.995",
            f"routes.yaml:9: models.cancer.split.v2: {TWO_DECIMALS}, not 10.005",
        ],
        id="split-three-decimals",
    ),
    pytest.param(
        MODEL + "    split:\n      v1: 110\n      v2: -10\n",
        [
            f"routes.yaml:8: models.cancer.split.v1: {TWO_DECIMALS}, not 110",
            f"routes.yaml:9: models.cancer.split.v2: {TWO_DECIMALS}, not -10",
        ],
        id="split-above-100-and-negative",
    ),
    pytest.param(
        MODEL + "    split:\n      v1: 90\n      v2: ten\n",
        [f"routes.yaml:9: models.cancer.split.v2: {TWO_DECIMALS}, not 'ten'"],
        id="split-not-a-number",
    ),
    pytest.param(
        MODEL + "    split:\n      v1: 90\n      v2: '10'\n",
        [f"routes.yaml:9: models.cancer.split.v2: {TWO_DECIMALS}, not '10'"],
        id="split-quoted-number",
    ),
    pytest.param(
        # The file says `true`; the message should quote what the user wrote, not Python's True.
        MODEL + "    split:\n      v1: 90\n      v2: true\n",
        [f"routes.yaml:9: models.cancer.split.v2: {TWO_DECIMALS}, not true"],
        id="split-bool",
    ),
    pytest.param(
        # `nothing`, as the code itself says elsewhere ("must be a mapping, not nothing").
        MODEL + "    split:\n      v1: 90\n      v2:\n",
        [f"routes.yaml:9: models.cancer.split.v2: {TWO_DECIMALS}, not nothing"],
        id="split-share-left-empty",
    ),
    pytest.param(
        MODEL + "    split:\n      v1: 90\n      v3: 10\n",
        ["routes.yaml:9: models.cancer.split.v3: no such version; versions: v1, v2, v0"],
        id="split-names-missing-version",
    ),
    pytest.param(
        MODEL + "    split:\n      v1: 90\n      v2: 5\n      v0: 5\n",
        [
            "routes.yaml:10: models.cancer.split.v0: "
            "version 'v0' is retired; its share must be 0, not 5"
        ],
        id="split-retired-version-with-a-share",
    ),
    pytest.param(
        MODEL + "    split: {}\n",
        ["routes.yaml:7: models.cancer.split: is empty; give each version its percent of users"],
        id="split-empty",
    ),
    pytest.param(
        MODEL + "    split: [v1, v2]\n",
        ["routes.yaml:7: models.cancer.split: must be a mapping, not a list"],
        id="split-not-a-mapping",
    ),
    pytest.param(
        # A missing key is reported at its parent key, `cancer:` on line 2.
        MODEL,
        ["routes.yaml:2: models.cancer.split: is missing; give each version its percent of users"],
        id="split-missing",
    ),
    # the inference protocols' keys (contract section 11)
    pytest.param(
        MODEL + SPLIT + "    prediction: outputs/0/data\n",
        [
            "routes.yaml:10: models.cancer.prediction: 'outputs/0/data' is not a JSON pointer: "
            "it starts with /, like /outputs/0/data/0"
        ],
        id="prediction-not-a-pointer",
    ),
    pytest.param(
        MODEL + SPLIT + "    log_response: [prediction, /a~2b]\n",
        [
            "routes.yaml:10: models.cancer.log_response[1]: '/a~2b' is not a JSON pointer: "
            "'~' is written ~0 and '/' in a name ~1"
        ],
        id="log-response-bad-pointer",
    ),
    pytest.param(
        MODEL.replace('9002"}', '9002", upstream_model: "my model"}') + SPLIT,
        [
            "routes.yaml:5: models.cancer.versions.v2.upstream_model: 'my model' cannot name a "
            "model on its backend: use letters, digits and ._:@+/-"
        ],
        id="upstream-model-with-a-space",
    ),
    pytest.param(
        MODEL.replace('9002"}', '9002", upstream_version: [1]}') + SPLIT,
        [
            "routes.yaml:5: models.cancer.versions.v2.upstream_version: "
            "must be a non-empty string, not [1]"
        ],
        id="upstream-version-not-a-name",
    ),
    pytest.param(
        MODEL + SPLIT + "    user_id: [{body: ''}]\n",
        ["routes.yaml:10: models.cancer.user_id[0].body: must be a non-empty string, not ''"],
        id="body-user-id-empty",
    ),
    pytest.param(
        MODEL + SPLIT + "    retry_post: yes please\n",
        ["routes.yaml:10: models.cancer.retry_post: must be true or false, not 'yes please'"],
        id="retry-post-not-a-boolean",
    ),
    # unknown keys, at each level
    pytest.param(
        MODEL + SPLIT.replace("split:", "spilt:"),
        [
            "routes.yaml:2: models.cancer.split: "
            "is missing; give each version its percent of users",
            "routes.yaml:7: models.cancer.spilt: unknown key (did you mean 'split'?)",
        ],
        id="unknown-key-spilt",
    ),
    pytest.param(
        MODEL + SPLIT + "logs: {path: x.jsonl}\n",
        ["routes.yaml:10: logs: unknown key (did you mean 'log'?)"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        "server:\n  listn: 127.0.0.1:8080\n  port: 8080\n" + MODEL + SPLIT,
        [
            "routes.yaml:2: server.listn: unknown key (did you mean 'listen'?)",
            "routes.yaml:3: server.port: unknown key (expected one of: listen, admin_listen, "
            "admin_token_env, max_body_mb, drain_s, body_timeout_s, max_connections, "
            "request_buffering, feedback_token_env, reload_timeout_s, grpc_listen, tracing)",
        ],
        id="unknown-server-keys",
    ),
    pytest.param(
        "server:\n  tracing:\n    otlp_endpoint: http://127.0.0.1:4318/v1/traces\n"
        "    sample: 1.5\n    sampler: always_on\n" + MODEL + SPLIT,
        [
            "routes.yaml:3: server.tracing.otlp_endpoint: is the collector's base URL: "
            "drop '/v1/traces' (the router adds it)",
            "routes.yaml:4: server.tracing.sample: must be a number from 0 to 1, not 1.5",
            "routes.yaml:5: server.tracing.sampler: unknown key (did you mean 'sample'?)",
        ],
        id="tracing-endpoint-path-sample-and-unknown-key",
    ),
    pytest.param(
        "server:\n  tracing:\n    sample: 0.1\n" + MODEL + SPLIT,
        [
            "routes.yaml:2: server.tracing: needs the collector's OTLP/HTTP base URL, "
            "like otlp_endpoint: http://127.0.0.1:4318",
        ],
        id="tracing-without-endpoint",
    ),
    pytest.param(
        "server:\n  tracing: {otlp_endpoint: '127.0.0.1:4318'}\n" + MODEL + SPLIT,
        [
            "routes.yaml:2: server.tracing.otlp_endpoint: '127.0.0.1:4318' is not an http:// "
            "or https:// URL, like http://127.0.0.1:4318",
        ],
        id="tracing-endpoint-not-a-url",
    ),
    pytest.param(
        "log:\n  pth: x.jsonl\n" + MODEL + SPLIT,
        ["routes.yaml:2: log.pth: unknown key (did you mean 'path'?)"],
        id="unknown-log-key",
    ),
    pytest.param(
        MODEL + SPLIT + "    fallbak: v1\n",
        ["routes.yaml:10: models.cancer.fallbak: unknown key (did you mean 'fallback'?)"],
        id="unknown-model-key",
    ),
    pytest.param(
        MODEL.replace('9001"}', '9001", timeout: 3}') + SPLIT,
        [
            "routes.yaml:4: models.cancer.versions.v1.timeout: "
            "unknown key (did you mean 'timeout_s'?)"
        ],
        id="unknown-version-key",
    ),
    pytest.param(
        MODEL
        + SPLIT
        + "    rules:\n      - match: {headers: {X-Beta: 'true'}}\n        version: v2\n",
        [
            "routes.yaml:11: models.cancer.rules[0].match.headers: "
            "unknown key (did you mean 'header'?)"
        ],
        id="unknown-rule-match-key",
    ),
    pytest.param(
        MODEL + SPLIT + "    rules:\n      - match: {user_id: alice}\n        versoin: v2\n",
        [
            "routes.yaml:11: models.cancer.rules[0].version: is missing; name a version",
            "routes.yaml:12: models.cancer.rules[0].versoin: unknown key (did you mean 'version'?)",
        ],
        id="unknown-rule-key",
    ),
    pytest.param(
        MODEL + SPLIT + "    user_id:\n      - header: X-User-ID\n      - cookies: uid\n",
        [
            "routes.yaml:12: models.cancer.user_id[1]: unknown source 'cookies'; "
            "expected one of: header, cookie, query, body"
        ],
        id="unknown-user-id-source",
    ),
    # duplicate keys: the second one is reported
    pytest.param(
        MODEL + SPLIT + "      v2: 10\n",
        ["routes.yaml:10: models.cancer.split.v2: is given twice"],
        id="duplicate-split-key",
    ),
    pytest.param(
        MODEL + '      v1: {url: "http://127.0.0.1:9011"}\n' + "    split: {v1: 90, v2: 10}\n",
        ["routes.yaml:7: models.cancer.versions.v1: is given twice"],
        id="duplicate-version",
    ),
    pytest.param(
        "log: {user_ids: raw}\n" + MODEL + SPLIT + "log: {user_ids: omit}\n",
        ["routes.yaml:11: log: is given twice"],
        id="duplicate-top-level-key",
    ),
    # names
    pytest.param(
        MODEL.replace("cancer:", "_cancer:") + SPLIT,
        ["routes.yaml:2: models._cancer: model names match [A-Za-z0-9][A-Za-z0-9._-]*"],
        id="bad-model-name",
    ),
    pytest.param(
        MODEL.replace("v0:", "v/0:") + SPLIT,
        [
            "routes.yaml:6: models.cancer.versions.v/0: "
            "version names match [A-Za-z0-9][A-Za-z0-9._-]*"
        ],
        id="bad-version-name",
    ),
    # urls
    pytest.param(
        MODEL.replace("http://127.0.0.1:9000", "ftp://127.0.0.1:9000") + SPLIT,
        [
            "routes.yaml:6: models.cancer.versions.v0.url: "
            "'ftp://127.0.0.1:9000' must be http:// or https:// with a host"
        ],
        id="url-not-http",
    ),
    pytest.param(
        MODEL.replace("http://127.0.0.1:9000", "http:///predict") + SPLIT,
        [
            "routes.yaml:6: models.cancer.versions.v0.url: "
            "'http:///predict' must be http:// or https:// with a host"
        ],
        id="url-without-host",
    ),
    pytest.param(
        MODEL.replace('url: "http://127.0.0.1:9000", ', "") + SPLIT,
        [
            "routes.yaml:6: models.cancer.versions.v0.url: "
            "is missing (for example url: http://127.0.0.1:9001, or a grpc_url)"
        ],
        id="url-missing",
    ),
    # versions named elsewhere
    pytest.param(
        MODEL + SPLIT + "    fallback: v9\n",
        ["routes.yaml:10: models.cancer.fallback: no version 'v9'; versions: v1, v2, v0"],
        id="fallback-missing-version",
    ),
    pytest.param(
        MODEL + SPLIT + "    fallback: v0\n",
        [
            "routes.yaml:10: models.cancer.fallback: "
            "version 'v0' is retired and cannot be a fallback"
        ],
        id="fallback-retired",
    ),
    pytest.param(
        MODEL + SPLIT + "    rules:\n      - match: {user_id: [alice]}\n        version: v9\n",
        ["routes.yaml:12: models.cancer.rules[0].version: no version 'v9'; versions: v1, v2, v0"],
        id="rule-version-missing",
    ),
    pytest.param(
        MODEL.replace("successor: v1", "successor: v9") + SPLIT,
        [
            "routes.yaml:6: models.cancer.versions.v0.successor: "
            "no version 'v9'; versions: v1, v2, v0"
        ],
        id="successor-missing",
    ),
    pytest.param(
        MODEL.replace("successor: v1", "successor: v0") + SPLIT,
        ["routes.yaml:6: models.cancer.versions.v0.successor: cannot be the version itself"],
        id="successor-itself",
    ),
    pytest.param(
        MODEL + SPLIT + "    when_no_user_id: v9\n",
        ["routes.yaml:10: models.cancer.when_no_user_id: no version 'v9'; versions: v1, v2, v0"],
        id="when-no-user-id-missing-version",
    ),
    # closed choices and numbers
    pytest.param(
        MODEL.replace("state: retired", "state: gone") + SPLIT,
        [
            "routes.yaml:6: models.cancer.versions.v0.state: "
            "is 'gone'; expected one of: active, deprecated, retired"
        ],
        id="bad-state",
    ),
    pytest.param(
        "log:\n  user_ids: clear\n" + MODEL + SPLIT,
        ["routes.yaml:2: log.user_ids: is 'clear'; expected one of: hash, raw, omit"],
        id="bad-user-ids-mode",
    ),
    pytest.param(
        "server:\n  listen: localhost\n" + MODEL + SPLIT,
        ["routes.yaml:2: server.listen: 'localhost' is not HOST:PORT (for example 127.0.0.1:8080)"],
        id="bad-listen",
    ),
    pytest.param(
        "server:\n  admin_listen: 127.0.0.1:70000\n" + MODEL + SPLIT,
        [
            "routes.yaml:2: server.admin_listen: "
            "'127.0.0.1:70000' is not HOST:PORT (for example 127.0.0.1:8080)"
        ],
        id="bad-admin-listen-port",
    ),
    pytest.param(
        MODEL + SPLIT + "    timeout_s: 0\n",
        ["routes.yaml:10: models.cancer.timeout_s: must be a number above 0, not 0"],
        id="model-timeout-zero",
    ),
    pytest.param(
        MODEL.replace('9002"}', '9002", timeout_s: -1}') + SPLIT,
        ["routes.yaml:5: models.cancer.versions.v2.timeout_s: must be a number above 0, not -1"],
        id="version-timeout-negative",
    ),
    pytest.param(
        "server:\n  max_body_mb: 0\n  drain_s: -1\n" + MODEL + SPLIT,
        [
            "routes.yaml:2: server.max_body_mb: must be a number above 0, not 0",
            "routes.yaml:3: server.drain_s: must be a number, 0 or more, not -1",
        ],
        id="server-numbers",
    ),
    pytest.param(
        MODEL.replace('9002"}', '9002", sunset: 2027-03-31}') + SPLIT,
        [
            "routes.yaml:5: models.cancer.versions.v2.sunset: "
            "only a deprecated or retired version has a sunset; add state: deprecated"
        ],
        id="sunset-on-active-version",
    ),
    pytest.param(
        MODEL.replace("state: retired", "state: deprecated, sunset: soon") + SPLIT,
        [
            "routes.yaml:6: models.cancer.versions.v0.sunset: "
            "must be a date like 2027-03-31, not 'soon'"
        ],
        id="sunset-not-a-date",
    ),
    # the file as a whole
    pytest.param(
        "models:\n\tcancer: {}\n",
        ["routes.yaml:2: not valid YAML: found character '\\t' that cannot start any token"],
        id="yaml-tab",
    ),
    pytest.param(
        "models:\n  cancer:\n    split: v1: 90\n",
        ["routes.yaml:3: not valid YAML: mapping values are not allowed here"],
        id="yaml-syntax-error",
    ),
    pytest.param(
        "- cancer\n- books\n",
        ["routes.yaml:1: a routing table is a mapping with 'models', not a list"],
        id="file-is-a-list",
    ),
    pytest.param(
        "",
        ["routes.yaml:1: a routing table is a mapping with 'models', not nothing"],
        id="file-is-empty",
    ),
    pytest.param(
        "server:\n  drain_s: 3\n",
        ["routes.yaml:1: models: is missing; name at least one model"],
        id="models-missing",
    ),
    pytest.param(
        "models: {}\n",
        ["routes.yaml:1: models: is empty; name at least one model"],
        id="models-empty",
    ),
    pytest.param(
        "models:\n  cancer:\n",
        ["routes.yaml:2: models.cancer: must be a mapping, not nothing"],
        id="model-empty",
    ),
    pytest.param(
        # Reported at `cancer:`, the key that lacks it.
        "models:\n  cancer:\n    split:\n      v1: 100\n",
        [
            "routes.yaml:2: models.cancer.versions: is missing; list the versions and their urls",
            "routes.yaml:4: models.cancer.split.v1: no such version; versions: none",
        ],
        id="versions-missing",
    ),
    pytest.param(
        "models:\n  cancer:\n    versions: {}\n    split:\n      v1: 100\n",
        [
            "routes.yaml:3: models.cancer.versions: is empty; list the versions and their urls",
            "routes.yaml:5: models.cancer.split.v1: no such version; versions: none",
        ],
        id="versions-empty",
    ),
]


@pytest.mark.parametrize(("text", "messages"), BAD_TABLES)
def test_bad_table_is_refused_with_every_problem(text: str, messages: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_text(text, SOURCE)

    assert caught.value.messages() == messages


def test_several_problems_are_reported_at_once_in_line_order() -> None:
    # Sections out of the order in which they are validated, so the sort by line matters.
    text = """\
models:
  cancer:
    versions:
      v1: {url: "http://127.0.0.1:9001"}
      v2: {url: "http://127.0.0.1:9002", state: gone}
    split:
      v1: 90
      v2: 5
    fallback: v9
log:
  user_ids: clear
server:
  listen: nowhere
  drain_s: -1
"""
    with pytest.raises(ConfigError) as caught:
        parse_text(text, SOURCE)

    assert caught.value.messages() == [
        "routes.yaml:5: models.cancer.versions.v2.state: "
        "is 'gone'; expected one of: active, deprecated, retired",
        "routes.yaml:6: models.cancer.split: percentages add up to 95, not 100",
        "routes.yaml:9: models.cancer.fallback: no version 'v9'; versions: v1, v2",
        "routes.yaml:11: log.user_ids: is 'clear'; expected one of: hash, raw, omit",
        "routes.yaml:13: server.listen: 'nowhere' is not HOST:PORT (for example 127.0.0.1:8080)",
        "routes.yaml:14: server.drain_s: must be a number, 0 or more, not -1",
    ]
    assert [p.line for p in caught.value.problems] == [5, 6, 9, 11, 13, 14]


def test_a_version_with_a_bad_url_is_still_a_version_for_split_and_fallback() -> None:
    # v2 exists; only its url is wrong. Saying "no such version" for it sends the user looking
    # for a typo that is not there.
    text = (
        MODEL.replace("http://127.0.0.1:9002", "ftp://127.0.0.1:9002")
        + SPLIT
        + "    fallback: v2\n"
    )

    with pytest.raises(ConfigError) as caught:
        parse_text(text, SOURCE)

    assert caught.value.messages() == [
        "routes.yaml:5: models.cancer.versions.v2.url: "
        "'ftp://127.0.0.1:9002' must be http:// or https:// with a host"
    ]


def test_a_bad_url_does_not_hide_the_other_problems_of_its_version() -> None:
    text = """\
models:
  cancer:
    versions:
      v1: {url: "http://127.0.0.1:9001"}
      v0:
        url: ftp://127.0.0.1:9000
        timeout_s: 0
        state: deprecated
        successor: v9
    split:
      v1: 100
"""
    with pytest.raises(ConfigError) as caught:
        parse_text(text, SOURCE)

    assert caught.value.messages() == [
        "routes.yaml:6: models.cancer.versions.v0.url: "
        "'ftp://127.0.0.1:9000' must be http:// or https:// with a host",
        "routes.yaml:7: models.cancer.versions.v0.timeout_s: must be a number above 0, not 0",
        "routes.yaml:9: models.cancer.versions.v0.successor: no version 'v9'; versions: v1, v0",
    ]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("2027-31-03", id="impossible-date"),
        pytest.param("!!int ninety", id="bad-int-tag"),
    ],
)
def test_values_yaml_cannot_construct_are_config_errors(value: str) -> None:
    # PyYAML raises a plain ValueError for these, not a YAMLError; `check` must still exit 2.
    text = MODEL.replace("state: retired", f"state: deprecated, sunset: {value}") + SPLIT

    with pytest.raises(ConfigError) as caught:
        parse_text(text, SOURCE)

    (message,) = caught.value.messages()
    assert message.startswith("routes.yaml:6: ")


def test_a_merge_key_override_is_not_a_duplicate() -> None:
    # `<<` is standard YAML: keys written next to it override the merged ones.
    text = MODEL.replace(
        'v1: {url: "http://127.0.0.1:9001"}',
        'v1: &base {url: "http://127.0.0.1:9001", timeout_s: 3}',
    ).replace('v2: {url: "http://127.0.0.1:9002"}', 'v2: {<<: *base, url: "http://127.0.0.1:9002"}')

    table = parse_text(text + SPLIT, SOURCE)

    assert table.models["cancer"].versions["v2"] == Version(
        "v2", "http://127.0.0.1:9002", timeout_s=3.0
    )


def test_version_names_written_as_bare_integers_are_names() -> None:
    # `1` matches [A-Za-z0-9][A-Za-z0-9._-]*; refusing it with that very pattern as the reason
    # is a message nobody can act on.
    text = """\
models:
  cancer:
    versions:
      1: {url: "http://127.0.0.1:9001"}
      2: {url: "http://127.0.0.1:9002"}
    split:
      1: 90
      2: 10
"""
    table = parse_text(text, SOURCE)

    assert list(table.models["cancer"].versions) == ["1", "2"]
    assert table.models["cancer"].split.versions == ("1", "2")


def test_load_table_on_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "routes.yaml"

    with pytest.raises(ConfigError) as caught:
        load_table(path)

    (message,) = caught.value.messages()
    assert message.startswith(f"{path}: cannot read the file: ")
    assert caught.value.problems[0].line is None


def test_load_table_reports_lines_under_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(MODEL + "    split:\n      v1: 90\n      v2: 5\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_table(path)

    assert caught.value.messages() == [
        f"{path}:7: models.cancer.split: percentages add up to 95, not 100"
    ]


# --- digest -------------------------------------------------------------------------------

DIGEST_BLOCK = """\
# comments and layout do not count
server:
  listen: 127.0.0.1:8080
  drain_s: 5
models:
  cancer:
    salt: s1
    versions:
      v1:
        url: http://127.0.0.1:9001
        timeout_s: 2
      v2:
        url: http://127.0.0.1:9002
    split:
      v1: 90
      v2: 10
"""
DIGEST_FLOW = """\
models: {cancer: {split: {v1: 90, v2: 10}, versions: {v2: {url: "http://127.0.0.1:9002"},
  v1: {timeout_s: 2, url: 'http://127.0.0.1:9001'}}, salt: "s1"}}


server: {drain_s: 5, listen: "127.0.0.1:8080"}
"""


def test_digest_ignores_key_order_and_layout() -> None:
    assert parse_text(DIGEST_BLOCK).digest == parse_text(DIGEST_FLOW).digest


def test_digest_changes_with_a_percentage() -> None:
    changed = DIGEST_BLOCK.replace("v1: 90", "v1: 80").replace("v2: 10", "v2: 20")

    assert parse_text(changed).digest != parse_text(DIGEST_BLOCK).digest


def test_digest_changes_when_the_split_order_changes() -> None:
    # Order matters in a split (contract section 3): v2 first moves 10% of users onto other
    # buckets, so it is another table and the log must be able to tell them apart.
    reordered = DIGEST_BLOCK.replace("      v1: 90\n      v2: 10\n", "      v2: 10\n      v1: 90\n")
    before, after = parse_text(DIGEST_BLOCK), parse_text(reordered)
    assert before.models["cancer"].split.edges != after.models["cancer"].split.edges

    assert after.digest != before.digest


# --- properties of split validation -------------------------------------------------------

VERSION_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,7}", fullmatch=True)


def _number(hundredths: int, as_float: bool) -> int | float:
    """A percentage as YAML would give it: an int when whole, else a float like 12.34."""
    if hundredths % 100 == 0 and not as_float:
        return hundredths // 100
    return hundredths / 100


def _table(split: dict[str, Any]) -> dict[str, Any]:
    versions = {name: {"url": f"http://127.0.0.1:{9000 + i}"} for i, name in enumerate(split)}
    return {"models": {"m": {"versions": versions, "split": split}}}


@st.composite
def _shares_adding_to_10000(draw: st.DrawFn) -> list[int]:
    k = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.integers(0, 10000), min_size=k - 1, max_size=k - 1)))
    return [b - a for a, b in zip([0, *cuts], [*cuts, 10000], strict=True)]


SHARES = st.one_of(
    st.lists(st.integers(0, 10000), min_size=1, max_size=5),
    _shares_adding_to_10000(),
)


@settings(deadline=None)
@given(
    shares=SHARES,
    names=st.lists(VERSION_NAMES, min_size=5, max_size=5, unique=True),
    as_float=st.booleans(),
)
def test_split_is_accepted_iff_it_adds_up_to_exactly_100(
    shares: list[int], names: list[str], as_float: bool
) -> None:
    split = {name: _number(n, as_float) for name, n in zip(names, shares, strict=False)}
    total = sum(shares)
    event("accepted" if total == 10000 else "refused")

    if total != 10000:
        with pytest.raises(ConfigError) as caught:
            parse_table(_table(split))
        assert caught.value.messages() == [
            f"<table>: models.m.split: percentages add up to {Decimal(total) / 100}, not 100"
        ]
        return

    parsed = parse_table(_table(split)).models["m"].split
    assert parsed.versions == tuple(split)
    assert parsed.percents == tuple(Decimal(n) / 100 for n in shares)
    assert parsed.edges[-1] == 10000
    assert all(a <= b for a, b in zip(parsed.edges, parsed.edges[1:], strict=False))
    assert [b - a for a, b in zip((0, *parsed.edges), parsed.edges, strict=False)] == shares


@settings(deadline=None)
@given(
    # 0.001 .. 99.999, always with a third decimal that is not 0
    thousandths=st.builds(lambda k, d: 10 * k + d, st.integers(0, 9999), st.integers(1, 9)),
    name=VERSION_NAMES,
)
def test_a_third_decimal_is_refused_naming_the_key(thousandths: int, name: str) -> None:
    value = thousandths / 1000  # for example 33.333
    assert Decimal(str(value)) == Decimal(thousandths) / 1000  # the value really has 3 decimals

    with pytest.raises(ConfigError) as caught:
        parse_table(_table({name: value}))

    assert caught.value.messages() == [
        f"<table>: models.m.split.{name}: {TWO_DECIMALS}, not {value!r}"
    ]


@pytest.mark.parametrize("value", [12.34, 0.07, 0.1, 0.29, 33.33, 50.5, 99.99, 1.1])
def test_two_decimal_floats_are_taken_at_their_written_value(value: float) -> None:
    # The float 12.34 is not exactly 12.34 in binary (Decimal(12.34) has ~50 digits), but
    # str() gives the shortest text that reads back as the same float, which is what was
    # written. Validation relies on Decimal(str(x)), so 12.34 passes as two decimals.
    written = Decimal(f"{value:.2f}")
    assert Decimal(str(value)) == written
    rest = float(100 - written)

    split = parse_table(_table({"a": value, "b": rest})).models["m"].split

    assert split.percents == (written, 100 - written)
    assert split.edges == (int(written * 100), 10000)


def test_bare_numbers_in_text_fields_keep_the_text_as_written() -> None:
    """YAML reads `017` as 15 and `0x1F` as 31; a salt or a header value means the text."""
    table = parse_text(
        "models:\n  m:\n    salt: 017\n"
        "    versions: {01: {url: 'http://h:1'}, v2: {url: 'http://h:2'}}\n"
        "    split: {01: 90, v2: 10}\n"
        "    rules:\n      - match: {header: {X-Flag: 0x1F}}\n        version: v2\n",
        SOURCE,
    )
    model = table.models["m"]
    assert model.salt == "017"
    assert list(model.versions) == ["01", "v2"]
    assert model.rules[0].headers == (("X-Flag", "0x1F"),)


# --- the shadow block (contract section 8) ---

SHADOW_TABLE = """\
models:
  cancer:
    versions:
      v1: {url: "http://127.0.0.1:9001"}
      v2: {url: "http://127.0.0.1:9002"}
      v3: {url: "http://127.0.0.1:9003"%s}
    split: {v1: 90, v2: 10}
    shadow:
%s
"""


def _shadow_table(block: str, v3: str = "") -> str:
    return SHADOW_TABLE % (v3, "\n".join("      " + line for line in block.splitlines()))


def test_a_shadow_block_parses_with_its_defaults() -> None:
    model = parse_text(_shadow_table("version: v3"), SOURCE).models["cancer"]
    assert model.shadow is not None
    assert (model.shadow.version, model.shadow.percent, model.shadow.max_in_flight) == (
        "v3",
        100.0,
        64,
    )
    table = parse_text(_shadow_table("version: v3\npercent: 12.5\nmax_in_flight: 8"))
    shadow = table.models["cancer"].shadow
    assert shadow is not None
    assert (shadow.percent, shadow.max_in_flight) == (12.5, 8)
    without = _shadow_table("version: v3").split("    shadow:")[0]
    assert parse_text(without).models["cancer"].shadow is None


@pytest.mark.parametrize(
    ("block", "v3", "message"),
    [
        ("version: v2", "", "routes.yaml:9: models.cancer.shadow.version: version 'v2' has a "
         "share of the split; a shadow answers no client, so give it 0 or leave it out of "
         "the split"),
        ("version: v9", "", "routes.yaml:9: models.cancer.shadow.version: no version 'v9'; "
         "versions: v1, v2, v3"),
        ("version: v3", ", state: deprecated", "routes.yaml:9: models.cancer.shadow.version: "
         "version 'v3' is deprecated; a shadow must be active"),
        ("percent: 50", "", "routes.yaml:9: models.cancer.shadow.version: is missing; name a "
         "version"),
        ("version: v3\npercent: 0", "", "routes.yaml:10: models.cancer.shadow.percent: must be "
         "a number above 0 and at most 100, not 0"),
        ("version: v3\nmax_in_flight: 1.5", "", "routes.yaml:10: "
         "models.cancer.shadow.max_in_flight: must be a whole number, 1 or more, not 1.5"),
        ("version: v3\nprecent: 5", "", "routes.yaml:10: models.cancer.shadow.precent: "
         "unknown key (did you mean 'percent'?)"),
    ],
    ids=["in-split", "unknown", "deprecated", "no-version", "percent-0", "limit", "typo"],
)  # fmt: skip
def test_a_bad_shadow_block_is_refused_naming_the_key(block: str, v3: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_text(_shadow_table(block, v3), SOURCE)
    assert caught.value.messages() == [message]


@settings(deadline=None)
@given(percent=st.one_of(st.floats(-1000, 1000, allow_nan=False), st.integers(-1000, 1000)))
def test_shadow_percent_is_accepted_iff_in_zero_to_hundred(percent: float) -> None:
    written = f"{percent:.6f}" if isinstance(percent, float) else str(percent)  # YAML 1.1
    text = _shadow_table(f"version: v3\npercent: {written}")
    if 0 < float(written) <= 100:
        shadow = parse_text(text).models["cancer"].shadow
        assert shadow is not None
        assert shadow.percent == float(written)
    else:
        with pytest.raises(ConfigError):
            parse_text(text)


# --- the rollout block (contract section 9) ---

ROLLOUT_TABLE = """\
models:
  cancer:
    versions:
      v1: {url: "http://127.0.0.1:9001"}
      v2: {url: "http://127.0.0.1:9002"}
    split:
      v1: %s
      v2: %s
    rollout:
%s
"""
ROLLOUT = """\
candidate: v2
steps: [1, 5, 25, 50, 100]
step_s: 600
min_users: 500
guardrails:
  error_rate: {max_increase: 0.005}
  latency_p95: {max_increase: 0.20}
  accuracy: {max_decrease: 0.01}
alpha: 0.05"""


def _rollout_table(block: str = ROLLOUT, v2: str = "5") -> str:
    indented = "\n".join("      " + line for line in block.splitlines())
    return ROLLOUT_TABLE % (100 - Decimal(v2), v2, indented)


def test_a_rollout_block_parses() -> None:
    rollout = parse_text(_rollout_table()).models["cancer"].rollout
    assert rollout is not None
    assert rollout.candidate == "v2"
    assert rollout.steps == tuple(Decimal(s) for s in (1, 5, 25, 50, 100))
    assert dict(rollout.guardrails) == {"error_rate": 0.005, "latency_p95": 0.2, "accuracy": 0.01}
    assert (rollout.step_s, rollout.min_users, rollout.alpha, rollout.state) == (
        600.0,
        500,
        0.05,
        None,
    )
    assert parse_text(_rollout_table(v2="0")).models["cancer"].rollout is not None


@pytest.mark.parametrize(
    ("change", "v2", "message"),
    [
        (("", ""), "10", "routes.yaml:10: models.cancer.rollout.candidate: 'v2' has 10% of the "
         "split, which is neither 0 nor one of the steps (1, 5, 25, 50, 100)"),
        (("candidate: v2", "candidate: v1"), "5", "routes.yaml:10: "
         "models.cancer.rollout.candidate: 'v1' must be listed last in the split (with 0 to "
         "start), so that a ramp only moves users into it"),
        (("[1, 5, 25, 50, 100]", "[1, 5, 5, 100]"), "5", "routes.yaml:11: "
         "models.cancer.rollout.steps: must rise strictly, like [1, 5, 25, 50, 100]"),
        (("[1, 5, 25, 50, 100]", "[0, 5, 100]"), "5", "routes.yaml:11: "
         "models.cancer.rollout.steps: must be a list of percents above 0 and at most 100, "
         "with at most two decimals, like [1, 5, 25, 50, 100], not [0, 5, 100]"),
        (("max_increase: 0.005", "max_increase: -1"), "5", "routes.yaml:15: "
         "models.cancer.rollout.guardrails.error_rate.max_increase: must be a number above 0, "
         "not -1"),
        (("alpha: 0.05", "alpha: 0.5"), "5", "routes.yaml:18: models.cancer.rollout.alpha: must "
         "be a number above 0 and below 0.5, like 0.05, not 0.5"),
        (("alpha: 0.05", "alpha: 0.05\nstate: paused"), "5", "routes.yaml:19: "
         "models.cancer.rollout.state: is 'paused'; expected one of: rolled_back, promoted"),
        (("accuracy: {max_decrease: 0.01}", "accuracy: {max_increase: 0.01}"), "5",
         "routes.yaml:17: models.cancer.rollout.guardrails.accuracy.max_increase: unknown key "
         "(did you mean 'max_decrease'?)"),
    ],
    ids=["between-steps", "not-last", "not-rising", "zero-step", "margin", "alpha", "state",
         "margin-key"],
)  # fmt: skip
def test_a_bad_rollout_block_is_refused_naming_the_key(
    change: tuple[str, str], v2: str, message: str
) -> None:
    block = ROLLOUT.replace(*change) if change[0] else ROLLOUT
    text = _rollout_table(block, v2)
    with pytest.raises(ConfigError) as caught:
        parse_text(text, SOURCE)
    assert caught.value.messages() == [message]


def _marks(value: Any) -> Any:
    """A loaded value with every line mark it carries, for comparing two loaders."""
    if isinstance(value, dict):
        items = {k: _marks(v) for k, v in value.items()}
        marks = getattr(value, "line", None), getattr(value, "key_lines", None)
        return items, marks, getattr(value, "duplicates", None)
    if isinstance(value, list):
        return [_marks(v) for v in value], getattr(value, "item_lines", None)
    return value, type(value).__name__, getattr(value, "text", None)


@pytest.mark.parametrize(
    "text",
    [param.values[0] for param in BAD_TABLES if "not valid YAML" not in str(param.values[1])]
    + [p.read_text() for p in sorted(Path(__file__).parent.parent.glob("*/*.yaml"))],
)
def test_libyaml_and_the_python_parser_read_the_same_values_and_lines(text: str) -> None:
    from router.config import yamlmarks

    fast = yaml.load(text, Loader=yamlmarks._FastLoader)
    plain = yaml.load(text, Loader=yamlmarks._Loader)
    assert _marks(fast) == _marks(plain)


def test_the_protocol_keys_are_read_as_written() -> None:
    table = parse_text(
        MODEL.replace('9002"}', '9002", upstream_model: "org/llm-b", upstream_version: 007}')
        + SPLIT
        + "    prediction: /outputs/0/data/0\n"
        + "    log_response: [prediction, /usage/total_tokens, /a~1b~0c]\n"
        + "    user_id: [{body: user}, {header: X-User-ID}]\n",
        SOURCE,
    )
    cancer = table.models["cancer"]
    v2 = cancer.versions["v2"]
    assert (v2.upstream_model, v2.upstream_version) == ("org/llm-b", "007")  # as written
    assert cancer.versions["v1"].upstream_model is None
    assert cancer.picks == (
        ("prediction", ("outputs", "0", "data", "0")),  # `prediction` wins over the field
        ("/usage/total_tokens", ("usage", "total_tokens")),
        ("/a~1b~0c", ("a/b~c",)),
    )
    assert cancer.user_id == (UserIdSource("body", "user"), UserIdSource("header", "X-User-ID"))
