"""`layer-gateway keys mint|list|get|revoke|delete` against a running gateway, with the admin key (stdlib only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
EXIT_OK, EXIT_HTTP, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A message for stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_HTTP) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layer-gateway keys", description="Manage scoped API keys on a Layer gateway.")
    p.add_argument("--url", default=os.environ.get("LAYER_GATEWAY_URL") or DEFAULT_URL,
                   help="gateway base URL (env LAYER_GATEWAY_URL, default %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("LAYER_GATEWAY_API_KEY"),
                   help="admin key: the store key or an admin minted key (env LAYER_GATEWAY_API_KEY)")
    sub = p.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint", help="mint a key; prints the token once")
    mint.add_argument("--name", required=True)
    mint.add_argument("--owner")
    mint.add_argument("--description")
    mint.add_argument("--expires-after", default="365d", help="`12h`, `365d` or `never` (default %(default)s)")
    mint.add_argument("--grant", action="append", default=[], metavar="TARGET:SCOPES[:GLOBS]",
                      help="e.g. vectorstore.default:read,write:cohort-*,products (repeatable)")
    mint.add_argument("--admin", action="store_true", help="shortcut for --grant layer:admin")
    mint.add_argument("--entitlements", help="the entitlements object as JSON (merged with --grant)")
    lst = sub.add_parser("list", help="list keys")
    lst.add_argument("--include-revoked", action="store_true", help="also show revoked and expired keys")
    for name, text in (("get", "show one key"), ("revoke", "revoke a key (kept, no longer valid)"),
                       ("delete", "delete a key for good")):
        sub.add_parser(name, help=text).add_argument("key_id")
    return p


def parse_grant(text: str) -> tuple[str, dict[str, Any]]:
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise CliError(f"--grant must look like TARGET:SCOPES[:GLOBS], got {text!r}", EXIT_USAGE)
    ent: dict[str, Any] = {"scopes": [s for s in parts[1].split(",") if s]}
    if len(parts) == 3:
        ent["namespaces"] = [g for g in parts[2].split(",") if g]
    return parts[0], ent


def entitlements(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.entitlements:
        try:
            out = json.loads(args.entitlements)
        except json.JSONDecodeError as exc:
            raise CliError(f"--entitlements is not valid JSON: {exc}", EXIT_USAGE) from None
        if not isinstance(out, dict):
            raise CliError("--entitlements must be a JSON object", EXIT_USAGE)
    for text in args.grant:
        target, ent = parse_grant(text)
        out[target] = ent
    if args.admin:
        out["layer"] = {"scopes": ["admin"]}
    return out


def request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    if not args.api_key:
        raise CliError("no admin key: pass --api-key or set LAYER_GATEWAY_API_KEY", EXIT_USAGE)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {args.api_key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode(errors="replace")
        try:
            err = json.loads(raw)
            detail = f"{err.get('error')}: {err.get('message', '')}".rstrip(": ")
        except (json.JSONDecodeError, AttributeError):
            detail = raw.strip() or exc.reason
        raise CliError(f"{method} {path} failed with HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the gateway at {args.url}: {exc}") from None


def run(args: argparse.Namespace) -> Any:
    cmd = args.command
    if cmd == "mint":
        body = {"name": args.name, "owner": args.owner, "description": args.description,
                "entitlements": entitlements(args), "expiresAfter": args.expires_after}
        return request(args, "POST", "/v2/keys", {k: v for k, v in body.items() if v is not None})
    if cmd == "list":
        query = "?includeRevoked=true" if args.include_revoked else ""
        return request(args, "GET", "/v2/keys" + query)
    key_path = "/v2/keys/" + urllib.parse.quote(args.key_id, safe="")
    if cmd == "get":
        return request(args, "GET", key_path)
    if cmd == "revoke":
        return request(args, "POST", key_path + "/revoke")
    return request(args, "DELETE", key_path)


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        result = run(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    print(json.dumps(result, indent=2))
    if args.command == "mint":
        print("store the token now: it is shown only once", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
