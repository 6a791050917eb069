"""Several evaluated workdirs side by side, as the paper's tables put PatchVAE, VAE and
beta-VAE beside a randomly initialised encoder.
"""

from __future__ import annotations

import json
import os

from patchvae_tf.errors import UserError
from patchvae_tf.evaluation import results
from patchvae_tf.workdir import write_text_atomic


def model_name(model: dict) -> str:
    """PatchVAE, VAE or beta-VAE (a VAE whose appearance rate is weighted other than 1)."""
    if model["arch"] == "patchvae":
        return "PatchVAE"
    return "VAE" if model["beta_app"] == 1 else f"beta-VAE (beta={model['beta_app']:g})"


def _top(section: dict | None) -> dict:
    return {"top1": section["top1"], "top5": section["top5"]} if section else {}


def _finetune(runs: list[dict]) -> dict[str, dict]:
    return {str(run["frozen_stages"]): _top(run) for run in runs}


_PART_KEYS = (
    "distinct_coverage",
    "classes_detected",
    "active_parts",
    "mean_auroc",
    "region_coverage",
)


def _row(name: str, workdir: str | None, report: dict, *, random_init: bool = False) -> dict:
    """One table row: the trained model's numbers, or (random_init) the floors measured
    beside them on the encoder's initial weights.
    """
    ft = report.get("finetune") or {}
    pd = report.get("part_discovery") or {}
    parts = pd.get("random", {}) if random_init else pd
    row = {
        "model": name,
        "workdir": workdir,
        "dataset": report["dataset"],
        "linear_probe": _top(report.get("random_probe" if random_init else "linear_probe")),
        "part_code_probe": _top(report.get(("random_" if random_init else "") + "part_code_probe")),
        "finetune": _finetune(ft.get("random" if random_init else "runs", [])),
        "parts": {k: parts[k] for k in _PART_KEYS if k in parts},
    }
    if not random_init:
        row["checkpoint_step"] = report["checkpoint_step"]
    return row


def compare(workdirs: tuple[str, ...]) -> dict:
    """{"rows": [...]}: one row per workdir, and one random-init row per distinct encoder
    and dataset (the floor every model of that encoder is measured against).
    """
    if not workdirs:
        raise UserError("--compare needs at least one evaluated workdir")
    rows, floors = [], {}
    for workdir in workdirs:
        report = results.load(workdir)
        model = report["config"]["model"]
        rows.append(_row(model_name(model), workdir, report))
        encoder = tuple(model[k] for k in ("encoder", "scale", "base_channels"))
        floors.setdefault((report["dataset"], encoder), report)
    for (_, (encoder, scale, _)), report in floors.items():
        name = f"random init ({encoder}, 1/{scale})"
        rows.append(_row(name, None, report, random_init=True))
    return {"workdirs": list(workdirs), "rows": rows}


def _cell(section: dict, key: str = "top1") -> str:
    if not section or key not in section:
        return "-"
    value = section[key]
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _leaders(rows: list[dict]) -> list[str]:
    """One line per probe: the rows by top-1, best first, so a table's claim reads at a glance."""
    lines = []
    for key, name in (("linear_probe", "Probe"), ("part_code_probe", "Part-code probe")):
        scored = sorted(
            ((row[key]["top1"], row["model"]) for row in rows if row[key]), key=lambda t: -t[0]
        )
        if len(scored) > 1:
            ranked = ", ".join(f"{model} {top1:.3f}" for top1, model in scored)
            lines.append(f"- {name} top-1, best first: {ranked}.")
    return lines


def markdown(comparison: dict) -> str:
    """One table per dataset: probes, finetuning at each freeze depth, part metrics."""
    lines = ["# Comparison", ""]
    datasets = list(dict.fromkeys(row["dataset"] for row in comparison["rows"]))
    for dataset in datasets:
        rows = [row for row in comparison["rows"] if row["dataset"] == dataset]
        depths = sorted({k for row in rows for k in row["finetune"]}, key=int)
        part_keys = [
            k
            for k in ("distinct_coverage", "active_parts", "mean_auroc")
            if any(k in row["parts"] for row in rows)
        ]
        header = ["model", "workdir", "probe top-1", "probe top-5", "part-code probe top-1"]
        header += [f"finetune top-1 (k={k} frozen)" for k in depths] + part_keys
        lines += [
            f"## `{dataset}`",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for row in rows:
            cells = [
                row["model"],
                f"`{row['workdir']}`" if row["workdir"] else "-",
                _cell(row["linear_probe"]),
                _cell(row["linear_probe"], "top5"),
                _cell(row["part_code_probe"]),
                *(_cell(row["finetune"].get(k, {})) for k in depths),
                *(_cell(row["parts"], k) for k in part_keys),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_leaders(rows), ""]
    lines += [
        "Probes: softmax regression on frozen, pooled phi(x) (or the part codes). Finetuning: "
        "the authors' classifier on phi(x) with the first k encoder stages frozen. Random "
        "init: the same encoder with its initial weights, as each evaluation measured it.",
        "",
    ]
    return "\n".join(lines)


def write(comparison: dict, out_dir: str) -> str:
    """Writes report.json and report.md into out_dir; returns the markdown's path."""
    write_text_atomic(
        os.path.join(out_dir, results.REPORT_JSON), json.dumps(comparison, indent=2, sort_keys=True)
    )
    path = os.path.join(out_dir, results.REPORT_MD)
    write_text_atomic(path, markdown(comparison) + "\n")
    return path
