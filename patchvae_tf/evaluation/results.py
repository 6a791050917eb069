"""The evaluation report as evaluate.py leaves it in WORKDIR/eval/: read back, and its
headline figures (the comparison and the export's model card read it here).
"""

from __future__ import annotations

import json
import os

from patchvae_tf.errors import UserError
from patchvae_tf.workdir import EVAL_DIR

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
_PROBES = ("linear_probe", "part_code_probe", "random_probe", "random_part_code_probe")
_PARTS = ("mean_auroc", "classes_detected", "active_parts", "distinct_coverage")


def load(workdir: str) -> dict:
    """The evaluation report of a workdir; a UserError says how to make a missing one."""
    path = os.path.join(workdir, EVAL_DIR, REPORT_JSON)
    if not os.path.isfile(path):
        raise UserError(
            f"{workdir!r} has no evaluation report ({path}); run "
            f"python evaluate.py --workdir={workdir} first"
        )
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise UserError(f"{path!r} is not a valid report: {e}") from None


def headline(report: dict, step: int | None = None) -> dict:
    """The report's headline figures, flat; with step, a note where the report was made at
    another checkpoint.
    """
    out = {"checkpoint_step": report.get("checkpoint_step"), "dataset": report.get("dataset")}
    if step is not None and report.get("checkpoint_step") != step:
        out["note"] = f"evaluated at step {report.get('checkpoint_step')}, exported at {step}"
    for key in _PROBES:
        if report.get(key):
            out[f"{key}_top1"] = report[key]["top1"]
    if report.get("chance_top1") is not None:
        out["chance_top1"] = report["chance_top1"]
    if (report.get("linear_probe") or {}).get("majority_top1") is not None:
        out["majority_top1"] = report["linear_probe"]["majority_top1"]
    for key, name in (("runs", "finetune_top1"), ("random", "finetune_random_init_top1")):
        runs = (report.get("finetune") or {}).get(key) or []
        if runs:
            out[name] = {f"{r['frozen_stages']} frozen": r["top1"] for r in runs}
    pd = report.get("part_discovery") or {}
    out |= {f"part_discovery_{key}": pd[key] for key in _PARTS if key in pd}
    if report.get("reconstruction"):
        out["reconstruction_mse"] = report["reconstruction"].get("mse")
    return out
