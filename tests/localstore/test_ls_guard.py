"""The local store's own surface: its test hooks (fault injection, the write journal) only when asked for and behind
the store's key; request bodies (raw and inflated) bounded."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

from ls_support import Client
from support.procs import start_localstore

RULE = {"route": "query", "status": 500, "count": 1}
APPLIED_FAILURE = {"route": "write", "status": 500, "apply": True, "after_ms": 100}
JOURNAL = {"namespace": "ok"}


def test_hooks_exist_only_with_enable_faults(tmp_path: Path) -> None:
    with start_localstore(tmp_path / "d", faults=False, LOCALSTORE_API_KEY="sekret") as proc:
        client = Client(proc.url, key="sekret")
        for method in ("GET", "POST", "DELETE"):
            for rule in (RULE, APPLIED_FAILURE):
                assert client.call(method, "/_localstore/faults", rule if method == "POST" else None)[0] == 404
        assert client.call("POST", "/_localstore/journal", JOURNAL)[0] == 404
        assert client.call("GET", "/_localstore/journal?namespace=ok")[0] == 404
        client.write("ok", {"upsert_rows": [{"id": 1}]})
        assert client.ids("ok", {"rank_by": ["id", "asc"]}) == [1], "nothing was injected"


def test_faults_need_the_stores_key(tmp_path: Path) -> None:
    with start_localstore(tmp_path / "d", LOCALSTORE_API_KEY="sekret") as proc:
        client = Client(proc.url, key="sekret")
        assert client.call("POST", "/_localstore/faults", RULE, key=None)[0] == 401
        assert client.call("POST", "/_localstore/faults", RULE, key="sekreT")[0] == 403
        assert client.call("GET", "/_localstore/faults", key="wrong")[0] == 403
        assert client.ok("GET", "/_localstore/faults") == {"faults": []}, "no rule was added"
        client.ok("POST", "/_localstore/faults", RULE)
        assert client.ok("GET", "/_localstore/faults")["faults"][0]["remaining"] == 1


def test_journal_needs_the_stores_key(tmp_path: Path) -> None:
    with start_localstore(tmp_path / "d", LOCALSTORE_API_KEY="sekret") as proc:
        client = Client(proc.url, key="sekret")
        assert client.call("POST", "/_localstore/journal", JOURNAL, key=None)[0] == 401
        assert client.call("POST", "/_localstore/journal", JOURNAL, key="sekreT")[0] == 403
        assert client.call("GET", "/_localstore/journal?namespace=ok", key="wrong")[0] == 403
        client.write("ok", {"upsert_rows": [{"id": 1}]})
        assert client.ok("GET", "/_localstore/journal?namespace=ok") == {"entries": []}, "recording never started"
        client.ok("POST", "/_localstore/journal", JOURNAL)
        client.write("ok", {"upsert_rows": [{"id": 2, "a": "x"}]})
        entries = client.ok("GET", "/_localstore/journal?namespace=ok")["entries"]
        assert [e["docs"] for e in entries] == [{"2": {"a": "x"}}]


def test_bodies_are_bounded_raw_and_inflated(tmp_path: Path) -> None:
    with start_localstore(tmp_path / "d", LOCALSTORE_MAX_BODY_BYTES=str(1 << 20)) as proc:
        client = Client(proc.url)
        bomb = gzip.compress(b'{"upsert_rows": [{"id": 1, "s": "' + b"x" * (8 << 20) + b'"}]}')
        assert len(bomb) < 64 << 10
        status, body, _ = client.call("POST", "/v2/namespaces/b", raw=bomb, headers={"Content-Encoding": "gzip"})
        assert status == 413 and "inflated" in body["error"], body
        host, port = proc.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # the body is never sent or read
            sock.sendall(b"POST /v2/namespaces/b HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer k\r\n"
                         b"Content-Length: 2097152\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 413")
        small = gzip.compress(b'{"upsert_rows": [{"id": 1}]}')
        status, body, _ = client.call("POST", "/v2/namespaces/b", raw=small + b"junk",
                                      headers={"Content-Encoding": "gzip"})
        assert status == 400 and "gzip" in body["error"], body
        assert client.call("POST", "/v2/namespaces/b", raw=small, headers={"Content-Encoding": "gzip"})[0] == 200
