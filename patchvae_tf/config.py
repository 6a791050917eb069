"""Every command-line flag, defined once and read once into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from absl import flags

from patchvae_tf.errors import UserError

ARCHS = ("patchvae", "vae")
ENCODERS = ("resnet", "pyramid")
# reference: the authors' schedule (tau compounds every 1000 steps); exponential: tau_0 e^(-rt).
ANNEAL_SCHEDULES = ("reference", "exponential")
# reference: the authors' kaiming fan-out convolutions with occurrence logits starting at 0;
# glorot: Keras's Glorot, occurrence logits starting at the prior and zero log-variance kernels.
INITIALIZATIONS = ("reference", "glorot")
NORMALIZATIONS = ("unit", "imagenet")
# Folder datasets with split files: train on the listed training images, or (the authors'
# Indoor67 "allminustest") on every image that the test split file does not list.
TRAIN_SPLITS = ("listed", "all_but_test")
# ResNet-18 reaches 1/4 after its stem, then halves per stage.
RESNET_SCALES = (4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "shapes"
    data_dir: str | None = None
    image_size: int = 32
    train_split_file: str | None = None
    test_split_file: str | None = None
    train_split: str = "listed"
    random_flip: bool = True
    shapes_train_size: int = 10000
    shapes_test_size: int = 2000
    shuffle_buffer: int = 10000


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = "patchvae"
    encoder: str = "resnet"
    scale: int = 8
    base_channels: int = 64
    num_parts: int = 16
    appearance_dim: int = 6
    occurrence_prior: float = 0.0  # 0 means 1 / num_parts
    categorical: bool = False
    hard: bool = False
    beta_app: float = 1.0
    beta_occ: float = 10.0
    edge_weighting: bool = False
    tau_init: float = 1.0
    tau_min: float = 0.1
    anneal_rate: float = 3e-5
    anneal_schedule: str = "reference"
    normalization: str = "unit"
    initialization: str = "reference"
    # PyTorch's BatchNorm defaults (its momentum 0.1 is Keras's 0.9); Keras's are 0.99, 1e-3.
    batch_norm_momentum: float = 0.9
    batch_norm_epsilon: float = 1e-5

    @property
    def prior(self) -> float:
        """The Bernoulli occurrence prior p, 1 / N unless set."""
        return self.occurrence_prior or 1.0 / self.num_parts


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    workdir: str = "runs/shapes"
    batch_size: int = 128
    learning_rate: float = 1e-4
    train_steps: int = 2000
    log_every: int = 100
    checkpoint_every: int = 500
    adam_epsilon: float = 1e-8  # PyTorch's default; Keras's is 1e-7
    seed: int = 0


STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "none", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """How training is spread over devices and hosts, its precision and compilation."""

    strategy: str = "auto"
    tpu: str | None = None
    virtual_cpu_devices: int = 0  # 0 leaves the host CPU as TensorFlow sees it
    jit_compile: bool | None = None  # None: XLA with GPUs or TPUs, not on CPU only
    mixed_precision: str = "auto"  # precision.auto_policy: bfloat16 where it is native
    deterministic: bool = False
    sync_batch_norm: bool = False


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
    d, m, t = cfg.data, cfg.model, cfg.train
    positive = {
        "image_size": d.image_size,
        "scale": m.scale,
        "base_channels": m.base_channels,
        "num_parts": m.num_parts,
        "appearance_dim": m.appearance_dim,
        "batch_size": t.batch_size,
        "train_steps": t.train_steps,
        "log_every": t.log_every,
        "checkpoint_every": t.checkpoint_every,
        "shapes_train_size": d.shapes_train_size,
        "shapes_test_size": d.shapes_test_size,
        "tau_init": m.tau_init,
        "tau_min": m.tau_min,
        "learning_rate": t.learning_rate,
        "batch_norm_epsilon": m.batch_norm_epsilon,
        "adam_epsilon": t.adam_epsilon,
    }
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    choices = {
        "arch": (m.arch, ARCHS),
        "encoder": (m.encoder, ENCODERS),
        "anneal_schedule": (m.anneal_schedule, ANNEAL_SCHEDULES),
        "normalization": (m.normalization, NORMALIZATIONS),
        "initialization": (m.initialization, INITIALIZATIONS),
        "train_split": (d.train_split, TRAIN_SPLITS),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"unknown --{name} {value!r}; expected one of {', '.join(allowed)}")
    if not 0.0 <= m.batch_norm_momentum < 1.0:
        raise UserError(f"--batch_norm_momentum must be in [0, 1), got {m.batch_norm_momentum}")
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
    if not 0.0 <= m.occurrence_prior < 1.0:
        raise UserError(f"--occurrence_prior must be in [0, 1), got {m.occurrence_prior}")
    if m.anneal_rate < 0 or m.beta_app < 0 or m.beta_occ < 0:
        raise UserError(
            "--anneal_rate, --beta_app and --beta_occ must be >= 0, got "
            f"{m.anneal_rate}, {m.beta_app}, {m.beta_occ}"
        )
    if m.categorical and m.hard:
        raise UserError("--categorical and --hard cannot be combined; choose one")
    if t.seed < 0:
        raise UserError(f"--seed must be >= 0, got {t.seed}")
    if not (math.isfinite(m.tau_init) and m.tau_min <= m.tau_init):
        raise UserError(f"--tau_min={m.tau_min} must not exceed --tau_init={m.tau_init}")
    validate_distribute(cfg.distribute)
    return cfg


# --- flags -----------------------------------------------------------------

_DEFAULT = Config()


def define_flags() -> None:
    """Defines every flag of the CLIs; safe to call twice."""
    if "arch" in flags.FLAGS:
        return
    d, m, t = _DEFAULT.data, _DEFAULT.model, _DEFAULT.train
    # Data.
    flags.DEFINE_string(
        "dataset", d.dataset, "shapes | a TFDS name (cifar100, mnist, ...) | folder:PATH"
    )
    flags.DEFINE_string("data_dir", d.data_dir, "TFDS data directory")
    flags.DEFINE_integer("image_size", d.image_size, "Images are resized and cropped to this")
    flags.DEFINE_string("train_split_file", None, "Folder datasets: file of training image paths")
    flags.DEFINE_string("test_split_file", None, "Folder datasets: file of test image paths")
    flags.DEFINE_string(
        "train_split",
        d.train_split,
        "Folder datasets with split files: listed (the training split file) | all_but_test "
        "(every image the test split file does not list; the authors' Indoor67 VAE training)",
    )
    flags.DEFINE_boolean(
        "random_flip", d.random_flip, "Random horizontal flips of training images (not shapes)"
    )
    flags.DEFINE_integer("shapes_train_size", d.shapes_train_size, "Shapes: training images")
    flags.DEFINE_integer("shapes_test_size", d.shapes_test_size, "Shapes: test images")
    flags.DEFINE_integer("shuffle_buffer", d.shuffle_buffer, "Shuffle buffer (examples)")
    # Model.
    flags.DEFINE_string("arch", m.arch, "patchvae | vae (beta-VAE through --beta_app)")
    flags.DEFINE_string("encoder", m.encoder, "resnet | pyramid")
    flags.DEFINE_integer("scale", m.scale, "Image size / feature-map size")
    flags.DEFINE_integer("base_channels", m.base_channels, "Width of the pyramid networks")
    flags.DEFINE_integer("num_parts", m.num_parts, "N, number of parts")
    flags.DEFINE_integer("appearance_dim", m.appearance_dim, "L, appearance code size per part")
    flags.DEFINE_float("occurrence_prior", m.occurrence_prior, "Bernoulli prior p; 0 means 1/N")
    flags.DEFINE_boolean("categorical", m.categorical, "One part per location (categorical)")
    flags.DEFINE_boolean("hard", m.hard, "Straight-through binary occurrences")
    flags.DEFINE_float("beta_app", m.beta_app, "Weight of the appearance rate")
    flags.DEFINE_float("beta_occ", m.beta_occ, "Weight of the occurrence rate")
    flags.DEFINE_boolean("edge_weighting", m.edge_weighting, "Laplacian-weighted distortion")
    flags.DEFINE_float("tau_init", m.tau_init, "Initial relaxation temperature")
    flags.DEFINE_float("tau_min", m.tau_min, "Smallest temperature")
    flags.DEFINE_float(
        "anneal_rate", m.anneal_rate, "Temperature decay rate (the authors' --anneal)"
    )
    flags.DEFINE_string(
        "anneal_schedule",
        m.anneal_schedule,
        "reference: after each step t with t % 1000 == 1, tau = max(tau exp(-rate t), tau_min) "
        "(compounding, as the authors' run.py) | exponential: max(tau_init exp(-rate t), tau_min) "
        "with t held for 1000 steps",
    )
    flags.DEFINE_string(
        "normalization",
        m.normalization,
        "Input space: unit (pixels scaled to [-1, 1]) | imagenet (per-channel ImageNet mean "
        "and std, the authors' --inet)",
    )
    flags.DEFINE_string(
        "initialization",
        m.initialization,
        "reference: kaiming fan-out convolutions, occurrence logits start at 0 (the authors') | "
        "glorot: Keras's Glorot, occurrence logits start at the prior p, zero log-variance head",
    )
    flags.DEFINE_float(
        "batch_norm_momentum", m.batch_norm_momentum, "BatchNorm moving-average momentum"
    )
    flags.DEFINE_float("batch_norm_epsilon", m.batch_norm_epsilon, "BatchNorm epsilon")
    # Training.
    flags.DEFINE_string("workdir", t.workdir, "Checkpoints, logs and config go here")
    flags.DEFINE_integer("batch_size", t.batch_size, "Global batch size")
    flags.DEFINE_float("learning_rate", t.learning_rate, "Adam learning rate")
    flags.DEFINE_float("adam_epsilon", t.adam_epsilon, "Adam epsilon")
    flags.DEFINE_integer("train_steps", t.train_steps, "Total optimizer steps")
    flags.DEFINE_integer("log_every", t.log_every, "Steps between TensorBoard summaries")
    flags.DEFINE_integer("checkpoint_every", t.checkpoint_every, "Steps between checkpoints")
    flags.DEFINE_integer("seed", t.seed, "Random seed")
    _define_distribute_flags()


def _define_missing(specs) -> None:
    """Defines flags from (kind, name, default, help) rows, skipping names already defined.

    Shared names (workdir, dataset, seed, ...) may already exist when the train flags are.
    """
    for kind, name, default, help_text in specs:
        if name not in flags.FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text)


def _section(cls, values) -> Any:
    return cls(**{f.name: getattr(values, f.name) for f in dataclasses.fields(cls)})


def from_flags(values: flags.FlagValues | None = None) -> Config:
    """Reads parsed flags once into a validated Config."""
    values = values or flags.FLAGS
    cfg = Config(
        data=_section(DataConfig, values),
        model=_section(ModelConfig, values),
        train=_section(TrainConfig, values),
        distribute=_section(DistributeConfig, values),
    )
    return validate(cfg)


# --- evaluation (evaluate.py) ----------------------------------------------

EVAL_MODES = ("all", "probe", "finetune", "parts", "visualize")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What evaluate.py measures; the model itself comes from WORKDIR/config.json."""

    workdir: str = "runs/shapes"
    mode: str = "all"
    # Dataset override; None evaluates on the data the model was trained on.
    dataset: str | None = None
    data_dir: str | None = None
    train_split_file: str | None = None
    test_split_file: str | None = None
    image_size: int = 0  # 0 means the model's; anything else must equal it
    batch_size: int = 128
    eval_examples: int = 5000  # per split, for probes, part scores and galleries
    probe_steps: int = 500
    probe_learning_rate: float = 0.05
    # The authors' classifier.py: 90 epochs of the labelled training split at batch 256, SGD
    # lr 0.1 divided by 10 every 30 epochs, momentum 0.9, weight decay 1e-4.
    finetune_epochs: int = 90
    finetune_batch_size: int = 256
    finetune_learning_rate: float = 0.1
    finetune_lr_step_epochs: int = 30
    # Encoder stages frozen, one finetuning run each; () runs every depth from 0 to all.
    freeze_stages: tuple[int, ...] = ()
    finetune_random_init: bool = True  # also finetune a randomly initialised encoder (floor)
    dropout: float = 0.5
    gallery_size: int = 10
    seed: int = 0
    # Workdirs whose eval/report.json are put side by side; written to compare_dir.
    compare: tuple[str, ...] = ()
    compare_dir: str = "runs/comparison"

    def modes(self) -> tuple[str, ...]:
        """The sections to run: every one for "all"."""
        return EVAL_MODES[1:] if self.mode == "all" else (self.mode,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_eval(cfg: EvalConfig) -> EvalConfig:
    """Checks evaluation values a user can get wrong; raises UserError naming the value."""
    if cfg.mode not in EVAL_MODES:
        raise UserError(f"unknown --mode {cfg.mode!r}; expected one of {', '.join(EVAL_MODES)}")
    positive = {
        "batch_size": cfg.batch_size,
        "eval_examples": cfg.eval_examples,
        "probe_steps": cfg.probe_steps,
        "probe_learning_rate": cfg.probe_learning_rate,
        "finetune_epochs": cfg.finetune_epochs,
        "finetune_batch_size": cfg.finetune_batch_size,
        "finetune_learning_rate": cfg.finetune_learning_rate,
        "finetune_lr_step_epochs": cfg.finetune_lr_step_epochs,
        "gallery_size": cfg.gallery_size,
    }
    for name, value in positive.items():
        if not value > 0:
            raise UserError(f"--{name} must be positive, got {value}")
    if cfg.image_size < 0:
        raise UserError(f"--image_size must be >= 0 (0 means the model's), got {cfg.image_size}")
    if any(k < -1 for k in cfg.freeze_stages):
        raise UserError(
            f"--freeze_stages must list depths >= 0 (or -1 for all), got "
            f"{','.join(map(str, cfg.freeze_stages))}"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.seed < 0:
        raise UserError(f"--seed must be >= 0, got {cfg.seed}")
    return cfg


_EVAL_DEFAULT = EvalConfig()


def define_eval_flags() -> None:
    """Defines evaluate.py's flags; safe to call twice, and after define_flags()."""
    e = _EVAL_DEFAULT
    specs = [
        ("string", "workdir", e.workdir, "Training workdir: config.json and checkpoints"),
        ("string", "mode", e.mode, " | ".join(EVAL_MODES)),
        ("string", "dataset", None, "Evaluate on this dataset instead of the training one"),
        ("string", "data_dir", None, "TFDS data directory"),
        ("string", "train_split_file", None, "Folder datasets: file of training image paths"),
        ("string", "test_split_file", None, "Folder datasets: file of test image paths"),
        ("integer", "image_size", e.image_size, "Must equal the model's; 0 means the model's"),
        ("integer", "batch_size", e.batch_size, "Batch size for features and finetuning"),
        ("integer", "eval_examples", e.eval_examples, "Images per split used by the evaluation"),
        ("integer", "probe_steps", e.probe_steps, "Full-batch steps of each linear probe"),
        ("float", "probe_learning_rate", e.probe_learning_rate, "Adam learning rate, probes"),
        ("integer", "finetune_epochs", e.finetune_epochs, "Epochs of the finetuned classifier"),
        ("integer", "finetune_batch_size", e.finetune_batch_size, "Finetuning batch size"),
        ("float", "finetune_learning_rate", e.finetune_learning_rate, "Initial SGD rate"),
        (
            "integer",
            "finetune_lr_step_epochs",
            e.finetune_lr_step_epochs,
            "The SGD rate is divided by 10 every this many epochs",
        ),
        (
            "list",
            "freeze_stages",
            [],
            "Comma-separated numbers of frozen encoder stages, one finetuning run each "
            "(-1: all); empty: every depth from 0 to all",
        ),
        (
            "boolean",
            "finetune_random_init",
            e.finetune_random_init,
            "Also finetune a randomly initialised encoder, the floor",
        ),
        ("float", "dropout", e.dropout, "Dropout before the classifier's hidden layer"),
        ("integer", "gallery_size", e.gallery_size, "Patches per part in parts.png"),
        ("integer", "seed", e.seed, "Random seed"),
        (
            "list",
            "compare",
            [],
            "Comma-separated evaluated workdirs to put side by side (instead of evaluating)",
        ),
        ("string", "compare_dir", e.compare_dir, "Where --compare writes report.json/.md"),
    ]
    _define_missing(specs)


def eval_from_flags(values: flags.FlagValues | None = None) -> EvalConfig:
    """Reads parsed flags once into a validated EvalConfig."""
    raw = _section(EvalConfig, values or flags.FLAGS)
    try:
        freeze = tuple(int(k) for k in raw.freeze_stages or () if str(k).strip())
    except ValueError:
        raise UserError(
            f"--freeze_stages must be comma-separated integers, got {','.join(raw.freeze_stages)!r}"
        ) from None
    compare = tuple(w.strip() for w in raw.compare or () if w.strip())
    return validate_eval(dataclasses.replace(raw, freeze_stages=freeze, compare=compare))


# --- scaling out: strategy, devices, precision, XLA (train.py) ----------------


def validate_distribute(d: DistributeConfig) -> DistributeConfig:
    """Checks the scale-out flags; TF_CONFIG and devices are checked when the strategy is made."""
    if d.strategy not in STRATEGIES:
        raise UserError(
            f"unknown --strategy {d.strategy!r}; expected one of {', '.join(STRATEGIES)}"
        )
    if d.mixed_precision not in PRECISIONS:
        raise UserError(
            f"unknown --mixed_precision policy {d.mixed_precision!r}; "
            f"expected one of {', '.join(PRECISIONS)}"
        )
    if d.virtual_cpu_devices < 0:
        raise UserError(f"--virtual_cpu_devices must be >= 0, got {d.virtual_cpu_devices}")
    if d.tpu and d.strategy != "tpu":
        raise UserError(f"--tpu={d.tpu!r} needs --strategy=tpu (got --strategy={d.strategy})")
    return d


def _define_distribute_flags() -> None:
    d = DistributeConfig()
    flags.DEFINE_string(
        "strategy",
        d.strategy,
        "auto | default | mirrored | multi_worker | tpu. auto: multi_worker when TF_CONFIG "
        "names several tasks, mirrored when several GPUs are visible, else default",
    )
    flags.DEFINE_string("tpu", d.tpu, "--strategy=tpu: TPU name or grpc:// address")
    flags.DEFINE_integer(
        "virtual_cpu_devices",
        d.virtual_cpu_devices,
        "Split the host CPU into N logical devices (runs multi-device code without GPUs)",
    )
    flags.DEFINE_boolean(
        "jit_compile",
        d.jit_compile,
        "XLA-compile the train step; unset: on with GPUs or TPUs, off on CPU only (slower there)",
    )
    flags.DEFINE_string(
        "mixed_precision",
        d.mixed_precision,
        " | ".join(PRECISIONS) + ". auto: mixed_bfloat16 on TPUs, GPUs of compute capability "
        ">= 8 and CPUs with AVX512_BF16 or AMX; mixed_float16 on older GPUs; none (float32) "
        "elsewhere",
    )
    flags.DEFINE_boolean(
        "deterministic", d.deterministic, "TF op determinism: same seed, same losses (slower)"
    )
    flags.DEFINE_boolean(
        "sync_batch_norm",
        d.sync_batch_norm,
        "BatchNorm statistics over the global batch instead of each replica's share",
    )


# --- export (python -m export) ------------------------------------------------

EXPORT_FORMATS = ("saved_model", "onnx")
QUANTIZE_MODES = ("int8",)
MIN_ONNX_OPSET = 17
MAX_ONNX_OPSET = 18  # the newest opset tf2onnx 1.17 converts to


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What the export stage writes; the model itself comes from WORKDIR/config.json."""

    workdir: str = ""
    export_dir: str = ""
    version: int = 0  # 0 means the restored checkpoint's step
    formats: tuple[str, ...] = EXPORT_FORMATS
    quantize: str = ""  # "" or "int8"
    overwrite: bool = False
    checkpoint: str = ""  # a checkpoint prefix; "" means the latest in WORKDIR
    model_name: str = "patchvae"  # the TF Serving model name in models.config
    opset: int = MIN_ONNX_OPSET
    parity_images: int = 32  # real training images compared across the runtimes
    calibration_images: int = 128  # training images that calibrate int8 ranges

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_export(cfg: ExportConfig) -> ExportConfig:
    """Checks export values a user can get wrong; raises UserError naming the value."""
    for name in ("workdir", "export_dir"):
        if not getattr(cfg, name):
            raise UserError(f"--{name} is required")
    if os.path.abspath(cfg.export_dir) == os.path.abspath(cfg.workdir):
        raise UserError(f"--export_dir={cfg.export_dir!r} must differ from --workdir")
    if cfg.version < 0:
        raise UserError(f"--version must be >= 0 (0: the checkpoint's step), got {cfg.version}")
    if not cfg.formats:
        raise UserError(f"--formats is empty; expected some of {', '.join(EXPORT_FORMATS)}")
    unknown = [f for f in cfg.formats if f not in EXPORT_FORMATS]
    if unknown or len(set(cfg.formats)) != len(cfg.formats):
        raise UserError(
            f"--formats={','.join(cfg.formats)} is not a list of distinct formats from "
            f"{', '.join(EXPORT_FORMATS)}"
        )
    if cfg.quantize and cfg.quantize not in QUANTIZE_MODES:
        raise UserError(
            f"unknown --quantize {cfg.quantize!r}; expected one of {', '.join(QUANTIZE_MODES)}"
        )
    if cfg.quantize and "onnx" not in cfg.formats:
        raise UserError(f"--quantize={cfg.quantize} needs the ONNX model: add onnx to --formats")
    if not MIN_ONNX_OPSET <= cfg.opset <= MAX_ONNX_OPSET:
        raise UserError(f"--opset must be in [{MIN_ONNX_OPSET}, {MAX_ONNX_OPSET}], got {cfg.opset}")
    if not cfg.model_name or not cfg.model_name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"--model_name must be letters, digits, - or _, got {cfg.model_name!r}")
    for name in ("parity_images", "calibration_images"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(cfg, name)}")
    return cfg


_EXPORT_DEFAULT = ExportConfig()


def define_export_flags() -> None:
    """Defines the export flags; safe to call twice, and after the other define functions."""
    e = _EXPORT_DEFAULT
    specs = [
        ("string", "workdir", None, "Training workdir: config.json and checkpoints"),
        ("string", "export_dir", None, "Export base directory (saved_model/, onnx/, report)"),
        ("integer", "version", e.version, "SavedModel version; 0 means the checkpoint's step"),
        ("list", "formats", list(e.formats), "Comma-separated: saved_model,onnx"),
        ("string", "quantize", e.quantize, "int8: also write an int8 ONNX model"),
        ("boolean", "overwrite", e.overwrite, "Replace an existing export of --version"),
        ("string", "checkpoint", None, "Checkpoint prefix to export instead of the latest"),
        ("string", "model_name", e.model_name, "TF Serving model name in models.config"),
        ("integer", "opset", e.opset, f"ONNX opset (>= {MIN_ONNX_OPSET})"),
        ("integer", "parity_images", e.parity_images, "Training images for the parity check"),
        ("integer", "calibration_images", e.calibration_images, "Images for int8 calibration"),
    ]
    _define_missing(specs)


def export_from_flags(values: flags.FlagValues | None = None) -> ExportConfig:
    """Reads parsed flags once into a validated ExportConfig."""
    raw = _section(ExportConfig, values or flags.FLAGS)
    return validate_export(
        dataclasses.replace(
            raw,
            formats=tuple(f.strip() for f in raw.formats or () if f.strip()),
            **{
                name: getattr(raw, name) or ""
                for name in ("workdir", "export_dir", "quantize", "checkpoint")
            },
        )
    )


# --- benchmarks (python -m benchmarks) ----------------------------------------

BENCH_SECTIONS = ("flops", "train", "encoder", "memory", "precision")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What the benchmark command measures, and the reference it measures against."""

    out: str = "benchmarks/results/run.json"
    quick: bool = False  # tiny sizes and few steps: checks the harness, measures nothing
    sections: tuple[str, ...] = BENCH_SECTIONS
    steps: int = 0  # train steps per timing window; 0: 4 at 32 px, 2 at 64 px
    seed: int = 0
    reference: str = ""  # a checkout of kampta/PatchVAE, timed interleaved with ours
    reference_python: str = ""  # a Python that imports torch
    reference_setup: bool = False  # create a venv with torch for the reference
    reference_venv: str = ""  # where --reference_setup creates it
    memory_folder: str = ""  # an image folder (FOLDER/train/CLASS/*.jpg) for the memory section
    precision_steps: int = 0  # 0: each recipe's own (default run 2,000, CIFAR recipe 600)
    precision_seeds: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_bench(cfg: BenchConfig) -> BenchConfig:
    """Checks benchmark values a user can get wrong; raises UserError naming the value."""
    if not cfg.out:
        raise UserError("--out is required: the JSON file the results go to")
    unknown = [s for s in cfg.sections if s not in BENCH_SECTIONS]
    if unknown or not cfg.sections:
        raise UserError(
            f"--sections={','.join(cfg.sections)} is not a list of sections from "
            f"{', '.join(BENCH_SECTIONS)}"
        )
    if cfg.steps < 0:
        raise UserError(f"--steps must be >= 0 (0: the default), got {cfg.steps}")
    if cfg.precision_steps < 0:
        raise UserError(
            f"--precision_steps must be >= 0 (0: the default), got {cfg.precision_steps}"
        )
    if cfg.precision_seeds < 2 and not cfg.quick:
        raise UserError(
            f"--precision_seeds must be >= 2 (a spread needs two runs), got {cfg.precision_seeds}"
        )
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


def define_bench_flags() -> None:
    """Defines the benchmark flags; safe to call twice."""
    b = BenchConfig()
    specs = [
        ("string", "out", b.out, "JSON file for the results (a .md table is written beside it)"),
        ("boolean", "quick", b.quick, "Tiny sizes and few steps: checks that everything runs"),
        ("list", "sections", list(b.sections), "Comma-separated: " + ",".join(BENCH_SECTIONS)),
        ("integer", "steps", b.steps, "Train steps per timing window; 0 means the default"),
        ("integer", "seed", b.seed, "Random seed"),
        (
            "string",
            "reference",
            b.reference,
            "A checkout of kampta/PatchVAE: its model is timed on the same recipes, "
            "interleaved with ours, and every figure gets its ours-to-theirs ratio",
        ),
        ("string", "reference_python", b.reference_python, "A Python that imports torch"),
        (
            "boolean",
            "reference_setup",
            b.reference_setup,
            "Create a virtual environment with torch for --reference (once)",
        ),
        (
            "string",
            "reference_venv",
            b.reference_venv,
            "Where --reference_setup creates it (default ~/.cache/patchvae-tf/torch-venv)",
        ),
        (
            "string",
            "memory_folder",
            b.memory_folder,
            "An image folder (FOLDER/train/CLASS/*.jpg), e.g. from python -m "
            "benchmarks.image_folder: peak memory on it and on 1,280 of its images",
        ),
        (
            "integer",
            "precision_steps",
            b.precision_steps,
            "Train steps of each bfloat16/float32 run; 0: the default run's 2,000, 600 for "
            "the CIFAR recipe",
        ),
        ("integer", "precision_seeds", b.precision_seeds, "Seeds per precision (>= 2)"),
    ]
    _define_missing(specs)


def bench_from_flags(values: flags.FlagValues | None = None) -> BenchConfig:
    """Reads parsed flags once into a validated BenchConfig."""
    raw = _section(BenchConfig, values or flags.FLAGS)
    sections = tuple(s.strip() for s in raw.sections or () if s.strip())
    return validate_bench(dataclasses.replace(raw, sections=sections))
