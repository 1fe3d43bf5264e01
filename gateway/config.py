"""Every gateway setting, read once from the environment into one frozen Struct."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from msgspec import Struct

DEFAULT_DATA_DIR = "./.layer"
TRANSPORTS = ("pyreqwest", "aiohttp")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Set by `layer-gateway serve` in the environment its workers inherit when it started the local store itself.
EMBEDDED_MARKER = "LAYER_EMBEDDED_STORE"


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable."""


class Config(Struct, frozen=True):
    upstream_url: str | None  # None only in the serve process before the embedded store is up
    upstream_key: str | None  # None = derive-from-request: the caller's bearer goes upstream
    embedded: bool
    data_dir: str
    gateway_api_key: str | None
    upstream_transport: str
    upstream_timeout_ms: int
    max_body_bytes: int
    poll_interval_ms: int
    stable_poll_interval_ms: int
    safety_margin_ms: int
    watch_idle_ms: int
    drain_grace_ms: int
    drain_timeout_ms: int
    list_concurrency: int
    log_level: str
    metrics_dir: str | None


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
        upstream_transport=_choice(env, "LAYER_UPSTREAM_TRANSPORT", "pyreqwest", TRANSPORTS),
        upstream_timeout_ms=_int(env, "LAYER_UPSTREAM_TIMEOUT_MS", 30_000, 1),
        max_body_bytes=_int(env, "LAYER_MAX_BODY_BYTES", 512 * 1024 * 1024, 1),
        poll_interval_ms=_int(env, "CONSISTENCY_POLL_INTERVAL_MS", 1000, 10),
        stable_poll_interval_ms=_int(env, "CONSISTENCY_STABLE_POLL_INTERVAL_MS", 5_000, 10),
        safety_margin_ms=_int(env, "CONSISTENCY_SAFETY_MARGIN_MS", 500, 0),
        watch_idle_ms=_int(env, "LAYER_WATCH_IDLE_MS", 600_000, 1000),
        drain_grace_ms=_int(env, "LAYER_DRAIN_GRACE_MS", 0, 0),
        drain_timeout_ms=_int(env, "LAYER_DRAIN_TIMEOUT_MS", 30_000, 0),
        list_concurrency=_int(env, "LAYER_LIST_CONCURRENCY", 16, 1),
        log_level=_choice(env, "LAYER_LOG_LEVEL", "info", LOG_LEVELS),
        metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
    )


def describe(cfg: Config) -> dict[str, Any]:
    """The settings without secrets, for start-up logs."""
    hide: Callable[[str | None], str | None] = lambda v: None if v is None else "***"
    out = {f: getattr(cfg, f) for f in cfg.__struct_fields__}
    out["upstream_key"] = hide(cfg.upstream_key)
    out["gateway_api_key"] = hide(cfg.gateway_api_key)
    return out
