"""Part discovery: how well the parts' occurrence maps find the shapes' regions."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from patchvae_tf.config import EvalConfig
from patchvae_tf.data.shapes import CLASSES as SHAPE_CLASSES
from patchvae_tf.evaluation.setup import Setup, batches

# A part is active when its occurrence rate (KL from the prior, nats per cell) is at least
# this: a part at q = p +- 0.05 everywhere pays about 0.01; one that stays at the prior, ~0.
ACTIVE_RATE = 0.01
# A shape class counts as found when its matched part detects it with at least this AUROC.
DETECTED_AUROC = 0.85


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of scores [n] for boolean positives [n]; ties count half.

    The Mann-Whitney statistic on average ranks; NaN when only one class is present.
    """
    scores = np.asarray(scores, np.float64).ravel()
    positives = np.asarray(positives, bool).ravel()
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct score: tied values share the mean of their ranks.
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def occurrence_rates(q_occ: np.ndarray, prior: float) -> np.ndarray:
    """Per part, the mean over cells of KL(Bernoulli(q_occ) || Bernoulli(prior)), in nats.

    q_occ [..., N] -> [N]. It is the occurrence rate each part pays; a part that stays at
    the prior everywhere pays nothing and tells the decoder nothing.
    """
    q = np.clip(np.asarray(q_occ, np.float64).reshape(-1, np.shape(q_occ)[-1]), 1e-7, 1 - 1e-7)
    kl = q * np.log(q / prior) + (1.0 - q) * np.log((1.0 - q) / (1.0 - prior))
    return kl.mean(axis=0)


def match_parts(table: np.ndarray) -> dict[int, tuple[int, float]]:
    """One-to-one parts to regions maximising the summed AUROC: {region: (part, AUROC)}.

    table [N parts, R regions] of AUROCs. A region absent from the data (a column of NaN)
    gets no part; with fewer parts than regions, the regions left over get none either.
    """
    from scipy.optimize import linear_sum_assignment

    present = np.flatnonzero(~np.all(np.isnan(table), axis=0))
    # A NaN inside a present column cannot happen (a part scores every cell); 0.5 is safe.
    scores = np.nan_to_num(table[:, present], nan=0.5)
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return {int(present[c]): (int(r), float(scores[r, c])) for r, c in zip(rows, cols, strict=True)}


def _auroc_table(q_occ: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUROCs [N parts, R regions], the parts' occurrence maps flattened [cells, N])."""
    n_parts = q_occ.shape[-1]
    q = q_occ.reshape(-1, n_parts)
    c = cells.reshape(-1, cells.shape[-1])
    table = np.array([[auroc(q[:, i], c[:, j]) for j in range(c.shape[1])] for i in range(n_parts)])
    return table, q


def part_scores(
    q_occ: np.ndarray, cells: np.ndarray, regions, classes, prior: float, match=None
) -> dict:
    """How well the parts' occurrence maps find the regions, each region by its own part.

    q_occ [n, h, w, N]; cells [n, h, w, R], one-hot: the region covering most of the cell.
    ``regions`` names the R regions, ``classes`` those of them that are shape classes;
    ``prior`` is the occurrence prior p. ``match``: (q_occ, cells) of another split on
    which parts are chosen and matched, so that the scores on this one are not the
    selection's own (None: matched on these cells). A part is active when its occurrence
    rate on the matching split is at least ACTIVE_RATE nats per cell. The headline is the
    one-to-one match of active parts to regions (an optimal assignment on AUROC, on the
    matching split), scored here: per region its matched part and that part's AUROC, the
    mean of the classes' matched AUROCs ("distinct coverage"; a class left without a part
    counts 0.5) and how many classes reach DETECTED_AUROC. Then, per part, its best region
    and best shape class with their AUROCs; per region, its best part's AUROC.
    """
    n_parts = q_occ.shape[-1]
    table, q = _auroc_table(q_occ, cells)
    match_table, match_q = (table, q) if match is None else _auroc_table(*match)
    is_class = np.array([name in classes for name in regions])
    rates = occurrence_rates(match_q, prior)
    # Only active parts are matched: a part left at the prior can still rank cells by its
    # tiny wobbles around p, but it never fires (with --hard the decoder never sees it).
    active = np.flatnonzero(rates >= ACTIVE_RATE)
    matched = {}
    if active.size:
        for j, (row, _) in match_parts(match_table[active]).items():
            part = int(active[row])
            if not np.isnan(table[part, j]):  # the region occurs in the scored cells
                matched[regions[j]] = (part, float(table[part, j]))
    part_region = {part: name for name, (part, _) in matched.items()}
    # A class no active part is matched to counts as chance.
    present = [n for j, n in enumerate(regions) if n in classes and not np.isnan(table[:, j]).all()]
    class_matches = [matched[name][1] if name in matched else 0.5 for name in present]
    parts = []
    for i in range(n_parts):
        j = int(np.nanargmax(table[i]))
        k = int(np.nanargmax(np.where(is_class, table[i], -np.inf)))
        parts.append(
            {
                "part": i,
                "matched_region": part_region.get(i),
                "matched_auroc": float(table[i, regions.index(part_region[i])])
                if i in part_region
                else None,
                "best_region": regions[j],
                "auroc": float(table[i, j]),
                "best_class": regions[k],
                "class_auroc": float(table[i, k]),
                "auroc_per_region": dict(zip(regions, map(float, table[i]), strict=True)),
                "mean_q_occ": float(q[:, i].mean()),
                "occurrence_rate": float(rates[i]),
                "active": bool(rates[i] >= ACTIVE_RATE),
            }
        )
    return {
        "matched": {name: {"part": p, "auroc": a} for name, (p, a) in matched.items()},
        "distinct_coverage": float(np.mean(class_matches)) if class_matches else float("nan"),
        "classes_detected": int(sum(a >= DETECTED_AUROC for a in class_matches)),
        "active_parts": int(sum(p["active"] for p in parts)),
        "mean_auroc": float(np.mean([p["auroc"] for p in parts])),
        "mean_class_auroc": float(np.mean([p["class_auroc"] for p in parts])),
        "per_region_best": {name: float(np.nanmax(table[:, j])) for j, name in enumerate(regions)},
        # Per region its best part, averaged; one part may be the best for several regions
        # (a foreground detector for every shape class), which distinct_coverage forbids.
        "region_coverage": float(np.mean(np.nanmax(table, axis=0))),
        "parts": parts,
    }


def _occurrence_and_cells(
    model, setup: Setup, ecfg: EvalConfig, title: str = "", split: str = "test"
):
    """q_occ [n, h, w, N] and one-hot ground-truth cells [n, h, w, C + 1] on a split.

    Each cell belongs to the region covering most of it; the last region is the background.
    """
    encode = tf.function(lambda x: model.encode(x, training=False), reduce_retracing=True)
    scale = setup.cfg.model.scale
    qs, cells, labels = [], [], []
    for batch in batches(setup.source, split, ecfg.eval_examples, ecfg.batch_size, title):
        qs.append(encode(tf.constant(batch["image"]))["occurrence"].numpy())
        labels.append(batch["label"])
        # The fraction of each scale x scale cell a class covers. Masks are disjoint (later
        # shapes hide earlier ones), so the rest is background; the largest share decides.
        cover = tf.nn.avg_pool2d(tf.constant(batch["masks"]), scale, scale, "VALID").numpy()
        cover = np.concatenate([cover, 1.0 - cover.sum(axis=-1, keepdims=True)], axis=-1)
        cells.append(np.eye(cover.shape[-1], dtype=bool)[cover.argmax(axis=-1)])
    return np.concatenate(qs), np.concatenate(cells), np.concatenate(labels)


def cell_count_accuracy(cells: np.ndarray, labels: np.ndarray, label: str = "largest") -> float:
    """How often the label follows from each class's cell count: cells [n, h, w, C + 1]
    one-hot (background last), labels [n]; label as --shapes_label ("largest": the class
    with the most cells, "kinds": the number of classes with a cell, minus one).

    What a representation that knew every cell's region, and nothing finer, can tell.
    """
    counts = cells[..., :-1].sum(axis=(1, 2))
    if label == "largest":
        guess = np.argmax(counts, axis=-1)
    else:
        guess = np.maximum((counts > 0).sum(axis=-1) - 1, 0)
    return float(np.mean(guess == labels))


def part_discovery(model, random_model, setup: Setup, ecfg: EvalConfig) -> dict:
    """part_scores for the trained model, with a random-init model's as the floor: parts are
    chosen and matched to regions on the first --eval_examples training images and scored
    on the test images (up to as many).

    The regions are the shape classes and the background: a part that learns the background
    has found a consistent region too (the decoder can only paint a background where some
    part occurs), and scoring it against shape classes alone would count it below chance.
    """
    regions = (*SHAPE_CLASSES, "background")
    prior = setup.cfg.model.prior
    out = {}
    for name, m in (("trained", model), ("random", random_model)):
        train = _occurrence_and_cells(m, setup, ecfg, f"parts: {name} train", "train")[:2]
        q, cells, labels = _occurrence_and_cells(m, setup, ecfg, f"parts: {name} test")
        out[name] = part_scores(q, cells, regions, SHAPE_CLASSES, prior, match=train)
    result, floor = out["trained"], out["random"]
    keys = (
        "matched",
        "distinct_coverage",
        "classes_detected",
        "active_parts",
        "mean_auroc",
        "mean_class_auroc",
        "region_coverage",
        "per_region_best",
    )
    result["random"] = {k: floor[k] for k in keys}
    result["prior"] = prior
    result["matched_on"] = "train"
    result["cells"] = int(cells[..., 0].size)
    label = setup.cfg.data.shapes_label
    result["cell_count_accuracy"] = cell_count_accuracy(cells, labels, label)
    result["label"] = label
    result["region_fraction"] = {
        name: float(cells[..., j].mean()) for j, name in enumerate(regions)
    }
    return result
