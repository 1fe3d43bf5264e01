"""CLI: `layer-gateway serve ...` (uvicorn or Granian, uvloop, N workers) and `layer-gateway keys ...`."""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from gateway.config import EMBEDDED_MARKER, SERVERS, Config, ConfigError, load_config
from gateway.ops import DEFAULT_HOST as DEFAULT_OPS_HOST
from gateway.ops import DEFAULT_PORT as DEFAULT_OPS_PORT
from gateway.ops import OpsServer


def key_hint(key: str) -> str:
    """Enough of a key to tell which one it is, never the key: at most 6 characters and a quarter of it."""
    return key[:min(6, len(key) // 4)] + "…"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layer-gateway", description="Layer: a Turbopuffer-compatible gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default=os.environ.get("LAYER_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    serve.add_argument("--workers", type=int, default=os.environ.get("LAYER_WORKERS", "1"))
    serve.add_argument("--server", choices=SERVERS, default=None,
                       help=f"HTTP server (default: $LAYER_SERVER, else {SERVERS[0]})")
    serve.add_argument("--ops-host", default=os.environ.get("LAYER_OPS_HOST", DEFAULT_OPS_HOST),
                       help="address of the ops listener (/metrics, detailed /health)")
    serve.add_argument("--ops-port", type=int, default=os.environ.get("LAYER_OPS_PORT", str(DEFAULT_OPS_PORT)),
                       help="port of the ops listener; 0 turns it off")
    sub.add_parser("keys", help="manage scoped API keys (layer-gateway keys --help)", add_help=False)
    sub.add_parser("udf-worker", help="run a built-in UDF worker (layer-gateway udf-worker --help)", add_help=False)
    return parser


def _metrics_dir() -> tuple[str, bool]:
    preset = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if preset:
        Path(preset).mkdir(parents=True, exist_ok=True)
        for stale in [*Path(preset).glob("*.db"), *Path(preset).glob("health-*.json")]:
            stale.unlink()
        return preset, False
    return tempfile.mkdtemp(prefix="layer-metrics-"), True


def _raise_fd_limit() -> None:
    """Every connection is a file descriptor: allow as many as the hard limit (LAYER_MAX_CONNECTIONS per worker)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def serve(host: str, port: int, workers: int, server: str | None = None, ops_host: str = DEFAULT_OPS_HOST,
          ops_port: int = DEFAULT_OPS_PORT) -> int:
    if server is not None:
        os.environ["LAYER_SERVER"] = server  # the workers read their settings from the environment
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"layer-gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if workers < 1:
        print("layer-gateway: --workers must be >= 1", file=sys.stderr)
        return 2
    from gateway import servers
    from gateway.embedded import EmbeddedStore, EmbeddedStoreError, admin_key

    metrics_dir, owned = _metrics_dir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    store: EmbeddedStore | None = None
    ops: OpsServer | None = None
    try:
        if config.upstream_url is None:
            key, source = admin_key(config)
            try:
                store = EmbeddedStore(config, key)
            except EmbeddedStoreError as exc:
                print(f"layer-gateway: {exc}", file=sys.stderr)
                return 1
            os.environ.update({"TURBOPUFFER_API_URL": store.url, "TURBOPUFFER_API_KEY": key, EMBEDDED_MARKER: "1"})
            print(f"layer-gateway: no TURBOPUFFER_API_URL or TURBOPUFFER_REGION set; started the local store at "
                  f"{store.url} (data in {store.data_dir})", flush=True)
            print(f"layer-gateway: admin key {key_hint(key)} (from {source})", flush=True)
        if ops_port:  # after the store: its Popen(preexec_fn=...) must run before any thread exists
            try:
                ops = OpsServer(ops_host, ops_port, metrics_dir)
            except OSError as exc:
                print(f"layer-gateway: cannot listen for ops on {ops_host}:{ops_port}: {exc}", file=sys.stderr)
                return 1
        config = load_config()
        if not _migrate_queue(config):
            return 1
        _prepare_cache(config)
        print(f"layer-gateway: listening on http://{host}:{port} with {workers} {config.server.server} worker(s), "
              f"upstream {config.upstream_url}", flush=True)
        if ops is not None:
            print(f"layer-gateway: ops listener (/metrics, /health) on {ops.url}", flush=True)
        _raise_fd_limit()
        return servers.run(config, host, port, workers)
    finally:
        if ops is not None:
            ops.stop()
        if store is not None:
            store.stop()
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _migrate_queue(config: Config) -> bool:
    """Create or upgrade the pipelines/functions schema before any worker starts (docs/queue.md)."""
    from gateway.queue import migrate

    try:
        backend, version = migrate(config.queue, config.data_dir)
    except Exception as exc:  # noqa: BLE001 - any failure here is reported and stops the start-up
        where = "DATABASE_URL" if config.queue.database_url else f"LAYER_DATA_DIR ({config.data_dir})"
        print(f"layer-gateway: the queue database ({where}) could not be prepared: {exc}", file=sys.stderr)
        return False
    print(f"layer-gateway: queue store {backend}, schema version {version}", flush=True)
    return True


def _prepare_cache(config: Config) -> None:
    """Create the embedded cache file once, here, before the workers start (they only check it)."""
    if config.cache.backend != "local":
        return
    import sqlite3

    from gateway.cache.local import prepare

    try:
        prepare(config.cache.data_dir)
    except sqlite3.Error as exc:
        print(f"layer-gateway: the document cache file could not be prepared ({exc}); workers will retry",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "udf-worker":
        from gateway.queue.builtin_worker import main as worker_main  # the model is never imported by the gateway

        return worker_main(argv[1:])
    if argv and argv[0] == "keys":
        from gateway.keys.cli import main as keys_main  # written by the keys module; imported only when used

        return keys_main(argv[1:])
    args = _parser().parse_args(argv)
    return serve(args.host, args.port, args.workers, args.server, args.ops_host, args.ops_port)


if __name__ == "__main__":
    sys.exit(main())
