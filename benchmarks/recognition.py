"""Recognition with few labels: test top-1 of recognizers trained from K labelled images per
class, K = 1, 5, 10, 50 and every label, several draws of the K images each.

    python -m benchmarks.recognition --patchvae=runs/shapes --vae=runs/shapes_vae
        --dataset=folder:data/shapes_folder   (one command line)

Rows: PatchVAE's features and part codes, the VAE (trained with the same flags) on its
features and code, and a random-init PatchVAE encoder on both: each a recognizer of
train_classifier.py (--classifier_head, frozen encoder) trained by the same loop. Accuracy,
not speed: the figures do not depend on the machine's load. Writes --out (JSON) and a
Markdown table beside it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import sys
import tempfile

from patchvae_tf.config import RECOGNIZER_HEADS
from patchvae_tf.config.fields import Checked, option
from patchvae_tf.errors import UserError


@dataclasses.dataclass(frozen=True)
class RecognitionBenchConfig(Checked):
    """Which encoders, which labelled data, how many labels and draws."""

    patchvae: str = option("runs/shapes", "PatchVAE training workdir (train.py's)")
    vae: str = option("", "VAE training workdir trained the same way (--arch=vae); empty: none")
    dataset: str = option("folder:data/shapes_folder", "Labelled data: folder:PATH or a TFDS name")
    data_dir: str | None = option(None, "TFDS data directory")
    labels_per_class: tuple[int, ...] = option(
        (1, 5, 10, 50, 0), "Comma-separated K values; 0: every training image"
    )
    draws: int = option(
        3, "Draws (seeds) of the K images per K; one for every label", positive=True
    )
    classifier_head: str = option(
        "linear", "The recognizers' head (train_classifier.py's)", choices=RECOGNIZER_HEADS
    )
    epochs: int = option(90, "Epochs of each recognizer", positive=True)
    out: str = option("benchmarks/results/recognition.json", "JSON file (a .md table beside it)")

    def check(self) -> None:
        if not self.patchvae:
            raise UserError("--patchvae is required: a PatchVAE training workdir")
        if not self.labels_per_class or min(self.labels_per_class) < 0:
            raise UserError("--labels_per_class must list K >= 0 (0: every label)")


def _rows(cfg: RecognitionBenchConfig) -> list[tuple[str, str, str, bool]]:
    """(row name, encoder workdir, classifier input, random init) of each row."""
    rows = [
        ("PatchVAE features", cfg.patchvae, "features", False),
        ("PatchVAE part codes", cfg.patchvae, "codes", False),
    ]
    if cfg.vae:
        rows += [
            ("VAE features", cfg.vae, "features", False),
            ("VAE code", cfg.vae, "codes", False),
        ]
    rows += [
        ("random-init features", cfg.patchvae, "features", True),
        ("random-init part codes", cfg.patchvae, "codes", True),
    ]
    return rows


def run(cfg: RecognitionBenchConfig, on_k=None) -> dict:
    """Trains every recognizer (in a temporary directory) and returns the results;
    ``on_k(results so far)`` after each K.
    """
    import contextlib
    import io

    import tensorflow as tf

    from benchmarks import hardware
    from patchvae_tf.config import RecognizerConfig
    from patchvae_tf.recognition import recognizer

    # Every recognizer traces its own functions: TF's retracing notices say nothing here.
    tf.get_logger().setLevel("ERROR")
    rows = _rows(cfg)
    out = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "machine": hardware.machine(),
        "rows": [],
    }
    total = sum(1 if k == 0 else cfg.draws for k in cfg.labels_per_class) * len(rows)
    done = 0
    with tempfile.TemporaryDirectory(prefix="recognition-bench-") as tmp:
        # K by K, every row at each: a run stopped early still compares the rows.
        for k in cfg.labels_per_class:
            for name, workdir, inputs, random_init in rows:
                top1, train_examples = [], 0
                for seed in range(1 if k == 0 else cfg.draws):
                    rcfg = RecognizerConfig(
                        encoder_workdir=workdir,
                        workdir=os.path.join(tmp, f"r{done}"),
                        dataset=cfg.dataset,
                        data_dir=cfg.data_dir,
                        labels_per_class=k,
                        classifier_head=cfg.classifier_head,
                        classifier_input=inputs,
                        random_init=random_init,
                        epochs=cfg.epochs,
                        seed=seed,
                    )
                    with contextlib.redirect_stdout(io.StringIO()):  # 1 line per run below
                        results = recognizer.train(rcfg)
                    top1.append(results["test"]["top1"])
                    train_examples = results["train_examples"]
                    out["majority_top1"] = results["test"]["majority_top1"]
                    out["test_examples"] = results["test"]["examples"]
                    done += 1
                    print(
                        f"[{done}/{total}] {name}, K={k or 'all'}, seed {seed}: top-1 "
                        f"{top1[-1]:.3f}",
                        flush=True,
                    )
                out["rows"].append(
                    {
                        "row": name,
                        "labels_per_class": k,
                        "train_examples": train_examples,
                        "top1": top1,
                        "mean": statistics.fmean(top1),
                        "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                    }
                )
            if on_k is not None:
                on_k(out)
    return out


def markdown(r: dict) -> str:
    """A table: one row per encoder and input, one column per K (mean +- std over draws)."""
    done = {row["labels_per_class"] for row in r["rows"]}
    ks = [k for k in r["config"]["labels_per_class"] if k in done]
    names = list(dict.fromkeys(row["row"] for row in r["rows"]))
    cell = {(row["row"], row["labels_per_class"]): row for row in r["rows"]}
    head = "| test top-1 | " + " | ".join(f"K = {k}" if k else "every label" for k in ks) + " |"
    lines = [head, "|---" * (len(ks) + 1) + "|"]
    for name in names:
        cells = []
        for k in ks:
            row = cell[name, k]
            spread = f" ± {row['std']:.3f}" if len(row["top1"]) > 1 else ""
            cells.append(f"{row['mean']:.3f}{spread}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    m = r["machine"]
    c = r["config"]
    lines += [
        "",
        f"{c['dataset']}: {r['test_examples']} test images, majority label top-1 "
        f"{r['majority_top1']:.3f}. {c['classifier_head']} head, frozen encoder, {c['epochs']} "
        f"epochs; mean ± standard deviation over {c['draws']} draws of the K images per class "
        f"(one run with every label). {m['cpu']}, {m['cores']} cores.",
    ]
    return "\n".join(lines) + "\n"


def main(cfg: RecognitionBenchConfig) -> None:
    for path in filter(None, (cfg.patchvae, cfg.vae)):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"{path!r} is not a training workdir (no config.json)")
    r = run(cfg, on_k=lambda partial: write(cfg.out, partial))
    print(markdown(r))
    print(f"wrote {cfg.out}", file=sys.stderr)


def write(out: str, r: dict) -> None:
    """The JSON at out and its table beside it (.md): after every K, so the figures so far
    survive a run stopped early.
    """
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(r, f, indent=2)
        f.write("\n")
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(r))


if __name__ == "__main__":
    from patchvae_tf.config import cli

    cli.run(main, RecognitionBenchConfig)
