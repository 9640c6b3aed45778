"""The OpenAI-compatible example backend, called with the openai SDK on loopback."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pytest_aiohttp import AiohttpServer

from backends.llm import EMBEDDING_SIZE, create_app, embedding, parse_args, tokens
from tests.support.running import serve

SERVED = "llama-3-8b-v1"
HELLO: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello there"},
]


async def start(aiohttp_server: AiohttpServer, token_delay_ms: float = 0.0) -> str:
    return await serve(aiohttp_server, create_app(SERVED, token_delay_ms))


@pytest.fixture
async def url(aiohttp_server: AiohttpServer) -> str:
    return await start(aiohttp_server)


@pytest.fixture
async def sdk(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    async with client:
        yield client


def test_tokens_add_up_to_the_text() -> None:
    for text in ("", "one", "  two words ", "a\nb  c"):
        assert "".join(tokens(text)) == text
    assert tokens("hello there world") == ["hello ", "there ", "world"]


async def test_chat_answers_the_model_name_and_the_reversed_message(
    sdk: openai.AsyncOpenAI,
) -> None:
    answer = await sdk.chat.completions.create(model=SERVED, messages=HELLO)
    assert answer.model == SERVED
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "llama-3-8b-v1: ereht olleh"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 3)
    assert answer.usage.total_tokens == 7


async def test_the_sync_client_works_too(url: str) -> None:
    def call() -> tuple[str | None, list[str]]:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
            plain = client.chat.completions.create(model=SERVED, messages=HELLO)
            stream = client.chat.completions.create(
                model=SERVED,
                messages=HELLO,
                stream=True,
            )
            with stream:
                pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
            return plain.choices[0].message.content, pieces

    content, pieces = await asyncio.to_thread(call)
    assert "".join(pieces) == content


async def test_a_streamed_chat_sends_a_chunk_per_token(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=SERVED,
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert [d.content for d in deltas[1:-1]] == ["llama-3-8b-v1: ", "ereht ", "olleh"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


async def test_the_stream_is_server_sent_events_ending_in_done(url: str) -> None:
    body = {"model": SERVED, "messages": HELLO, "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        text = (await response.read()).decode()
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: {") for event in events[:-2])
    decoded = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert len(decoded) == 1 + 3 + 1  # role, three tokens, finish


async def test_the_first_token_does_not_wait_for_the_token_delay(
    aiohttp_server: AiohttpServer,
) -> None:
    # A pause of a minute between tokens: the role and the first token must come anyway,
    # and the stream is given up after them (the server's handler is then cancelled).
    url = await start(aiohttp_server, token_delay_ms=60_000)
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused") as client:
        stream = await client.chat.completions.create(
            model=SERVED,
            messages=HELLO,
            stream=True,
        )
        async with stream:
            seen = []
            async for chunk in stream:
                seen.append(chunk.choices[0].delta)
                if chunk.choices[0].delta.content:
                    break
    assert [d.role for d in seen] == ["assistant", None]
    assert seen[-1].content == "llama-3-8b-v1: "


async def test_completions_plain_cut_and_streamed(sdk: openai.AsyncOpenAI) -> None:
    plain = await sdk.completions.create(model=SERVED, prompt=["abc def", "xyz"])
    assert [c.text for c in plain.choices] == ["llama-3-8b-v1: fed cba", "llama-3-8b-v1: zyx"]
    assert [c.index for c in plain.choices] == [0, 1]
    assert plain.usage is not None
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (3, 5)

    cut = await sdk.completions.create(model=SERVED, prompt="abc def", max_tokens=2)
    assert cut.choices[0].text == "llama-3-8b-v1: fed "
    assert cut.choices[0].finish_reason == "length"

    stream = await sdk.completions.create(model=SERVED, prompt="abc def", stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == "llama-3-8b-v1: fed cba"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_embeddings_base64_as_the_sdk_asks_and_float(sdk: openai.AsyncOpenAI) -> None:
    as_base64 = await sdk.embeddings.create(model=SERVED, input=["a b", "c"])
    as_float = await sdk.embeddings.create(
        model=SERVED, input=["a b", "c"], encoding_format="float"
    )
    vectors = [d.embedding for d in as_base64.data]
    assert vectors == [d.embedding for d in as_float.data]
    assert vectors == [embedding("a b", EMBEDDING_SIZE), embedding("c", EMBEDDING_SIZE)]
    assert vectors[0] != vectors[1]
    assert all(math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5) for vector in vectors)
    assert as_base64.usage.prompt_tokens == 3
    small = await sdk.embeddings.create(model=SERVED, input="a", dimensions=4)
    assert len(small.data[0].embedding) == 4


async def test_models_lists_the_one_served(sdk: openai.AsyncOpenAI) -> None:
    page = await sdk.models.list()
    assert [m.id for m in page.data] == [SERVED]


async def test_another_model_name_gets_vllms_404(sdk: openai.AsyncOpenAI, url: str) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        await sdk.chat.completions.create(model="llama-3-8b-v2", messages=HELLO)
    assert refused.value.body == {
        "message": "The model `llama-3-8b-v2` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    with pytest.raises(openai.NotFoundError):
        await sdk.completions.create(model="llama", prompt="x")
    with pytest.raises(openai.NotFoundError):
        await sdk.embeddings.create(model="llama", input="x")
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/completions", json={"model": "x", "prompt": "y"}) as response,
    ):
        assert response.status == 404
        assert (await response.json())["error"]["message"] == "The model `x` does not exist."


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/chat/completions", b"not json", "the request body is not JSON"),
        ("/v1/chat/completions", b"[]", "must be a JSON object"),
        ("/v1/chat/completions", {"messages": HELLO}, 'needs a string "model"'),
        ("/v1/chat/completions", {"model": SERVED}, '"messages" must be a non-empty list'),
        ("/v1/chat/completions", {"model": SERVED, "messages": [{}]}, 'a string "role"'),
        (
            "/v1/chat/completions",
            {"model": SERVED, "messages": HELLO, "max_tokens": 0},
            "max_tokens must be an integer >= 1, got 0",
        ),
        ("/v1/completions", {"model": SERVED, "prompt": 3}, '"prompt" must be a string'),
        ("/v1/embeddings", {"model": SERVED, "input": []}, '"input" must be a string'),
        ("/v1/embeddings", {"model": SERVED, "input": "a", "dimensions": 0}, "dimensions must"),
        ("/v1/embeddings", {"model": SERVED, "input": "a", "encoding_format": "hex"}, "base64"),
    ],
    ids=[
        "not-json",
        "array",
        "no-model",
        "no-messages",
        "no-role",
        "max-tokens-0",
        "prompt-number",
        "input-empty",
        "dimensions-0",
        "encoding-hex",
    ],
)
async def test_malformed_requests_get_400_in_the_openai_shape(
    url: str, path: str, body: Any, expected: str
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as http, http.post(url + path, data=data) as response:
        assert response.status == 400
        answer = await response.json()
    assert set(answer) == {"error"}
    assert answer["error"]["type"] == "BadRequestError"
    assert answer["error"]["code"] == 400
    assert expected in answer["error"]["message"]


def test_the_command_line_and_the_arguments() -> None:
    args = parse_args(["--model", SERVED, "--port", "9101"])
    assert (args.model, args.port, args.host, args.token_delay_ms) == (
        SERVED,
        9101,
        "127.0.0.1",
        0.0,
    )
    assert (
        parse_args(["--model", "m", "--port", "1", "--token-delay-ms", "20"]).token_delay_ms == 20
    )
    for bad in (
        ["--model", "m", "--port", "0"],
        ["--model", "m", "--port", "1", "--token-delay-ms", "-1"],
        ["--port", "1"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)
    with pytest.raises(ValueError, match="needs a name"):
        create_app("")
    with pytest.raises(ValueError, match="token_delay_ms"):
        create_app(SERVED, -1)
