"""Helpers of the local store tests (a module of its own: test modules import it, never a conftest)."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from typing import Any


class Client:
    """Tiny JSON-over-HTTP driver for the store (urllib; no retries)."""

    def __init__(self, url: str, key: str | None = "test-key") -> None:
        self.url = url
        self.key = key

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, key: str | None = "", gz: bool = False) -> tuple[int, Any, Any]:
        h = {"Content-Type": "application/json"}
        k = self.key if key == "" else key
        if k is not None:
            h["Authorization"] = f"Bearer {k}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if gz and data is not None:
            data = gzip.compress(data)
            h["Content-Encoding"] = "gzip"
        h.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read()), resp.headers
        except urllib.error.HTTPError as e:
            payload = e.read()
            assert payload, f"empty error body for {method} {path} ({e.code})"
            assert e.headers["content-type"] == "application/json"
            return e.code, json.loads(payload), e.headers

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data, _ = self.call(method, path, body, **kw)
        assert status == 200, (status, data)
        return data

    def write(self, ns: str, body: Any) -> Any:
        return self.ok("POST", f"/v2/namespaces/{ns}", body)

    def query(self, ns: str, body: Any) -> Any:
        return self.ok("POST", f"/v2/namespaces/{ns}/query", body)

    def ids(self, ns: str, body: Any) -> list[Any]:
        return [r["id"] for r in self.query(ns, body)["rows"]]
