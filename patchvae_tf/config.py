"""The frozen dataclasses every command reads its flags into, each field written once."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from patchvae_tf.errors import UserError
from patchvae_tf.options import Checked, option

ARCHS = ("patchvae", "vae")
ENCODERS = ("resnet", "pyramid")
ANNEAL_SCHEDULES = ("reference", "exponential")
INITIALIZATIONS = ("reference", "glorot")
NORMALIZATIONS = ("unit", "imagenet")
TRAIN_SPLITS = ("listed", "all_but_test")
SHAPES_LABELS = ("largest", "kinds")
# ResNet-18 reaches 1/4 after its stem, then halves per stage.
RESNET_SCALES = (4, 8, 16, 32)
# Shapes with texture: the share of the shape's colour that each class's dark pattern removes.
TEXTURE_CONTRAST = 0.65
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "none", "mixed_float16", "mixed_bfloat16")
CLASSIFIER_HEADS = ("flatten", "pool")
EVAL_MODES = ("all", "probe", "finetune", "parts", "visualize")
# keras: encoder.keras, the deterministic encoder for keras.saving.load_model.
EXPORT_FORMATS = ("saved_model", "onnx", "keras", "litert")
# litert is written when asked for (--formats=saved_model,onnx,keras,litert).
DEFAULT_EXPORT_FORMATS = ("saved_model", "onnx", "keras")
QUANTIZE_MODES = ("", "int8")
MIN_ONNX_OPSET = 17
MAX_ONNX_OPSET = 18  # the newest opset tf2onnx 1.17 converts to
BENCH_SECTIONS = ("flops", "train", "encoder", "memory", "precision", "profile")
# profile (where the time goes, for docs/performance.md) runs only when asked for.
DEFAULT_BENCH_SECTIONS = BENCH_SECTIONS[:-1]


# --- training (train.py) --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig(Checked):
    """Where the images come from and how they are read."""

    dataset: str = option("shapes", "shapes | a TFDS name (cifar100, mnist, ...) | folder:PATH")
    data_dir: str | None = option(None, "TFDS data directory")
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
        TEXTURE_CONTRAST,
        "Shapes with --shapes_texture: the share of a shape's colour its dark pattern removes",
        positive=True,
        maximum=1.0,
    )
    shapes_label: str = option(
        "largest",
        "Shapes: what the label says: largest (the class of the largest visible shape) | kinds "
        "(how many kinds of shape the image shows, 1 to 3, labelled 0 to 2)",
        choices=SHAPES_LABELS,
    )
    shuffle_buffer: int = option(10000, "TFDS: examples shuffled together", positive=True)
    download: bool = option(False, "TFDS: download and prepare a dataset not in --data_dir")

    def check(self) -> None:
        if self.train_split == "all_but_test" and not self.test_split_file:
            raise UserError(
                "--train_split=all_but_test needs --test_split_file (the images to leave out)"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig(Checked):
    """The model: PatchVAE or the VAE baseline, its networks, latents and loss weights."""

    arch: str = option("patchvae", "patchvae | vae (beta-VAE through --beta_app)", choices=ARCHS)
    encoder: str = option("resnet", "resnet | pyramid", choices=ENCODERS)
    image_size: int = option(
        32, "The model's input size: images are resized and centre-cropped to it", positive=True
    )
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
    decoder_batch_norm_updates: int = option(
        1,
        "PatchVAE: updates of the decoder's BatchNorm moving statistics per training step; 2 "
        "is the authors' (their decode() runs the decoder twice on the same input)",
        minimum=1,
        maximum=2,
    )

    def check(self) -> None:
        if self.scale & (self.scale - 1) or self.scale < 2:
            raise UserError(f"--scale must be a power of two >= 2, got {self.scale}")
        if self.encoder == "resnet" and self.scale not in RESNET_SCALES:
            raise UserError(
                f"--scale={self.scale} is not reachable by the resnet encoder; use one of "
                f"{RESNET_SCALES}"
            )
        if self.image_size % self.scale:
            raise UserError(
                f"--image_size={self.image_size} is not divisible by --scale={self.scale}"
            )
        if not (math.isfinite(self.tau_init) and self.tau_min <= self.tau_init):
            raise UserError(f"--tau_min={self.tau_min} must not exceed --tau_init={self.tau_init}")

    @property
    def prior(self) -> float:
        """The Bernoulli occurrence prior p, 1 / N unless set."""
        return self.occurrence_prior or 1.0 / self.num_parts


@dataclasses.dataclass(frozen=True)
class TrainConfig(Checked):
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
class DistributeConfig(Checked):
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

    def check(self) -> None:
        # TF_CONFIG and the devices are checked when the strategy is made.
        if self.tpu and self.strategy != "tpu":
            raise UserError(
                f"--tpu={self.tpu!r} needs --strategy=tpu (got --strategy={self.strategy})"
            )


TRAIN_SECTIONS = (DataConfig, ModelConfig, TrainConfig, DistributeConfig)


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run: its data, model, optimisation and distribution, each checked when built."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    distribute: DistributeConfig = DistributeConfig()

    def __post_init__(self) -> None:
        # Each section checked itself when it was built; what is left is that each is one.
        for f, cls in zip(dataclasses.fields(self), TRAIN_SECTIONS, strict=True):
            value = getattr(self, f.name)
            if not isinstance(value, cls):
                raise UserError(
                    f"Config.{f.name} must be a {cls.__name__}, got {type(value).__name__}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """The Config of a dict such as config.json's; every value is checked, and a key
        that names no section or field is refused (a typo would silently keep the default).
        """
        if not isinstance(d, dict):
            raise UserError(f"a config must be a dict of sections, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise UserError(
                f"unknown config section {unknown[0]!r}; expected some of {', '.join(names)}"
            )
        sections = {name: dict(d.get(name) or {}) for name in names}
        # Workdirs written before image_size moved to the model keep it under "data".
        if "image_size" in sections["data"]:
            sections["model"].setdefault("image_size", sections["data"].pop("image_size"))
        return cls(
            **{
                name: from_dict(section, sections[name])
                for name, section in zip(names, TRAIN_SECTIONS, strict=True)
            }
        )

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def from_dict(section, values: dict[str, Any]):
    """An instance of the config dataclass section from a dict of its fields, checked.

    Raises UserError for a key that is not one of its fields, or any value its checks refuse.
    """
    known = [f.name for f in dataclasses.fields(section)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown {section.__name__} field {unknown[0]!r}")
    return section(**values)


def load_config(path: str) -> Config:
    """Reads a config JSON written by training (``WORKDIR/config.json``)."""
    if not os.path.isfile(path):
        raise UserError(f"no config at {path!r}: is this a training workdir?")
    try:
        with open(path) as f:
            return Config.from_dict(json.load(f))
    except (ValueError, TypeError) as e:
        raise UserError(f"config {path!r} is not a valid config JSON: {e}") from None
    except UserError as e:
        raise UserError(f"config {path!r}: {e}") from None


# --- evaluation (evaluate.py) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalConfig(Checked):
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
    classifier_head: str = option(
        "flatten",
        "What the finetuned classifier reads: flatten (phi(x) flattened, the authors' "
        "classifier on their PatchVAE encoder) | pool (phi(x) averaged over its grid, their "
        "--arch=resnet18, which their ImageNet command runs)",
        choices=CLASSIFIER_HEADS,
    )
    gallery_size: int = option(10, "Images per part in parts.png", positive=True)
    seed: int = option(0, "Random seed", minimum=0)
    compare: tuple[str, ...] = option(
        (), "Comma-separated evaluated workdirs to put side by side (instead of evaluating)"
    )
    compare_dir: str = option("runs/comparison", "Where --compare writes report.json/.md")

    def check(self) -> None:
        if any(k < -1 for k in self.freeze_stages):
            raise UserError(
                f"--freeze_stages must list depths >= 0 (or -1 for all), got "
                f"{','.join(map(str, self.freeze_stages))}"
            )

    def modes(self) -> tuple[str, ...]:
        """The sections to run: every one for "all"."""
        return EVAL_MODES[1:] if self.mode == "all" else (self.mode,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- export (python -m export) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportConfig(Checked):
    """What the export stage writes; the model itself comes from WORKDIR/config.json."""

    workdir: str = option("", "Training workdir: config.json and checkpoints")
    export_dir: str = option("", "Export base directory (saved_model/, onnx/, report)")
    version: int = option(
        0,
        "Version to publish, above every version in --export_dir (published versions never "
        "change); 0 means the checkpoint's step, or the next number when that is taken",
        minimum=0,
    )
    formats: tuple[str, ...] = option(
        DEFAULT_EXPORT_FORMATS,
        "Comma-separated, of " + ",".join(EXPORT_FORMATS),
        choices=EXPORT_FORMATS,
    )
    quantize: str = option(
        "", "int8: also write the int8 ONNX and LiteRT models", choices=QUANTIZE_MODES
    )
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

    def check(self) -> None:
        for name in ("workdir", "export_dir"):
            if not getattr(self, name):
                raise UserError(f"--{name} is required")
        if os.path.abspath(self.export_dir) == os.path.abspath(self.workdir):
            raise UserError(f"--export_dir={self.export_dir!r} must differ from --workdir")
        if not self.formats:
            raise UserError(f"--formats is empty; expected some of {', '.join(EXPORT_FORMATS)}")
        if len(set(self.formats)) != len(self.formats):
            raise UserError(f"--formats={','.join(self.formats)} names a format twice")
        if self.quantize and not {"onnx", "litert"} & set(self.formats):
            raise UserError(
                f"--quantize={self.quantize} quantizes the ONNX or LiteRT model: add onnx or "
                "litert to --formats"
            )
        name = self.model_name
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise UserError(f"--model_name must be letters, digits, - or _, got {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- benchmarks (python -m benchmarks) ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchConfig(Checked):
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

    def check(self) -> None:
        # Whether --reference and --memory_folder exist is checked when the command runs
        # (validation.validate_bench): a config may be built on another machine.
        if not self.out:
            raise UserError("--out is required: the JSON file the results go to")
        if not self.sections:
            raise UserError(f"--sections is empty; expected some of {', '.join(BENCH_SECTIONS)}")
        if (self.reference_python or self.reference_setup or self.reference_venv) and not (
            self.reference
        ):
            raise UserError(
                "--reference_python, --reference_setup and --reference_venv need "
                "--reference=PATH (a checkout of kampta/PatchVAE)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
