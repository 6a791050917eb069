"""What the benchmarks run: the recipe's model, its precision variants, the sizes and targets."""

from __future__ import annotations

import dataclasses

from patchvae_tf.config import (
    Config,
    DataConfig,
    DistributeConfig,
    ModelConfig,
    TrainConfig,
)

# Ours over the authors' code (kampta/PatchVAE, float32, PyTorch's defaults), measured
# interleaved in the same run; above 1 is faster.
TARGETS = {
    "train_cifar_default": 1.5,
    "train_cifar_float32": 1.3,
    "train_64px_default": 1.5,
    "onnxruntime_int8_batch": 3.0,
    "onnxruntime_int8_batch1": 5.0,
    "onnxruntime_batch": 1.5,
    "onnxruntime_batch1": 1.5,
    "saved_model_batch": 1.5,
    "saved_model_batch1": 1.0,
    "saved_model_xla_batch": 1.5,
    "saved_model_xla_batch1": 1.0,
}
PEAK_RSS_TARGET_MB = 2048.0
FLAT_MEMORY_TARGET = 1.1  # peak RSS on the large dataset over the small one
VARIANTS = {  # name -> (jit_compile, mixed_precision); None and "auto" as train.py decides
    "default": (None, "auto"),
    "float32": (False, "none"),
    "float32_xla": (True, "none"),
    "bfloat16": (False, "mixed_bfloat16"),
    "bfloat16_xla": (True, "mixed_bfloat16"),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each section runs; --quick shrinks everything to check the harness."""

    recipes: tuple  # (name, image size, global batch); the first is the CIFAR recipe
    windows: int  # interleaved timing windows per training figure
    window_steps: dict  # image size -> train steps per window
    encoder_batch: int
    encoder_windows: int
    calls_batch1: int  # per window
    calls_batch: int  # per window
    memory_steps: int
    memory_dataset_sizes: tuple
    memory_folder_small: int  # images in the small copy of --memory_folder
    calibration_images: int
    parity_images: int


# Field -> (full run, --quick), side by side.
_SIZES = {
    "recipes": ((("cifar_32px", 32, 128), ("64px", 64, 128)), (("cifar_32px", 32, 4),)),
    "windows": (4, 2),
    "window_steps": ({32: 3, 64: 2}, {32: 2}),
    "encoder_batch": (128, 4),
    "encoder_windows": (5, 2),
    "calls_batch1": (100, 3),
    "calls_batch": (4, 2),
    "memory_steps": (30, 1),
    "memory_dataset_sizes": ((1280, 128000), (16, 64)),
    "memory_folder_small": (1280, 16),
    "calibration_images": (128, 4),
    "parity_images": (32, 4),
}
FULL = Sizes(**{field: full for field, (full, _) in _SIZES.items()})
QUICK = Sizes(**{field: quick for field, (_, quick) in _SIZES.items()})


def recipe_config(image_size: int, batch: int, variant: str, seed: int) -> Config:
    """The CIFAR recipe's model (resnet, scale 8, 64 base channels, N=16, L=6, the authors'
    initialization and BatchNorm constants) on shapes images of image_size.
    """
    jit, policy = VARIANTS[variant]
    return Config(
        data=DataConfig(dataset="shapes", shapes_train_size=10000),
        model=ModelConfig(
            arch="patchvae",
            encoder="resnet",
            image_size=image_size,
            scale=8,
            base_channels=64,
            num_parts=16,
            appearance_dim=6,
            initialization="reference",
            batch_norm_momentum=0.9,
            batch_norm_epsilon=1e-5,
        ),
        train=TrainConfig(batch_size=batch, seed=seed, learning_rate=1e-4, adam_epsilon=1e-8),
        distribute=DistributeConfig(jit_compile=jit, mixed_precision=policy),
    )
