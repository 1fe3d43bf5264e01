"""Profile one gateway worker with py-spy while it proxies queries; save the top 10 frames (self and total)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench import load
from bench.load import Request
from bench.procs import Proc


def ensure_py_spy() -> str:
    exe = shutil.which("py-spy")
    if exe is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True, timeout=300)
        exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("py-spy not available")
    return exe


def top_frames(raw: str, n: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():  # "frame;frame;...;leaf count"
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        samples += c
        frames = stack.split(";")
        own[frames[-1]] += c
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            if "gateway/" in f and "__main__" not in f:
                total[f] += c

    def pct(items: list[tuple[str, int]]) -> list[tuple[str, float]]:
        return [(f, round(100 * c / max(1, samples), 1)) for f, c in items]
    return pct(own.most_common(n)), pct(total.most_common(n)), samples


def profile(gw: Proc, url: str, req: Request, out_path: Path, seconds: int = 5) -> dict[str, Any]:
    exe = ensure_py_spy()
    pids = gw.pids()
    worker = pids[-1]
    with tempfile.TemporaryDirectory(prefix="bench-pyspy-") as tmp:
        raw_path = Path(tmp) / "raw.txt"
        loader = threading.Thread(target=load.run, args=(url, req, seconds + 2), kwargs={"warmup": 1})
        loader.start()
        try:
            proc = subprocess.run([exe, "record", "--pid", str(worker), "--duration", str(seconds), "--rate", "250",
                                   "--format", "raw", "--output", str(raw_path), "--nonblocking"],
                                  capture_output=True, text=True, timeout=seconds + 60, check=False)
        finally:
            loader.join(timeout=seconds + 60)
        if proc.returncode != 0 or not raw_path.exists():
            raise RuntimeError(f"py-spy failed ({proc.returncode}): {proc.stderr[-400:]}")
        raw = raw_path.read_text()
    own, total, samples = top_frames(raw)
    lines = [f"py-spy profile of gateway worker pid {worker} proxying {req.method} {req.path} ({samples} samples)",
             "", "Top 10 frames by own time (%):"]
    lines += [f"{p:6.1f}  {f}" for f, p in own]
    lines += ["", "Top 10 gateway frames by total time (%), i.e. including what they call:"]
    lines += [f"{p:6.1f}  {f}" for f, p in total]
    out_path.write_text("\n".join(lines) + "\n")
    return {"file": str(out_path), "samples": samples, "top_self": own}
