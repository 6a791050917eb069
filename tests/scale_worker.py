"""Subprocess for tests/test_distribute.py: trains a config given as JSON, saves final weights.

Usage: python tests/scale_worker.py JOB.json, JOB = {"config": Config.to_dict(),
"out": path.npz, "fixed_latents": bool} or {"runs": [JOB, ...]}. Runs in its own process
because logical CPU devices and TF_CONFIG clusters must be set before TensorFlow starts.

fixed_latents replaces the two samples (occurrence, appearance) by their means: the
strategies draw their random numbers differently, so only without sampling noise can one
compare the default strategy and MirroredStrategy number for number.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from patchvae_tf import training  # noqa: E402
from patchvae_tf.config import Config  # noqa: E402
from patchvae_tf.model import latents  # noqa: E402
from patchvae_tf.training import precision  # noqa: E402


class _Mean:
    def __init__(self, mu, var):
        self.mu = mu

    def sample(self, seed=None):
        return self.mu


def _run(job: dict) -> None:
    cfg = Config.from_dict(job["config"])  # every value checked as it is read
    sample_occurrence = latents.sample_occurrence
    appearance_posterior = latents.appearance_posterior
    if job.get("fixed_latents"):
        latents.sample_occurrence = lambda logits, tau, **_: tf.sigmoid(logits)
        latents.appearance_posterior = _Mean
    built = []
    build = precision.build_model_in_policy
    training.precision.build_model_in_policy = lambda *a: built.append(build(*a)) or built[-1]
    try:
        summary = training.train(cfg)
    finally:
        training.precision.build_model_in_policy = build
        latents.sample_occurrence = sample_occurrence
        latents.appearance_posterior = appearance_posterior
    np.savez(
        job["out"],
        first_loss=summary["first_loss"] or np.nan,
        last_loss=summary["last_loss"] or np.nan,
        step=summary["step"],
        # Keyed by position (layer names carry per-process counters) and path, for messages.
        **{
            f"w:{i:03d}:" + v.path.replace("/", "|"): np.asarray(v)
            for i, v in enumerate(built[0].weights)
        },
    )


def main(path: str) -> None:
    """JOB.json holds one job or {"runs": [job, ...]}, run one after another in this process."""
    with open(path) as f:
        job = json.load(f)
    for run in job.get("runs", [job]):
        _run(run)


if __name__ == "__main__":
    main(sys.argv[1])
