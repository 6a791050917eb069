"""The frozen dataclasses every command reads its flags into, each field written once."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from patchvae_tf.errors import UserError
from patchvae_tf.options import check_options, option

ARCHS = ("patchvae", "vae")
ENCODERS = ("resnet", "pyramid")
ANNEAL_SCHEDULES = ("reference", "exponential")
INITIALIZATIONS = ("reference", "glorot")
NORMALIZATIONS = ("unit", "imagenet")
TRAIN_SPLITS = ("listed", "all_but_test")
# ResNet-18 reaches 1/4 after its stem, then halves per stage.
RESNET_SCALES = (4, 8, 16, 32)
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "none", "mixed_float16", "mixed_bfloat16")
EVAL_MODES = ("all", "probe", "finetune", "parts", "visualize")
EXPORT_FORMATS = ("saved_model", "onnx")
QUANTIZE_MODES = ("", "int8")
MIN_ONNX_OPSET = 17
MAX_ONNX_OPSET = 18  # the newest opset tf2onnx 1.17 converts to
BENCH_SECTIONS = ("flops", "train", "encoder", "memory", "precision", "profile")
# profile (where the time goes, for docs/performance.md) runs only when asked for.
DEFAULT_BENCH_SECTIONS = BENCH_SECTIONS[:-1]


# --- training (train.py) --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are read."""

    dataset: str = option("shapes", "shapes | a TFDS name (cifar100, mnist, ...) | folder:PATH")
    data_dir: str | None = option(None, "TFDS data directory")
    image_size: int = option(32, "Images are resized and centre-cropped to this", positive=True)
    train_split_file: str | None = option(None, "Folder datasets: file of training image paths")
    test_split_file: str | None = option(None, "Folder datasets: file of test image paths")
    train_split: str = option(
        "listed",
        "Folder datasets with split files: listed (the training split file) | all_but_test "
        "(every image the test split file does not list; the authors' Indoor67 VAE training)",
        choices=TRAIN_SPLITS,
    )
    random_flip: bool = option(True, "Random horizontal flips of training images (not shapes)")
    shapes_train_size: int = option(10000, "Shapes: training images", positive=True)
    shapes_test_size: int = option(2000, "Shapes: test images", positive=True)
    shapes_texture: bool = option(
        False,
        "Shapes: each class filled with its own pattern (circle horizontal stripes, triangle "
        "checkerboard, square vertical stripes), a local pattern repeated over the shape",
    )
    shapes_texture_contrast: float = option(
        0.65,
        "Shapes with --shapes_texture: the share of a shape's colour its dark pattern removes",
        positive=True,
        maximum=1.0,
    )
    shuffle_buffer: int = option(10000, "Shuffle buffer (examples)", positive=True)
    download: bool = option(False, "TFDS: download and prepare a dataset not in --data_dir")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model: PatchVAE or the VAE baseline, its networks, latents and loss weights."""

    arch: str = option("patchvae", "patchvae | vae (beta-VAE through --beta_app)", choices=ARCHS)
    encoder: str = option("resnet", "resnet | pyramid", choices=ENCODERS)
    scale: int = option(8, "Image size / feature-map size", positive=True)
    base_channels: int = option(64, "Width of the pyramid networks", positive=True)
    num_parts: int = option(16, "N, number of parts", positive=True)
    appearance_dim: int = option(6, "L, appearance code size per part", positive=True)
    occurrence_prior: float = option(0.0, "Bernoulli prior p; 0 means 1/N", minimum=0.0, below=1.0)
    categorical: bool = option(False, "One part per location (categorical)")
    hard: bool = option(False, "Straight-through binary occurrences")
    beta_app: float = option(1.0, "Weight of the appearance rate", minimum=0.0)
    beta_occ: float = option(10.0, "Weight of the occurrence rate", minimum=0.0)
    edge_weighting: bool = option(False, "Laplacian-weighted distortion")
    tau_init: float = option(1.0, "Initial relaxation temperature", positive=True)
    tau_min: float = option(0.1, "Smallest temperature", positive=True)
    anneal_rate: float = option(3e-5, "Temperature decay rate (the authors' --anneal)", minimum=0.0)
    anneal_schedule: str = option(
        "reference",
        "reference: after each step t with t % 1000 == 1, tau = max(tau exp(-rate t), tau_min) "
        "(compounding, as the authors' run.py) | exponential: max(tau_init exp(-rate t), tau_min) "
        "with t held for 1000 steps",
        choices=ANNEAL_SCHEDULES,
    )
    normalization: str = option(
        "unit",
        "Input space: unit (pixels scaled to [-1, 1]) | imagenet (per-channel ImageNet mean "
        "and std, the authors' --inet)",
        choices=NORMALIZATIONS,
    )
    initialization: str = option(
        "reference",
        "reference: kaiming fan-out convolutions, occurrence logits start at 0 (the authors') | "
        "glorot: Keras's Glorot, occurrence logits start at the prior p, zero log-variance head",
        choices=INITIALIZATIONS,
    )
    # PyTorch's BatchNorm defaults (its momentum 0.1 is Keras's 0.9); Keras's are 0.99, 1e-3.
    batch_norm_momentum: float = option(
        0.9, "BatchNorm moving-average momentum", minimum=0.0, below=1.0
    )
    batch_norm_epsilon: float = option(1e-5, "BatchNorm epsilon", positive=True)

    @property
    def prior(self) -> float:
        """The Bernoulli occurrence prior p, 1 / N unless set."""
        return self.occurrence_prior or 1.0 / self.num_parts


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation and what the run writes."""

    workdir: str = option("runs/shapes", "Checkpoints, logs and config go here")
    batch_size: int = option(128, "Global batch size", positive=True)
    learning_rate: float = option(1e-4, "Adam learning rate", positive=True)
    train_steps: int = option(2000, "Total optimizer steps", positive=True)
    log_every: int = option(100, "Steps between TensorBoard summaries", positive=True)
    checkpoint_every: int = option(500, "Steps between checkpoints", positive=True)
    adam_epsilon: float = option(1e-8, "Adam epsilon (PyTorch's default)", positive=True)
    seed: int = option(0, "Random seed", minimum=0)


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """How training is spread over devices and hosts, its precision and compilation."""

    strategy: str = option(
        "auto",
        "auto | default | mirrored | multi_worker | tpu. auto: multi_worker when TF_CONFIG "
        "names several tasks, mirrored when several GPUs are visible, else default",
        choices=STRATEGIES,
    )
    tpu: str | None = option(None, "--strategy=tpu: TPU name or grpc:// address")
    virtual_cpu_devices: int = option(
        0,
        "Split the host CPU into N logical devices (runs multi-device code without GPUs)",
        minimum=0,
    )
    jit_compile: bool | None = option(
        None,
        "XLA-compile the train step; unset: on with GPUs or TPUs, off on CPU only (slower there)",
    )
    mixed_precision: str = option(
        "auto",
        " | ".join(PRECISIONS) + ". auto: mixed_bfloat16 on TPUs, GPUs of compute capability "
        ">= 8 and CPUs with AVX512_BF16 or AMX; mixed_float16 on older GPUs; none (float32) "
        "elsewhere (precision.auto_policy)",
        choices=PRECISIONS,
    )
    deterministic: bool = option(False, "TF op determinism: same seed, same losses (slower)")
    sync_batch_norm: bool = option(
        False, "BatchNorm statistics over the global batch instead of each replica's share"
    )


TRAIN_SECTIONS = (DataConfig, ModelConfig, TrainConfig, DistributeConfig)


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    distribute: DistributeConfig = DistributeConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return cls(
            data=_build(DataConfig, d.get("data", {})),
            model=_build(ModelConfig, d.get("model", {})),
            train=_build(TrainConfig, d.get("train", {})),
            distribute=_build(DistributeConfig, d.get("distribute", {})),
        )

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def _build(cls, values: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def load_config(path: str) -> Config:
    """Reads a config JSON written by training (``WORKDIR/config.json``)."""
    if not os.path.isfile(path):
        raise UserError(f"no config at {path!r}: is this a training workdir?")
    try:
        with open(path) as f:
            return Config.from_dict(json.load(f))
    except (ValueError, TypeError) as e:
        raise UserError(f"config {path!r} is not a valid config JSON: {e}") from None


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
    if d.image_size % m.scale:
        raise UserError(f"--image_size={d.image_size} is not divisible by --scale={m.scale}")
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


# --- evaluation (evaluate.py) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What evaluate.py measures; the model itself comes from WORKDIR/config.json."""

    workdir: str = option("runs/shapes", "Training workdir: config.json and checkpoints")
    mode: str = option("all", " | ".join(EVAL_MODES), choices=EVAL_MODES)
    # Dataset override; None evaluates on the data the model was trained on.
    dataset: str | None = option(None, "Evaluate on this dataset instead of the training one")
    data_dir: str | None = option(None, "TFDS data directory")
    train_split_file: str | None = option(None, "Folder datasets: file of training image paths")
    test_split_file: str | None = option(None, "Folder datasets: file of test image paths")
    image_size: int = option(0, "Must equal the model's; 0 means the model's", minimum=0)
    batch_size: int = option(128, "Batch size for features", positive=True)
    eval_examples: int = option(
        5000, "Images per split for probes, part scores and galleries", positive=True
    )
    probe_steps: int = option(500, "Full-batch steps of each linear probe", positive=True)
    probe_learning_rate: float = option(0.05, "Adam learning rate of the probes", positive=True)
    # The authors' classifier.py: 90 epochs of the labelled training split at batch 256, SGD
    # lr 0.1 divided by 10 every 30 epochs, momentum 0.9, weight decay 1e-4.
    finetune_epochs: int = option(90, "Epochs of the finetuned classifier", positive=True)
    finetune_batch_size: int = option(256, "Finetuning batch size", positive=True)
    finetune_learning_rate: float = option(0.1, "Initial SGD rate", positive=True)
    finetune_lr_step_epochs: int = option(
        30, "The SGD rate is divided by 10 every this many epochs", positive=True
    )
    freeze_stages: tuple[int, ...] = option(
        (),
        "Comma-separated numbers of frozen encoder stages, one finetuning run each "
        "(-1: all); empty: every depth from 0 to all",
    )
    finetune_random_init: bool = option(
        True, "Also finetune a randomly initialised encoder, the floor"
    )
    dropout: float = option(
        0.5, "Dropout before the classifier's hidden layer", minimum=0.0, below=1.0
    )
    gallery_size: int = option(10, "Images per part in parts.png", positive=True)
    seed: int = option(0, "Random seed", minimum=0)
    compare: tuple[str, ...] = option(
        (), "Comma-separated evaluated workdirs to put side by side (instead of evaluating)"
    )
    compare_dir: str = option("runs/comparison", "Where --compare writes report.json/.md")

    def modes(self) -> tuple[str, ...]:
        """The sections to run: every one for "all"."""
        return EVAL_MODES[1:] if self.mode == "all" else (self.mode,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_eval(cfg: EvalConfig) -> EvalConfig:
    """Checks evaluation values a user can get wrong; raises UserError naming the value."""
    check_options(cfg)
    if any(k < -1 for k in cfg.freeze_stages):
        raise UserError(
            f"--freeze_stages must list depths >= 0 (or -1 for all), got "
            f"{','.join(map(str, cfg.freeze_stages))}"
        )
    return cfg


# --- export (python -m export) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What the export stage writes; the model itself comes from WORKDIR/config.json."""

    workdir: str = option("", "Training workdir: config.json and checkpoints")
    export_dir: str = option("", "Export base directory (saved_model/, onnx/, report)")
    version: int = option(0, "SavedModel version; 0 means the checkpoint's step", minimum=0)
    formats: tuple[str, ...] = option(
        EXPORT_FORMATS, "Comma-separated: saved_model,onnx", choices=EXPORT_FORMATS
    )
    quantize: str = option("", "int8: also write an int8 ONNX model", choices=QUANTIZE_MODES)
    overwrite: bool = option(False, "Replace an existing export of --version")
    checkpoint: str = option("", "Checkpoint prefix to export instead of the latest")
    model_name: str = option("patchvae", "TF Serving model name in models.config")
    opset: int = option(
        MIN_ONNX_OPSET,
        f"ONNX opset ({MIN_ONNX_OPSET} to {MAX_ONNX_OPSET})",
        minimum=MIN_ONNX_OPSET,
        maximum=MAX_ONNX_OPSET,
    )
    parity_images: int = option(32, "Training images for the parity check", positive=True)
    calibration_images: int = option(128, "Images for int8 calibration", positive=True)
    int8_min_cosine: float = option(
        0.99, "Refuse int8 features below this mean cosine to float32", minimum=-1.0, maximum=1.0
    )
    force_int8: bool = option(False, "Write the int8 model below --int8_min_cosine")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    if cfg.quantize and "onnx" not in cfg.formats:
        raise UserError(f"--quantize={cfg.quantize} needs the ONNX model: add onnx to --formats")
    if not cfg.model_name or not cfg.model_name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"--model_name must be letters, digits, - or _, got {cfg.model_name!r}")
    return cfg


# --- benchmarks (python -m benchmarks) ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What the benchmark command measures, and the reference it measures against."""

    out: str = option(
        "benchmarks/results/run.json", "JSON file for the results (a .md table beside it)"
    )
    quick: bool = option(False, "Tiny sizes and few steps: checks that everything runs")
    sections: tuple[str, ...] = option(
        DEFAULT_BENCH_SECTIONS,
        "Comma-separated, of " + ",".join(BENCH_SECTIONS),
        choices=BENCH_SECTIONS,
    )
    steps: int = option(
        0, "Train steps per timing window; 0: 3 at 32 px, 2 at 64 px (--quick: 2)", minimum=0
    )
    seed: int = option(0, "Random seed", minimum=0)
    reference: str = option(
        "",
        "A checkout of kampta/PatchVAE: its model is timed on the same recipes, interleaved "
        "with ours, and every figure gets its ours-to-theirs ratio",
    )
    reference_python: str = option("", "--reference: a Python that imports torch")
    reference_setup: bool = option(
        False, "--reference: create a virtual environment with torch for it (once)"
    )
    reference_venv: str = option(
        "", "Where --reference_setup creates it (default ~/.cache/patchvae-tf/torch-venv)"
    )
    memory_folder: str = option(
        "",
        "An image folder (FOLDER/train/CLASS/*.jpg), e.g. from python -m "
        "benchmarks.image_folder: peak memory on it and on 1,280 of its images",
    )
    precision_steps: int = option(
        0,
        "Train steps of each bfloat16/float32 run; 0: the default run's 2,000, 600 for the "
        "CIFAR recipe",
        minimum=0,
    )
    precision_seeds: int = option(2, "Seeds per precision (a spread needs 2)", minimum=2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
