"""What a reload takes away from the books kept per version (observe/removed.py): the
HTTP url's key and, for a version that answers gRPC, its gRPC address's key."""

from __future__ import annotations

from typing import Any

from router.config.validate import parse_table
from router.observe.health import grpc_key
from router.observe.removed import Removals


def table(versions: dict[str, dict[str, Any]]) -> Any:
    split = {name: 100 if i == 0 else 0 for i, name in enumerate(versions)}
    return parse_table({"models": {"m": {"versions": versions, "split": split}}})


def test_a_removed_or_moved_grpc_address_leaves_the_books() -> None:
    before = table(
        {
            "v1": {"url": "http://127.0.0.1:9001", "grpc_url": "127.0.0.1:9011"},
            "v2": {"url": "http://127.0.0.1:9002", "grpc_url": "127.0.0.1:9012"},
            "v3": {"grpc_url": "127.0.0.1:9013"},
        }
    )
    after = table(
        {
            "v1": {"url": "http://127.0.0.1:9001", "grpc_url": "127.0.0.1:9011"},
            "v2": {"url": "http://127.0.0.1:9002", "grpc_url": "127.0.0.1:9022"},
        }
    )
    removed = Removals(before).after(after, ["m"])
    assert sorted(removed.keys) == sorted(
        [
            grpc_key("m", "v2", "127.0.0.1:9012"),  # moved
            ("m", "v3", ""),  # removed: its (empty) url
            grpc_key("m", "v3", "127.0.0.1:9013"),
        ]
    )
    assert removed.versions == [("m", "v3")]
