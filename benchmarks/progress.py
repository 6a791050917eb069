"""The progress lines the benchmarks print while they run."""

from __future__ import annotations

import time


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ratio_text(c: dict) -> str:
    """A paired figure's ratio as the log shows it."""
    return f"{c['ratio']}x" if c.get("ratio") is not None else "no reference"
