"""The fields several commands share, each written once with its help and checks: where images
come from, the workdir, the seed, and the authors' code the comparisons run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from patchvae_tf.config.fields import Checked, option
from patchvae_tf.errors import UserError


def workdir(default: str, role: str) -> Any:
    """The --workdir field: what role says it is, then its layout; a blank one is refused.

    The default differs by command (train.py writes runs/shapes, evaluate.py reads it; export
    and train_classifier.py have none), so it is the one thing each command gives.
    """
    return option(default, f"{role}: config.json, checkpoints/ and logs/", required=True)


def seed() -> Any:
    """The --seed field: every command draws its weights, data order and samples from it."""
    return option(0, "Random seed: initial weights, data order and every random draw", minimum=0)


@dataclasses.dataclass(frozen=True)
class SourceFields(Checked):
    """Where images come from: the fields every command that reads a dataset shares."""

    dataset: str = option("shapes", "shapes | a TFDS name (cifar100, mnist, ...) | folder:PATH")
    data_dir: str | None = option(None, "TFDS data directory")
    train_split_file: str | None = option(None, "Folder datasets: file of training image paths")
    test_split_file: str | None = option(None, "Folder datasets: file of test image paths")

    def labelled(self, data):
        """A training DataConfig read for labels: its listed training split (also where the
        model trained on every image but the test ones, all_but_test), and this command's
        dataset fields in place of its own when --dataset is set.
        """
        data = dataclasses.replace(data, train_split="listed")
        if not self.dataset:
            return data
        names = [f.name for f in dataclasses.fields(SourceFields)]
        return dataclasses.replace(data, **{name: getattr(self, name) for name in names})


@dataclasses.dataclass(frozen=True)
class ReferenceFields(Checked):
    """The authors' PyTorch code (kampta/PatchVAE) and the interpreter that runs it, for the
    commands that measure ours beside theirs (python -m benchmarks, python -m parity).
    """

    reference: str = option("", "A checkout of kampta/PatchVAE: the authors' code, run beside ours")
    reference_python: str = option("", "--reference: a Python that imports torch and torchvision")
    reference_setup: bool = option(
        False, "--reference: create a virtual environment with torch and torchvision (once)"
    )
    reference_venv: str = option(
        "", "Where --reference_setup creates it (default ~/.cache/patchvae-tf/torch-venv)"
    )

    def check(self) -> None:
        # Whether --reference exists is checked when the command runs: a config may be built
        # on another machine.
        if (self.reference_python or self.reference_setup or self.reference_venv) and not (
            self.reference
        ):
            raise UserError(
                "--reference_python, --reference_setup and --reference_venv need "
                "--reference=PATH (a checkout of kampta/PatchVAE)"
            )
