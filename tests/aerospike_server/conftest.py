from __future__ import annotations

from collections.abc import Iterator

import aerospike  # type: ignore[import-untyped]
import pytest
from support.aerospike import AerospikeServer, start_aerospike


@pytest.fixture(scope="module")
def server() -> Iterator[AerospikeServer]:
    """One test server per module (hooks are cleared after every test by `client`)."""
    srv = start_aerospike(max_record_size=64 * 1024)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: AerospikeServer) -> Iterator[aerospike.Client]:
    server.clear_hooks()
    c = aerospike.client(server.client_config())
    yield c
    server.clear_hooks()
    c.close()
