"""Parity with the authors' code: our training step and theirs (kampta/PatchVAE, in PyTorch)
from the same weights, batch and seeded noise, compared tensor by tensor after every step.

    python -m parity --reference=PATH [--reference_python=PY | --reference_setup]

For each variant our model is built from its recipe in configs/ (the CIFAR recipe and its
categorical, hard and categorical-hard variants, the default run's pyramid encoder, the VAE,
the ImageNet architecture at a smaller image size), its initial weights are copied into the
authors' model (built by their model.py) module by module, and both take --steps Adam steps
on one batch in lockstep. Each step's noise comes from the seed our training step uses
(training/step.py's step_seed): our side samples from it with the samplers train.py runs,
and the same uniform and normal draws are given to their torch.rand and torch.randn_like
inside their own rsample. After every step every tensor is compared: the forward pass (the
encoder's output and heads at the first and last step), the loss terms, every gradient, and
after the step every parameter, both Adam moments and every BatchNorm statistic; after the
last step the inference-mode forward pass (BatchNorm's moving statistics). The classifier
variants do one SGD step of our --mode=finetune classifier (flatten or pooled head) and of
their classifier.py's, then compare the inference-mode logits.

--dtype=float64 (the default): both sides in float64, where rounding no longer hides a
difference. Flat tolerances (tensors.TOLERANCES64), raised per tensor and step only
where float64's own growth is larger (their float64 run against itself from weights one ulp
away, times GROWTH_MARGIN); no row is excused. The run exits 1 naming the first tensor and
step outside its tolerance. --dtype=float32: a user's run; a row outside its tolerance is
explained as float32 rounding only where ours is no further from their float64 result than
their float32 result is, for that tensor (up to 3x).

The documented differences float64 can see are options of ours (tensors.
AUTHORS_VALUES): the comparison sets each to the authors' value and lists it; with
--project_defaults each variant whose recipe differs also runs with this project's defaults,
as rows that only inform.

The difference of a tensor is max|ours - theirs| / max(max|theirs|, 1e-30): the largest
error relative to the tensor's own scale, so that entries near zero do not dominate.
Keras's Adam adds epsilon to sqrt(v) before the bias correction, which is PyTorch's update
with epsilon / sqrt(1 - beta_2^t): their Adam is given that epsilon step by step.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile

from benchmarks.markdown import sci, table
from parity.classifier import compare_classifier
from parity.steps import compare_model
from parity.tensors import (
    GROWTH_MARGIN,
    SPREAD_MARGIN,
    TOLERANCES,
    TOLERANCES64,
    set_options,
    variant_config,
)
from patchvae_tf.config import ParityConfig

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


# --- the run ---------------------------------------------------------------------------


def run(pcfg: ParityConfig, ref) -> dict:
    from benchmarks import hardware

    results = {
        "command": "python -m parity "
        + " ".join(
            f"--{k}={','.join(v) if isinstance(v, tuple) else v}"
            for k, v in pcfg.to_dict().items()
            if v not in ("", None, False)
        ),
        "config": pcfg.to_dict(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": hardware.machine(),
        "reference": ref.info,
        "torchvision": ref.info["modules"].get("torchvision"),
        "difference": "max |ours - theirs| / max(max |theirs|, 1e-30), per tensor",
        "tolerances": TOLERANCES64 if pcfg.dtype == "float64" else TOLERANCES,
        "growth_margin": GROWTH_MARGIN if pcfg.dtype == "float64" and pcfg.growth else None,
        "authors_values": {},
        "rows": [],
        "informational_rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in pcfg.variants:
            print(f"parity: {name}", flush=True)
            if name.startswith("classifier"):
                head = "pool" if name == "classifier_pool" else "flatten"
                part = compare_classifier(ref, pcfg, tmp, head)
                results["rows"] += explain(part["rows"])
            else:
                size = pcfg.imagenet_size if name == "imagenet" else pcfg.image_size
                options = set_options(name)
                results["authors_values"][name] = options
                part = compare_model(name, variant_config(name, size), ref, pcfg, tmp)
                results["rows"] += explain(part["rows"])
                project = set_options(name, "project")
                differs = any(v["set"] != options[k]["set"] for k, v in project.items())
                if pcfg.project_defaults and differs:
                    cfg = variant_config(name, size, values="project")
                    label = f"{name}+project"
                    print(f"parity: {label}", flush=True)
                    extra = compare_model(name, cfg, ref, pcfg, tmp, label=label)
                    results["informational_rows"] += extra["rows"]
            results["summary"] = summary(results["rows"])
            results["project_summary"] = summary(results["informational_rows"])
            write(pcfg.out, results)  # each variant as it is done
    results["summary"] = summary(results["rows"])
    results["project_summary"] = summary(results["informational_rows"])
    results["all_within_tolerance"] = all(r["within_tolerance"] for r in results["rows"])
    results["all_explained"] = all(r["within_tolerance"] or "reason" in r for r in results["rows"])
    first = first_outside(results["rows"])
    results["first_outside"] = first
    return results


def first_outside(rows: list) -> dict | None:
    """The first row (by variant, then step) outside its tolerance with no reason."""
    for r in rows:
        if not r["within_tolerance"] and "reason" not in r:
            return {
                k: r[k] for k in ("variant", "step", "group", "name", "difference", "tolerance")
            }
    return None


def explain(rows: list) -> list:
    """float32 only: gives a row outside its tolerance the reason "float32 rounding" where
    ours is no further from their float64 result than their float32 runs are, for this
    tensor (up to SPREAD_MARGIN times the furthest of them), or than the tolerance. Their
    float32 runs: from our weights on oneDNN's kernels and, with --growth, on PyTorch's own
    and from weights one ulp away, since one run shows only one of the ways rounding can
    carry a trajectory. float64 rows carry no reasons.
    """
    for r in rows:
        if r["within_tolerance"] or "ours_vs_float64" not in r:
            continue
        spread = r.get("float32_spread", r["theirs_vs_float64"])
        if r["ours_vs_float64"] <= max(r["tolerance"], SPREAD_MARGIN * spread):
            r["reason"] = (
                f"float32 rounding: ours is {r['ours_vs_float64']:.1e} from their float64 run, "
                f"their float32 runs up to {spread:.1e}"
            )
    return rows


def summary(rows: list) -> list:
    """Per variant and step: the worst row (largest difference over tolerance), how many rows
    are outside their tolerance and how many of those have no reason.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["variant"], r["step"]), []).append(r)
    out = []
    for (variant, step), rs in groups.items():
        worst = max(rs, key=lambda x: x["difference"] / x["tolerance"])
        outside = [x for x in rs if not x["within_tolerance"]]
        entry = {
            "variant": variant,
            "step": step,
            "group": "inference" if worst["group"] == "inference" else "step",
            "tensors": len(rs),
            "outside": len(outside),
            "unexplained": sum(1 for x in outside if "reason" not in x),
            "worst": f"{worst['group']} {worst['name']}",
            "difference": worst["difference"],
            "tolerance": worst["tolerance"],
            "largest_difference": max(x["difference"] for x in rs),
        }
        if any("growth" in x for x in rs):
            entry["growth"] = max(x.get("growth", 0.0) for x in rs)
        out.append(entry)
    return out


_SUMMARY = ["variant", "step", "tensors", "outside", "no reason", "worst", "difference"]
_SUMMARY += ["tolerance", "largest difference", "float64 growth"]


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Parity with the authors' code",
        "",
        f"`{results['command']}`",
        "",
        f"CPU: {m['cpu']} ({m['cpu_kind']}), {m['cores']} cores; "
        f"torch {results['reference']['torch']}, torchvision {results['torchvision']}. "
        f"Difference: {results['difference']}. Tolerances: {results['tolerances']}"
        + (
            f", raised to {results['growth_margin']:g} x float64's own growth where larger."
            if results.get("growth_margin")
            else "."
        ),
        "",
        "Options set to the authors' values: "
        + "; ".join(
            f"{v}: " + ", ".join(f"{k}={o['set']} (recipe {o['recipe']})" for k, o in opts.items())
            for v, opts in results["authors_values"].items()
        ),
        "",
    ]
    lines += table(_SUMMARY, [_summary_cells(s) for s in results["summary"]])
    if results.get("project_summary"):
        lines += ["", "## What this project's defaults change (informational)", ""]
        lines += table(_SUMMARY, [_summary_cells(s) for s in results["project_summary"]])
    lines += ["", "## Worst difference per step", ""] + step_table(results["summary"])
    header = ["variant", "step", "group", "tensor", "difference", "tolerance"]
    header += ["ours vs float64", "theirs vs float64", "their float32 spread", "reason"]
    rows = [
        [
            r["variant"],
            r["step"],
            r["group"],
            r["name"],
            sci(r["difference"]),
            sci(r["tolerance"], 0),
            sci(r.get("ours_vs_float64")),
            sci(r.get("theirs_vs_float64")),
            sci(r.get("float32_spread")),
            r.get("reason", ""),
        ]
        for r in results["rows"]
        if not r["within_tolerance"]
    ]
    lines += ["", "## Rows outside their tolerance", ""] + table(header, rows)
    return "\n".join(lines) + "\n"


def step_table(summary: list) -> list:
    """One row per variant: its worst difference at each step and in inference mode, then
    the worst tensor overall with its step.
    """
    by_variant: dict = {}
    for s in summary:
        by_variant.setdefault(s["variant"], []).append(s)
    steps = max((s["step"] for s in summary if s["group"] != "inference"), default=0)
    head = [str(t) for t in range(1, steps + 1)] + ["inference", "worst tensor (step)"]
    rows = []
    for variant, entries in by_variant.items():
        cells = {s["step"] if s["group"] != "inference" else "inference": s for s in entries}
        worst = max(entries, key=lambda s: s["difference"] / s["tolerance"])
        where = "inference" if worst["group"] == "inference" else worst["step"]
        values = [sci(cells[k]["difference"], 1) if k in cells else "" for k in range(1, steps + 1)]
        values.append(sci(cells["inference"]["difference"], 1) if "inference" in cells else "")
        rows.append([variant, *values, f"{worst['worst']} ({where})"])
    return table(["variant", *head], rows)


def _summary_cells(s: dict) -> list:
    return [
        s["variant"],
        "inference" if s["group"] == "inference" else s["step"],
        s["tensors"],
        s["outside"],
        s["unexplained"],
        s["worst"],
        sci(s["difference"]),
        sci(s["tolerance"], 0),
        sci(s["largest_difference"]),
        sci(s.get("growth")),
    ]


def write(path: str, results: dict) -> None:
    from patchvae_tf.workdir import write_text_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_text_atomic(os.path.splitext(path)[0] + ".md", markdown(results))


def main(pcfg: ParityConfig) -> dict:
    from parity import reference
    from patchvae_tf.errors import UserError

    if not pcfg.reference:
        raise UserError("--reference=PATH is required: a checkout of kampta/PatchVAE")
    ref = reference.start(
        pcfg.reference,
        pcfg.reference_python,
        pcfg.reference_setup,
        pcfg.reference_venv,
        WORKER,
        stand_in=pcfg.torchvision_stand_in,
    )
    try:
        results = run(pcfg, ref)
    finally:
        ref.close()
    write(pcfg.out, results)
    print(markdown(results).split("\n## Rows outside")[0])
    print(f"wrote {pcfg.out} and its .md")
    first = results["first_outside"]
    if first:
        print(
            f"outside tolerance: {first['variant']} step {first['step']} {first['group']} "
            f"{first['name']}: {first['difference']:.2e} > {first['tolerance']:.1e}"
        )
    return results


def command(pcfg: ParityConfig) -> None:
    """The command: exit 1 when a row is outside its tolerance with no reason."""
    if main(pcfg)["first_outside"]:
        sys.exit(1)
