"""Evaluation: recognition probes and finetuning, part-discovery scores, figures and the report.

One module per section: setup (workdir, data, plan), probes, finetune, parts, figures and
report (which runs them and writes WORKDIR/eval/). The names below are the public ones;
``evaluation.setup`` is the function, which hides the submodule of that name as an
attribute (import from patchvae_tf.evaluation.setup to reach the module).
"""

from patchvae_tf.evaluation.figures import part_labels, read_scalars, reconstruction_error
from patchvae_tf.evaluation.parts import (
    ACTIVE_RATE,
    DETECTED_AUROC,
    auroc,
    cell_count_accuracy,
    match_parts,
    occurrence_rates,
    part_discovery,
    part_scores,
)
from patchvae_tf.evaluation.probes import encode_split, linear_probe, topk_accuracy
from patchvae_tf.evaluation.report import REPORT_KEYS, evaluate, summary_line
from patchvae_tf.evaluation.setup import Setup, restore_model, setup
from patchvae_tf.workdir import EVAL_DIR

__all__ = [
    "ACTIVE_RATE",
    "DETECTED_AUROC",
    "EVAL_DIR",
    "REPORT_KEYS",
    "Setup",
    "auroc",
    "encode_split",
    "evaluate",
    "linear_probe",
    "cell_count_accuracy",
    "match_parts",
    "occurrence_rates",
    "part_discovery",
    "part_labels",
    "part_scores",
    "read_scalars",
    "reconstruction_error",
    "restore_model",
    "setup",
    "summary_line",
    "topk_accuracy",
]
