"""nginx configs for the benchmarks: the canned-response upstream and the plain keep-alive reverse proxy."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.procs import LOAD_CPU, PROXY_CPU, Proc, free_port, pinned, which_nginx

USER = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the canned files in a private temp dir
WATERMARK_NS = "bench-updating"
BIG_NS = "bench-big"
SCHEMA_NS = "bench-schema"  # a v1 schema with the gateway's stamp: the gateway rewrites it (compression bench)
QUERY_BODY = json.dumps({
    "rows": [{"id": f"doc-{i}", "$dist": 0.1 * i, "title": f"title {i}"} for i in range(1, 11)],
    "billing": {"billable_logical_bytes_queried": 1024, "billable_logical_bytes_returned": 96},
    "performance": {"cache_hit_ratio": 1.0, "cache_temperature": "hot", "server_total_ms": 3},
}, separators=(",", ":"))
WRITE_BODY = '{"status":"OK","message":"bench","rows_affected":1,"billing":{"billable_logical_bytes_written":64}}'
STABLE_META = '{"id":"bench","approx_row_count":3,"dimensions":4,"index":{"status":"up-to-date"}}'
UPDATING_META = '{"id":"bench","approx_row_count":3,"dimensions":4,"index":{"status":"updating","unindexed_bytes":4096}}'

_EVENTS = USER + "worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n" \
          "events {{ worker_connections 4096; }}\n"
_HTTP = ("access_log off; client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; "
         "fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi; "
         "keepalive_requests 1000000; keepalive_timeout 300s; client_max_body_size 0; "
         "client_body_buffer_size 2m;")


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("$", "${dollar}") + "'"


def big_rows(n: int) -> str:
    rows = [{"id": f"doc-{i}", "$dist": i / n, "title": f"title {i}", "n": i} for i in range(n)]
    return json.dumps({"rows": rows}, separators=(",", ":"))


def wide_schema(attrs: int) -> str:
    schema = {"id": {"type": "uint", "filterable": None, "full_text_search": None},
              "_hevlayer_upserted_at": {"type": "int", "filterable": True, "full_text_search": None}}
    schema.update({f"attribute_{i:03d}": {"type": "string", "filterable": True, "full_text_search": None}
                   for i in range(attrs)})
    return json.dumps(schema, separators=(",", ":"))


def canned_conf(root: Path, port: int, tls_port: int | None = None) -> str:
    """With `tls_port`: also https on that port, with root/cert.pem + root/key.pem (see make_tls_cert)."""
    root.mkdir(parents=True, exist_ok=True)
    tls = (f"listen 127.0.0.1:{tls_port} ssl reuseport backlog=4096; ssl_certificate {root}/cert.pem; "
           f"ssl_certificate_key {root}/key.pem;" if tls_port else "")
    (root / "meta.json").write_text(STABLE_META)
    (root / "big.json").write_text(big_rows(1000))
    (root / "schema.json").write_text(wide_schema(120))
    return _EVENTS.format(root=root) + f"""http {{ {_HTTP.format(root=root)}
  default_type application/json;
  geo $dollar {{ default "$"; }}
  server {{ listen 127.0.0.1:{port} reuseport backlog=4096; {tls}
    location = /v2/namespaces/{WATERMARK_NS}/metadata {{ alias {root}/meta.json; }}
    location = /v2/namespaces/{BIG_NS}/query {{ alias {root}/big.json; error_page 405 =200 $uri; }}
    location = /v1/namespaces/{SCHEMA_NS}/schema {{ alias {root}/schema.json; }}
    location ~ ^/v2/namespaces/[^/]+/query$ {{ return 200 {_quote(QUERY_BODY)}; }}
    location ~ ^/v2/namespaces/[^/]+/metadata$ {{ return 200 {_quote(STABLE_META)}; }}
    location ~ ^/v2/namespaces/[^/]+$ {{ return 200 {_quote(WRITE_BODY)}; }}
    location = /health {{ return 200 '{{"status":"ok"}}'; }}
    location / {{ return 404 '{{"status":"error","error":"not found"}}'; }}
  }}
}}
"""


def proxy_conf(root: Path, port: int, upstream_port: int) -> str:
    return _EVENTS.format(root=root) + f"""http {{ {_HTTP.format(root=root)}
  upstream tpuf {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://tpuf; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering on; proxy_request_buffering on; }}
  }}
}}
"""


def start_nginx(name: str, root: Path, conf: str, port: int, cpu: str) -> Proc:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "nginx.conf"
    path.write_text(conf)
    nginx = which_nginx()
    if nginx is None:
        raise RuntimeError("nginx not installed")
    cmd = pinned([nginx, "-p", str(root), "-c", str(path), "-g", "daemon off;"], cpu)
    return Proc(f"bench-{name}", cmd, None, f"http://127.0.0.1:{port}", "/health")


def start_canned(root: Path) -> tuple[Proc, str]:
    port = free_port()
    return start_nginx("canned", root, canned_conf(root, port), port, LOAD_CPU), f"http://127.0.0.1:{port}"


def make_tls_cert(root: Path) -> str:
    """A CA made now and a certificate for 127.0.0.1 it signed (root/cert.pem, root/key.pem); returns the CA file."""
    import trustme

    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    return str(root / "ca.pem")


def start_canned_tls(root: Path) -> tuple[Proc, str, str]:
    """The canned upstream on http and https at once: (proc, https URL, CA file)."""
    ca_file = make_tls_cert(root)
    port, tls_port = free_port(), free_port()
    proc = start_nginx("canned-tls", root, canned_conf(root, port, tls_port), port, LOAD_CPU)
    return proc, f"https://127.0.0.1:{tls_port}", ca_file


def start_proxy(root: Path, upstream_url: str) -> tuple[Proc, str]:
    port = free_port()
    up_port = int(upstream_url.rsplit(":", 1)[1])
    proc = start_nginx("nginx-proxy", root, proxy_conf(root, port, up_port), port, PROXY_CPU)
    return proc, f"http://127.0.0.1:{port}"


def set_updating(root: Path, updating: bool) -> None:
    (root / "meta.json").write_text(UPDATING_META if updating else STABLE_META)

