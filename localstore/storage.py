"""Durability: a per-namespace append-only log of resolved writes plus a compacted snapshot."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from .state import Effects, Namespace

COMPACT_BYTES = int(os.environ.get("LOCALSTORE_COMPACT_BYTES", str(64 << 20)))
LEN = struct.Struct("<I")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgspec.msgpack.Ext(1, obj.astype("<f4").tobytes())
    raise TypeError(f"cannot encode {type(obj)}")


def _ext_hook(code: int, data: memoryview) -> Any:
    return np.frombuffer(bytes(data), dtype="<f4").astype(np.float32)


ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
DECODER = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


class Store:
    """Files under DATA_DIR/namespaces/<name>/ : snapshot.bin and log.bin."""

    def __init__(self, data_dir: str) -> None:
        self.root = Path(data_dir) / "namespaces"
        self.root.mkdir(parents=True, exist_ok=True)
        self.fds: dict[str, int] = {}
        self.sizes: dict[str, int] = {}

    def _fd(self, name: str) -> int:
        fd = self.fds.get(name)
        if fd is None:
            d = self.root / name
            d.mkdir(parents=True, exist_ok=True)
            fd = os.open(d / "log.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self.fds[name] = fd
            self.sizes[name] = os.fstat(fd).st_size
        return fd

    def append(self, ns: Namespace, fx: Effects) -> None:
        """Write one record (metadata + effects) to the OS before the write is acknowledged."""
        body = ENCODER.encode({"meta": ns.meta(), "fx": list(fx.items())})
        fd = self._fd(ns.name)
        os.write(fd, LEN.pack(len(body)) + body)
        self.sizes[ns.name] += len(body) + 4

    def maybe_compact(self, ns: Namespace) -> None:
        """Snapshot + truncate once the log is large; call after the appended effects are applied."""
        if self.sizes.get(ns.name, 0) > COMPACT_BYTES:
            self.compact(ns)

    def compact(self, ns: Namespace) -> None:
        d = self.root / ns.name
        body = ENCODER.encode({"meta": ns.meta(), "fx": list(ns.current.rows.items())})
        tmp = d / "snapshot.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / "snapshot.bin")
        fd = self._fd(ns.name)
        os.ftruncate(fd, 0)
        self.sizes[ns.name] = 0

    def drop(self, name: str) -> None:
        fd = self.fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        self.sizes.pop(name, None)
        shutil.rmtree(self.root / name, ignore_errors=True)

    def load(self) -> dict[str, Namespace]:
        out: dict[str, Namespace] = {}
        for d in sorted(self.root.iterdir()):
            if not d.is_dir():
                continue
            ns = Namespace(d.name)
            seen = False
            snap = d / "snapshot.bin"
            if snap.exists():
                rec = DECODER.decode(snap.read_bytes())
                self._apply(ns, rec)
                seen = True
            log = d / "log.bin"
            if log.exists():
                data = log.read_bytes()
                off = 0
                while off + 4 <= len(data):
                    (n,) = LEN.unpack_from(data, off)
                    if off + 4 + n > len(data):
                        break
                    try:
                        rec = DECODER.decode(data[off + 4:off + 4 + n])
                    except msgspec.DecodeError:
                        break
                    self._apply(ns, rec)
                    seen = True
                    off += 4 + n
                if off != len(data):  # torn tail from a crash: drop it
                    with open(log, "r+b") as f:
                        f.truncate(off)
            if seen:
                out[ns.name] = ns
            else:
                shutil.rmtree(d, ignore_errors=True)
        return out

    @staticmethod
    def _apply(ns: Namespace, rec: dict[str, Any]) -> None:
        ns.set_meta(rec["meta"])
        ns.current.apply({k: v for k, v in rec["fx"]})
