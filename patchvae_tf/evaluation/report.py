"""The evaluation report: runs the sections, renders markdown and TensorBoard, publishes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf

from patchvae_tf.config import EvalConfig
from patchvae_tf.data.shapes import CLASSES as SHAPE_CLASSES
from patchvae_tf.evaluation import drawing, plan, results
from patchvae_tf.evaluation.figures import figures, reconstruction_error
from patchvae_tf.evaluation.finetune import finetune, step_seconds
from patchvae_tf.evaluation.parts import ACTIVE_RATE, DETECTED_AUROC, part_discovery
from patchvae_tf.evaluation.probes import run_probes
from patchvae_tf.evaluation.setup import setup
from patchvae_tf.model import models
from patchvae_tf.workdir import EVAL_DIR, publish

REPORT_KEYS = (
    "linear_probe",
    "part_code_probe",
    "random_probe",
    "random_part_code_probe",
    "finetune",
    "part_discovery",
    "reconstruction",
    "images",
)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# What the part-code probe reads for each architecture.
CODE_NAMES = {"patchvae": "part codes", "vae": "posterior mean"}


def _verdict(r: dict) -> list[str]:
    """The report's opening lines: probe against its floor, distinct parts, reconstruction."""
    lines = []
    if r["linear_probe"]:
        code = r.get("part_code_probe")
        code_line = (
            f"; on the model's code ({CODE_NAMES[r['config']['model']['arch']]}) "
            f"{code['top1']:.3f} against {r['random_part_code_probe']['top1']:.3f}"
            if code
            else ""
        )
        lines.append(
            f"- **Recognition:** linear probe top-1 on pooled features "
            f"{r['linear_probe']['top1']:.3f} against {r['random_probe']['top1']:.3f} for a "
            f"random-init encoder{code_line} (chance {_fmt(r['chance_top1'])}, majority "
            f"label {_fmt(r['linear_probe'].get('majority_top1'))})."
        )
    pd = r["part_discovery"]
    if pd:
        classes = SHAPE_CLASSES
        found = ", ".join(
            f"{name} {pd['matched'][name]['auroc']:.2f} (part {pd['matched'][name]['part']})"
            if name in pd["matched"]
            else f"{name}: no active part"
            for name in classes
        )
        lines.append(
            f"- **Parts:** {pd['classes_detected']} of {len(classes)} shape classes found by a "
            f"part of their own (matched AUROC >= {DETECTED_AUROC}; {found}); distinct "
            f"coverage {pd['distinct_coverage']:.3f} (random init "
            f"{pd['random']['distinct_coverage']:.3f}); {pd['active_parts']} of "
            f"{len(pd['parts'])} parts active (random init {pd['random']['active_parts']})."
        )
    rec = r.get("reconstruction")
    if rec:
        lines.append(
            f"- **Reconstruction:** mean squared error {rec['mse']:.4f} per pixel ([0, 1] "
            f"scale) against {rec['mean_image_mse']:.4f} for the test images' mean image."
        )
    return lines + [""] if lines else []


def _part_section(pd: dict) -> list[str]:
    rnd = pd["random"]
    lines = [
        "## Part discovery",
        "",
        "Each part's occurrence probability is scored as a detector of each ground-truth "
        "region (the three shape classes and the background) by its AUROC over all h x w "
        "cells of the test images; a cell belongs to the region that covers most of it, and "
        "0.5 is chance. Active parts are matched to regions one to one (the assignment "
        "with the largest summed AUROC) on training images, then scored on the test "
        "images, so one part that fires on every shape counts for one class only and no "
        "score is the selection's own; a part left at the prior is not matched (it can rank "
        "cells by tiny wobbles around the prior, but never fires). Distinct coverage is the "
        "mean matched AUROC over the shape classes, a class without an active part counting "
        "0.5.",
        "",
        f"Distinct coverage **{pd['distinct_coverage']:.3f}** (random-init model: "
        f"{rnd['distinct_coverage']:.3f}); shape classes whose matched part reaches AUROC "
        f"{DETECTED_AUROC}: **{pd['classes_detected']}** (random: {rnd['classes_detected']}).",
        "",
        "| region | matched part | AUROC | random init: part | AUROC |",
        "|---|---|---|---|---|",
    ]
    for name, m in pd["matched"].items():
        floor = rnd["matched"].get(name)
        floor_cells = f"{floor['part']} | {floor['auroc']:.3f}" if floor else "- | -"
        lines.append(f"| {name} | {m['part']} | {m['auroc']:.3f} | {floor_cells} |")
    lines += [
        "",
        f"Active parts: **{pd['active_parts']}** of {len(pd['parts'])} (random init: "
        f"{rnd['active_parts']}). A part is active when its occurrence rate, the mean over "
        f"cells of KL(Bernoulli(q_occ) || Bernoulli({pd['prior']:.3g})), is at least "
        f"{ACTIVE_RATE} nats; a part left at the prior pays about 0 and carries nothing. "
        "(A random-init network's parts sit wherever its initial logits put them, so its "
        "count says how far from the prior initialisation starts, not that it found parts.)",
        "",
        "| part | matched region | AUROC | best region | AUROC | mean q_occ | rate (nats) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pd["parts"]:
        matched = (
            f"{p['matched_region']} | {p['matched_auroc']:.3f}" if p["matched_region"] else "- | -"
        )
        lines.append(
            f"| {p['part']} | {matched} | {p['best_region']} | {p['auroc']:.3f} "
            f"| {p['mean_q_occ']:.3f} | {p['occurrence_rate']:.3f} |"
        )
    lines += [
        "",
        "Without the one-to-one match, per region its best part, which may be one part for "
        "every region (random init in brackets): "
        + ", ".join(
            f"{name} {v:.3f} ({rnd['per_region_best'][name]:.3f})"
            for name, v in pd["per_region_best"].items()
        )
        + f"; their mean {pd['region_coverage']:.3f} ({rnd['region_coverage']:.3f}).",
        "",
    ]
    if "cell_count_accuracy" in pd:
        rule = {
            "largest": "the shape class with the most cells",
            "kinds": "how many shape classes have a cell",
        }[pd.get("label", "largest")]
        lines += [
            f"The label read from cell counts ({rule}) is right for "
            f"{pd['cell_count_accuracy']:.3f} of the test images: what knowing each cell's "
            "region, and nothing finer, tells.",
            "",
        ]
    return lines


_CAPTIONS = {
    "reconstructions": "Test images, each beside its reconstruction.",
    "occurrence_maps": "Per test image: the image, then each part's occurrence probability "
    "over it (colour scale on the right). Labels: part, matched region and AUROC, mean q_occ "
    'over the test cells ("off": not active).',
    "parts": "One row per part: the test images where it fires most strongly, strongest "
    "first; the yellow box is the cell where it fires, q its occurrence probability there.",
    "samples": "Images decoded from the prior.",
    "training_curves": "Loss terms, temperature and learning rate over training.",
}
_FIGURE_ORDER = ("reconstructions", "occurrence_maps", "parts", "samples", "training_curves")


def _markdown(report: dict) -> str:
    r = report
    lines = [
        f"# Evaluation of `{r['workdir']}`",
        "",
        *_verdict(r),
        f"Checkpoint step {r['checkpoint_step']}, model `{r['config']['model']['arch']}` "
        f"({r['config']['model']['encoder']} encoder), dataset `{r['dataset']}` "
        f"({r['num_classes']} classes; chance top-1 {_fmt(r['chance_top1'])}).",
        "",
    ]
    if r.get("from_earlier_run"):
        kept = ", ".join(r["from_earlier_run"])
        lines += [f"Kept from an earlier run on the same checkpoint: {kept}.", ""]
    if r["images"]:
        lines += ["## Figures", ""]
        names = sorted(r["images"], key=lambda n: (_FIGURE_ORDER + (n,)).index(n))
        for name in names:
            lines += [f"### {name}", "", _CAPTIONS[name], "", f"![{name}]({r['images'][name]})", ""]
    probes = [
        ("linear probe, pooled features", "linear_probe"),
        ("linear probe, part codes", "part_code_probe"),
        ("random encoder, pooled features (floor)", "random_probe"),
        ("random encoder, part codes (floor)", "random_part_code_probe"),
    ]
    if any(r[key] for _, key in probes) or r["finetune"]:
        lines += [
            "## Recognition",
            "",
            "Top-5 counts a hit among the min(5, classes) best guesses.",
            "",
            "| classifier | top-1 | top-5 |",
            "|---|---|---|",
        ]
        for title, key in probes:
            if r[key]:
                lines.append(f"| {title} | {_fmt(r[key]['top1'])} | {_fmt(r[key]['top5'])} |")
        if r["finetune"]:
            lines += ["", *_finetune_markdown(r["finetune"])]
        lines.append("")
    if r["part_discovery"]:
        lines += _part_section(r["part_discovery"])
    if r["skipped"]:
        lines += ["## Skipped", ""] + [f"- {m}: {why}" for m, why in r["skipped"].items()] + [""]
    return "\n".join(lines)


def _finetune_markdown(ft: dict) -> list[str]:
    """The finetuning table: one row per freeze depth, the random-init encoder beside it."""
    floor = {run["frozen_stages"]: run for run in ft["random"]}
    lines = [
        f"Classifier on phi(x), finetuned {ft['epochs']} epochs of {ft['train_examples']} "
        f"images ({ft['steps_per_epoch']} steps of {ft['batch_size']} each), SGD from "
        f"{ft['learning_rate']:g}, divided by 10 every {ft['lr_step_epochs']} epochs; the "
        f"first k of the encoder's {ft['encoder_stages']} stages frozen.",
        "",
        "| frozen stages k | top-1 | top-5 | random-init top-1 | random-init top-5 "
        "| train loss, first -> last epoch |",
        "|---|---|---|---|---|---|",
    ]
    for run in ft["runs"]:
        k, rnd = run["frozen_stages"], floor.get(run["frozen_stages"])
        losses = run["epoch_losses"]
        lines.append(
            f"| {k} | {_fmt(run['top1'])} | {_fmt(run['top5'])} "
            f"| {_fmt(rnd and rnd['top1'])} | {_fmt(rnd and rnd['top5'])} "
            f"| {losses[0]:.3f} -> {losses[-1]:.3f} |"
        )
    return lines


def _write_tensorboard(logdir: str, report: dict, images: dict, step: int) -> None:
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for name, image in images.items():
            tf.summary.image(name, image[None], step=step)
        for key in REPORT_KEYS[:4]:
            if report[key]:
                tf.summary.scalar(f"{key}/top1", report[key]["top1"], step=step)
        for run in (report["finetune"] or {}).get("runs", []):
            tf.summary.scalar(f"finetune/frozen_{run['frozen_stages']}/top1", run["top1"], step)
        if report["part_discovery"]:
            pd = report["part_discovery"]
            for key in ("distinct_coverage", "classes_detected", "active_parts", "mean_auroc"):
                tf.summary.scalar(f"part_discovery/{key}", pd[key], step=step)
                tf.summary.scalar(f"part_discovery/random_{key}", pd["random"][key], step=step)
        if report["reconstruction"]:
            tf.summary.scalar("reconstruction/mse", report["reconstruction"]["mse"], step=step)
        tf.summary.text("report", report["markdown"], step=step)
    writer.close()


def _keep_earlier_sections(report: dict, path: str) -> None:
    """Fills the sections this run did not compute from the report at path, if that report
    is of the same checkpoint and dataset: a --mode=probe run after --mode=all keeps the
    part scores, fine-tuning and figures. Those sections are listed under
    "from_earlier_run"; a report of another checkpoint or dataset is replaced whole.
    """
    try:
        with open(path) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return
    # As JSON (tuples read back as lists); the model, not the paths in the config.
    now = json.loads(json.dumps(report))
    same = all(earlier.get(k) == now[k] for k in ("checkpoint_step", "dataset")) and (
        earlier.get("config", {}).get("model") == now["config"]["model"]
    )
    if not same:
        return
    kept = [k for k in (*REPORT_KEYS, "images") if report[k] is None and earlier.get(k)]
    for key in kept:
        report[key] = earlier[key]
    report["from_earlier_run"] = sorted(kept)
    report["modes"] = list(dict.fromkeys([*earlier.get("modes", []), *report["modes"]]))
    report["seconds"] = {**earlier.get("seconds", {}), **report["seconds"]}


def evaluate(ecfg: EvalConfig) -> dict:
    """Runs the sections ecfg asks for and writes WORKDIR/eval/; returns the report."""
    s = setup(ecfg)
    model, cfg = s.model, s.cfg
    rate = plan.measure_rate(model, cfg.model.image_size, ecfg.batch_size)
    step = step_seconds(s, ecfg) if "finetune" in s.modes else 0.0
    print("\n".join(plan.plan(s, ecfg, rate, step)), flush=True)
    random_model = None
    if {"probe", "parts"} & set(s.modes):
        keras.utils.set_random_seed(ecfg.seed + 1)
        random_model = models.build_model(cfg.model)
    report = {
        "workdir": ecfg.workdir,
        "checkpoint_step": s.step,
        "dataset": s.source.name,
        "num_classes": s.source.num_classes,
        "chance_top1": 1.0 / s.source.num_classes if s.source.num_classes else None,
        "config": cfg.to_dict(),
        "eval_config": ecfg.to_dict(),
        "modes": list(s.modes),
        "skipped": s.skipped,
        "from_earlier_run": [],
        **{k: None for k in REPORT_KEYS},
    }
    timings = {}
    start = time.perf_counter()
    if "probe" in s.modes:
        report |= run_probes(model, random_model, s, ecfg)
        timings["probe"] = time.perf_counter() - start
    if "parts" in s.modes:
        start = time.perf_counter()
        report["part_discovery"] = part_discovery(model, random_model, s, ecfg)
        timings["parts"] = time.perf_counter() - start
    if "finetune" in s.modes:
        start = time.perf_counter()
        report["finetune"] = finetune(s, ecfg)
        timings["finetune"] = time.perf_counter() - start
    images = {}
    if "visualize" in s.modes:
        start = time.perf_counter()
        images = figures(model, s, ecfg, report["part_discovery"])
        report["reconstruction"] = reconstruction_error(model, s, ecfg)
        timings["visualize"] = time.perf_counter() - start
    report["images"] = {name: f"{name}.png" for name in images} or None
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()}

    out_dir = os.path.join(ecfg.workdir, EVAL_DIR)
    _keep_earlier_sections(report, os.path.join(out_dir, results.REPORT_JSON))
    # Everything is written beside the outputs first, so a failure leaves no half a report.
    staging = tempfile.mkdtemp(prefix=".eval-", dir=ecfg.workdir)
    try:
        for name, image in images.items():
            drawing.save_png(image, os.path.join(staging, f"{name}.png"))
        markdown = _markdown(report)
        report["markdown"] = markdown
        _write_tensorboard(os.path.join(staging, "logs"), report, images, s.step)
        del report["markdown"]
        with open(os.path.join(staging, results.REPORT_MD), "w") as f:
            f.write(markdown + "\n")
        with open(os.path.join(staging, results.REPORT_JSON), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def summary_line(report: dict) -> str:
    """The one line evaluate.py prints: where the report is and its headline numbers."""
    parts = [f"wrote {os.path.join(report['workdir'], EVAL_DIR, results.REPORT_MD)}"]
    if report["linear_probe"]:
        parts.append(
            f"linear probe top-1 {report['linear_probe']['top1']:.3f} "
            f"(part codes {report['part_code_probe']['top1']:.3f}, "
            f"random encoder {report['random_probe']['top1']:.3f})"
        )
    if report["finetune"]:
        runs = report["finetune"]["runs"]
        parts.append(
            "finetuned top-1 "
            + ", ".join(f"{r['top1']:.3f} (k={r['frozen_stages']})" for r in runs)
        )
    if report["part_discovery"]:
        pd = report["part_discovery"]
        parts.append(
            f"{pd['classes_detected']} of {len(SHAPE_CLASSES)} shape classes found by their own "
            f"part, distinct coverage {pd['distinct_coverage']:.3f} "
            f"(random {pd['random']['distinct_coverage']:.3f}), "
            f"{pd['active_parts']} of {len(pd['parts'])} parts active"
        )
    return "; ".join(parts)
