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
# ResNet-18 reaches 1/4 after its stem, then halves per stage.
RESNET_SCALES = (4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "shapes"
    data_dir: str | None = None
    image_size: int = 32
    train_split_file: str | None = None
    test_split_file: str | None = None
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
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

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
    }
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    if m.arch not in ARCHS:
        raise UserError(f"unknown --arch {m.arch!r}; expected one of {', '.join(ARCHS)}")
    if m.encoder not in ENCODERS:
        raise UserError(f"unknown --encoder {m.encoder!r}; expected one of {', '.join(ENCODERS)}")
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
    flags.DEFINE_float("anneal_rate", m.anneal_rate, "tau = max(tau_init exp(-rate t), tau_min)")
    # Training.
    flags.DEFINE_string("workdir", t.workdir, "Checkpoints, logs and config go here")
    flags.DEFINE_integer("batch_size", t.batch_size, "Global batch size")
    flags.DEFINE_float("learning_rate", t.learning_rate, "Adam learning rate")
    flags.DEFINE_integer("train_steps", t.train_steps, "Total optimizer steps")
    flags.DEFINE_integer("log_every", t.log_every, "Steps between TensorBoard summaries")
    flags.DEFINE_integer("checkpoint_every", t.checkpoint_every, "Steps between checkpoints")
    flags.DEFINE_integer("seed", t.seed, "Random seed")


def _section(cls, values) -> Any:
    return cls(**{f.name: getattr(values, f.name) for f in dataclasses.fields(cls)})


def from_flags(values: flags.FlagValues | None = None) -> Config:
    """Reads parsed flags once into a validated Config."""
    values = values or flags.FLAGS
    cfg = Config(
        data=_section(DataConfig, values),
        model=_section(ModelConfig, values),
        train=_section(TrainConfig, values),
    )
    return validate(cfg)
