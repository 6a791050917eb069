"""TF Serving's --batching_parameters_file, its values derived from measured throughput."""

from __future__ import annotations

import os

from export import layout

BATCHING_FILE = layout.BATCHING

# The sizes TF Serving pads a merged batch up to: a few, so few shapes are traced.
CANDIDATE_SIZES = (1, 8, 32, 128)
# A batch size is worth waiting for while it still adds this much throughput.
MIN_GAIN = 1.1


def parameters(images_per_second: dict[int, float], cores: int | None = None) -> dict:
    """Batching values from serving_default's images/s at CANDIDATE_SIZES on this host.

    - max_batch_size: the smallest measured size whose throughput is within MIN_GAIN of the
      best measured: larger merged batches would add latency for little more throughput.
    - allowed_batch_sizes: the measured sizes up to it (TF Serving pads to the next one).
    - batch_timeout_micros: the time one image takes alone (1 / images/s at batch 1): a
      request waits for company at most as long as its own inference, so a lone request is
      at worst twice as slow, while under load the merged batch runs at batch throughput.
    - num_batch_threads: the cores, so merged batches run in parallel as TF Serving advises
      for CPUs; max_enqueued_batches bounds the queue (further requests get UNAVAILABLE).
    """
    sizes = sorted(images_per_second)
    if sizes[0] != 1:
        raise ValueError(f"needs the throughput at batch 1, got sizes {sizes}")
    best = max(images_per_second.values())
    max_batch = next(b for b in sizes if images_per_second[b] * MIN_GAIN >= best)
    threads = cores or os.cpu_count() or 1
    return {
        "max_batch_size": max_batch,
        "batch_timeout_micros": max(100, int(round(1e6 / images_per_second[1], -2))),
        "num_batch_threads": threads,
        "max_enqueued_batches": 100,
        "allowed_batch_sizes": [b for b in sizes if b <= max_batch],
        "pad_variable_length_inputs": False,
    }


def text(params: dict, images_per_second: dict[int, float], where: str) -> str:
    """The file's text (protobuf text format), with the measurement it came from."""
    measured = ", ".join(f"batch {b}: {v:.0f}" for b, v in sorted(images_per_second.items()))
    lines = [
        "# TF Serving --enable_batching --batching_parameters_file=<this file>.",
        f"# From serving_default's images/s measured {where}: {measured}.",
        "# Re-measure on the serving machine: python -m benchmarks --sections=encoder.",
    ]
    for key in ("max_batch_size", "batch_timeout_micros", "num_batch_threads"):
        lines.append(f"{key} {{ value: {int(params[key])} }}")
    lines.append(f"max_enqueued_batches {{ value: {int(params['max_enqueued_batches'])} }}")
    lines += [f"allowed_batch_sizes: {b}" for b in params["allowed_batch_sizes"]]
    lines.append(f"pad_variable_length_inputs: {str(params['pad_variable_length_inputs']).lower()}")
    return "\n".join(lines) + "\n"
