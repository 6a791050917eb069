"""Peak resident memory of a real training run (train.py in a subprocess): the memory section."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from benchmarks.progress import log
from benchmarks.recipes import recipe_config
from patchvae_tf.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_flags(cfg) -> list[str]:
    """train.py flags reproducing cfg's data, model, batch and precision."""
    d, m, t, dc = cfg.data, cfg.model, cfg.train, cfg.distribute
    return [
        f"--dataset={d.dataset}",
        f"--image_size={m.image_size}",
        f"--arch={m.arch}",
        f"--encoder={m.encoder}",
        f"--scale={m.scale}",
        f"--num_parts={m.num_parts}",
        f"--appearance_dim={m.appearance_dim}",
        f"--batch_size={t.batch_size}",
        f"--mixed_precision={dc.mixed_precision}",
    ] + ([] if dc.jit_compile is None else [f"--jit_compile={dc.jit_compile}"])


# Runs its arguments as a child and prints the child's ru_maxrss. A child started by this
# (big) benchmark process inherits our high-water mark: Linux records the RSS of the memory
# it leaves at exec, which after fork or vfork is ours. Through this small wrapper, what is
# inherited is the wrapper's ~15 MB instead.
_WRAPPER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print('maxrss_kib', usage.ru_maxrss, flush=True)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def peak_rss_mb(cmd: list[str]) -> tuple[float, list[str]]:
    """Runs cmd; returns its peak resident memory in MB and its output lines.

    ru_maxrss of the waited process (os.wait4, in _WRAPPER) is the kernel's own high-water
    mark, so no sampling can miss a peak.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    wrapped = [sys.executable, "-c", _WRAPPER, *cmd]
    proc = subprocess.run(wrapped, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode:
        raise RuntimeError(f"{cmd[1]} exited {proc.returncode}: {' | '.join(lines[-5:])}")
    return int(lines[-1].split()[1]) / 1024, lines[:-1]  # the wrapper's last line, in KiB


def peak_rss(cfg, workdir: str, steps: int, dataset_size: int = 0, folder: str = "") -> dict:
    """Runs train.py for `steps` steps on `dataset_size` shapes images, or on the image
    folder `folder` (FOLDER/train/CLASS/*.jpg); returns its peak RSS.

    Logging, image summaries and a checkpoint run as in any run.
    """
    data = [f"--dataset=folder:{folder}"] if folder else [f"--shapes_train_size={dataset_size}"]
    cmd = [
        sys.executable,
        os.path.join(REPO, "train.py"),
        *train_flags(cfg),
        *data,
        f"--train_steps={steps}",
        f"--log_every={steps}",
        f"--checkpoint_every={steps}",
        f"--workdir={workdir}",
    ]
    start = time.perf_counter()
    mb, _ = peak_rss_mb(cmd)
    return {
        "dataset_size": count_images(folder) if folder else dataset_size,
        "folder": folder or None,
        "steps": steps,
        "peak_rss_mb": round(mb, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def _train_images(folder: str) -> list[str]:
    root = os.path.join(folder, "train")
    if not os.path.isdir(root):
        raise UserError(f"--memory_folder={folder!r} has no train/ subfolder of class folders")
    return sorted(
        os.path.join(dirpath, f)
        for dirpath, _, files in os.walk(root)
        for f in files
        if f.lower().endswith((".jpg", ".jpeg", ".png"))
    )


def count_images(folder: str) -> int:
    return len(_train_images(folder))


def subset_folder(folder: str, out: str, n: int) -> str:
    """A folder of symbolic links to the first n training images of folder (and all of its
    test images), laid out as folder is: the small end of the memory comparison.
    """
    for path in _train_images(folder)[:n]:
        rel = os.path.relpath(path, folder)
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        os.symlink(os.path.abspath(path), os.path.join(out, rel))
    test = os.path.join(folder, "test")
    if os.path.isdir(test):
        os.symlink(os.path.abspath(test), os.path.join(out, "test"))
    return out


def section(bench) -> dict:
    """The memory section of bench (a runner.Run): peak RSS training on a small and a large
    shapes dataset, and on a small copy of --memory_folder and the whole of it.
    """
    s = bench.sizes
    name, size, batch = s.recipes[0]
    cfg = recipe_config(size, batch, "default", bench.cfg.seed)
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for n in s.memory_dataset_sizes:
            result = peak_rss(cfg, os.path.join(root, f"shapes_{n}"), s.memory_steps, n)
            log(f"memory: shapes, {n} images -> peak RSS {result['peak_rss_mb']} MB")
            runs.append(result | {"data": "shapes (generated)"})
        if bench.cfg.memory_folder:
            small = subset_folder(
                bench.cfg.memory_folder, os.path.join(root, "small"), s.memory_folder_small
            )
            for folder in (small, bench.cfg.memory_folder):
                result = peak_rss(
                    cfg,
                    os.path.join(root, f"folder_{len(runs)}"),
                    s.memory_steps,
                    folder=folder,
                )
                log(
                    f"memory: {folder}, {result['dataset_size']} images -> "
                    f"peak RSS {result['peak_rss_mb']} MB"
                )
                runs.append(result | {"data": "image folder (JPEG files)"})
    shapes = [r for r in runs if r["data"].startswith("shapes")]
    files = [r for r in runs if not r["data"].startswith("shapes")]
    return {
        "memory": {
            "recipe": name,
            "runs": runs,
            "growth_ratio_shapes": round(shapes[-1]["peak_rss_mb"] / shapes[0]["peak_rss_mb"], 3),
            "growth_ratio_folder": round(files[-1]["peak_rss_mb"] / files[0]["peak_rss_mb"], 3)
            if files
            else None,
            "folder_images": files[-1]["dataset_size"] if files else None,
        }
    }
