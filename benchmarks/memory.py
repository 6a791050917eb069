"""Peak resident memory of a real training run (train.py in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_flags(cfg) -> list[str]:
    """train.py flags reproducing cfg's data, model, batch and precision."""
    d, m, t, dc = cfg.data, cfg.model, cfg.train, cfg.distribute
    return [
        f"--dataset={d.dataset}",
        f"--image_size={d.image_size}",
        f"--arch={m.arch}",
        f"--encoder={m.encoder}",
        f"--scale={m.scale}",
        f"--num_parts={m.num_parts}",
        f"--appearance_dim={m.appearance_dim}",
        f"--batch_size={t.batch_size}",
        f"--jit_compile={dc.jit_compile}",
        f"--mixed_precision={dc.mixed_precision}",
    ]


def peak_rss(cfg, workdir: str, steps: int, dataset_size: int) -> dict:
    """Runs train.py for `steps` steps on `dataset_size` shapes images; returns its peak RSS.

    ru_maxrss of the waited child (os.wait4) is the kernel's own high-water mark, so no
    sampling can miss a peak. Logging, image summaries and a checkpoint run as in any run.
    """
    cmd = [
        sys.executable,
        os.path.join(REPO, "train.py"),
        *train_flags(cfg),
        f"--shapes_train_size={dataset_size}",
        f"--train_steps={steps}",
        f"--log_every={steps}",
        f"--checkpoint_every={steps}",
        f"--workdir={workdir}",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = output.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"train.py exited {proc.returncode}: {' | '.join(tail)}")
    return {
        "dataset_size": dataset_size,
        "steps": steps,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
