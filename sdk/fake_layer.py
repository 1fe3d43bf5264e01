"""A recording fake of the gateway and of Turbopuffer for the client scenarios (sdk/scenarios.json). Stdlib only.

    python sdk/fake_layer.py   prints one JSON line {"gateway": url, "turbopuffer": url, "dead": url}, serves until
                               stdin closes (the Go and TypeScript runners start it so)

Both fakes answer what the last `POST <gateway>/__arm` asked for (`{"gateway": {status, body, headers, delay_ms},
"turbopuffer": {...}}`; a body that is a string is sent as text) and record every request: target, method, raw
path, decoded query, the Authorization and x-hevlayer-* headers, and the JSON body. `GET <gateway>/__log` returns
the records. `dead` is a bound socket that does not listen: connecting to it is refused at once, and the port
stays reserved while the fake runs.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.serve: dict[str, Any] = {}
        self.log: list[dict[str, Any]] = []


def handler(target: str, state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            content_type = "text/plain" if isinstance(body, str) else "application/json"
            for name, value in {"content-type": content_type, **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            path, _, query = self.path.partition("?")
            if target == "gateway" and path == "/__arm":
                with state.lock:
                    state.serve, state.log = json.loads(raw or b"{}"), []
                return self._reply(200, {"armed": True})
            if target == "gateway" and path == "/__log":
                with state.lock:
                    return self._reply(200, list(state.log))
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            record = {"target": target, "method": self.command, "path": path,
                      "query": dict(parse_qsl(query, keep_blank_values=True)),
                      "authorization": self.headers.get("authorization"),
                      "headers": {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-hevlayer")},
                      "body": body}
            with state.lock:
                state.log.append(record)
                canned = dict(state.serve.get(target) or {})
            if canned.get("delay_ms"):
                time.sleep(canned["delay_ms"] / 1000)
            try:
                self._reply(canned.get("status", 200), canned.get("body", {}), canned.get("headers"))
            except OSError:
                pass  # the client gave up (a timeout scenario)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


class FakeLayer:
    def __init__(self) -> None:
        self.state = State()
        self.servers = {t: ThreadingHTTPServer(("127.0.0.1", 0), handler(t, self.state))
                        for t in ("gateway", "turbopuffer")}
        self.servers["gateway"].daemon_threads = self.servers["turbopuffer"].daemon_threads = True
        self._dead = socket.socket()
        self._dead.bind(("127.0.0.1", 0))
        self.urls = {t: f"http://127.0.0.1:{s.server_address[1]}" for t, s in self.servers.items()}
        self.urls["dead"] = f"http://127.0.0.1:{self._dead.getsockname()[1]}"
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self.servers.values()]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for s in self.servers.values():
            s.shutdown()
            s.server_close()
        self._dead.close()


def main() -> int:
    fake = FakeLayer()
    print(json.dumps(fake.urls), flush=True)
    sys.stdin.read()  # until the runner closes our stdin (or exits)
    fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
