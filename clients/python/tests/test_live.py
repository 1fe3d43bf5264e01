"""The client against the real gateway and local store (sdk/live_stack.py): write, query, fetch (a cache hit on the
second call), mint a key and use it; then the gateway dies and a simple vector query falls through to the store
(the same rows, perf.fallback == "turbopuffer_direct") while a fetch fails fast. The Go and TypeScript live tests
run the same scenario."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hevlayer import GatewayUnreachableError, Hevlayer, HevlayerError

LIVE_STACK = Path(__file__).resolve().parents[3] / "sdk" / "live_stack.py"
ROWS = [{"id": "a", "vector": [1.0, 0.0], "title": "one"}, {"id": "b", "vector": [0.8, 0.2], "title": "two"},
        {"id": "c", "vector": [0.0, 1.0], "title": "three"}]
QUERY = {"vector": [1.0, 0.0], "top_k": 2, "include_attributes": ["title"]}


class Stack:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(LIVE_STACK)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        assert line, "sdk/live_stack.py did not start"
        self.info: dict[str, str] = json.loads(line)

    def kill_gateway(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("kill-gateway\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "killed"

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.stop()


def _rows(result: Any) -> list[tuple[str, float, str]]:
    return [(r["id"], round(r["$dist"], 6), r["title"]) for r in result.rows]


def test_live_write_query_fetch_keys_then_fall_through(stack: Stack) -> None:
    ns = f"live-py-{uuid.uuid4().hex[:8]}"
    info = stack.info
    with Hevlayer(base_url=info["gateway"], api_key=info["key"], turbopuffer_api_url=info["store"],
                  turbopuffer_api_key=info["key"]) as client:
        written = client.write_namespace(ns, {"upsert_rows": ROWS, "distance_metric": "cosine_distance"})
        assert written.rows_affected == 3
        before = client.query_namespace(ns, QUERY, with_perf=True)
        assert [r[0] for r in _rows(before.data)] == ["a", "b"] and before.perf.fallback is None
        client.fetch_document(ns, "a", include_attributes=["title"])
        second = client.fetch_document(ns, "a", include_attributes=["title"], with_perf=True)
        assert second.perf.cache_status == "hit" and second.data.attributes == {"title": "one"}

        minted = client.mint_key({"name": "live-reader", "expiresAfter": "1h",
                                  "entitlements": {"vectorstore.default": {"scopes": ["read"], "namespaces": [ns]}}})
        with Hevlayer(base_url=info["gateway"], api_key=minted.token, fallback_to_turbopuffer=False) as reader:
            assert [r[0] for r in _rows(reader.query_namespace(ns, QUERY))] == ["a", "b"]
            with pytest.raises(HevlayerError) as denied:
                reader.write_namespace(ns, {"upsert_rows": [{"id": "x", "vector": [1.0, 1.0]}]})
            assert denied.value.status_code == 403 and denied.value.error == "forbidden"

        stack.kill_gateway()
        after = client.query_namespace(ns, QUERY, with_perf=True)
        assert after.perf.fallback == "turbopuffer_direct"
        assert _rows(after.data) == _rows(before.data)
        with pytest.raises(GatewayUnreachableError) as failed:
            client.fetch_document(ns, "a")
        assert "Layer-only" in failed.value.reason
