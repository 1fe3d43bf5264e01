"""POST /v2/keys/authenticate is rate-limited per client address, across all workers (shared window)."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from urllib.parse import urlparse

from keys_support import call, start_stack, stop_stack

LIMIT = 5


def test_authenticate_rate_limit_is_shared_by_workers(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, LAYER_KEYS_AUTH_RATE_LIMIT_PER_MIN=str(LIMIT))
    try:
        token = stack.mint("rl", {"layer": {"scopes": ["read"]}})["token"]
        if time.time() % 60 > 55:  # keep all hits inside one fixed one-minute window
            time.sleep(60 - time.time() % 60 + 0.05)
        # fresh connections, so both workers answer some of these
        statuses = [call(stack.url, "POST", "/v2/keys/authenticate", body={"token": token})[0] for _ in range(LIMIT)]
        assert statuses == [200] * LIMIT
        status, body = call(stack.url, "POST", "/v2/keys/authenticate", body={"token": token})
        assert status == 429 and body["error"] == "rate_limited", body
        # another client address (127.0.0.2 is loopback too) has its own window
        u = urlparse(stack.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5, source_address=("127.0.0.2", 0))
        try:
            conn.request("POST", "/v2/keys/authenticate", body=json.dumps({"token": token}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
        finally:
            conn.close()
    finally:
        stop_stack(stack)
