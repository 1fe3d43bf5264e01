"""A single-node Aerospike wire test server (standard-library asyncio), per shared/contracts/aerospike-wire.md.

Run: python tests/support/aerospike_server.py --port P [--control-port Q] [--ns NAME ...] [--max-record-size N]
Prints "AEROSPIKE-TEST-SERVER READY port=P control=Q" once listening. Data is in memory, keyed by
(namespace, digest). Unimplemented commands answer result code 16 (UNSUPPORTED_FEATURE), never a fake success.
Test hooks are info commands (accepted on the data port and the control port, one command per request):
  hook-delay:ms=N[;ops=a,b]   hook-drop:count=N|-1[;ops=..]   hook-fail:code=C;count=N|-1[;ops=..]   hook-clear
ops are op classes: read, write, batch, scan, info (info only for delay/drop when named explicitly).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import struct
import time
import zlib
from dataclasses import dataclass

CF_EPOCH = 1262304000
HDR = struct.Struct(">BBBBBBIIIHH")  # header_sz info1 info2 info3 info4 result gen ttl txn_ttl n_fields n_ops
PROTO = struct.Struct(">Q")
FIELD_NS, FIELD_SET, FIELD_KEY, FIELD_DIGEST, FIELD_PID_ARRAY, FIELD_MAX_RECORDS = 0, 1, 2, 4, 11, 13
FIELD_BATCH, FIELD_FILTER = 41, 43
OK, NOT_FOUND, GEN_ERR, EXISTS, INCOMPAT, TOO_BIG, UNSUPPORTED, NS_NOT_FOUND, BIN_NAME = 0, 2, 3, 5, 12, 13, 16, 20, 21
REPLICAS_B64 = base64.b64encode(b"\xff" * 512).decode()


def now_cf() -> int:
    return int(time.time()) - CF_EPOCH


@dataclass
class Record:
    set_name: bytes
    key: bytes | None
    bins: dict[bytes, tuple[int, bytes]]
    gen: int = 0
    void: int = 0


@dataclass
class Hooks:
    delay_ms: int = 0
    delay_ops: set[str] | None = None
    drop_count: int = 0  # -1 = forever
    drop_ops: set[str] | None = None
    fail_code: int = 0
    fail_count: int = 0
    fail_ops: set[str] | None = None


def _applies(ops: set[str] | None, op: str) -> bool:
    return op != "info" if ops is None else op in ops


@dataclass
class Msg:
    info1: int
    info2: int
    info3: int
    gen: int
    ttl: int
    fields: dict[int, bytes]
    ops: list[tuple[int, int, bytes, bytes]]  # (op type, particle type, name, value)


def parse_fields_ops(buf: bytes, pos: int, n_fields: int, n_ops: int) -> tuple[dict[int, bytes], list, int]:
    fields: dict[int, bytes] = {}
    for _ in range(n_fields):
        (size,) = struct.unpack_from(">I", buf, pos)
        fields[buf[pos + 4]] = buf[pos + 5 : pos + 4 + size]
        pos += 4 + size
    ops = []
    for _ in range(n_ops):
        size, op_type, ptype, _ver, nlen = struct.unpack_from(">IBBBB", buf, pos)
        name = buf[pos + 8 : pos + 8 + nlen]
        ops.append((op_type, ptype, name, buf[pos + 8 + nlen : pos + 4 + size]))
        pos += 4 + size
    return fields, ops, pos


def encode_msg(
    result: int,
    gen: int = 0,
    void: int = 0,
    index: int = 0,
    bins: list | None = None,
    fields: list[tuple[int, bytes]] | None = None,
    info3: int = 0,
) -> bytes:
    bins = bins or []
    fields = fields or []
    parts = [HDR.pack(22, 0, 0, info3, 0, result, gen, void, index, len(fields), len(bins))]
    for ftype, data in fields:
        parts.append(struct.pack(">IB", len(data) + 1, ftype) + data)
    for name, ptype, value in bins:
        parts.append(struct.pack(">IBBBB", 4 + len(name) + len(value), 1, ptype, 0, len(name)) + name + value)
    return b"".join(parts)


def frame(ptype: int, body: bytes) -> bytes:
    return PROTO.pack((2 << 56) | (ptype << 48) | len(body)) + body


class Server:
    def __init__(
        self,
        namespaces: list[str],
        max_record_size: int,
        default_ttl: int,
        build: str,
        cluster_name: str | None,
        node: str,
    ) -> None:
        self.namespaces = [n.encode() for n in namespaces]
        self.max_record_size = max_record_size
        self.default_ttl = default_ttl
        self.build = build
        self.cluster_name = cluster_name
        self.node = node
        self.port = 0
        self.data: dict[tuple[bytes, bytes], Record] = {}
        self.hooks = Hooks()

    # ----- storage -----
    def lookup(self, ns: bytes, digest: bytes) -> Record | None:
        rec = self.data.get((ns, digest))
        if rec is not None and rec.void and rec.void <= now_cf():
            del self.data[(ns, digest)]
            return None
        return rec

    def void_for(self, ttl: int, old: Record | None) -> int:
        if ttl == 0xFFFFFFFF:
            return 0
        if ttl == 0xFFFFFFFE:
            return old.void if old else self.void_for(0, None)
        if ttl in (0, 0xFFFFFFFD):
            return now_cf() + self.default_ttl if self.default_ttl else 0
        return now_cf() + ttl

    def execute(
        self, ns: bytes, set_name: bytes, digest: bytes, key: bytes | None, m: Msg
    ) -> tuple[int, int, int, list]:
        """One record command -> (result code, generation, void time, reply bins)."""
        if ns not in self.namespaces:
            return NS_NOT_FOUND, 0, 0, []
        if FIELD_FILTER in m.fields:
            return UNSUPPORTED, 0, 0, []
        rec = self.lookup(ns, digest)
        if not m.info2 & 0x01:
            return self._read(rec, m)
        if m.info2 & 0x02 and not m.ops:
            if rec is None:
                return NOT_FOUND, 0, 0, []
            if (m.info2 & 0x04 and rec.gen != m.gen) or (m.info2 & 0x08 and m.gen <= rec.gen):
                return GEN_ERR, rec.gen, rec.void, []
            del self.data[(ns, digest)]
            return OK, 0, 0, []
        return self._write(ns, set_name, digest, key, rec, m)

    def _read(self, rec: Record | None, m: Msg) -> tuple[int, int, int, list]:
        if rec is None:
            return NOT_FOUND, 0, 0, []
        if m.info1 & 0x20:
            return OK, rec.gen, rec.void, []
        if m.info1 & 0x02:
            return OK, rec.gen, rec.void, [(n, t, v) for n, (t, v) in rec.bins.items()]
        out = []
        for op_type, _pt, name, _v in m.ops:
            if op_type != 1:
                return UNSUPPORTED, 0, 0, []
            if not name:
                out.extend((n, t, v) for n, (t, v) in rec.bins.items())
            elif name in rec.bins:
                out.append((name, *rec.bins[name]))
        return OK, rec.gen, rec.void, out

    def _write(
        self, ns: bytes, set_name: bytes, digest: bytes, key: bytes | None, rec: Record | None, m: Msg
    ) -> tuple[int, int, int, list]:
        if m.info2 & 0x20 and rec is not None:
            return EXISTS, rec.gen, rec.void, []
        if m.info3 & 0x28 and rec is None:
            return NOT_FOUND, 0, 0, []
        if rec is not None and ((m.info2 & 0x04 and rec.gen != m.gen) or (m.info2 & 0x08 and m.gen <= rec.gen)):
            return GEN_ERR, rec.gen, rec.void, []
        replace = m.info3 & 0x30
        bins = {} if (rec is None or replace) else dict(rec.bins)
        out, all_ops = [], bool(m.info2 & 0x80)
        for op_type, ptype, name, value in m.ops:
            if len(name) > 15:
                return BIN_NAME, 0, 0, []
            if op_type == 1:  # READ (sees earlier writes)
                if not name:
                    out.extend((n, t, v) for n, (t, v) in bins.items())
                elif name in bins:
                    out.append((name, *bins[name]))
                elif all_ops:
                    out.append((name, 0, b""))
                continue
            if op_type == 2:  # WRITE
                if ptype == 0:
                    bins.pop(name, None)
                else:
                    bins[name] = (ptype, value)
            elif op_type == 5:  # INCR
                cur = bins.get(name)
                if ptype == 1 and (cur is None or cur[0] == 1):
                    base = struct.unpack(">q", cur[1])[0] if cur else 0
                    total = (base + struct.unpack(">q", value)[0] + 2**63) % 2**64 - 2**63
                    bins[name] = (1, struct.pack(">q", total))
                elif ptype == 2 and (cur is None or cur[0] == 2):
                    base = struct.unpack(">d", cur[1])[0] if cur else 0.0
                    bins[name] = (2, struct.pack(">d", base + struct.unpack(">d", value)[0]))
                else:
                    return INCOMPAT, 0, 0, []
            elif op_type in (9, 10):  # APPEND / PREPEND
                cur = bins.get(name)
                if cur is not None and cur[0] != ptype or ptype not in (3, 4):
                    return INCOMPAT, 0, 0, []
                old = cur[1] if cur else b""
                bins[name] = (ptype, old + value if op_type == 9 else value + old)
            elif op_type == 11:  # TOUCH
                if rec is None:
                    return NOT_FOUND, 0, 0, []
            elif op_type == 14:  # DELETE whole record
                bins = {}
            else:
                return UNSUPPORTED, 0, 0, []
            if all_ops:
                out.append((name, 0, b""))
        size = 40 + len(key or b"") + sum(8 + len(n) + len(v) for n, (_t, v) in bins.items())
        if size > self.max_record_size:
            return TOO_BIG, 0, 0, []
        if not bins:
            if rec is not None:
                del self.data[(ns, digest)]
            return OK, 0, 0, out
        gen = 1 if rec is None else (rec.gen % 0xFFFF) + 1
        void = self.void_for(m.ttl, rec)
        self.data[(ns, digest)] = Record(
            set_name, key if key is not None else (rec.key if rec else None), bins, gen, void
        )
        return OK, gen, void, out

    # ----- commands -----
    def single(self, m: Msg) -> bytes:
        ns, set_name = m.fields.get(FIELD_NS, b""), m.fields.get(FIELD_SET, b"")
        rc, gen, void, bins = self.execute(ns, set_name, m.fields[FIELD_DIGEST], m.fields.get(FIELD_KEY), m)
        return encode_msg(rc, gen, void, 0, bins)

    def batch(self, m: Msg, fail_code: int = 0) -> bytes:
        if FIELD_FILTER in m.fields or FIELD_BATCH not in m.fields:
            return encode_msg(UNSUPPORTED, info3=0x01)
        buf = m.fields[FIELD_BATCH]
        count, _flags = struct.unpack_from(">IB", buf, 0)
        pos, out, prev = 5, [], None
        for _ in range(count):
            (index,) = struct.unpack_from(">I", buf, pos)
            digest, rtype = buf[pos + 4 : pos + 24], buf[pos + 24]
            pos += 25
            if rtype == 1:
                if prev is None:
                    return encode_msg(4, info3=0x01)
                row = prev
            else:
                info1 = info2 = info3 = gen = 0
                ttl = 0xFFFFFFFD
                if rtype == 0:
                    info1 = buf[pos]
                    pos += 1
                else:
                    if rtype & 0x02:
                        info1, info2, info3 = buf[pos], buf[pos + 1], buf[pos + 2]
                        pos += 3
                    if rtype & 0x10:
                        pos += 1
                    if rtype & 0x04:
                        (gen,) = struct.unpack_from(">H", buf, pos)
                        pos += 2
                    if rtype & 0x08:
                        (ttl,) = struct.unpack_from(">I", buf, pos)
                        pos += 4
                n_fields, n_ops = struct.unpack_from(">HH", buf, pos)
                fields, ops, pos = parse_fields_ops(buf, pos + 4, n_fields, n_ops)
                row = prev = Msg(info1, info2, info3, gen, ttl, fields, ops)
            if fail_code:
                rc, gen_, void, bins = fail_code, 0, 0, []
            elif not row.info1 & 0x01 and not row.info2 & 0x01:
                rc, gen_, void, bins = UNSUPPORTED, 0, 0, []  # e.g. batch_apply (UDF)
            elif any(f in row.fields for f in (30, 31, 32)):
                rc, gen_, void, bins = UNSUPPORTED, 0, 0, []
            else:
                rc, gen_, void, bins = self.execute(
                    row.fields.get(FIELD_NS, b""),
                    row.fields.get(FIELD_SET, b""),
                    digest,
                    row.fields.get(FIELD_KEY),
                    row,
                )
            out.append(encode_msg(rc, gen_, void, index, bins))
        out.append(encode_msg(OK, info3=0x01))
        return b"".join(out)

    def scan(self, m: Msg) -> list[bytes]:
        if FIELD_FILTER in m.fields or any(21 <= f <= 26 or 30 <= f <= 33 for f in m.fields):
            return [encode_msg(UNSUPPORTED, info3=0x01)]
        ns, set_name = m.fields.get(FIELD_NS, b""), m.fields.get(FIELD_SET, b"")
        if ns not in self.namespaces:
            return [encode_msg(NS_NOT_FOUND, info3=0x01)]
        pids = None
        if FIELD_PID_ARRAY in m.fields:
            raw = m.fields[FIELD_PID_ARRAY]
            pids = set(struct.unpack(f"<{len(raw) // 2}H", raw))
        limit = struct.unpack(">Q", m.fields[FIELD_MAX_RECORDS])[0] if FIELD_MAX_RECORDS in m.fields else 0
        nobins = bool(m.info1 & 0x20)
        wanted = [name for op_type, _p, name, _v in m.ops if op_type == 1 and name]
        chunks, sent = [], 0
        for rns, digest in list(self.data):
            if rns != ns or (limit and sent >= limit):
                continue
            rec = self.lookup(ns, digest)
            if rec is None or (set_name and rec.set_name != set_name):
                continue
            if pids is not None and ((digest[0] | digest[1] << 8) & 4095) not in pids:
                continue
            fields = [(FIELD_NS, ns), (FIELD_SET, rec.set_name), (FIELD_DIGEST, digest)]
            if rec.key is not None:
                fields.append((FIELD_KEY, rec.key))
            if nobins:
                bins = []
            elif wanted:
                bins = [(n, *rec.bins[n]) for n in wanted if n in rec.bins]
            else:
                bins = [(n, t, v) for n, (t, v) in rec.bins.items()]
            chunks.append(encode_msg(OK, rec.gen, rec.void, 0, bins, fields))
            sent += 1
        chunks.append(encode_msg(OK, info3=0x01))
        return chunks

    # ----- info -----
    def info_value(self, cmd: str) -> str:
        name, _, params = cmd.partition(":")
        kv = dict(p.split("=", 1) for p in params.split(";") if "=" in p)
        if name == "node":
            return self.node
        if name in ("partition-generation", "peers-generation", "rebalance-generation"):
            return "1"
        if name in ("build", "version"):
            return self.build
        if name == "edition":
            return "Aerospike Community Edition"
        if name == "cluster-name":
            return self.cluster_name or "null"
        if name.startswith("service"):
            return f"127.0.0.1:{self.port}"
        if name.startswith("peers-"):
            return "1,,[]"
        if name in ("replicas", "replicas-all", "replicas-master"):
            return ";".join(f"{ns.decode()}:0,1,{REPLICAS_B64}" for ns in self.namespaces)
        if name == "rack-ids":
            return ";".join(f"{ns.decode()}:0" for ns in self.namespaces)
        if name == "namespaces":
            return ";".join(ns.decode() for ns in self.namespaces)
        if name in ("user-agent-set", "features"):
            return "ok" if name == "user-agent-set" else "peers;batch-any;pquery;query-show"
        if name == "statistics":
            return f"objects={len(self.data)}"
        if name in ("truncate", "truncate-namespace"):
            ns, set_name = kv.get("namespace", "").encode(), kv.get("set", "").encode()
            if ns not in self.namespaces:
                return "ERROR:20:namespace not found"
            for k in [k for k, r in self.data.items() if k[0] == ns and (not set_name or r.set_name == set_name)]:
                del self.data[k]
            return "ok"
        if name.startswith("hook-"):
            return self.hook(name, kv)
        return "ERROR:16:unsupported info command"

    def hook(self, name: str, kv: dict[str, str]) -> str:
        ops = set(kv["ops"].split(",")) if kv.get("ops") else None
        h = self.hooks
        if name == "hook-delay":
            h.delay_ms, h.delay_ops = int(kv.get("ms", "0")), ops
        elif name == "hook-drop":
            h.drop_count, h.drop_ops = int(kv.get("count", "-1")), ops
        elif name == "hook-fail":
            h.fail_code, h.fail_count, h.fail_ops = int(kv["code"]), int(kv.get("count", "-1")), ops
        elif name == "hook-clear":
            self.hooks = Hooks()
        else:
            return "ERROR:4:unknown hook"
        return "ok"

    # ----- connection -----
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(8)
                (word,) = PROTO.unpack(head)
                ptype, size = (word >> 48) & 0xFF, word & 0xFFFFFFFFFFFF
                body = await reader.readexactly(size)
                if ptype == 4:
                    inner = zlib.decompress(body[8:])
                    (word,) = PROTO.unpack(inner[:8])
                    ptype, body = (word >> 48) & 0xFF, inner[8:]
                if ptype == 2:  # admin/login: security not enabled
                    writer.write(frame(2, bytes([0, 52]) + bytes(14)))
                elif ptype == 1:
                    cmds = [c for c in body.decode().split("\n") if c]
                    if not await self.apply_hooks(
                        "info" if not any(c.startswith("hook-") for c in cmds) else "", writer
                    ):
                        return
                    writer.write(frame(1, "".join(f"{c}\t{self.info_value(c)}\n" for c in cmds).encode()))
                elif ptype == 3:
                    if not await self.message(body, writer):
                        return
                else:
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def apply_hooks(self, op: str, writer: asyncio.StreamWriter) -> bool:
        """Delay/drop hooks; False = the connection was dropped."""
        h = self.hooks
        if not op:
            return True
        if h.drop_count and _applies(h.drop_ops, op):
            if h.drop_count > 0:
                h.drop_count -= 1
            writer.transport.abort()
            return False
        if h.delay_ms and _applies(h.delay_ops, op):
            await asyncio.sleep(h.delay_ms / 1000)
        return True

    async def message(self, body: bytes, writer: asyncio.StreamWriter) -> bool:
        _hsz, info1, info2, info3, _i4, _rc, gen, ttl, _tt, n_fields, n_ops = HDR.unpack_from(body, 0)
        fields, ops, _ = parse_fields_ops(body, 22, n_fields, n_ops)
        m = Msg(info1, info2, info3, gen, ttl, fields, ops)
        batch = bool(info1 & 0x08)
        is_scan = not batch and FIELD_DIGEST not in fields
        op = "batch" if batch else "scan" if is_scan else "write" if info2 & 0x01 else "read"
        if not await self.apply_hooks(op, writer):
            return False
        h = self.hooks
        if h.fail_count and _applies(h.fail_ops, op):
            if h.fail_count > 0:
                h.fail_count -= 1
            if batch:  # every row answers the code; the batch itself completes
                writer.write(frame(3, self.batch(m, fail_code=h.fail_code)))
            else:
                writer.write(frame(3, encode_msg(h.fail_code, info3=0x01 if is_scan else 0)))
            return True
        if batch:
            writer.write(frame(3, self.batch(m)))
        elif is_scan:
            chunks = self.scan(m)
            for i in range(0, len(chunks), 200):
                writer.write(frame(3, b"".join(chunks[i : i + 200])))
        else:
            writer.write(frame(3, self.single(m)))
        return True


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--ns", action="append", default=None)
    ap.add_argument("--max-record-size", type=int, default=1024 * 1024)
    ap.add_argument("--default-ttl", type=int, default=0)
    ap.add_argument("--build", default="7.2.0.0")
    ap.add_argument("--cluster-name", default=None)
    ap.add_argument("--node", default="BB9000000000001")
    a = ap.parse_args()
    srv = Server(
        a.ns or ["test", "hevlayer", "layer_keys"], a.max_record_size, a.default_ttl, a.build, a.cluster_name, a.node
    )
    srv.port = a.port
    servers = [await asyncio.start_server(srv.handle, "127.0.0.1", a.port, reuse_address=True)]
    if a.control_port:
        servers.append(await asyncio.start_server(srv.handle, "127.0.0.1", a.control_port, reuse_address=True))
    print(f"AEROSPIKE-TEST-SERVER READY port={a.port} control={a.control_port}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
