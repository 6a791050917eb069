"""What a command checks beyond its config: the environment it runs in (paths that must exist).

Every value a user can get wrong is checked where its config is built (each section's
fields and `check`, in patchvae_tf/config/); what is left here needs the machine the
command runs on, since a config may be built on another.
"""

from __future__ import annotations

import os

from patchvae_tf.config import BenchConfig, ExportConfig
from patchvae_tf.errors import UserError


def validate_export(cfg: ExportConfig) -> ExportConfig:
    """Checks that the image folders it names exist; the workdir and its checkpoint are
    checked when the export starts.
    """
    for flag in ("check_images", "calibration_folder"):
        folder = getattr(cfg, flag)
        if folder and not os.path.isdir(folder):
            raise UserError(f"--{flag}={folder!r} is not a directory")
    return cfg


def validate_bench(cfg: BenchConfig) -> BenchConfig:
    """Checks that the folders the benchmark reads exist; raises UserError naming the value."""
    if cfg.reference and not os.path.isdir(cfg.reference):
        raise UserError(f"--reference={cfg.reference!r} is not a directory")
    if cfg.memory_folder and not os.path.isdir(os.path.join(cfg.memory_folder, "train")):
        raise UserError(
            f"--memory_folder={cfg.memory_folder!r} has no train/ subfolder of class folders"
        )
    return cfg
