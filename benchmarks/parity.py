"""Parity with the authors' code: our training step and theirs (kampta/PatchVAE, in PyTorch)
from the same weights, batch and noise, compared tensor by tensor.

    python -m benchmarks.parity --reference=PATH [--reference_python=PY | --reference_setup]

For each variant (the CIFAR recipe, its categorical and hard variants, the VAE baseline) our
model is built from configs/cifar100.cfg, its initial weights are copied into the authors'
model (built by their model.py) module by module, and both take --steps Adam steps on one
batch with the same relaxed-occurrence uniforms and appearance epsilons, at the recipe's
learning rate and temperature schedule. The classifier variant does one SGD step of our
--mode=finetune classifier and of their classifier.py's. Compared: the encoder's output and
heads, x_hat, each loss term, every gradient, every parameter (and BatchNorm running
statistic) after the first and the last step, and the last step's forward pass and
gradients.

The difference of a tensor is max|ours - theirs| / max(max|theirs|, 1e-30): the largest
error relative to the tensor's own scale, so that entries near zero do not dominate.

Keras's Adam adds epsilon to sqrt(v) before the bias correction, which is PyTorch's update
with epsilon / sqrt(1 - beta_2^t): their Adam is given that epsilon step by step, so the
comparison is exact, and run once more with its own to measure the difference alone
(adam_epsilon_alone). Their code also runs in float64 from the same weights, batch and
noise: how far each float32 result (theirs and ours) is from it says what float32 rounding
alone does, which is the reason given for a row outside its tolerance (see explain()).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile

from patchvae_tf.config.fields import Checked, option

VARIANTS = ("cifar", "categorical", "hard", "vae", "classifier")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity_worker.py")



@dataclasses.dataclass(frozen=True)
class ParityConfig(Checked):
    """What the parity harness compares and against which checkout."""

    reference: str = option("", "A checkout of kampta/PatchVAE (model.py, loss.py, ...)")
    reference_python: str = option("", "A Python that imports torch")
    reference_setup: bool = option(
        False, "Create a virtual environment with torch for the reference (once)"
    )
    reference_venv: str = option(
        "", "Where --reference_setup creates it (default ~/.cache/patchvae-tf/torch-venv)"
    )
    out: str = option("benchmarks/results/parity.json", "JSON file (a .md table beside it)")
    variants: tuple[str, ...] = option(
        VARIANTS, "Comma-separated, of " + ",".join(VARIANTS), choices=VARIANTS
    )
    steps: int = option(
        20, "Adam steps compared (parameters after the first and the last)", positive=True
    )
    batch_size: int = option(128, "Images in the batch (the recipe's 128)", positive=True)
    image_size: int = option(32, "Image size (the CIFAR recipe's 32)", positive=True)
    num_classes: int = option(
        100, "Classes of the finetuning classifier (CIFAR-100's)", positive=True
    )
    seed: int = option(0, "Seed of the weights, the batch and the noise", minimum=0)


from benchmarks.parity_steps import compare_classifier, compare_model  # noqa: E402
from benchmarks.parity_tensors import TOLERANCES, variant_config  # noqa: E402

# --- the run ---------------------------------------------------------------------------


def run(pcfg: ParityConfig, ref) -> dict:
    from benchmarks import hardware

    results = {
        "command": "python -m benchmarks.parity "
        + " ".join(
            f"--{k}={','.join(v) if isinstance(v, tuple) else v}"
            for k, v in pcfg.to_dict().items()
            if v not in ("", None, False)
        ),
        "config": pcfg.to_dict(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": hardware.machine(),
        "reference": ref.info,
        "difference": "max |ours - theirs| / max(max |theirs|, 1e-30), per tensor",
        "tolerances": TOLERANCES,
        "rows": [],
        "adam_epsilon_effect": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in pcfg.variants:
            print(f"parity: {name}", flush=True)
            if name == "classifier":
                part = compare_classifier(ref, pcfg, tmp)
            else:
                part = compare_model(name, variant_config(name, pcfg.image_size), ref, pcfg, tmp)
            results["rows"] += explain(part["rows"])
            results["adam_epsilon_effect"] += part.get("adam_epsilon_effect", [])
            results["summary"] = summary(results)
            write(pcfg.out, results)  # each variant as it is done
    results["summary"] = summary(results)
    results["all_within_tolerance"] = all(r["within_tolerance"] for r in results["rows"])
    results["all_explained"] = all(r["within_tolerance"] or "reason" in r for r in results["rows"])
    return results


def explain(rows: list) -> list:
    """Gives each row outside its tolerance the reason found, if the float64 run finds one.

    float32 rounding: ours is no further from their float64 result than their own float32
    result is, for this tensor (up to 3x) or for some tensor of the same group. Adam's step
    g / (sqrt(v) + eps) turns the rounding of gradients near zero into whole steps of lr,
    so after the first step single entries differ by 2 lr in both float32 runs.
    """
    floors: dict = {}
    for r in rows:
        if "theirs_vs_float64" in r:
            key = r["group"]
            floors[key] = max(floors.get(key, 0.0), r["theirs_vs_float64"])
    for r in rows:
        if r["within_tolerance"] or "ours_vs_float64" not in r:
            continue
        floor = max(r["tolerance"], 3 * r["theirs_vs_float64"], floors[r["group"]])
        if r["ours_vs_float64"] <= floor:
            r["reason"] = (
                f"float32 rounding: ours is {r['ours_vs_float64']:.1e} from their float64 run, "
                f"their float32 run {r['theirs_vs_float64']:.1e} (at most "
                f"{floors[r['group']]:.1e} in this group)"
            )
    return rows


def summary(results: dict) -> list:
    """Per variant and group: the worst row, how many rows are outside their tolerance and
    how many of those have no reason found; the worst distances from their float64 run.
    """
    groups: dict = {}
    for r in results["rows"]:
        groups.setdefault((r["variant"], r["group"]), []).append(r)
    for r in results["adam_epsilon_effect"]:
        groups.setdefault((r["variant"], "adam_epsilon_alone"), []).append(r)
    out = []
    for (variant, group), rows in groups.items():
        worst = max(rows, key=lambda x: x["difference"])
        outside = [x for x in rows if not x["within_tolerance"]]
        entry = {
            "variant": variant,
            "group": group,
            "tensors": len(rows),
            "outside": len(outside),
            "unexplained": sum(1 for x in outside if "reason" not in x),
            "worst": worst["name"],
            "difference": worst["difference"],
            "tolerance": worst["tolerance"],
        }
        for k in ("ours_vs_float64", "theirs_vs_float64"):
            if any(k in x for x in rows):
                entry[k] = max(x.get(k, 0.0) for x in rows)
        out.append(entry)
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Parity with the authors' code",
        "",
        f"`{results['command']}`",
        "",
        f"CPU: {m['cpu']} ({m['cpu_kind']}), {m['cores']} cores; "
        f"torch {results['reference']['torch']}. Difference: {results['difference']}. "
        "adam_epsilon_alone: their Adam with its epsilon against their Adam with Keras's "
        "(what the comparison removes).",
        "",
        "| variant | group | tensors | outside | no reason | worst | difference | tolerance "
        "| ours vs float64 | theirs vs float64 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["summary"]:
        lines.append(
            _cells(
                s["variant"],
                s["group"],
                s["tensors"],
                s["outside"],
                s["unexplained"],
                s["worst"],
                _e(s["difference"]),
                _e(s["tolerance"], 0),
                _e(s.get("ours_vs_float64")),
                _e(s.get("theirs_vs_float64")),
            )
        )
    lines += [
        "",
        "## Every tensor",
        "",
        "| variant | group | tensor | shape | difference | tolerance | within | ours vs float64 "
        "| theirs vs float64 | reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            _cells(
                r["variant"],
                r["group"],
                r["name"],
                "x".join(map(str, r["shape"])) or "scalar",
                _e(r["difference"]),
                _e(r["tolerance"], 0),
                "yes" if r["within_tolerance"] else "**no**",
                _e(r.get("ours_vs_float64")),
                _e(r.get("theirs_vs_float64")),
                r.get("reason", ""),
            )
        )
    return "\n".join(lines) + "\n"


def _e(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}e}"


def _cells(*values) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def write(path: str, results: dict) -> None:
    from patchvae_tf.workdir import write_text_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_text_atomic(os.path.splitext(path)[0] + ".md", markdown(results))


def main(pcfg: ParityConfig) -> dict:
    from benchmarks import reference
    from patchvae_tf.errors import UserError

    if not pcfg.reference:
        raise UserError("--reference=PATH is required: a checkout of kampta/PatchVAE")
    ref = reference.start(
        pcfg.reference, pcfg.reference_python, pcfg.reference_setup, pcfg.reference_venv, WORKER
    )
    try:
        results = run(pcfg, ref)
    finally:
        ref.close()
    write(pcfg.out, results)
    print(markdown(results).split("\n## Every tensor")[0])
    outside = [r for r in results["rows"] if not r["within_tolerance"] and "reason" not in r]
    for r in outside:
        print(
            f"outside tolerance, no reason found: {r['variant']} {r['group']} {r['name']}: "
            f"{r['difference']:.2e} > {r['tolerance']:.0e}"
        )
    print(f"wrote {pcfg.out} and its .md")
    return results


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from patchvae_tf.config import cli

    cli.run(main, ParityConfig)
