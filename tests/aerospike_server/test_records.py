"""Single-record and batch commands through the real aerospike client against the wire test server."""

from __future__ import annotations

import time
import uuid

import aerospike  # type: ignore[import-untyped]
import pytest
from aerospike import exception as ex  # type: ignore[import-untyped]
from aerospike_helpers.batch.records import BatchRecords, Remove, Write  # type: ignore[import-untyped]
from aerospike_helpers.operations import operations as op  # type: ignore[import-untyped]

pytestmark = pytest.mark.timeout(30)
SEND_KEY = {"key": aerospike.POLICY_KEY_SEND}


def _key(ns: str = "hevlayer", set_: str = "tpuf_t") -> tuple[str, str, str]:
    return (ns, set_, uuid.uuid4().hex)


def test_connect_and_info(client, server) -> None:
    assert client.is_connected()
    assert client.get_node_names()
    reply = client.info_all("namespaces")
    ((_err, text),) = reply.values()
    assert set(server.namespaces) <= set(text.strip().split(";"))


def test_put_get_select_exists_remove(client) -> None:
    key = _key()
    bins = {
        "attrs": b"\x00\xffblob",
        "vec": bytearray(b"\x01" * 64),
        "n": -7,
        "s": "héllo",
        "f": 2.5,
        "l": [1, "x", b"y"],
        "m": {"a": [1, 2]},
    }
    client.put(key, bins, policy=SEND_KEY)
    _, meta, got = client.get(key)
    assert got == {**bins, "vec": b"\x01" * 64} and meta["gen"] == 1
    assert client.select(key, ["n", "nope"])[2] == {"n": -7}
    assert client.exists(key)[1]["gen"] == 1
    client.put(key, {"n": 8})
    assert client.get(key)[1]["gen"] == 2
    client.remove(key)
    assert client.exists(key)[1] is None
    with pytest.raises(ex.RecordNotFound):
        client.get(key)
    with pytest.raises(ex.RecordNotFound):
        client.remove(key)


def test_user_key_kept_and_namespaces_separate(client) -> None:
    key = _key("layer_keys", "keys")
    client.put(key, {"v": 1}, policy=SEND_KEY)
    with pytest.raises(ex.RecordNotFound):
        client.get(("hevlayer", key[1], key[2]))
    query = client.query("layer_keys", "keys")
    found = [k for k, _m, _b in query.results()]
    assert any(k[2] == key[2] for k in found)  # the stored user key comes back from a scan
    with pytest.raises(ex.NamespaceNotFound):
        client.query("nosuchns", "x").results()


def test_operate(client) -> None:
    key = _key()
    _, meta, bins = client.operate(
        key,
        [
            op.write("a", "x"),
            op.increment("n", 3),
            op.increment("n", 2),
            op.append("a", "y"),
            op.read("n"),
            op.read("a"),
        ],
    )
    assert bins == {"n": 5, "a": "xy"} and meta["gen"] == 1
    with pytest.raises(ex.BinIncompatibleType):
        client.operate(key, [op.increment("a", 1)])
    client.operate(key, [op.delete()])
    assert client.exists(key)[1] is None


def test_batch_read_duplicates_and_missing(client) -> None:
    keys = [_key() for _ in range(3)]
    for i, k in enumerate(keys[:2]):
        client.put(k, {"i": i, "blob": b"b" * i})
    asked = [keys[0], keys[2], keys[0], keys[1]]
    res = client.batch_read(asked)
    assert res.result == 0
    assert [r.result for r in res.batch_records] == [0, 2, 0, 0]
    assert [r.record[2]["i"] for r in res.batch_records if r.result == 0] == [0, 0, 1]
    assert res.batch_records[1].record is None
    sel = client.batch_read(asked, ["i"])
    assert [r.record[2] for r in sel.batch_records if r.result == 0] == [{"i": 0}, {"i": 0}, {"i": 1}]


def test_batch_write(client) -> None:
    keys = [_key() for _ in range(3)]
    client.put(keys[2], {"x": 1})
    recs = BatchRecords([Write(keys[0], [op.write("a", b"1")]), Write(keys[1], [op.write("a", b"2")]), Remove(keys[2])])
    out = client.batch_write(recs)
    assert out.result == 0 and [r.result for r in out.batch_records] == [0, 0, 0]
    assert [r.record[2] for r in client.batch_read(keys[:2]).batch_records] == [{"a": b"1"}, {"a": b"2"}]
    assert client.exists(keys[2])[1] is None


def test_ttl_expiry(client) -> None:
    key = _key()
    client.put(key, {"v": 1}, meta={"ttl": 1})
    assert 0 < client.get(key)[1]["ttl"] <= 1
    client.put(_key(), {"v": 1}, meta={"ttl": aerospike.TTL_NEVER_EXPIRE})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and client.exists(key)[1] is not None:
        time.sleep(0.1)
    assert client.exists(key)[1] is None


def test_generation_policy(client) -> None:
    key = _key()
    client.put(key, {"v": 1})
    client.put(key, {"v": 2})
    gen_eq = {"gen": aerospike.POLICY_GEN_EQ}
    with pytest.raises(ex.RecordGenerationError):
        client.put(key, {"v": 3}, meta={"gen": 1}, policy=gen_eq)
    client.put(key, {"v": 3}, meta={"gen": 2}, policy=gen_eq)
    assert client.get(key)[1]["gen"] == 3
    with pytest.raises(ex.RecordExistsError):
        client.put(key, {"v": 4}, policy={"exists": aerospike.POLICY_EXISTS_CREATE})


def test_record_too_big(client) -> None:
    key = _key()
    with pytest.raises(ex.RecordTooBig):
        client.put(key, {"blob": b"x" * (65 * 1024)})
    assert client.exists(key)[1] is None
    client.put(key, {"blob": b"x" * (60 * 1024)})


def test_unimplemented_is_code_16(client) -> None:
    key = _key()
    client.put(key, {"l": [1, 2, 3]})
    from aerospike_helpers.operations import list_operations as lop  # type: ignore[import-untyped]

    with pytest.raises(ex.UnsupportedFeature) as info:
        client.operate(key, [lop.list_append("l", 4)])
    assert info.value.code == 16
    from aerospike_helpers.expressions import base as exp  # type: ignore[import-untyped]

    expr = exp.Eq(exp.IntBin("v"), 1).compile()
    with pytest.raises(ex.UnsupportedFeature):
        client.get(key, policy={"expressions": expr})


def test_scan_of_set_and_truncate(client) -> None:
    set_ = "scan_" + uuid.uuid4().hex[:8]
    keys = [("hevlayer", set_, f"d{i}") for i in range(30)]
    for k in keys:
        client.put(k, {"v": 1}, policy=SEND_KEY)
    client.put(("hevlayer", "other_set", "x"), {"v": 1})
    query = client.query("hevlayer", set_)
    query.select()
    got = query.results({"total_timeout": 2000})
    assert sorted(k[2] for k, _m, _b in got) == sorted(k[2] for k in keys)
    client.truncate("hevlayer", set_, 0)
    assert client.query("hevlayer", set_).results() == []
    assert client.exists(("hevlayer", "other_set", "x"))[1] is not None
