"""Extract the raw cases of three public HTTP/1.1 suites into bench/conformance/cases.json.

    python bench/conformance/extract_cases.py H1SPEC_GIT DESYNC_GIT PROBE_GIT [-o cases.json]

Each argument is a bare git directory (a clone or mirror) of, in order,
uNetworking/h1spec, aws/http-desync-guardian and MDA2AV/Http11Probe; the file is read at
HEAD. bench/conformance_suites.py sends the cases; this script is only needed to refresh
them. Every case becomes a payload (segments of text, latin-1 code points are bytes) and an
ordered list of rules `[condition, verdict]`: the first rule whose condition holds gives
the verdict, none gives "fail". The condition language is in conformance_suites.py.

- h1spec (http_test.ts): the status ranges, the echoed body on a 200, or "no answer";
- http-desync-guardian (tests/*.yaml): the request is built as the suite's own test
  harness builds it (`METHOD URI VERSION`, `name: value` lines), with a `Host` added when
  the case has none (the suite does not care, a server must) and a body that its framing
  headers announce, so that a server reading the body does not wait. Its tiers become
  expectations: Compliant served, Acceptable served or refused, Ambiguous refused or
  served on a connection then closed, Severe refused (400 and close);
- Http11Probe (C#): the single-request cases of the Compliance, Smuggling, MalformedInput
  and Normalization suites. Payload factories and validators are C# lambdas; the small
  subset of C# they use is read here (string literals with C#'s escapes, `new string`,
  byte concatenation) and the if/return chains of the validators are turned into rules.
  Validators that look at headers or bodies are written out by hand in MANUAL_RULES.
  Sequence cases (several requests on one connection, step-dependent validators), and the
  Cookie and Capabilities suites (the origin application's cookie and cache semantics) are
  left out.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

HOST = "{HOST}"  # replaced by the target's host:port when sent
Segment = str | dict[str, Any]  # text, or {"repeat"|"numbered": text, "times": n}
Rule = list[str]  # [condition, verdict]


@dataclass
class Case:
    suite: str
    id: str
    description: str
    level: str  # must, should, may, ambiguous, n/a
    payload: list[Segment]
    rules: list[Rule]
    expected: str
    source: str
    scored: bool = True
    notes: list[str] = field(default_factory=list)


def git_show(git_dir: str, path: str) -> str:
    argv = ["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"]
    return subprocess.run(argv, capture_output=True, check=True).stdout.decode("utf-8")


def git_ls(git_dir: str, prefix: str) -> list[str]:
    argv = ["git", f"--git-dir={git_dir}", "ls-tree", "--name-only", "HEAD", prefix]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def git_head(git_dir: str) -> str:
    argv = ["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


# ---------------------------------------------------------------- h1spec


def js_unescape(text: str) -> str:
    simple = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", '"': '"', "\\": "\\", "'": "'"}

    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        return chr(int(esc[1:], 16)) if esc[0] == "x" else simple[esc]

    return re.sub(r"\\(x[0-9a-fA-F]{2}|.)", one, text)


def h1spec_rules(block: str) -> tuple[list[Rule], str]:
    if "expectedTimeout: true" in block:
        return [["timeout", "pass"]], "no answer (the server waits for the rest)"
    ranges = re.findall(r"\[(-?\d+),\s*(-?\d+)\]", block.split("expectedStatus:")[1])
    rules: list[Rule] = []
    body = re.search(r'expectedBody:\s*"((?:[^"\\]|\\.)*)"', block)
    if body:
        rules.append([f"200&!body:{js_unescape(body.group(1))}", "fail"])
    rules += [[f"{a}-{b}", "pass"] for a, b in ranges]
    text = " or ".join(a if a == b else f"{a}-{b}" for a, b in ranges)
    return rules, text + (f" (200 echoes {body.group(1)!r})" if body else "")


def h1spec_cases(git_dir: str) -> list[Case]:
    src = git_show(git_dir, "http_test.ts")
    array = src.split("const testCases: TestCase[] = [", 1)[1].split("\n];", 1)[0]
    cases = []
    for block in re.findall(r"\{(.*?)\n    \}", array, re.S):
        request = re.search(r'request:\s*"((?:[^"\\]|\\.)*)"', block)
        name = re.search(r'description:\s*"([^"]*)"', block)
        if not (request and name):
            raise ValueError(f"a case without request or description: {block[:80]!r}")
        rules, text = h1spec_rules(block)
        payload: list[Segment] = [js_unescape(request.group(1))]
        cases.append(Case("h1spec", name.group(1), name.group(1), "must", payload, rules, text,
                          "http_test.ts"))  # fmt: skip
    return cases


# ---------------------------------------------------------------- http-desync-guardian

DESYNC_FILES = [  # tests/single-case.yaml repeats a case of another file, for debugging
    "rfc-compliant", "more-compliant-tests", "acceptable", "ambiguous", "edge-cases",
    "bad-header-characters", "severe", "uri-specific-test-cases", "real-life-test-cases",
]  # fmt: skip

DESYNC_TIERS: dict[str, tuple[str, list[Rule], str]] = {
    "Compliant": ("must", [["2xx", "pass"]], "2xx"),
    "Acceptable": ("may", [["2xx", "pass"], ["4xx|501|505", "pass"], ["none&closed", "pass"]],
                   "2xx, or a refusal (strictest mode)"),
    "Ambiguous": ("ambiguous",
                  [["none&closed", "pass"], ["4xx|5xx", "pass"], ["2xx&closed", "pass"]],
                  "4xx/5xx/close, or 2xx then close (no connection reuse)"),
    "Severe": ("must", [["none&closed", "pass"], ["4xx|5xx&closed", "pass"], ["4xx|5xx", "warn"]],
               "400 and close"),
}  # fmt: skip


def rust_unescape(text: str) -> str:
    """The suite harness's `unescape_value`: \\xHH, \\b, \\f, \\n, \\r, \\t, else the char."""
    simple = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] == "x":
            return chr(int(esc[1:], 16))
        return simple.get(esc, esc)

    return re.sub(r"\\(x[0-9a-fA-F]{2}|.)", one, text)


def desync_body(headers: list[tuple[str, str]]) -> list[Segment]:
    """The body the framing headers announce: an empty chunked body when chunked is the
    last coding of a Transfer-Encoding, else Content-Length bytes when it is one number."""
    te = [v for n, v in headers if n.strip().lower() == "transfer-encoding"]
    cl = [v.strip() for n, v in headers if n.strip().lower() == "content-length"]
    if te and te[-1].split(",")[-1].strip().lower() == "chunked":
        return ["0\r\n\r\n"]
    if len(cl) == 1 and cl[0].isdigit() and 0 < int(cl[0]) <= 16 << 20:
        return [{"repeat": "x", "times": int(cl[0])}]
    return []


def desync_payload(case: dict[str, Any]) -> tuple[list[Segment], list[str]]:
    fields = case.get("headers") or []
    headers = [(rust_unescape(h["name"]), rust_unescape(h["value"])) for h in fields]
    notes = []
    if not any(n.lower() == "host" for n, _ in headers):
        headers.insert(0, ("Host", HOST))
        notes.append("Host added")
    line = " ".join(rust_unescape(case[k]) for k in ("method", "uri", "version"))
    head = line + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    body = desync_body(headers)
    if body:
        notes.append("chunked body added" if body == ["0\r\n\r\n"] else "body added")
    # The harness builds a Rust String: code points above 0x7F go out as UTF-8.
    return concat([[head.encode("utf-8").decode("latin-1")], body]), notes


def desync_cases(git_dir: str) -> list[Case]:
    cases = []
    for name in DESYNC_FILES:
        path = f"tests/{name}.yaml"
        for item in yaml.load(git_show(git_dir, path), Loader=yaml.BaseLoader):
            tier = item["expected"]["tier"]
            level, rules, text = DESYNC_TIERS[tier]
            payload, notes = desync_payload(item)
            cases.append(Case("http-desync-guardian", item["name"], item["name"], level,
                              payload, rules, f"{tier} ({item['expected']['reason']}): {text}",
                              path, notes=notes))  # fmt: skip
    return cases


# ---------------------------------------------------------------- Http11Probe: C# text

PROBE_SUITES = ["Compliance", "Smuggling", "MalformedInput", "Normalization"]
PROBE_LEVELS = {"Must": "must", "Should": "should", "May": "may", "OughtTo": "should",
                "NotApplicable": "n/a"}  # fmt: skip


def skip_literal(src: str, i: int) -> int:
    """The index after the string, char literal or // comment starting at i, else i."""
    if src.startswith("//", i):
        return src.index("\n", i)
    quote = src[i]
    if quote not in "\"'":
        return i
    verbatim = quote == '"' and src[max(0, i - 2) : i].endswith("@")
    j = i + 1
    while src[j] != quote or (verbatim and src.startswith('""', j)):
        j += 2 if (src[j] == "\\" and not verbatim) or src.startswith('""', j) else 1
    return j + 1


def matching(src: str, i: int) -> int:
    """The index of the bracket closing the one at i, skipping literals and comments."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    stack = [pairs[src[i]]]
    j = i + 1
    while stack:
        k = skip_literal(src, j)
        if k != j:
            j = k
            continue
        if src[j] in pairs:
            stack.append(pairs[src[j]])
        elif src[j] == stack[-1]:
            stack.pop()
        j += 1
    return j - 1


def until_comma(src: str, i: int) -> str:
    """The expression starting at i up to the first comma or closing bracket at its depth."""
    j = i
    while src[j] not in ",}]":
        k = skip_literal(src, j)
        j = matching(src, j) + 1 if k == j and src[j] in "{([" else max(k, j + 1)
    return src[i:j].strip()


def blocks_after(src: str, pattern: str) -> Iterator[str]:
    for m in re.finditer(pattern, src):
        start = src.index("{", m.end() - 1)
        yield src[start : matching(src, start) + 1]


def field_text(block: str, name: str) -> str | None:
    m = re.search(rf"\b{name} = ", block)
    return until_comma(block, m.end()) if m else None


CS_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "a": "\a", "b": "\b", "f": "\f",
              "v": "\v", '"': '"', "'": "'", "\\": "\\", "{": "{", "}": "}"}  # fmt: skip


def cs_escape(text: str, i: int) -> tuple[str, int]:
    """C#'s escape at text[i] (after the backslash): \\x takes one to four hex digits."""
    c = text[i]
    if c == "x":
        m = re.match(r"[0-9a-fA-F]{1,4}", text[i + 1 :])
        assert m, text
        return chr(int(m.group(0), 16)), i + 1 + len(m.group(0))
    if c == "u":
        return chr(int(text[i + 1 : i + 5], 16)), i + 5
    return CS_ESCAPES[c], i + 1


def ascii_bytes(value: list[Segment]) -> list[Segment]:
    """Encoding.ASCII.GetBytes: a code point above 0x7F becomes '?'."""
    return [re.sub(r"[^\x00-\x7f]", "?", s) if isinstance(s, str) else s for s in value]


def concat(parts: list[list[Segment]]) -> list[Segment]:
    out: list[Segment] = []
    for seg in (s for part in parts for s in part):
        if isinstance(seg, str) and out and isinstance(out[-1], str):
            out[-1] += seg
        elif seg != "":
            out.append(seg)
    return out


class CsExpr:
    """Evaluates the C# expressions the payload factories are written in."""

    def __init__(self, text: str, env: dict[str, Any]) -> None:
        self.text, self.env, self.i = text, env, 0

    def fail(self) -> ValueError:
        return ValueError(f"unsupported C# at {self.text[self.i : self.i + 60]!r}")

    def skip_space(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def expr(self) -> Any:
        parts = [self.term()]
        self.skip_space()
        while self.text.startswith("+", self.i):
            self.i += 1
            parts.append(self.term())
            self.skip_space()
        if all(isinstance(p, int) for p in parts):
            return sum(parts)
        return concat([[str(p)] if isinstance(p, int) else p for p in parts])

    def term(self) -> Any:
        self.skip_space()
        rest = self.text[self.i :]
        for prefix, method in self.CALLS.items():
            if rest.startswith(prefix):
                self.i += len(prefix)
                value = method(self)
                self.expect(")")
                return value
        if rest.startswith(('$"', '"')):
            return self.string()
        if rest.startswith("["):
            end = matching(self.text, self.i)
            values = self.text[self.i + 1 : end].split(",")
            self.i = end + 1
            return ["".join(chr(int(v, 0)) for v in values if v.strip())]
        m = re.match(r"[0-9][0-9_]*|[A-Za-z_]\w*", rest)
        if not m:
            raise self.fail()
        self.i += m.end()
        if m.group(0)[0].isdigit():
            return int(m.group(0).replace("_", ""))
        if m.group(0) not in self.env:
            raise self.fail()
        return self.env[m.group(0)]

    def expect(self, token: str) -> None:
        self.skip_space()
        if not self.text.startswith(token, self.i):
            raise self.fail()
        self.i += len(token)

    def new_string(self) -> list[Segment]:
        char = self.char()
        self.expect(",")
        count = self.expr()
        return [{"repeat": char, "times": count}] if count > 64 else [char * count]

    def char(self) -> str:
        self.skip_space()
        end = skip_literal(self.text, self.i)
        body = self.text[self.i + 1 : end - 1]
        self.i = end
        return cs_escape(body, 1)[0] if body.startswith("\\") else body

    def byte_count(self) -> int:
        value = self.expr()
        return sum(len(s) if isinstance(s, str) else s["times"] for s in value)

    CALLS: ClassVar[dict[str, Callable[[CsExpr], Any]]] = {
        "new string(": new_string,
        "Encoding.ASCII.GetBytes(": lambda self: ascii_bytes(self.expr()),
        "MakeRequest(": lambda self: ascii_bytes(self.expr()),
        "Encoding.ASCII.GetByteCount(": byte_count,
    }

    def string(self) -> list[Segment]:
        interpolated = self.text[self.i] == "$"
        self.i += 2 if interpolated else 1
        parts: list[list[Segment]] = []
        text = ""
        while self.text[self.i] != '"':
            c = self.text[self.i]
            if c == "\\":
                char, self.i = cs_escape(self.text, self.i + 1)
                text += char
            elif interpolated and self.text.startswith(("{{", "}}"), self.i):
                text, self.i = text + c, self.i + 2
            elif interpolated and c == "{":
                end = self.text.index("}", self.i)
                parts.append([text])
                parts.append(self.hole(self.text[self.i + 1 : end]))
                text, self.i = "", end + 1
            else:
                text, self.i = text + c, self.i + 1
        self.i += 1
        return concat([*parts, [text]])

    def hole(self, name: str) -> list[Segment]:
        if name == "ctx.HostHeader":
            return [HOST]
        value = self.env.get(name)
        if value is None:
            raise ValueError(f"unknown hole {{{name}}}")
        return [str(value)] if isinstance(value, int) else list(value)


def statements(body: str) -> list[str]:
    """The statements of a C# block's body, split at top-level semicolons."""
    out, start, j = [], 0, 0
    while j < len(body):
        k = skip_literal(body, j)
        if k != j:
            j = k
        elif body[j] in "{([":
            j = matching(body, j) + 1
        elif body[j] == ";":
            out.append(body[start:j].strip())
            start = j = j + 1
        else:
            j += 1
    return [re.sub(r"^(//[^\n]*\n\s*)+", "", s) for s in out if s]


DECLARATION = re.compile(r"(?:var|const string|string|byte\[\])\s+(\w+)\s*=\s*(.*)", re.S)


def run_factory(text: str) -> list[Segment]:
    """The bytes a PayloadFactory lambda (`ctx => ...`) returns."""
    body = re.sub(r"^(ctx|_)\s*=>\s*", "", text.strip())
    if not body.startswith("{"):
        return list(CsExpr(body, {}).expr())
    env: dict[str, Any] = {}
    for stmt in statements(body[1:-1]):
        if m := DECLARATION.fullmatch(stmt):
            if m.group(2).startswith("new byte["):
                env[m.group(1)] = []  # filled by CopyTo, in order
            else:
                env[m.group(1)] = CsExpr(m.group(2), env).expr()
        elif m := re.fullmatch(r"(\w+)\.CopyTo\((\w+),.*\)", stmt, re.S):
            env[m.group(2)] = concat([env[m.group(2)], env[m.group(1)]])
        elif stmt.startswith("return "):
            return list(CsExpr(stmt[7:], env).expr())
        else:
            raise ValueError(f"unsupported statement {stmt[:60]!r}")
    raise ValueError("no return")


def garbage() -> list[Segment]:
    """MAL-BINARY-GARBAGE sends 256 bytes of .NET's Random(42); any 256 random bytes do."""
    return ["".join(chr(b) for b in random.Random(42).randbytes(256))]


SPECIAL_PAYLOADS: dict[str, Callable[[], list[Segment]]] = {
    "MAL-BINARY-GARBAGE": garbage,
    "MAL-MANY-HEADERS": lambda: [f"GET / HTTP/1.1\r\nHost: {HOST}\r\n",
                                 {"numbered": "X-H-{i}: value\r\n", "times": 10_000}, "\r\n"],
    "MAL-RANGE-OVERLAPPING": lambda: [f"GET / HTTP/1.1\r\nHost: {HOST}\r\nRange: bytes="
                                      + ",".join(["0-"] * 1000) + "\r\n\r\n"],
}  # fmt: skip


# ---------------------------------------------------------------- Http11Probe: validators

STATES = {"ClosedByServer": "closed", "TimedOut": "timeout", "Open": "open"}
VERDICTS = {"Pass": "pass", "Warn": "warn", "Fail": "fail"}


def status_pattern(text: str) -> str:
    """A C# pattern on StatusCode (`400 or 501`, `>= 200 and < 300`, `not (...)`)."""
    text = text.strip()
    if m := re.fullmatch(r"not \((.*)\)", text):
        return "!" + status_pattern(m.group(1))
    items = []
    for alt in re.split(r"\s+or\s+", text):
        if m := re.fullmatch(r">= (\d+) and < (\d+)", alt.strip()):
            items.append(f"{m.group(1)}-{int(m.group(2)) - 1}")
        elif re.fullmatch(r"\d+", alt.strip()):
            items.append(alt.strip())
        else:
            raise ValueError(f"unsupported pattern {text!r}")
    return "|".join(items)


CONDITIONS: list[tuple[str, Any]] = [
    (r"response is null", lambda m: "none"),
    (r"response is not null", lambda m: "resp"),
    (r"state == ConnectionState\.(\w+)", lambda m: STATES[m.group(1)]),
    (r"state is ((?:ConnectionState\.\w+(?: or )?)+)",
     lambda m: "|".join(STATES[s] for s in re.findall(r"ConnectionState\.(\w+)", m.group(1)))),
    (r"response\.StatusCode == (\d+)", lambda m: m.group(1)),
    (r"response\.StatusCode != (\d+)", lambda m: "!" + m.group(1)),
    (r"response\.StatusCode >= (\d+)", lambda m: f"{m.group(1)}-999"),
    (r"response\.StatusCode is (.+)", lambda m: status_pattern(m.group(1))),
]  # fmt: skip


def condition(text: str) -> list[str]:
    """A C# condition as the terms of a conjunction."""
    terms = []
    for part in re.split(r"\s*&&\s*", text.strip()):
        for pattern, make in CONDITIONS:
            if m := re.fullmatch(pattern, part.strip()):
                terms.append(make(m))
                break
        else:
            raise ValueError(f"unsupported condition {part!r}")
    return terms


def verdict_rules(expr: str, terms: list[str]) -> list[Rule]:
    """`TestVerdict.X`, or `cond ? TestVerdict.X : TestVerdict.Y`, under `terms`."""
    expr = expr.strip()
    if m := re.fullmatch(r"TestVerdict\.(\w+)", expr):
        return [["&".join(terms) or "*", VERDICTS[m.group(1)]]]
    if m := re.fullmatch(r"(.+?)\s*\?\s*TestVerdict\.(\w+)\s*:\s*TestVerdict\.(\w+)", expr, re.S):
        inner = "&".join(terms + condition(m.group(1)))
        return [[inner, VERDICTS[m.group(2)]], ["&".join(terms) or "*", VERDICTS[m.group(3)]]]
    raise ValueError(f"unsupported verdict {expr[:60]!r}")


def chain_rules(body: str, terms: list[str]) -> list[Rule]:
    """The rules of an if/return chain; the first that matches wins, as in C#."""
    rules: list[Rule] = []
    for stmt in statements(body):
        if stmt.startswith("if"):
            start = stmt.index("(")
            end = matching(stmt, start)
            inner = terms + condition(stmt[start + 1 : end])
            rest = stmt[end + 1 :].strip()
            if rest.startswith("{"):
                close = matching(rest, 0)
                rules += chain_rules(rest[1:close], inner)
                rules += chain_rules(rest[close + 1 :] + ";", terms)
            elif rest.startswith("return "):
                rules += verdict_rules(rest[7:], inner)
            else:
                raise ValueError(f"unsupported if {stmt[:60]!r}")
        elif stmt.startswith("return "):
            rules += verdict_rules(stmt[7:], terms)
        else:
            raise ValueError(f"unsupported statement {stmt[:60]!r}")
    return rules


def echo_rules(body: str) -> list[Rule]:
    """EchoValidator: a 2xx whose body is the request's body, or a static "OK"."""
    return [["none", "fail"], ["!2xx", "fail"], [f"echo:{body}", "pass"], ["*", "fail"]]


def normalization_rules(standard: str, malformed: str, value: str, exact: bool) -> list[Rule]:
    """MakeValidator / MakeCaseValidator: refused or dropped passes, the echo backend seeing
    the standard name with the probe's value fails, seeing the name as sent warns."""
    seen = "echoed-exact" if exact else "echoed"
    return [["none&closed", "pass"], ["none", "fail"], ["400-999", "pass"],
            [f"2xx&{seen}:{standard}={value}", "fail"],
            [f"2xx&{seen}:{malformed}={value}", "warn"], ["2xx", "pass"]]  # fmt: skip


# Validators that read headers or bodies, written out from the C# by hand.
MANUAL_RULES: dict[str, list[Rule]] = {
    "COMP-CHUNKED-EXTENSION": [["none&closed", "warn"], ["none", "fail"], ["400", "warn"],
                               ["2xx&echo:hello", "pass"]],
    "COMP-HEAD-NO-BODY": [["2xx&empty-body", "pass"]],
    "COMP-405-ALLOW": [["none", "fail"], ["405&header:Allow", "pass"], ["405", "fail"],
                       ["*", "warn"]],
    "COMP-DATE-HEADER": [["2xx&header:Date", "pass"]],
    "COMP-DATE-FORMAT": [["none", "fail"], ["!2xx", "fail"], ["!header:Date", "warn"],
                         ["imf-date", "pass"], ["*", "warn"]],
    "COMP-NO-CL-IN-204": [["none", "fail"], ["204&header:Content-Length", "fail"],
                          ["204", "pass"], ["*", "warn"]],
    "COMP-OPTIONS-ALLOW": [["2xx&header:Allow", "pass"], ["2xx", "warn"]],
    "COMP-CONTENT-TYPE": [["2xx&header:Content-Type", "pass"], ["2xx", "warn"]],
    "COMP-TRACE-SENSITIVE": [["none&closed", "pass"], ["none", "fail"], ["405|501", "pass"],
                             ["2xx&body-has:secret-token-123", "warn"], ["2xx", "pass"]],
}  # fmt: skip


def simple_rules(block: str) -> tuple[list[Rule], str]:
    """ExpectedStatus and AllowConnectionClose, evaluated as ExpectedBehavior.Evaluate does:
    with AllowConnectionClose, no answer at all passes (a close or a timeout)."""
    status = field_text(block, "ExpectedStatus") or ""
    allow_close = "AllowConnectionClose = true" in block
    m = re.fullmatch(r"StatusCodeRange\.(Exact\((\d+)\)|Range(\dxx)|Range4xxOr5xx)", status)
    if not m:
        raise ValueError(f"unsupported ExpectedStatus {status!r}")
    pattern = m.group(2) or m.group(3) or "4xx|5xx"
    rules = [["none", "pass" if allow_close else "fail"], [pattern, "pass"]]
    return rules, pattern + (" or close" if allow_close else "")


def probe_rules(case_id: str, expected: str) -> tuple[list[Rule], str]:
    described = re.search(r'\bDescription = "([^"]*)"', expected)
    text = described.group(1) if described else ""
    validator = field_text(expected, "CustomValidator")
    if case_id in MANUAL_RULES:
        return MANUAL_RULES[case_id], text
    if validator is None:
        rules, simple = simple_rules(expected)
        return rules, text or simple
    if m := re.fullmatch(r'EchoValidator\("([^"]*)"\)', validator):
        return echo_rules(m.group(1)), text
    if m := re.fullmatch(r"Make(Case)?Validator\((.*)\)", validator, re.S):
        standard, malformed, value = (CsExpr(a, {}).expr()[0] for a in until_args(m.group(2)))
        return normalization_rules(standard, malformed, value, exact=bool(m.group(1))), text
    body = validator[validator.index("{") : matching(validator, validator.index("{")) + 1]
    return chain_rules(body[1:-1], []), text


def until_args(text: str) -> list[str]:
    args, i = [], 0
    while i < len(text):
        arg = until_comma(text + "]", i)
        args.append(arg)
        i += len(arg) + 1
        while i < len(text) and text[i] in ", \n":
            i += 1
    return args


def probe_case(block: str, suite: str) -> Case:
    def text(name: str, default: str) -> str:
        m = re.search(rf'\b{name} = "([^"]*)"', block)
        return m.group(1) if m else default

    case_id = text("Id", "")
    level = re.search(r"RfcLevel = RfcLevel\.(\w+)", block)
    factory = SPECIAL_PAYLOADS.get(case_id)
    payload = factory() if factory else run_factory(field_text(block, "PayloadFactory") or "")
    rules, expected = probe_rules(case_id, field_text(block, "Expected") or "")
    return Case("Http11Probe", case_id, text("Description", ""),
                PROBE_LEVELS[level.group(1) if level else "Must"], payload, rules, expected,
                f"src/Http11Probe/TestCases/Suites/{suite}Suite.cs",
                scored="Scored = false" not in block)  # fmt: skip


def probe_cases(git_dir: str) -> list[Case]:
    cases = []
    for suite in PROBE_SUITES:
        src = git_show(git_dir, f"src/Http11Probe/TestCases/Suites/{suite}Suite.cs")
        single = src.split("GetSequenceTestCases")[0]
        cases += [probe_case(block, suite) for block in blocks_after(single, r"new TestCase\s*\{")]
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("h1spec")
    parser.add_argument("desync")
    parser.add_argument("probe")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("cases.json"))
    args = parser.parse_args(argv)
    suites = {"h1spec": ("uNetworking/h1spec", args.h1spec, h1spec_cases),
              "http-desync-guardian": ("aws/http-desync-guardian", args.desync, desync_cases),
              "Http11Probe": ("MDA2AV/Http11Probe", args.probe, probe_cases)}  # fmt: skip
    sources, cases = {}, []
    for name, (repo, git_dir, extract) in suites.items():
        sources[name] = {"repository": repo, "commit": git_head(git_dir)}
        cases += extract(git_dir)
    # One case a line: a diff after a refresh shows which cases changed.
    lines = ",\n".join("  " + json.dumps(vars(c), ensure_ascii=True) for c in cases)
    head = json.dumps(sources, indent=1)
    args.output.write_text(f'{{\n "sources": {head},\n "cases": [\n{lines}\n ]\n}}\n')
    print(f"{len(cases)} cases written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
