"""What an evaluation will run and about how long it takes, said before it starts."""

from __future__ import annotations

import time

import tensorflow as tf

from patchvae_tf.config import EvalConfig
from patchvae_tf.evaluation.finetune import _freeze_depths
from patchvae_tf.evaluation.setup import duration

QUICK_FLAGFILES = {"shapes": "configs/eval/shapes.cfg"}


def measure_rate(model, image_size: int, batch_size: int) -> float:
    """Images per second through the encoder's features (inference), timed on zeros after a
    warm-up call: the rate every estimate below scales from.
    """
    features = tf.function(lambda x: model.features(x, training=False)[1])
    x = tf.zeros([batch_size, image_size, image_size, 3])
    features(x).numpy()
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < 0.2:
        features(x).numpy()
        calls += 1
    return calls * batch_size / (time.perf_counter() - start)


def finetune_runs(ecfg: EvalConfig, num_stages: int) -> list[tuple[int, str]]:
    """(frozen stages, "trained" | "random-init") of each finetuning run, in order."""
    kinds = ("trained", "random-init") if ecfg.finetune_random_init else ("trained",)
    return [(d, kind) for d in _freeze_depths(ecfg, num_stages) for kind in kinds]


def plan(setup, ecfg: EvalConfig, rate: float, step_time: float) -> list[str]:
    """The lines evaluate.py prints before it starts: each section, what it runs and about
    how long at ``rate`` images/s (inference) and ``step_time`` seconds per finetuning step (as
    finetune.step_seconds measures it), then
    the total; and, when the finetuning protocol is far longer than the training of the run
    it evaluates, a line saying so that names the quick settings.
    """
    source, cfg = setup.source, setup.cfg
    sizes = source.sizes
    n = {split: min(ecfg.eval_examples, sizes.get(split) or 0) for split in ("train", "test")}
    lines, total = [], 0.0
    if "probe" in setup.modes:
        seconds = 2 * (n["train"] + n["test"]) / rate
        lines.append(
            f"  probe: encode {n['train']:,} training and {n['test']:,} test images with the "
            f"trained and a random-init encoder, 4 linear probes of {ecfg.probe_steps} "
            f"steps: about {duration(seconds)}"
        )
        total += seconds
    if "parts" in setup.modes:
        seconds = 2 * n["test"] / rate
        lines.append(
            f"  parts: occurrence maps of {n['test']:,} test images, trained and random-init: "
            f"about {duration(seconds)}"
        )
        total += seconds
    finetune_steps = 0
    if "finetune" in setup.modes:
        runs = finetune_runs(ecfg, len(setup.model.encoder.stages))
        batch = min(ecfg.finetune_batch_size, sizes["train"])
        per_epoch = -(-sizes["train"] // batch)
        finetune_steps = len(runs) * ecfg.finetune_epochs * per_epoch
        seconds = finetune_steps * step_time
        seconds += len(runs) * sizes.get("test", 0) / rate
        depths = ",".join(str(d) for d in dict.fromkeys(d for d, _ in runs))
        lines.append(
            f"  finetune: {len(runs)} runs (frozen stages {depths}"
            f"{', trained and random-init' if ecfg.finetune_random_init else ''}) x "
            f"{ecfg.finetune_epochs} epochs x {per_epoch} steps of {batch} images = "
            f"{finetune_steps:,} steps: about {duration(seconds)}"
        )
        total += seconds
    if "visualize" in setup.modes:
        lines.append("  visualize: figures of a few test images and a reconstruction error")
    head = (
        f"plan for {ecfg.workdir} (step {setup.step}): about {duration(total)} at the rates "
        f"measured here ({rate:,.0f} images/s encoding"
        + (f", {step_time * 1e3:,.0f} ms per finetuning step" if finetune_steps else "")
        + "):"
    )
    lines.insert(0, head)
    train_steps = cfg.train.train_steps
    if finetune_steps > train_steps:
        quick = QUICK_FLAGFILES.get(cfg.data.dataset)
        advice = (
            f"evaluate.py --flagfile={quick} runs a shortened protocol in minutes"
            if quick
            else "--finetune_epochs, --freeze_stages=-1 or --mode=probe shorten it"
        )
        lines.append(
            f"note: finetuning runs {finetune_steps / train_steps:.0f}x the {train_steps:,} "
            f"training steps of this model (the authors' protocol: --finetune_epochs="
            f"{ecfg.finetune_epochs} at every freeze depth); {advice}"
        )
    return lines
