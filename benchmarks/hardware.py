"""The machine: its CPU kind, float32 matmul rate and load, reported beside the figures."""

from __future__ import annotations

import os
import platform
import statistics
import time

import tensorflow as tf

MATMUL_SIZE = 2048
_MATMUL: dict = {}  # n -> the traced matmul, traced once


def matmul_gflops(n: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """Median GFLOP/s of a float32 [n, n] x [n, n] tf.matmul on this machine, right now.

    The reduction forces the product to be computed without copying it to the host.
    """
    a = tf.random.stateless_normal([n, n], seed=[1, 2])
    b = tf.random.stateless_normal([n, n], seed=[3, 4])
    fn = _MATMUL.setdefault(n, tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b))))
    fn(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def load_average() -> float:
    """1-minute load average: above the core count, other processes share the CPU."""
    return os.getloadavg()[0]


def machine() -> dict:
    """CPU, cores and library versions, for reading the figures later."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    from export import report
    from patchvae_tf.training import precision

    flags = precision.cpu_flags()
    return {
        "cpu": cpu,
        "cpu_kind": precision.cpu_kind(),
        "cpu_bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "versions": report.versions(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
    }
