"""The checks across a command's config fields that a user can get wrong (each field's own
checks are in options.py); each raises a one-line UserError naming the bad value.
"""

from __future__ import annotations

import math
import os

from patchvae_tf.config import (
    BENCH_SECTIONS,
    EXPORT_FORMATS,
    RESNET_SCALES,
    BenchConfig,
    Config,
    DistributeConfig,
    EvalConfig,
    ExportConfig,
)
from patchvae_tf.errors import UserError
from patchvae_tf.options import check_options


def validate(cfg: Config) -> Config:
    """Checks values a user can get wrong; raises UserError naming the bad value."""
    d, m = cfg.data, cfg.model
    for section in (d, m, cfg.train):
        check_options(section)
    if d.train_split == "all_but_test" and not d.test_split_file:
        raise UserError(
            "--train_split=all_but_test needs --test_split_file (the images to leave out)"
        )
    if m.scale & (m.scale - 1) or m.scale < 2:
        raise UserError(f"--scale must be a power of two >= 2, got {m.scale}")
    if m.encoder == "resnet" and m.scale not in RESNET_SCALES:
        raise UserError(
            f"--scale={m.scale} is not reachable by the resnet encoder; use one of {RESNET_SCALES}"
        )
    if m.image_size % m.scale:
        raise UserError(f"--image_size={m.image_size} is not divisible by --scale={m.scale}")
    if not (math.isfinite(m.tau_init) and m.tau_min <= m.tau_init):
        raise UserError(f"--tau_min={m.tau_min} must not exceed --tau_init={m.tau_init}")
    validate_distribute(cfg.distribute)
    return cfg


def validate_distribute(d: DistributeConfig) -> DistributeConfig:
    """Checks the scale-out flags; TF_CONFIG and devices are checked when the strategy is made."""
    check_options(d)
    if d.tpu and d.strategy != "tpu":
        raise UserError(f"--tpu={d.tpu!r} needs --strategy=tpu (got --strategy={d.strategy})")
    return d


def validate_eval(cfg: EvalConfig) -> EvalConfig:
    """Checks evaluation values a user can get wrong; raises UserError naming the value."""
    check_options(cfg)
    if any(k < -1 for k in cfg.freeze_stages):
        raise UserError(
            f"--freeze_stages must list depths >= 0 (or -1 for all), got "
            f"{','.join(map(str, cfg.freeze_stages))}"
        )
    return cfg


def validate_export(cfg: ExportConfig) -> ExportConfig:
    """Checks export values a user can get wrong; raises UserError naming the value."""
    for name in ("workdir", "export_dir"):
        if not getattr(cfg, name):
            raise UserError(f"--{name} is required")
    if os.path.abspath(cfg.export_dir) == os.path.abspath(cfg.workdir):
        raise UserError(f"--export_dir={cfg.export_dir!r} must differ from --workdir")
    if not cfg.formats:
        raise UserError(f"--formats is empty; expected some of {', '.join(EXPORT_FORMATS)}")
    check_options(cfg)
    if len(set(cfg.formats)) != len(cfg.formats):
        raise UserError(f"--formats={','.join(cfg.formats)} names a format twice")
    if cfg.quantize and not {"onnx", "litert"} & set(cfg.formats):
        raise UserError(
            f"--quantize={cfg.quantize} quantizes the ONNX or LiteRT model: add onnx or litert "
            "to --formats"
        )
    if not cfg.model_name or not cfg.model_name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"--model_name must be letters, digits, - or _, got {cfg.model_name!r}")
    return cfg


def validate_bench(cfg: BenchConfig) -> BenchConfig:
    """Checks benchmark values a user can get wrong; raises UserError naming the value."""
    if not cfg.out:
        raise UserError("--out is required: the JSON file the results go to")
    if not cfg.sections:
        raise UserError(f"--sections is empty; expected some of {', '.join(BENCH_SECTIONS)}")
    check_options(cfg)
    if (cfg.reference_python or cfg.reference_setup or cfg.reference_venv) and not cfg.reference:
        raise UserError(
            "--reference_python, --reference_setup and --reference_venv need --reference=PATH "
            "(a checkout of kampta/PatchVAE)"
        )
    if cfg.reference and not os.path.isdir(cfg.reference):
        raise UserError(f"--reference={cfg.reference!r} is not a directory")
    if cfg.memory_folder and not os.path.isdir(os.path.join(cfg.memory_folder, "train")):
        raise UserError(
            f"--memory_folder={cfg.memory_folder!r} has no train/ subfolder of class folders"
        )
    return cfg
