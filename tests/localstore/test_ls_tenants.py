"""Several organisations in one local store (LOCALSTORE_API_KEYS): each key sees only its own organisation's
namespaces, as Turbopuffer's namespaces live per organisation; and the received-requests hook counts per bearer."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ls_support import Client
from support.procs import start_localstore


def test_each_org_has_its_own_namespaces_under_the_same_names(tmp_path: Path) -> None:
    with start_localstore(tmp_path / "d", LOCALSTORE_API_KEY="default-key",
                          LOCALSTORE_API_KEYS="a-key=org-a,a-key-2=org-a,b-key=org-b") as proc:
        a, a2, b = Client(proc.url, key="a-key"), Client(proc.url, key="a-key-2"), Client(proc.url, key="b-key")
        default = Client(proc.url, key="default-key")
        a.write("docs", {"upsert_rows": [{"id": 1, "who": "a"}]})
        assert b.call("GET", "/v2/namespaces/docs/metadata")[0] == 404, "org b has no 'docs' yet"
        b.write("docs", {"upsert_rows": [{"id": 2, "who": "b"}]})
        q = {"rank_by": ["id", "asc"], "include_attributes": ["who"]}
        assert a2.query("docs", q)["rows"] == [{"id": 1, "who": "a"}], "another key of org a sees org a's"
        assert b.query("docs", q)["rows"] == [{"id": 2, "who": "b"}]
        assert default.call("GET", "/v2/namespaces/docs/metadata")[0] == 404, "the default org is a third one"
        created = {c.ok("GET", "/v2/namespaces/docs/metadata")["created_at"] for c in (a, a2, b)}
        assert len(created) == 2, "two namespaces, one per org"
        assert [n["id"] for n in b.ok("GET", "/v1/namespaces")["namespaces"]] == ["docs"]
        assert Client(proc.url, key="c-key").call("GET", "/v2/namespaces/docs/metadata")[0] == 403
        b.call("DELETE", "/v2/namespaces/docs")
        assert a.query("docs", q)["rows"] == [{"id": 1, "who": "a"}], "org b's delete left org a's namespace"
    with start_localstore(tmp_path / "d", LOCALSTORE_API_KEYS="a-key=org-a,b-key=org-b") as proc:
        assert Client(proc.url, key="a-key").ids("docs", {"rank_by": ["id", "asc"]}) == [1], "durable per org"


def test_received_counts_requests_per_bearer_whatever_the_answer(tmp_path: Path) -> None:
    with start_localstore(tmp_path / "d", LOCALSTORE_API_KEY="sekret") as proc:
        client = Client(proc.url, key="sekret")
        client.write("ok", {"upsert_rows": [{"id": 1}]})
        assert client.call("GET", "/v2/namespaces/ok/metadata", key="wrong")[0] == 403
        counts = client.ok("GET", "/_localstore/received")["by_bearer_sha256"]
        digest = {k: hashlib.sha256(k.encode()).hexdigest() for k in ("sekret", "wrong", "never")}
        assert (counts[digest["sekret"]], counts[digest["wrong"]]) == (1, 1)
        assert digest["never"] not in counts
        assert client.call("GET", "/_localstore/received", key="wrong")[0] == 403, "behind the store's key"
