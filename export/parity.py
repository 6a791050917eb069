"""Numbers that show the runtimes agree: Keras, reloaded SavedModel, ONNX Runtime."""

from __future__ import annotations

import numpy as np

# Float32 runtimes must agree this closely on every output (max abs difference).
TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """Two runtimes disagree beyond TOLERANCE: the export is refused."""


def max_abs(a: dict, b: dict) -> dict[str, float]:
    """Output name -> max |a - b| over the batch; a and b share names and shapes."""
    if set(a) != set(b):
        raise ParityError(f"outputs differ: {sorted(a)} vs {sorted(b)}")
    out = {}
    for k in sorted(a):
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        if x.shape != y.shape:
            raise ParityError(f"output {k!r} has shape {x.shape} vs {y.shape}")
        out[k] = float(np.max(np.abs(x - y))) if x.size else 0.0
    return out


def check(name: str, diffs: dict[str, float]) -> None:
    """Raises ParityError naming the output and the numbers when a diff exceeds TOLERANCE."""
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    if bad:
        worst = ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
        raise ParityError(f"{name}: max abs difference {worst} exceeds {TOLERANCE:g}")


def worst(section: dict) -> dict[str, float]:
    """Comparison -> its largest difference over the outputs, of the report's parity section."""
    return {k: max(d.values()) for k, d in section.items() if isinstance(d, dict) and d}


def agreement(reference: dict, other: dict) -> dict[str, dict[str, float]]:
    """How far a lower-precision model is from the float32 one, per output.

    max_abs and mean_abs, relative = max_abs / max |reference|, and for features the mean
    cosine similarity per image (what a recognition deployment compares).
    """
    out = {}
    for k in sorted(reference):
        x, y = np.asarray(reference[k], np.float64), np.asarray(other[k], np.float64)
        d = np.abs(x - y)
        stats = {
            "max_abs": float(d.max()),
            "mean_abs": float(d.mean()),
            "relative": float(d.max() / max(np.abs(x).max(), 1e-12)),
        }
        a, b = x.reshape(len(x), -1), y.reshape(len(y), -1)
        cos = np.sum(a * b, 1) / np.maximum(
            np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
        )
        stats["mean_cosine"] = float(cos.mean())
        out[k] = stats
    return out
