"""Every gateway setting, read once from the environment into one frozen Struct."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from msgspec import Struct

DEFAULT_DATA_DIR = "./.layer"
TRANSPORTS = ("httptools", "pyreqwest")
SERVERS = ("uvicorn", "granian")  # the first is the default: it wins `just bench` on the full gateway (README)
LOG_LEVELS = ("debug", "info", "warning", "error")
# Set by `layer-gateway serve` in the environment its workers inherit when it started the local store itself.
EMBEDDED_MARKER = "LAYER_EMBEDDED_STORE"
FILL_SLACK_MS = 10_000  # a fill's token may be this much older than the upstream timeout (cache calls, scheduling)


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable."""


class TransportSettings(Struct, frozen=True):
    """How the gateway talks to the upstream (docs/configuration.md, "Upstream"). Deadlines apply per call."""

    kind: str = "httptools"  # httptools | pyreqwest
    timeout_ms: int = 30_000  # total: pool wait, connect, send and the whole response
    connect_timeout_ms: int = 5_000  # TCP connect and TLS handshake (bounded by the total)
    read_timeout_ms: int = 30_000  # longest silence while waiting for response bytes
    pool_size: int = 64  # connections per upstream origin per worker; callers beyond it wait in FIFO order
    idle_timeout_ms: int = 20_000  # close an idle connection this long after its last use
    max_header_bytes: int = 64 * 1024
    max_response_bytes: int = 256 * 1024 * 1024
    ca_file: str | None = None  # PEM CA bundle to verify https upstreams with instead of the system store


class CacheSettings(Struct, frozen=True):
    """The document cache (docs/cache.md); `backend` is aerospike when AEROSPIKE_HOSTS is set."""

    backend: str  # aerospike | local
    timeout_ms: int
    breaker_open_ms: int
    max_record_bytes: int
    reactive_warm: bool = False  # warm a whole namespace on its first clean fetch miss per (re)connect
    # how long after the gateway gave up on a write (timeout, transport failure, 5xx) upstream may still apply it
    unknown_ms: int = 300_000
    upstream_timeout_ms: int = 30_000  # LAYER_UPSTREAM_TIMEOUT_MS
    # aerospike
    hosts: tuple[tuple[str, int], ...] = ()
    as_namespace: str = "hevlayer"
    set_prefix: str = "tpuf_"
    cluster_name: str | None = None
    pool_size: int = 4
    tend_ms: int = 250
    # local
    data_dir: str = "./.layer"
    max_bytes: int = 256 * 1024 * 1024

    @property
    def pending_ms(self) -> int:
        """How long a write in flight fences its documents at most (its worker may die without finishing it)."""
        return self.upstream_timeout_ms + self.unknown_ms

    @property
    def fill_window_ms(self) -> int:
        """How old a fill's token may be; records younger than this are never evicted."""
        return self.upstream_timeout_ms + FILL_SLACK_MS


class ResultCacheSettings(Struct, frozen=True):
    """The query-result cache (docs/cache.md, "Query results"): off unless LAYER_RESULT_CACHE names namespaces."""

    every_namespace: bool = False  # LAYER_RESULT_CACHE=on
    namespaces: frozenset[str] = frozenset()  # LAYER_RESULT_CACHE=ns1,ns2
    max_bytes: int = 64 * 1024 * 1024  # per worker, LRU by bytes

    def enabled(self, ns: str) -> bool:
        return self.every_namespace or ns in self.namespaces

    @property
    def on(self) -> bool:
        return self.every_namespace or bool(self.namespaces)


class KeySettings(Struct, frozen=True):
    """Minted keys (docs/security.md): the Aerospike key store when AEROSPIKE_HOSTS is set, else SQLite."""

    auth_rate_limit_per_min: int = 120
    aerospike_hosts: str = ""
    aerospike_namespace: str = "layer_keys"
    aerospike_set_prefix: str = ""
    cluster_name: str | None = None


class ServerSettings(Struct, frozen=True):
    """The HTTP server and its slow-client limits (docs/configuration.md, docs/security.md), passed to whichever
    server runs the gateway."""

    server: str = SERVERS[0]
    header_timeout_ms: int = 5_000  # connect (or end of the previous response) -> request headers complete
    body_timeout_ms: int = 10_000  # longest wait for the next body chunk
    body_min_rate: int = 1024  # bytes/s averaged over the body, checked once it took longer than body_timeout_ms
    keepalive_timeout_ms: int = 20_000  # idle keep-alive connection -> closed (granian: see docs/security.md)
    max_header_bytes: int = 16 * 1024  # request line + headers
    max_headers: int = 100
    max_connections: int = 1000  # per worker: beyond it new connections wait in the listen backlog
    backlog: int = 2048


class QueueSettings(Struct, frozen=True):
    """Pipelines and Functions (docs/queue.md): PostgreSQL when DATABASE_URL is set, else SQLite in LAYER_DATA_DIR."""

    database_url: str | None = None
    sweep_ms: int = 5000
    rate_window_seconds: int = 60
    status_cache_ttl_ms: int = 1000
    discovery_tick_ms: int = 1000
    max_document_bytes: int = 32 * 1024 * 1024
    idle_in_transaction_timeout_ms: int = 5000


class Config(Struct, frozen=True):
    upstream_url: str | None  # None only in the serve process before the embedded store is up
    upstream_key: str | None  # None = derive-from-request: the caller's bearer goes upstream
    embedded: bool
    data_dir: str
    gateway_api_key: str | None
    transport: TransportSettings
    max_body_bytes: int
    max_buffered_body_bytes: int
    auth_verdict_ttl_s: int
    poll_interval_ms: int
    stable_poll_interval_ms: int
    safety_margin_ms: int
    watch_idle_ms: int
    watch_shared: str
    watch_fence: bool
    watch_mirror_ms: int
    watch_fallback_polls_per_s: int
    drain_grace_ms: int
    drain_timeout_ms: int
    list_concurrency: int
    log_level: str
    metrics_dir: str | None
    cache: CacheSettings
    keys: KeySettings
    server: ServerSettings = ServerSettings()
    queue: QueueSettings = QueueSettings()
    results: ResultCacheSettings = ResultCacheSettings()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def parse_hosts(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host2` -> ((host, port), (host2, 3000)); raises ConfigError naming AEROSPIKE_HOSTS."""
    hosts = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "3000")
        if not host or not port.isdigit():
            raise ConfigError(f"AEROSPIKE_HOSTS must look like 'host:3000,host2:3000', got {raw!r}")
        hosts.append((host, int(port)))
    return tuple(hosts)


def load_transport_settings(env: Mapping[str, str]) -> TransportSettings:
    ca_file = env.get("LAYER_UPSTREAM_CA_FILE", "").strip() or None
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"LAYER_UPSTREAM_CA_FILE: cannot load CA certificates from {ca_file!r}: {exc}") from None
    return TransportSettings(
        kind=_choice(env, "LAYER_UPSTREAM_TRANSPORT", "httptools", TRANSPORTS),
        timeout_ms=_int(env, "LAYER_UPSTREAM_TIMEOUT_MS", 30_000, 1),
        connect_timeout_ms=_int(env, "LAYER_UPSTREAM_CONNECT_TIMEOUT_MS", 5_000, 1),
        read_timeout_ms=_int(env, "LAYER_UPSTREAM_READ_TIMEOUT_MS", 30_000, 1),
        pool_size=_int(env, "LAYER_UPSTREAM_POOL_SIZE", 64, 1),
        idle_timeout_ms=_int(env, "LAYER_UPSTREAM_IDLE_TIMEOUT_MS", 20_000, 0),
        max_header_bytes=_int(env, "LAYER_UPSTREAM_MAX_HEADER_BYTES", 64 * 1024, 1024),
        max_response_bytes=_int(env, "LAYER_UPSTREAM_MAX_RESPONSE_BYTES", 256 * 1024 * 1024, 1024),
        ca_file=ca_file,
    )


def load_cache_settings(env: Mapping[str, str]) -> CacheSettings:
    hosts = parse_hosts(env.get("AEROSPIKE_HOSTS", ""))
    return CacheSettings(
        backend="aerospike" if hosts else "local",
        timeout_ms=_int(env, "AEROSPIKE_TIMEOUT_MS", 200, 1),
        breaker_open_ms=_int(env, "LAYER_CACHE_BREAKER_MS", 2000, 0),
        max_record_bytes=_int(env, "LAYER_CACHE_MAX_RECORD_BYTES", 1024 * 1024, 1024),
        unknown_ms=_int(env, "LAYER_CACHE_UNKNOWN_MS", 300_000, 0),
        upstream_timeout_ms=_int(env, "LAYER_UPSTREAM_TIMEOUT_MS", 30_000, 1),
        reactive_warm=env.get("LAYER_CACHE_REACTIVE_WARM", "").strip().lower() in ("1", "true", "yes", "on"),
        hosts=hosts,
        as_namespace=env.get("AEROSPIKE_NAMESPACE", "").strip() or "hevlayer",
        set_prefix=env.get("AEROSPIKE_SET_PREFIX", "tpuf_"),
        cluster_name=env.get("AEROSPIKE_CLUSTER_NAME", "").strip() or None,
        pool_size=_int(env, "AEROSPIKE_POOL_SIZE", 4, 1),
        tend_ms=_int(env, "AEROSPIKE_TEND_MS", 250, 10),
        data_dir=env.get("LAYER_DATA_DIR", "").strip() or DEFAULT_DATA_DIR,
        max_bytes=_int(env, "LAYER_CACHE_MAX_BYTES", 256 * 1024 * 1024, 64 * 1024),
    )


def load_result_cache_settings(env: Mapping[str, str]) -> ResultCacheSettings:
    raw = env.get("LAYER_RESULT_CACHE", "").strip()
    max_bytes = _int(env, "LAYER_RESULT_CACHE_MAX_BYTES", 64 * 1024 * 1024, 4096)
    if raw.lower() in ("", "0", "off", "false", "no"):
        return ResultCacheSettings(max_bytes=max_bytes)
    if raw.lower() in ("1", "on", "true", "yes", "*"):
        return ResultCacheSettings(every_namespace=True, max_bytes=max_bytes)
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    return ResultCacheSettings(namespaces=names, max_bytes=max_bytes)


def load_key_settings(env: Mapping[str, str]) -> KeySettings:
    hosts = env.get("AEROSPIKE_HOSTS", "").strip()
    parse_hosts(hosts)  # validated here, with the variable's name
    return KeySettings(
        auth_rate_limit_per_min=_int(env, "LAYER_KEYS_AUTH_RATE_LIMIT_PER_MIN", 120, 1),
        aerospike_hosts=hosts,
        aerospike_namespace=env.get("AEROSPIKE_KEYS_NAMESPACE", "").strip() or "layer_keys",
        aerospike_set_prefix=env.get("AEROSPIKE_KEYS_SET_PREFIX", "").strip(),
        cluster_name=env.get("AEROSPIKE_CLUSTER_NAME", "").strip() or None,
    )


def load_server_settings(env: Mapping[str, str]) -> ServerSettings:
    max_headers = _int(env, "LAYER_MAX_HEADERS", 100, 1)
    if max_headers > 100:  # hyper (granian) has a fixed limit of 100
        raise ConfigError(f"LAYER_MAX_HEADERS must be an integer between 1 and 100, got {max_headers}")
    return ServerSettings(
        server=_choice(env, "LAYER_SERVER", SERVERS[0], SERVERS),
        header_timeout_ms=_int(env, "LAYER_HEADER_TIMEOUT_MS", 5_000, 100),
        body_timeout_ms=_int(env, "LAYER_BODY_TIMEOUT_MS", 10_000, 100),
        body_min_rate=_int(env, "LAYER_BODY_MIN_RATE", 1024, 0),
        keepalive_timeout_ms=_int(env, "LAYER_KEEPALIVE_TIMEOUT_MS", 20_000, 100),
        max_header_bytes=_int(env, "LAYER_MAX_HEADER_BYTES", 16 * 1024, 8 * 1024),
        max_headers=max_headers,
        max_connections=_int(env, "LAYER_MAX_CONNECTIONS", 1000, 1),
        backlog=_int(env, "LAYER_LISTEN_BACKLOG", 2048, 16),
    )


def load_queue_settings(env: Mapping[str, str]) -> QueueSettings:
    url = env.get("DATABASE_URL", "").strip() or None
    if url is not None and not url.startswith(("postgres://", "postgresql://")):
        raise ConfigError(f"DATABASE_URL must start with postgres:// or postgresql://, got {url.split('@')[-1]!r}")
    ttl_var = "LAYER_QUEUE_STATUS_CACHE_TTL_MS"  # PIPELINE_STATUS_CACHE_TTL_MS: the original's name, still read
    if not env.get(ttl_var, "").strip():
        ttl_var = "PIPELINE_STATUS_CACHE_TTL_MS"
    return QueueSettings(
        database_url=url,
        sweep_ms=_int(env, "LAYER_QUEUE_SWEEP_MS", 5000, 100),
        rate_window_seconds=_int(env, "LAYER_QUEUE_RATE_WINDOW_SECONDS", 60, 10),
        status_cache_ttl_ms=_int(env, ttl_var, 1000, 0),
        discovery_tick_ms=_int(env, "LAYER_UDF_DISCOVERY_TICK_MS", 1000, 50),
        max_document_bytes=_int(env, "LAYER_PIPELINE_MAX_DOCUMENT_BYTES", 32 * 1024 * 1024, 1024),
        idle_in_transaction_timeout_ms=_int(env, "LAYER_QUEUE_IDLE_IN_TRANSACTION_TIMEOUT_MS", 5000, 100),
    )


def _url(env: Mapping[str, str]) -> str | None:
    url = env.get("TURBOPUFFER_API_URL", "").strip()
    if url:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"TURBOPUFFER_API_URL must start with http:// or https://, got {url!r}")
        return url.rstrip("/")
    region = env.get("TURBOPUFFER_REGION", "").strip()
    if region:
        if not all(c.isalnum() or c in "-_" for c in region):
            raise ConfigError(f"TURBOPUFFER_REGION must look like 'gcp-us-central1', got {region!r}")
        return f"https://{region}.turbopuffer.com"
    return None


def _watch_shared(env: Mapping[str, str]) -> str:
    shared = _choice(env, "LAYER_WATCH_SHARED", "sqlite", ("sqlite", "aerospike", "off"))
    if shared == "aerospike" and not parse_hosts(env.get("AEROSPIKE_HOSTS", "")):
        raise ConfigError("LAYER_WATCH_SHARED=aerospike needs AEROSPIKE_HOSTS")
    return shared


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate every setting; raises ConfigError naming the first bad variable."""
    env = os.environ if env is None else env
    key = env.get("TURBOPUFFER_API_KEY", "").strip() or None
    return Config(
        upstream_url=_url(env),
        upstream_key=key,
        embedded=env.get(EMBEDDED_MARKER) == "1",
        data_dir=env.get("LAYER_DATA_DIR", "").strip() or DEFAULT_DATA_DIR,
        gateway_api_key=env.get("LAYER_GATEWAY_API_KEY", "").strip() or None,
        transport=load_transport_settings(env),
        max_body_bytes=_int(env, "LAYER_MAX_BODY_BYTES", 512 * 1024 * 1024, 1),
        max_buffered_body_bytes=_int(env, "LAYER_MAX_BUFFERED_BODY_BYTES", 256 * 1024 * 1024, 1),
        auth_verdict_ttl_s=_int(env, "LAYER_AUTH_VERDICT_TTL_S", 5, 0),
        poll_interval_ms=_int(env, "CONSISTENCY_POLL_INTERVAL_MS", 1000, 10),
        stable_poll_interval_ms=_int(env, "CONSISTENCY_STABLE_POLL_INTERVAL_MS", 5_000, 10),
        safety_margin_ms=_int(env, "CONSISTENCY_SAFETY_MARGIN_MS", 500, 0),
        watch_idle_ms=_int(env, "LAYER_WATCH_IDLE_MS", 600_000, 1000),
        watch_shared=_watch_shared(env),
        watch_fence=_choice(env, "LAYER_WATCH_FENCE", "on", ("on", "off")) == "on",
        watch_mirror_ms=_int(env, "LAYER_WATCH_MIRROR_MS", 250, 10),
        watch_fallback_polls_per_s=_int(env, "LAYER_WATCH_FALLBACK_POLLS_PER_S", 20, 1),
        drain_grace_ms=_int(env, "LAYER_DRAIN_GRACE_MS", 5_000, 0),
        drain_timeout_ms=_int(env, "LAYER_DRAIN_TIMEOUT_MS", 30_000, 0),
        list_concurrency=_int(env, "LAYER_LIST_CONCURRENCY", 16, 1),
        log_level=_choice(env, "LAYER_LOG_LEVEL", "info", LOG_LEVELS),
        metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        cache=load_cache_settings(env),
        keys=load_key_settings(env),
        server=load_server_settings(env),
        queue=load_queue_settings(env),
        results=load_result_cache_settings(env),
    )


def describe(cfg: Config) -> dict[str, Any]:
    """The settings without secrets, for start-up logs."""
    hide: Callable[[str | None], str | None] = lambda v: None if v is None else "***"
    out = {f: getattr(cfg, f) for f in cfg.__struct_fields__}
    out["upstream_key"] = hide(cfg.upstream_key)
    out["gateway_api_key"] = hide(cfg.gateway_api_key)
    out["queue"] = {**{f: getattr(cfg.queue, f) for f in cfg.queue.__struct_fields__},
                    "database_url": hide(cfg.queue.database_url)}
    return out
