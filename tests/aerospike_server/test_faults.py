"""Injected faults (fail / delay / drop), kill and restart, seen through the real aerospike client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import aerospike  # type: ignore[import-untyped]
import pytest
from aerospike import exception as ex  # type: ignore[import-untyped]
from support.aerospike import AerospikeServer, start_aerospike

pytestmark = pytest.mark.timeout(30)
FAST = {"total_timeout": 200, "max_retries": 0}


def _key() -> tuple[str, str, str]:
    return ("hevlayer", "tpuf_f", uuid.uuid4().hex)


@pytest.mark.parametrize(
    "code,cls",
    [
        (1, ex.ServerError),
        (8, ex.ServerFull),
        (14, ex.RecordBusy),
        (13, ex.RecordTooBig),
        (22, ex.ForbiddenError),
        (3, ex.RecordGenerationError),
    ],
)
def test_fail_hook_raises_matching_class(client, server, code, cls) -> None:
    key = _key()
    client.put(key, {"v": 1})
    server.fail(code, count=1, ops=["write"])
    with pytest.raises(cls) as info:
        client.put(key, {"v": 2})
    assert info.value.code == code
    client.put(key, {"v": 3})  # count=1: the next write succeeds
    assert client.get(key)[2] == {"v": 3}


def test_fail_hook_on_batch_fails_every_row(client, server) -> None:
    key = _key()
    client.put(key, {"v": 1})
    server.fail(8, ops=["batch"])
    res = client.batch_read([key, _key()])  # batch calls do not raise: each row carries the code
    assert [r.result for r in res.batch_records] == [8, 8]
    server.clear_hooks()
    assert client.batch_read([key]).batch_records[0].result == 0


def test_delay_hook_times_out_within_bound(client, server) -> None:
    key = _key()
    client.put(key, {"v": 1})
    server.delay(30_000, ops=["read"])
    t0 = time.monotonic()
    with pytest.raises(ex.TimeoutError):
        client.get(key, policy=FAST)
    elapsed = time.monotonic() - t0
    assert 0.15 <= elapsed < 2.0, elapsed  # total_timeout=200 ms (bound: 10x), far below the 30 s delay
    client.put(key, {"v": 2}, policy=FAST)  # writes are not delayed
    server.clear_hooks()
    assert client.get(key, policy=FAST)[2] == {"v": 2}


def test_drop_hook_then_recovery(client, server) -> None:
    key = _key()
    client.put(key, {"v": 1})
    server.drop(count=1, ops=["read"])
    with pytest.raises((ex.ConnectionError, ex.ClientError, ex.TimeoutError)):
        client.get(key, policy=FAST)
    assert client.get(key, policy=FAST)[2] == {"v": 1}


@pytest.fixture
def own_server() -> Iterator[AerospikeServer]:
    srv = start_aerospike()
    yield srv
    srv.stop()


@pytest.mark.parametrize("wait_for_node_removal", [False, True])
def test_killed_and_restarted_server_recovers(own_server, wait_for_node_removal) -> None:
    client = aerospike.client(own_server.client_config())
    try:
        key, lost = ("test", "s", "k"), ("test", "s", "lost")
        client.put(key, {"v": 1})
        client.put(lost, {"v": 1})
        own_server.kill()
        with pytest.raises((ex.ConnectionError, ex.InvalidNodeError, ex.TimeoutError)):
            client.get(key, policy=FAST)
        if wait_for_node_removal:  # 5 failed tends (250 ms each) remove the node; then the client must re-seed
            deadline = time.monotonic() + 5
            while client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not client.is_connected()
            with pytest.raises(ex.InvalidNodeError):
                client.get(key, policy=FAST)
        own_server.restart()
        deadline, last = time.monotonic() + 10, None
        while time.monotonic() < deadline:
            try:
                client.put(key, {"v": 2}, policy=FAST)
                break
            except ex.AerospikeError as e:
                last = e
                time.sleep(0.05)
        else:
            pytest.fail(f"client did not recover within 10 s: {last}")
        assert client.get(key)[2] == {"v": 2}
        assert client.exists(lost)[1] is None  # restart loses data
        assert client.is_connected()
    finally:
        client.close()


def test_drop_hook_on_batch_does_not_raise(client, server) -> None:
    key = _key()
    client.put(key, {"v": 1})
    server.drop(ops=["batch"])
    # two keys: the client sends a one-key batch as a plain single-record read
    res = client.batch_read([key, _key()], policy={"total_timeout": 300})
    assert res.result != 0 and all(r.result != 0 for r in res.batch_records)
    assert client.get(key)[2] == {"v": 1}  # single reads are not dropped; tend keeps working
    server.clear_hooks()
    assert client.batch_read([key]).batch_records[0].result == 0
