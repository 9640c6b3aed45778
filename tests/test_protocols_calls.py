"""Reading request targets as each protocol does, and rewriting one value of a JSON body
while every other byte stays as received (contract section 11): sans-IO tables, and a
property test of the body rewrite."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.errors import RouterError
from router.protocols import RouteError, call_of
from router.protocols.jsonbody import replace_value, value_span
from router.protocols.openai import OPENAI


@pytest.mark.parametrize(
    ("target", "protocol", "model", "pinned", "tail", "local"),
    [
        ("/models/m/x?q=1", "rest", "m", None, "/x?q=1", None),
        ("/models/m/versions/v2/x", "rest", "m", "v2", "/x", None),
        ("/feedback/m", "rest", "m", None, "/", "feedback"),
        ("/v2", "oip", None, None, "", "server"),
        ("/v2/", "oip", None, None, "", "server"),
        ("/v2/health/live", "oip", None, None, "health/live", "live"),
        ("/v2/health/ready", "oip", None, None, "health/ready", "ready"),
        ("/v2/models/m", "oip", "m", None, "", None),
        ("/v2/models/m/ready", "oip", "m", None, "/ready", None),
        ("/v2/models/m/versions/v1/infer?a=%20b", "oip", "m", "v1", "/infer?a=%20b", None),
        ("/v2/models/m/config", "oip", "m", None, "/config", None),
        ("/v1/models/m", "tfserving", "m", None, "", None),
        ("/v1/models/m:predict", "tfserving", "m", None, ":predict", None),
        ("/v1/models/m/metadata", "tfserving", "m", None, "/metadata", None),
        ("/v1/models/m/versions/3:classify", "tfserving", "m", "3", ":classify", None),
        ("/v1/models/m/labels/stable:regress?x", "tfserving", "m", "stable", ":regress?x", None),
        ("/v1/models/m/versions/3/metadata", "tfserving", "m", "3", "/metadata", None),
        ("/v1/models/m:explain", "tfserving", "m", None, ":explain", None),
        ("/v1/models", "openai", None, None, "/v1/models", "models"),
        ("/v1/chat/completions", "openai", None, None, "/v1/chat/completions", None),
        ("/v1/completions?v=1", "openai", None, None, "/v1/completions?v=1", None),
        ("/v1/embeddings", "openai", None, None, "/v1/embeddings", None),
    ],
)  # fmt: skip
def test_each_protocol_reads_its_targets(
    target: str,
    protocol: str,
    model: str | None,
    pinned: str | None,
    tail: str,
    local: str | None,
) -> None:
    call = call_of(target)
    assert (call.protocol, call.model, call.pinned, call.tail, call.local) == (
        protocol,
        model,
        pinned,
        tail,
        local,
    )


@pytest.mark.parametrize(
    ("target", "protocol", "code"),
    [
        ("/v2/models", "oip", "not_found"),
        ("/v2/repository/index", "oip", "not_found"),
        ("/v2/models/m/../x", "oip", "bad_path"),
        ("/v2/models/m/%2e%2e/x", "oip", "bad_path"),
        ("/v1/models/m:launch", "tfserving", "not_found"),
        ("/v1/models/m/versions", "tfserving", "not_found"),
        ("/v1/models/m/x/y/z", "tfserving", "not_found"),
        ("/v1/responses", "openai", "not_found"),
        ("/v1/chat/completions/..", "openai", "bad_path"),
        ("/nothing", "rest", "not_found"),
        ("/v22/models/m/infer", "rest", "not_found"),
    ],
)
def test_targets_that_name_nothing_are_refused_in_their_protocols_shape(
    target: str, protocol: str, code: str
) -> None:
    with pytest.raises(RouteError) as caught:
        call_of(target)
    assert (caught.value.adapter.name, caught.value.code) == (protocol, code)


@pytest.mark.parametrize(
    ("body", "model", "pinned"),
    [
        (b'{"model": "llm"}', "llm", None),
        (b'{"model": "llm:v2", "messages": []}', "llm", "v2"),
        (b'{"model": "llm:"}', "llm", None),
        (b'{"model": "l\\u006cm"}', "llm", None),
    ],
)
def test_the_openai_body_names_the_model_and_may_pin(
    body: bytes, model: str, pinned: str | None
) -> None:
    assert OPENAI.model_of(body) == (model, pinned)


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"model": 3}', b'{"model": ""}', b'{"messages": []}', b"null"],
)
def test_a_body_without_a_string_model_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(RouterError) as caught:
        OPENAI.model_of(body)
    assert caught.value.code == "bad_request"
    assert '"model"' in caught.value.message


def test_the_rewrite_touches_only_the_models_value() -> None:
    body = (
        b'{ "messages" : [{"role":"user","content":"say \\"model\\": x"}],\n'
        b' "model":"llm:v2" ,"n":1.50}'
    )
    span = value_span(body, "model")
    assert span is not None
    out = replace_value(body, span, "meta-llama/Llama-3")
    assert out == body.replace(b'"llm:v2"', b'"meta-llama/Llama-3"')


def test_the_last_of_repeated_keys_is_the_one_rewritten_as_orjson_reads_it() -> None:
    body = b'{"model": "a", "x": {"model": "inner"}, "model": "b"}'
    span = value_span(body, "model")
    assert span is not None
    assert body[span[0] : span[1]] == b'"b"'


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    before=st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    after=st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    named=st.text(min_size=1),
    wanted=st.text(min_size=1),
    indent=st.booleans(),
)
def test_any_body_keeps_every_other_value(
    before: dict[str, Any], after: dict[str, Any], named: str, wanted: str, indent: bool
) -> None:
    before.pop("model", None)
    after.pop("model", None)
    document = {**before, "model": named, **{k: v for k, v in after.items() if k not in before}}
    body = orjson.dumps(document, option=orjson.OPT_INDENT_2 if indent else 0)
    span = value_span(body, "model")
    assert span is not None
    out = replace_value(body, span, wanted)
    assert orjson.loads(out) == {**document, "model": wanted}
    # Only the value's bytes changed.
    assert out[: span[0]] == body[: span[0]]
    assert out[len(out) - (len(body) - span[1]) :] == body[span[1] :]
