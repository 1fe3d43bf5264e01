"""The operational listener: `/metrics` and detailed `/health` on their own address (`--ops-host`/`--ops-port`,
default 127.0.0.1:9464, like Envoy's admin port), kept off the public port because they name namespaces, the
upstream host and its last error.

It runs in the serve process (a thread with a small WSGI server), not in the workers, so it does not depend on the
server that runs the app and never blocks a worker's event loop: metrics come from the prometheus-client
multiprocess files the workers write, health from the snapshots they publish (gateway/health.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import msgspec

from gateway.health import VERSION, read_snapshots

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 9464
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the gateway's JSON log


def health_body(metrics_dir: str) -> tuple[str, bytes]:
    workers = read_snapshots(metrics_dir)
    status = "200 OK" if workers else "503 Service Unavailable"
    return status, msgspec.json.encode({"status": "ok" if workers else "starting", "version": VERSION,
                                        "workers": workers})


def metrics_body(metrics_dir: str) -> bytes:
    # Imported here, not at module level: prometheus-client picks its value class (multiprocess files or memory)
    # when first imported, and the workers forked from this process must import it after PROMETHEUS_MULTIPROC_DIR
    # is set.
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    return generate_latest(registry)


def ops_app(metrics_dir: str) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if method != "GET":
            status, ctype, body = "405 Method Not Allowed", JSON, b'{"error":"method_not_allowed"}'
        elif path == "/metrics":
            status, ctype, body = "200 OK", METRICS_CONTENT_TYPE, metrics_body(metrics_dir)
        elif path == "/health":
            (status, body), ctype = health_body(metrics_dir), JSON
        else:
            status, ctype, body = "404 Not Found", JSON, b'{"error":"not_found"}'
        start_response(status, [("content-type", ctype), ("content-length", str(len(body)))])
        return [body]

    return app


class OpsServer:
    """Serves until stop(); binding happens in the constructor, so a taken port fails start-up at once."""

    def __init__(self, host: str, port: int, metrics_dir: str) -> None:
        self._server = make_server(host, port, ops_app(metrics_dir), server_class=_Server, handler_class=_QuietHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="layer-ops", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
