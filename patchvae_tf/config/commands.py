"""The configs of evaluate.py, python -m export and python -m benchmarks."""

from __future__ import annotations

import dataclasses
import os

from patchvae_tf.config.choices import (
    BENCH_SECTIONS,
    CLASSIFIER_HEADS,
    DEFAULT_BENCH_SECTIONS,
    DEFAULT_EXPORT_FORMATS,
    EVAL_MODES,
    EXPORT_FORMATS,
    MAX_IMAGE_ASPECT,
    MAX_IMAGE_PIXELS,
    MAX_ONNX_OPSET,
    MAX_REQUEST_IMAGES,
    MIN_ONNX_OPSET,
    PARITY_DTYPES,
    PARITY_VARIANTS,
    QUANTIZE_MODES,
)
from patchvae_tf.config.fields import Checked, option
from patchvae_tf.config.training import SourceFields
from patchvae_tf.errors import UserError

# --- evaluation (evaluate.py) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalConfig(SourceFields):
    """What evaluate.py measures; the model itself comes from WORKDIR/config.json."""

    # None evaluates on the data the model was trained on.
    dataset: str | None = option(None, "Evaluate on this dataset instead of the training one")
    workdir: str = option("runs/shapes", "Training workdir: config.json and checkpoints")
    mode: str = option("all", " | ".join(EVAL_MODES), choices=EVAL_MODES)
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
        if not self.compare and not self.workdir.strip():
            raise UserError("--workdir is empty; name the trained workdir to evaluate")
        if any(k < -1 for k in self.freeze_stages):
            raise UserError(
                f"--freeze_stages must list depths >= 0 (or -1 for all), got "
                f"{','.join(map(str, self.freeze_stages))}"
            )

    def modes(self) -> tuple[str, ...]:
        """The sections to run: every one for "all"."""
        return EVAL_MODES[1:] if self.mode == "all" else (self.mode,)


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
    parity_images: int = option(
        32,
        "Images for the parity checks: the first training images, or --check_images's; "
        "without either, images drawn from the model's decoder",
        positive=True,
    )
    check_images: str = option(
        "",
        "A folder of JPEG / PNG images (subfolders too, sorted) for the parity checks, in "
        "place of the training images (which a workdir trained on data passed from Python "
        "does not hold)",
    )
    calibration_images: int = option(128, "Images for int8 calibration", positive=True)
    calibration_folder: str = option(
        "",
        "A folder of JPEG / PNG images for int8 calibration, in place of the training images; "
        "--quantize=int8 refuses without real images",
    )
    int8_min_cosine: float = option(
        0.99, "Refuse int8 features below this mean cosine to float32", minimum=-1.0, maximum=1.0
    )
    int8_min_top1_agreement: float = option(
        0.98,
        "Recognizers: refuse an int8 model whose top-1 class agrees with float32's on a "
        "smaller share of the test images",
        minimum=0.0,
        maximum=1.0,
    )
    force_int8: bool = option(
        False, "Write the int8 model below --int8_min_cosine (--int8_min_top1_agreement)"
    )
    max_image_pixels: int = option(
        MAX_IMAGE_PIXELS,
        "Image signatures and load().encode: refuse an image with more pixels (width x height "
        "read from its JPEG/PNG header, before decoding)",
        positive=True,
    )
    max_image_aspect: float = option(
        MAX_IMAGE_ASPECT,
        "Image signatures and load().encode: refuse an image whose long side is more than "
        "this many times its short side",
        minimum=1.0,
        maximum=1e4,
    )
    max_request_images: int = option(
        MAX_REQUEST_IMAGES, "Image signatures: refuse a request of more images", positive=True
    )

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
        # (checks.validate_bench): a config may be built on another machine.
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


# --- parity (python -m parity) ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParityConfig(Checked):
    """What the parity harness compares and against which checkout."""

    reference: str = option("", "A checkout of kampta/PatchVAE (model.py, loss.py, ...)")
    reference_python: str = option("", "A Python that imports torch and torchvision")
    reference_setup: bool = option(
        False, "Create a virtual environment with torch and torchvision for the reference (once)"
    )
    reference_venv: str = option(
        "", "Where --reference_setup creates it (default ~/.cache/patchvae-tf/torch-venv)"
    )
    torchvision_stand_in: bool = option(
        False,
        "Where torchvision does not import, run their model on this project's copy of "
        "ResNet-18 (recorded in the JSON and the table)",
    )
    out: str = option("parity/results/parity.json", "JSON file (a .md table beside it)")
    dtype: str = option(
        "float64",
        "float64: both sides in float64, flat tolerances, exit 1 on any tensor outside | "
        "float32: a user's run, rows outside explained per tensor by float32 rounding",
        choices=PARITY_DTYPES,
    )
    variants: tuple[str, ...] = option(
        PARITY_VARIANTS, "Comma-separated, of " + ",".join(PARITY_VARIANTS), choices=PARITY_VARIANTS
    )
    steps: int = option(20, "Adam steps compared, every tensor after each", positive=True)
    batch_size: int = option(128, "Images in the batch (the recipe's 128)", positive=True)
    image_size: int = option(32, "Image size (the CIFAR recipe's 32)", positive=True)
    imagenet_size: int = option(
        64, "Image size of the imagenet variant (its recipe's 224 is slow on a CPU)", positive=True
    )
    num_classes: int = option(
        100, "Classes of the finetuning classifier (CIFAR-100's)", positive=True
    )
    seed: int = option(0, "Seed of the weights, the batch and the noise", minimum=0)
    growth: bool = option(
        True,
        "float64: also run theirs from weights one ulp away, and raise a tensor's tolerance "
        "to GROWTH_MARGIN times that growth where it is larger | float32: also run theirs "
        "on PyTorch's own CPU kernels and from weights one ulp away, the spread a row's "
        "rounding reason is measured by",
    )
    project_defaults: bool = option(
        False, "Also run each variant with this project's defaults of the options that differ"
    )
