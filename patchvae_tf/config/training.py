"""The training config (train.py): data, model, train and distribute sections, and config.json."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, ClassVar

from patchvae_tf.config import shared
from patchvae_tf.config.choices import (
    ANNEAL_SCHEDULES,
    ARCHS,
    ENCODERS,
    HARD_CATEGORICAL,
    INITIALIZATIONS,
    KERAS_MODEL_PREFIX,
    MAX_IMAGE_ASPECT,
    MAX_IMAGE_PIXELS,
    NORMALIZATIONS,
    PRECISIONS,
    RESNET_SCALES,
    SHAPES_LABELS,
    STRATEGIES,
    TEXTURE_CONTRAST,
    TRAIN_SPLITS,
)
from patchvae_tf.config.fields import Checked, option
from patchvae_tf.config.shared import SourceFields
from patchvae_tf.errors import UserError

# --- training (train.py) --------------------------------------------------------

_FUNCTION_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_function_name(text: str) -> bool:
    """Whether text has the form module:function (dotted names on both sides)."""
    return bool(_FUNCTION_NAME.fullmatch(text))


@dataclasses.dataclass(frozen=True)
class DataConfig(SourceFields):
    """Where the images come from and how they are read."""

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
    max_image_pixels: int = option(
        MAX_IMAGE_PIXELS,
        "Folder and TFDS images: skip one with more pixels (width x height from its JPEG/PNG "
        "header, before decoding)",
        positive=True,
    )
    max_image_aspect: float = option(
        MAX_IMAGE_ASPECT,
        "Folder and TFDS images: skip one whose long side is more than this many times its "
        "short side",
        minimum=1.0,
        maximum=1e4,
    )

    def check(self) -> None:
        if self.train_split == "all_but_test" and not self.test_split_file:
            raise UserError(
                "--train_split=all_but_test needs --test_split_file (the images to leave out)"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig(Checked):
    """The model: PatchVAE or the VAE baseline, its networks, latents and loss weights."""

    arch: str = option("patchvae", "patchvae | vae (beta-VAE through --beta_app)", choices=ARCHS)
    encoder: str = option(
        "resnet",
        "resnet | pyramid | module:function, a function returning a keras.Model that maps "
        "images to a feature map (imported when the model is built; --scale follows its map)",
    )
    encoder_preprocessing: str = option(
        "",
        "A module:function encoder's preprocessing, module:function applied to pixels in "
        "[0, 255] inside the model (keras.applications.resnet_v2.preprocess_input is "
        "keras.src.applications.resnet_v2:preprocess_input); empty: the encoder gets the "
        "--normalization input, as the built-in ones",
    )
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
    hard_categorical: str = option(
        "one_hot",
        "With --categorical --hard, the occurrence the decoder sees: one_hot (the argmax part "
        "of each cell) | sign (each part's 1[l > 0], the authors': a cell may show several "
        "parts or none)",
        choices=HARD_CATEGORICAL,
    )
    occurrence_rate_epsilon: float = option(
        0.0,
        "Epsilon inside the occurrence rate's logs, q log((q + eps) / p) + ...: 0 is the "
        "exact KL from the logits; the authors' loss.py adds 1e-7",
        minimum=0.0,
    )
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
        if not (
            self.encoder in ENCODERS
            or self.encoder.startswith(KERAS_MODEL_PREFIX)
            or is_function_name(self.encoder)
        ):
            raise UserError(
                f"unknown --encoder {self.encoder!r}; expected one of {', '.join(ENCODERS)} or "
                "module:function"
            )
        if self.encoder_preprocessing and not is_function_name(self.encoder_preprocessing):
            raise UserError(
                f"--encoder_preprocessing={self.encoder_preprocessing!r} is not of the form "
                "module:function"
            )
        if self.encoder_preprocessing and not self.custom_encoder:
            raise UserError(
                f"--encoder_preprocessing is for a module:function --encoder, not "
                f"--encoder={self.encoder}"
            )
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
        if self.arch == "vae" and (self.categorical or self.hard):
            flag = "--categorical" if self.categorical else "--hard"
            raise UserError(
                f"{flag} sets PatchVAE's occurrences; --arch=vae has none (drop {flag})"
            )

    @property
    def custom_encoder(self) -> bool:
        """Whether the encoder is the user's Keras model rather than a built-in one."""
        return self.encoder not in ENCODERS

    @property
    def prior(self) -> float:
        """The Bernoulli occurrence prior p, 1 / N unless set."""
        return self.occurrence_prior or 1.0 / self.num_parts


@dataclasses.dataclass(frozen=True)
class TrainConfig(Checked):
    """The optimisation and what the run writes."""

    workdir: str = shared.workdir("runs/shapes", "Where the run writes")
    batch_size: int = option(128, "Global batch size", positive=True)
    learning_rate: float = option(1e-4, "Adam learning rate", positive=True)
    train_steps: int = option(2000, "Total optimizer steps", positive=True)
    log_every: int = option(100, "Steps between TensorBoard summaries", positive=True)
    checkpoint_every: int = option(500, "Steps between checkpoints", positive=True)
    adam_epsilon: float = option(1e-8, "Adam epsilon (PyTorch's default)", positive=True)
    seed: int = shared.seed()
    memory_check: bool = option(
        True,
        "Refuse a run whose estimated memory (a lower bound: variables, Adam's moments and the "
        "main activations) is over this machine's; --nomemory_check to try anyway",
    )


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
class Config(Checked):
    """A training run: its data, model, optimisation and distribution, each checked when built."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    distribute: DistributeConfig = DistributeConfig()

    # The sections train.py's flags are read into, in the order of the fields.
    SECTIONS: ClassVar[tuple[type, ...]] = TRAIN_SECTIONS

    def __post_init__(self) -> None:
        # Each section checked itself when it was built; what is left is that each is one.
        for f, cls in zip(dataclasses.fields(self), TRAIN_SECTIONS, strict=True):
            value = getattr(self, f.name)
            if not isinstance(value, cls):
                raise UserError(
                    f"Config.{f.name} must be a {cls.__name__}, got {type(value).__name__}"
                )

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


# Beside the checkpoints, training keeps the config they were trained with: a config.json
# edited since (image_size 32 -> 64) is noticed instead of used silently.
# Not named config.json: load() takes a directory holding a config.json for a workdir.
TRAINED_CONFIG = os.path.join("checkpoints", "trained_config.json")


def _read(path: str) -> Config:
    try:
        with open(path) as f:
            cfg = Config.from_dict(json.load(f))
    except (ValueError, TypeError) as e:
        raise UserError(f"config {path!r} is not a valid config JSON: {e}") from None
    except UserError as e:
        raise UserError(f"config {path!r}: {e}") from None
    return cfg


def load_config(path: str) -> Config:
    """Reads a config JSON written by training (``WORKDIR/config.json``).

    When the workdir's checkpoints/trained_config.json (what its checkpoints were trained with)
    names another model, raises UserError naming the fields that differ.
    """
    if not os.path.isfile(path):
        raise UserError(f"no config at {path!r}: is this a training workdir?")
    cfg = _read(path)
    trained_path = os.path.join(os.path.dirname(path), TRAINED_CONFIG)
    if os.path.basename(path) == "config.json" and os.path.isfile(trained_path):
        trained = dataclasses.asdict(_read(trained_path).model)
        now = dataclasses.asdict(cfg.model)
        diff = [f"{k}={now[k]!r}" for k in now if now[k] != trained[k]]
        if diff:
            was = ", ".join(f"{k}={trained[k]!r}" for k in now if now[k] != trained[k])
            raise UserError(
                f"config {path!r} was edited: it says {', '.join(diff)}, but its checkpoints "
                f"were trained with {was} ({trained_path}); restore config.json"
            )
    if cfg.model.encoder.startswith(KERAS_MODEL_PREFIX):
        # A Keras model passed from Python: every command that builds this model finds it.
        from patchvae_tf import workdir

        workdir.read_backbone(os.path.dirname(path), cfg.model.encoder)
    return cfg
