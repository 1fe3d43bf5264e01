"""Query strings: integer parameters are parsed strictly (`²` is no digit), and no query string makes any route of
the router's table answer 500."""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from gw_support import KEY, Stack

from gateway.router import build_router

# Every query parameter some route reads, plus one none does.
PARAMS = ("page_size", "prefix", "cursor", "include_attributes", "includeRevoked", "turbopuffer", "documents",
          "snapshots", "blobs", "blob_budget_bytes", "stainless_overload", "zz")
VALUES = ("%C2%B2", "\u00b2", "%D9%A3", "-1", "0", "1", "+5", "%201", "1e3", "0x10",
          "99999999999999999999999", "", "%", "%zz", "%ff", "%00", "a%3Db", "true", "yes", "%E2%80%AE")
NASTY = ("%C2%B2", "%D9%A3", "99999999999999999999999", "%ff", "-1")
PARAM_VALUES = {"ns": "fuzz-ns", "doc_id": "doc-1", "job_id": "job-1", "op_id": "op-1", "key_id": "key-1",
                "pipeline_id": "pl-1", "udf_id": "udf-1"}


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAM_VALUES[m.group(1)], template)


def query_strings(rng: random.Random) -> list[str]:
    out = ["&".join(f"{p}={v}" for p in PARAMS) for v in VALUES]
    out += [f"{p}={v}" for p in PARAMS for v in NASTY]
    out += ["", "&&", "=", "==&=", "page_size", "page_size=1&page_size=%C2%B2", "a=1;b=2"]
    alphabet = "a=&%;+/?:#[]0123456789_eFfzZ\u00b2\u0663 "
    out += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))).replace(" ", "%20").replace("#", "%23")
            for _ in range(10)]
    return out


def send(base: str, method: str, target: str) -> tuple[int, bytes]:
    """One request with the target's bytes as given (UTF-8, not percent-encoded, where the test says so)."""
    host, port = base.removeprefix("http://").split(":")
    body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
    head = f"{method} {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read()


@pytest.mark.parametrize("target", [
    "/v2/namespaces?page_size=%C2%B2", "/v2/namespaces?page_size=\u00b2", "/v2/namespaces?page_size=%D9%A3",
    "/v1/namespaces/fuzz-ns/hint_cache_warm?page_size=%C2%B2", "/v1/namespaces/fuzz-ns/hint_cache_warm?page_size=\u00b2",
    "/v1/namespaces/fuzz-ns/hint_cache_warm?blobs=true&blob_budget_bytes=%C2%B2",
])
def test_integer_parameters_are_ascii_digits_only(stack: Stack, target: str) -> None:
    status, body = send(stack.gw.url, "GET", target)
    if not target.isascii() and status == 400:
        return  # a raw non-ASCII byte is no valid request target: uvicorn's parser refuses it before the gateway
    assert status == 422, body
    assert json.loads(body)["error"] == "validation_error" and "must be an integer between" in json.loads(body)["message"]


def test_warm_page_size_is_strict(stack: Stack) -> None:
    status, body = send(stack.gw.url, "POST", "/v2/namespaces/fuzz-ns/warm?page_size=%C2%B2")
    assert status == 422 and "page_size must be an integer between 1 and" in json.loads(body)["message"], body


def test_no_query_string_makes_any_route_answer_500(stack: Stack) -> None:
    rng = random.Random(10)
    routes = sorted((r.method, concrete(r.template)) for r in build_router().routes.values())
    calls = [(method, f"{path}?{qs}" if qs else path) for method, path in routes for qs in query_strings(rng)]

    def run(call: tuple[str, str]) -> tuple[str, str, int, bytes]:
        status, body = send(stack.gw.url, *call)
        return (*call, status, body)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, calls))
    failures = [f"{m} {t} -> {s} {b[:120]!r}" for m, t, s, b in results if s >= 500 and s != 503]
    print(f"{len(results)} requests over {len(routes)} routes")
    assert not failures, "\n".join(failures[:30])
