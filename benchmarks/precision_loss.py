"""Does bfloat16 train to the same loss as float32? train.py under both, several seeds each,
on the default run and on the CIFAR recipe (shapes images): the final losses compared with
the run-to-run spread.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks.memory import REPO

# name -> (train.py flags, its own step count)
RECIPES = {
    "default_run": (["--flagfile=" + os.path.join(REPO, "configs", "shapes.cfg")], 2000),
    "cifar_recipe": (
        ["--flagfile=" + os.path.join(REPO, "configs", "cifar100.cfg"), "--dataset=shapes"],
        600,
    ),
}
TAIL = 0.25  # the final loss: mean of the logged losses over the last quarter of the steps


def final_loss(logdir: str) -> tuple[float, list[float]]:
    """Mean of the "loss" scalars logged in the last TAIL of the run, and all of them."""
    import tensorflow as tf

    points = []
    for root, _, files in os.walk(logdir):
        for f in files:
            if "tfevents" not in f:
                continue
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, f)):
                for v in event.summary.value:
                    if v.tag == "loss":
                        points.append((event.step, float(tf.make_ndarray(v.tensor))))
    if not points:
        raise RuntimeError(f"no loss was logged under {logdir}")
    points.sort()
    last = points[-1][0]
    tail = [x for s, x in points if s > last * (1 - TAIL)] or [points[-1][1]]
    return statistics.fmean(tail), [x for _, x in points]


def judge(float32: list[float], bfloat16: list[float]) -> dict:
    """The difference of the mean final losses against the run-to-run spread (the larger of
    the two ranges over seeds): within it, bfloat16 reached the same loss.
    """
    spread = max(max(float32) - min(float32), max(bfloat16) - min(bfloat16))
    diff = abs(statistics.fmean(bfloat16) - statistics.fmean(float32))
    return {
        "float32_final": [round(x, 3) for x in float32],
        "bfloat16_final": [round(x, 3) for x in bfloat16],
        "difference_of_means": round(diff, 3),
        "run_to_run_spread": round(spread, 3),
        "within_spread": diff <= spread,
    }


def _train(flags: list[str], workdir: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, os.path.join(REPO, "train.py"), *flags, f"--workdir={workdir}"]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"train.py {' '.join(flags)} exited {proc.returncode}: {tail}")


def run(quick: bool, steps: int, seeds: int, native: bool, log) -> dict:
    """Trains every recipe in float32 and bfloat16 for `steps` steps (0: the recipe's own;
    --quick: 4), seeds 0..seeds-1. Where bfloat16 is not native it runs under XLA, since
    without it emulated bfloat16 trains many times slower; float32 runs without XLA, as
    train.py does on CPU.
    """
    seeds = 1 if quick else seeds
    bf16_flags = ["--mixed_precision=mixed_bfloat16"]
    bf16_flags.append("--nojit_compile" if native else "--jit_compile")
    out = {
        "bfloat16_native": native,
        "bfloat16_flags": bf16_flags,
        "float32_flags": ["--mixed_precision=none", "--nojit_compile"],
        "recipes": {},
    }
    for name, (flags, own_steps) in RECIPES.items():
        n = 4 if quick else (steps or own_steps)
        common = [
            *flags,
            f"--train_steps={n}",
            f"--log_every={max(1, n // 12)}",
            f"--checkpoint_every={n}",
        ]
        finals: dict = {"float32": [], "bfloat16": []}
        curves: dict = {"float32": [], "bfloat16": []}
        with tempfile.TemporaryDirectory() as root:
            for seed in range(seeds):
                for policy, extra in (("float32", out["float32_flags"]), ("bfloat16", bf16_flags)):
                    workdir = os.path.join(root, f"{policy}_{seed}")
                    _train([*common, *extra, f"--seed={seed}"], workdir)
                    final, curve = final_loss(workdir)
                    finals[policy].append(final)
                    curves[policy].append([round(x, 3) for x in curve])
                    log(
                        f"precision: {name}, {policy}, seed {seed}, {n} steps: final loss "
                        f"{final:.3f}"
                    )
        out["recipes"][name] = {
            "steps": n,
            "seeds": seeds,
            **judge(**finals),
            "logged_losses": curves,
        }
    return out
