"""An OpenAI-compatible example backend, as vLLM, TGI or llama.cpp serve one model:

    python -m backends.llm --port 9101 --model llama-3-8b-v1 [--token-delay-ms 20]

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``, ``GET /v1/models``
and ``GET /health``. It serves ONE model name, given at creation, and refuses any other
``"model"`` with 404 in vLLM's error shape: a split between two such servers needs the
router to rewrite the body's model name (contract section 11).

The answers are deterministic, no model behind them: a chat answer is the served model's
name and the last user message reversed (``"llama-3-8b-v1: olleh"``), a completion the same
on the prompt, an embedding a unit vector drawn from a hash of the text. A token is a word
with the spaces after it, so the tokens put together are the text; ``usage`` counts them.
``"stream": true`` answers as OpenAI does, one server-sent event per token
(``data: {chat.completion.chunk}``), then ``data: [DONE]``; ``token_delay_ms`` pauses
between tokens (never before the first), so time to first token can be measured apart from
the rest of the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import re
import struct
import sys
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from backends.__main__ import _milliseconds, _port

SERVED_KEY = web.AppKey("served_model", str)
DELAY_KEY = web.AppKey("token_delay_s", float)
IDS_KEY: web.AppKey[itertools.count[int]] = web.AppKey("completion_ids")
CREATED = 1_767_225_600  # 2026-01-01: a fixed `created`, so answers repeat to the byte
EMBEDDING_SIZE = 16
# An event of a streamed answer, and whether the token delay comes before it.
Event = tuple[bool, dict[str, Any]]
_TOKEN = re.compile(r"\s*\S+\s*|\s+")


class OpenAIError(Exception):
    """An error answered in the OpenAI shape that vLLM uses."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.param = status, kind, message, param

    def response(self) -> web.Response:
        error = {"message": self.message, "type": self.kind, "param": self.param}
        return web.json_response({"error": {**error, "code": self.status}}, status=self.status)


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, "BadRequestError", message, param)


def create_app(model: str, token_delay_ms: float = 0.0) -> web.Application:
    """The backend serving the model named ``model``, pausing ``token_delay_ms`` between
    streamed tokens."""
    if not model:
        raise ValueError("the served model needs a name")
    if not 0.0 <= token_delay_ms < float("inf"):
        raise ValueError(f"token_delay_ms must be a finite number >= 0, got {token_delay_ms!r}")
    app = web.Application()
    app[SERVED_KEY] = model
    app[DELAY_KEY] = token_delay_ms / 1000
    app[IDS_KEY] = itertools.count(1)
    app.router.add_post("/v1/chat/completions", handle_chat)
    app.router.add_post("/v1/completions", handle_completion)
    app.router.add_post("/v1/embeddings", handle_embeddings)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/health", handle_health)
    return app


def _new_id(app: web.Application) -> int:
    ids = app[IDS_KEY]  # (a variable: mypy cannot read the key's type inside next())
    return next(ids)


def tokens(text: str) -> list[str]:
    """``text`` cut into words, each with the spaces after it; they add up to ``text``."""
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class Answer:
    """One choice's tokens, and why it ended (``"length"`` if max_tokens cut it)."""

    tokens: list[str]
    finish_reason: str

    @classmethod
    def of(cls, text: str, max_tokens: int | None) -> Answer:
        pieces = tokens(text)
        if max_tokens is not None and len(pieces) > max_tokens:
            return cls(pieces[:max_tokens], "length")
        return cls(pieces, "stop")

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


async def _read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a request, its model checked to be the one served here."""
    try:
        body = json.loads(await request.read())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise bad_request(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    served, named = request.app[SERVED_KEY], body.get("model")
    if not isinstance(named, str):
        raise bad_request('the request body needs a string "model"', "model")
    if named != served:
        raise OpenAIError(404, "NotFoundError", f"The model `{named}` does not exist.")
    return body


def _max_tokens(body: dict[str, Any]) -> int | None:
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (type(limit) is not int or limit < 1):
        raise bad_request(f"max_tokens must be an integer >= 1, got {limit!r}", "max_tokens")
    return limit


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream?, include usage in a last chunk?)"""
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return body.get("stream") is True, usage


def _text_of(content: Any) -> str:
    """A message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request('"messages" must be a non-empty list', "messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise bad_request('each of "messages" must be an object with a string "role"', "messages")
    return messages


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def handle_chat(request: web.Request) -> web.StreamResponse:
    try:
        body = await _read_body(request)
        messages = _messages(body)
        limit, (streamed, usage) = _max_tokens(body), _stream(body)
    except OpenAIError as exc:
        return exc.response()
    served = request.app[SERVED_KEY]
    said = [_text_of(m.get("content")) for m in messages if m["role"] == "user"]
    answer = Answer.of(f"{served}: {said[-1][::-1] if said else ''}", limit)
    prompt = sum(len(tokens(_text_of(m.get("content")))) for m in messages)
    head = {
        "id": f"chatcmpl-{_new_id(request.app)}",
        "created": CREATED,
        "model": served,
    }
    if not streamed:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
        return web.json_response(
            {
                **head,
                "object": "chat.completion",
                "choices": [choice],
                "usage": _usage(prompt, answer.size),
            }
        )
    head["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**head, "choices": [choice]}

    events = [(False, chunk({"role": "assistant", "content": ""}))]
    events += [(i > 0, chunk({"content": token})) for i, token in enumerate(answer.tokens)]
    events.append((False, chunk({}, answer.finish_reason)))
    if usage:
        events.append((False, {**head, "choices": [], "usage": _usage(prompt, answer.size)}))
    return await _send_events(request, events)


def _prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise bad_request('"prompt" must be a string or a non-empty list of strings', "prompt")


async def handle_completion(request: web.Request) -> web.StreamResponse:
    try:
        body = await _read_body(request)
        prompts = _prompts(body)
        limit, (streamed, usage) = _max_tokens(body), _stream(body)
    except OpenAIError as exc:
        return exc.response()
    served = request.app[SERVED_KEY]
    answers = [Answer.of(f"{served}: {prompt[::-1]}", limit) for prompt in prompts]
    counts = _usage(sum(len(tokens(p)) for p in prompts), sum(a.size for a in answers))
    head = {
        "id": f"cmpl-{_new_id(request.app)}",
        "object": "text_completion",
        "created": CREATED,
        "model": served,
    }

    def choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

    if not streamed:
        choices = [choice(i, a.text, a.finish_reason) for i, a in enumerate(answers)]
        return web.json_response({**head, "choices": choices, "usage": counts})
    events: list[Event] = []
    for i, answer in enumerate(answers):
        events += [(bool(events), {**head, "choices": [choice(i, t, None)]}) for t in answer.tokens]
        events.append((False, {**head, "choices": [choice(i, "", answer.finish_reason)]}))
    if usage:
        events.append((False, {**head, "choices": [], "usage": counts}))
    return await _send_events(request, events)


async def _send_events(request: web.Request, events: list[Event]) -> web.StreamResponse:
    """Stream ``events`` as server-sent events, then ``data: [DONE]``; the app's token delay
    comes before each event marked to be paused for (every token but the first)."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    pause = request.app[DELAY_KEY]
    for paused, event in events:
        if paused and pause > 0:
            await asyncio.sleep(pause)
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def embedding(text: str, size: int) -> list[float]:
    """A unit vector of ``size`` floats drawn from a hash of ``text``: equal texts, equal
    vectors."""
    raw = hashlib.shake_256(text.encode()).digest(2 * size)
    values = [v / 32768 - 1 for v in struct.unpack(f"<{size}H", raw)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    # Rounded through float32, as the base64 encoding sends them.
    return list(struct.unpack(f"<{size}f", struct.pack(f"<{size}f", *(v / norm for v in values))))


def _inputs(body: dict[str, Any]) -> list[str]:
    given = body.get("input")
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given and all(isinstance(t, str) for t in given):
        return given
    raise bad_request('"input" must be a string or a non-empty list of strings', "input")


async def handle_embeddings(request: web.Request) -> web.Response:
    try:
        body = await _read_body(request)
        texts = _inputs(body)
        size = body.get("dimensions", EMBEDDING_SIZE)
        if type(size) is not int or not 1 <= size <= 4096:
            raise bad_request(f"dimensions must be an integer from 1 to 4096, got {size!r}")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise bad_request(f'encoding_format must be "float" or "base64", got {encoding!r}')
    except OpenAIError as exc:
        return exc.response()
    data = []
    for i, text in enumerate(texts):
        vector: list[float] | str = embedding(text, size)
        if encoding == "base64":  # what the openai SDK asks for unless told otherwise
            vector = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    prompt = sum(len(tokens(t)) for t in texts)
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": request.app[SERVED_KEY],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
    )


async def handle_models(request: web.Request) -> web.Response:
    model = {
        "id": request.app[SERVED_KEY],
        "object": "model",
        "created": CREATED,
        "owned_by": "model-router-examples",
    }
    return web.json_response({"object": "list", "data": [model]})


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "model": request.app[SERVED_KEY]})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backends.llm",
        description="Serve one model name over an OpenAI-compatible API, with canned answers.",
    )
    parser.add_argument("--model", required=True, help="the one model name served")
    parser.add_argument("--port", required=True, type=_port, help="TCP port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--token-delay-ms",
        type=_milliseconds,
        default=0.0,
        metavar="N",
        help="pause between streamed tokens, never before the first (default 0)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then return 0; return 1 if the port cannot be bound."""
    args = parse_args(argv)
    app = create_app(args.model, args.token_delay_ms)
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 literal
    ready = f"llm backend {args.model} listening on http://{host}:{args.port}"

    def announce(_banner: str) -> None:
        print(ready, flush=True)  # in place of aiohttp's banner; see backends/__main__.py

    try:
        web.run_app(app, host=args.host, port=args.port, print=announce, access_log=None)
    except OSError as exc:
        print(
            f"llm backend cannot listen on {args.host}:{args.port}: {exc.strerror}; "
            "stop whatever holds the port or pass another --port",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
