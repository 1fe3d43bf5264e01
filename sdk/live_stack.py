"""The real stack for the clients' live tests: a keyed local store and a gateway in front of it, on 127.0.0.1.

    python sdk/live_stack.py   prints {"gateway": url, "store": url, "key": store key}; then reads commands from
                               stdin: `kill-gateway` (SIGKILL, answers `killed`); stops everything when stdin closes

The Python, Go and TypeScript live tests start it, so all three run the same stack the same way.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.procs import STORE_KEY, start_gateway, start_localstore


def wait_refused(url: str, within_s: float = 30.0) -> None:
    """Until connecting is refused: the workers die a moment after the supervisor, and until the last one is gone a
    connection can still be accepted (and then reset)."""
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except ConnectionRefusedError:
            return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} still accepts connections {within_s:g}s after the gateway was killed")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="layer-live-") as tmp:
        store = start_localstore(Path(tmp) / "store", LOCALSTORE_API_KEY=STORE_KEY)
        try:
            gateway = start_gateway(store.url, STORE_KEY, Path(tmp) / "gateway", workers=1,
                                    CONSISTENCY_POLL_INTERVAL_MS="100")
        except BaseException:
            store.stop()
            raise
        try:
            print(json.dumps({"gateway": gateway.url, "store": store.url, "key": STORE_KEY}), flush=True)
            for line in sys.stdin:
                if line.strip() == "kill-gateway":
                    gateway.stop(signal.SIGKILL)
                    wait_refused(gateway.url)
                    print("killed", flush=True)
        finally:
            gateway.stop()
            store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
