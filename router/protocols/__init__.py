"""The protocols the public port speaks (contract section 11), one adapter each: the
router's own `/models/...` (`rest.py`), the Open Inference Protocol v2 (`oip.py`), TF
Serving / KServe v1 (`tfserving.py`) and OpenAI-compatible APIs (`openai.py`).

`call_of(target)` reads a request target into a `Call`; a new protocol is one module and
a branch here.
"""

from __future__ import annotations

from router.protocols.base import Adapter, Call, ProtocolName, RouteError
from router.protocols.oip import OIP
from router.protocols.openai import OPENAI
from router.protocols.rest import REST
from router.protocols.tfserving import TF_SERVING
from router.routing.paths import PathError, check_path, not_found, origin_form

ADAPTERS: dict[str, Adapter] = {a.name: a for a in (REST, OIP, TF_SERVING, OPENAI)}

__all__ = ["ADAPTERS", "Adapter", "Call", "ProtocolName", "RouteError", "adapter_of", "call_of"]


def adapter_of(target: str) -> Adapter:
    """The protocol a target's path belongs to, by its first segments."""
    if target.startswith("/models/"):  # the common case, at once
        return REST
    path = origin_form(target)
    if path.startswith("/v2") and path[3:4] in ("", "/", "?"):
        return OIP
    if path.startswith("/v1/"):
        return TF_SERVING if path.startswith("/v1/models/") else OPENAI
    return REST


def call_of(target: str) -> Call:
    """What the target asks for; RouteError (`bad_path`, `not_found`) in its protocol's
    shape when it names nothing."""
    adapter = REST if target.startswith("/models/") else adapter_of(target)
    if adapter is REST:
        return REST.call(target)
    path, has_query, query = origin_form(target).partition("?")
    segments = path.split("/")
    named = segments[3] if adapter is not OPENAI and len(segments) > 3 else None
    try:
        check_path(path, segments, named)
    except PathError as exc:
        raise RouteError(exc, None, adapter) from None
    query = has_query + query
    call: Call | None
    if adapter is OIP:
        call = OIP.call(path, query)
    elif adapter is TF_SERVING:
        call = TF_SERVING.call(segments[3:], query)
    else:
        call = OPENAI.call(path, query)
    if call is None:
        raise RouteError(not_found(path), None, adapter)
    return call
