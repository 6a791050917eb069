"""Evaluation: recognition probes and finetuning, part-discovery scores, figures and the report."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from patchvae_tf import data, models, training, visualize
from patchvae_tf.config import Config, EvalConfig, load_config
from patchvae_tf.errors import UserError
from patchvae_tf.shapes import CLASSES as SHAPE_CLASSES

EVAL_DIR = "eval"
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
_NUM_SHOWN = 8  # images in reconstructions.png and per row of samples.png
_NUM_MAPS = 4  # images in occurrence_maps.png
_WEIGHT_DECAY = 1e-4
# A part is active when its occurrence rate (KL from the prior, nats per cell) is at least
# this: a part at q = p +- 0.05 everywhere pays about 0.01; one that stays at the prior, ~0.
ACTIVE_RATE = 0.01
# A shape class counts as found when its matched part detects it with at least this AUROC.
DETECTED_AUROC = 0.85
_CURVES = ("loss", "distortion", "rate_app", "rate_occ", "temperature", "learning_rate")


# --- setting up ----------------------------------------------------------------


@dataclasses.dataclass
class _Setup:
    cfg: Config  # the training config, with the data section the evaluation reads
    source: data.Source
    model: models._Autoencoder
    step: int
    modes: tuple[str, ...]
    skipped: dict[str, str]


def _data_config(cfg: Config, ecfg: EvalConfig) -> Config:
    image_size = cfg.data.image_size
    if ecfg.image_size and ecfg.image_size != image_size:
        raise UserError(
            f"--image_size={ecfg.image_size} does not match the model's image size {image_size} "
            f"(from {os.path.join(ecfg.workdir, training.CONFIG_FILE)})"
        )
    # Recognition trains on the labelled training split, also when the model was trained on
    # every image but the test ones (Indoor67's allminustest).
    listed = dataclasses.replace(cfg.data, train_split="listed")
    if ecfg.dataset is None:
        return cfg.replace(data=listed)
    override = dataclasses.replace(
        listed,
        dataset=ecfg.dataset,
        data_dir=ecfg.data_dir,
        train_split_file=ecfg.train_split_file,
        test_split_file=ecfg.test_split_file,
    )
    return cfg.replace(data=override)


def restore_model(cfg: Config) -> tuple[models._Autoencoder, int]:
    """The model of cfg restored from its workdir's latest checkpoint, and that step."""
    model = models.build_model(cfg.model, cfg.data.image_size)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    manager = training.restore(cfg, model, step=step)
    if not manager.latest_checkpoint:
        raise UserError(
            f"workdir {cfg.train.workdir!r} has no checkpoint; train a model there first "
            f"(python train.py --workdir={cfg.train.workdir})"
        )
    return model, int(step.numpy())


def _num_stages(model) -> int:
    return len(model.encoder.stages)


def _plan(ecfg: EvalConfig, cfg: Config, source: data.Source, model) -> tuple[tuple, dict]:
    """The sections to run; an explicit --mode that cannot run is a UserError, "all" skips it."""
    explicit = ecfg.mode != "all"
    reasons = {}
    workdir = ecfg.workdir
    for mode in ("probe", "finetune"):
        if not source.num_classes:
            reasons[mode] = f"dataset {source.name!r} has no labels; {mode} needs labelled images"
        elif source.num_classes < 2:
            reasons[mode] = (
                f"dataset {source.name!r} has {source.num_classes} class; {mode} needs labels of "
                "at least 2 classes"
            )
        elif not source.sizes.get("test"):
            reasons[mode] = f"dataset {source.name!r} has no test images to score {mode} on"
    if not isinstance(model, models.PatchVAE):
        reasons["parts"] = f"workdir {workdir!r} holds a {cfg.model.arch}, which has no parts"
    elif not source.has_masks:
        reasons["parts"] = (
            f"dataset {source.name!r} has no ground-truth part masks; part discovery needs "
            "--dataset=shapes"
        )
    elif not source.sizes.get("test"):
        reasons["parts"] = f"dataset {source.name!r} has no test images"
    modes = ecfg.modes()
    if explicit and modes[0] in reasons:
        raise UserError(reasons[modes[0]])
    too_deep = [k for k in ecfg.freeze_stages if k > _num_stages(model)]
    if "finetune" in modes and too_deep:
        raise UserError(
            f"--freeze_stages={too_deep[0]} exceeds the {_num_stages(model)} stages of "
            f"the {cfg.model.encoder} encoder"
        )
    skipped = {m: r for m, r in reasons.items() if m in modes}
    return tuple(m for m in modes if m not in skipped), skipped


def setup(ecfg: EvalConfig) -> _Setup:
    """Reads the workdir's config and checkpoint and the dataset; checks every input first."""
    if not os.path.isdir(ecfg.workdir):
        raise UserError(f"--workdir {ecfg.workdir!r} is not a directory")
    saved = load_config(os.path.join(ecfg.workdir, training.CONFIG_FILE))
    # The config records where it was trained; the workdir may have moved since.
    saved = saved.replace(train=dataclasses.replace(saved.train, workdir=ecfg.workdir))
    cfg = _data_config(saved, ecfg)
    keras.utils.set_random_seed(ecfg.seed)
    model, step = restore_model(cfg)
    source = data.get_source(cfg.data, cfg.train.seed)
    modes, skipped = _plan(ecfg, cfg, source, model)
    for mode, reason in skipped.items():
        print(f"skipping {mode}: {reason}")
    return _Setup(cfg, source, model, step, modes, skipped)


# --- features ----------------------------------------------------------------


def _batches(source: data.Source, split: str, limit: int, batch_size: int):
    """Up to ``limit`` examples of a split, in order, as dicts of numpy arrays."""
    seen = 0
    ds = data.input_dataset(source, split, batch_size, training=False)
    for batch in ds.take(-(-limit // batch_size)):
        batch = {k: v.numpy() for k, v in batch.items()}
        batch = {k: v[: limit - seen] for k, v in batch.items()}
        seen += len(batch["image"])
        yield batch


def _codes(encoded: dict) -> tf.Tensor:
    """The part codes [B, C]: max-pooled q_occ [B, N] beside appearance means [B, N*L]."""
    appearance = tf.reshape(encoded["appearance"], [tf.shape(encoded["appearance"])[0], -1])
    if "occurrence" not in encoded:  # the VAE's code is its appearance alone
        return appearance
    return tf.concat([tf.reduce_max(encoded["occurrence"], axis=[1, 2]), appearance], axis=-1)


def encode_split(model, source, split: str, limit: int, batch_size: int) -> dict[str, np.ndarray]:
    """Features [n, D], part codes [n, C] and labels [n] of up to ``limit`` examples."""
    encode = tf.function(lambda x: model.encode(x, training=False), reduce_retracing=True)
    out = {"features": [], "codes": [], "labels": []}
    for batch in _batches(source, split, limit, batch_size):
        encoded = encode(tf.constant(batch["image"]))
        out["features"].append(encoded["features"].numpy())
        out["codes"].append(_codes(encoded).numpy())
        out["labels"].append(batch["label"])
    return {k: np.concatenate(v) for k, v in out.items()}


# --- recognition -----------------------------------------------------------------


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits; logits [n, K], labels [n]."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    steps: int,
    learning_rate: float,
) -> dict[str, float]:
    """Softmax regression on frozen features [n, D]; top-1 / top-5 on the test rows.

    Features are standardised with the training rows' statistics; full-batch Adam with a
    small L2 penalty (the optimum is then unique, so the result does not depend on luck).
    """
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    x = tf.constant((train_x - mean) / std, tf.float32)
    y = tf.constant(train_y, tf.int32)
    w = tf.Variable(tf.zeros([x.shape[1], num_classes]))
    b = tf.Variable(tf.zeros([num_classes]))
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, w) + b
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_mean(ce) + _WEIGHT_DECAY * tf.reduce_sum(w * w)
        optimizer.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b], strict=True))
        return loss

    for _ in range(steps):
        step()
    test_logits = ((test_x - mean) / std).astype(np.float32) @ w.numpy() + b.numpy()
    train_logits = x.numpy() @ w.numpy() + b.numpy()
    return {
        "top1": topk_accuracy(test_logits, test_y, 1),
        "top5": topk_accuracy(test_logits, test_y, 5),
        "train_top1": topk_accuracy(train_logits, train_y, 1),
    }


def _probes(model, random_model, setup: _Setup, ecfg: EvalConfig) -> dict[str, dict]:
    """The four linear probes: trained and random encoder, pooled features and part codes."""
    k, n = setup.source.num_classes, ecfg.eval_examples
    results = {}
    names = {
        ("trained", "features"): "linear_probe",
        ("trained", "codes"): "part_code_probe",
        ("random", "features"): "random_probe",
        ("random", "codes"): "random_part_code_probe",
    }
    for which, m in (("trained", model), ("random", random_model)):
        train = encode_split(m, setup.source, "train", n, ecfg.batch_size)
        test = encode_split(m, setup.source, "test", n, ecfg.batch_size)
        for key in ("features", "codes"):
            results[names[which, key]] = linear_probe(
                train[key],
                train["labels"],
                test[key],
                test["labels"],
                k,
                ecfg.probe_steps,
                ecfg.probe_learning_rate,
            ) | {"train_examples": len(train["labels"]), "test_examples": len(test["labels"])}
    return results


def _freeze_depths(ecfg: EvalConfig, num_stages: int) -> list[int]:
    """The numbers of frozen stages to finetune with: every depth 0..all unless listed."""
    if not ecfg.freeze_stages:
        return list(range(num_stages + 1))
    return list(dict.fromkeys(num_stages if k < 0 else k for k in ecfg.freeze_stages))


def _trainable(stages, frozen: int) -> list:
    """Variables the classifier trains in the encoder: those of the stages after the first
    ``frozen``, without BatchNorm's scale and offset, which the authors never train
    (set_bn_fix); BatchNorm statistics still follow the batches in every stage.
    """
    out = []
    for stage in stages[frozen:]:
        for layer in stage._flatten_layers(include_self=False):
            if not isinstance(layer, keras.layers.BatchNormalization):
                out += layer._trainable_variables
    return out


def _finetune_once(model, setup: _Setup, ecfg: EvalConfig, frozen: int) -> dict:
    """The authors' classifier.py on ``model``'s phi(x) with the first ``frozen`` stages fixed.

    flatten -> dropout -> dense 512 -> ReLU -> dense classes (normal(0, 0.01) weights, zero
    biases); SGD with momentum 0.9 and weight decay 1e-4 added to the gradient (PyTorch's
    coupled form), the rate divided by 10 every --finetune_lr_step_epochs epochs. An epoch is
    one pass over the labelled training split. As under PyTorch's model.train(), BatchNorm
    normalises with batch statistics and updates its moving averages in frozen stages too.
    """
    cfg, source = setup.cfg, setup.source
    stages = model.encoder.stages
    init = dict(
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01, seed=ecfg.seed),
        bias_initializer="zeros",
    )
    head = keras.Sequential(
        [
            keras.layers.Flatten(),
            keras.layers.Dropout(ecfg.dropout, seed=ecfg.seed),
            keras.layers.Dense(512, **init),
            keras.layers.ReLU(),
            keras.layers.Dense(source.num_classes, **init),
        ],
        name="classifier",
    )

    def logits_of(x, training):
        return head(model.features(x, training=training)[0], training=training)

    logits_of(tf.zeros([1, cfg.data.image_size, cfg.data.image_size, 3]), False)
    variables = head.trainable_variables + _trainable(stages, frozen)
    n_train = source.sizes["train"]
    batch_size = min(ecfg.finetune_batch_size, n_train)
    steps_per_epoch = -(-n_train // batch_size)
    schedule = finetune_schedule(
        ecfg.finetune_learning_rate,
        ecfg.finetune_epochs,
        ecfg.finetune_lr_step_epochs,
        steps_per_epoch,
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = logits_of(images, True)
            ce = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
            # Weight decay in the loss: its gradient wd * w is what PyTorch's SGD adds.
            decay = 0.5 * _WEIGHT_DECAY * tf.add_n([tf.reduce_sum(v * v) for v in variables])
            total = ce + decay
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return ce

    flip = cfg.data.random_flip
    ds = data.input_dataset(source, "train", batch_size, training=True, seed=ecfg.seed, flip=flip)
    iterator = iter(ds)
    start, epoch_losses = time.perf_counter(), []
    for _ in range(ecfg.finetune_epochs):
        losses = [float(train_step(*_image_label(next(iterator)))) for _ in range(steps_per_epoch)]
        epoch_losses.append(float(np.mean(losses)))
    seconds = time.perf_counter() - start

    predict = tf.function(lambda x: logits_of(x, False), reduce_retracing=True)
    logits, labels = [], []
    for batch in _batches(source, "test", source.sizes["test"], ecfg.batch_size):
        logits.append(predict(tf.constant(batch["image"])).numpy())
        labels.append(batch["label"])
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return {
        "frozen_stages": frozen,
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "epoch_losses": [round(v, 5) for v in epoch_losses],
        "test_examples": len(labels),
        "seconds": round(seconds, 1),
    }


def finetune_schedule(learning_rate: float, epochs: int, step_epochs: int, steps_per_epoch: int):
    """learning_rate * 0.1 ** (epoch // step_epochs), per optimizer step (classifier.py's)."""
    drops = range(step_epochs, epochs, step_epochs)
    if not drops:
        return learning_rate
    # The schedule holds values[i] up to and including its boundary; the optimizer's step
    # d * steps_per_epoch is the first of epoch d, so the boundary is the step before it.
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [d * steps_per_epoch - 1 for d in drops],
        [learning_rate * 0.1**i for i in range(len(drops) + 1)],
    )


def _image_label(batch):
    return batch["image"], batch["label"]


def finetune(setup: _Setup, ecfg: EvalConfig) -> dict:
    """The recognition protocol at each freeze depth, on fresh copies of the checkpoint (so
    the other sections see its weights), and on a randomly initialised encoder (the floor).
    """
    cfg = setup.cfg
    depths = _freeze_depths(ecfg, len(setup.model.encoder.stages))
    runs, floor = [], []
    for frozen in depths:
        keras.utils.set_random_seed(ecfg.seed)
        runs.append(_finetune_once(restore_model(cfg)[0], setup, ecfg, frozen))
        if ecfg.finetune_random_init:
            keras.utils.set_random_seed(ecfg.seed + 1)
            random_model = models.build_model(cfg.model, cfg.data.image_size)
            floor.append(_finetune_once(random_model, setup, ecfg, frozen))
    n_train = setup.source.sizes["train"]
    batch_size = min(ecfg.finetune_batch_size, n_train)
    return {
        "encoder_stages": len(setup.model.encoder.stages),
        "epochs": ecfg.finetune_epochs,
        "batch_size": batch_size,
        "steps_per_epoch": -(-n_train // batch_size),
        "learning_rate": ecfg.finetune_learning_rate,
        "lr_step_epochs": ecfg.finetune_lr_step_epochs,
        "train_examples": n_train,
        "runs": runs,
        "random": floor,
    }


# --- part discovery ---------------------------------------------------------------


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


def part_scores(q_occ: np.ndarray, cells: np.ndarray, regions, classes, prior: float) -> dict:
    """How well the parts' occurrence maps find the regions, each region by its own part.

    q_occ [n, h, w, N]; cells [n, h, w, R], one-hot: the region covering most of the cell.
    ``regions`` names the R regions, ``classes`` those of them that are shape classes;
    ``prior`` is the occurrence prior p. A part is active when its occurrence rate is at
    least ACTIVE_RATE nats per cell. The headline is the one-to-one match of active parts to
    regions (an optimal assignment on AUROC): per region its matched part, the mean of the
    classes' matched AUROCs ("distinct coverage"; a class left without a part counts 0.5)
    and how many classes reach DETECTED_AUROC. Then, per part, its best region and best
    shape class with their AUROCs; per region, its best part's AUROC.
    """
    n_parts = q_occ.shape[-1]
    q = q_occ.reshape(-1, n_parts)
    c = cells.reshape(-1, cells.shape[-1])
    table = np.array([[auroc(q[:, i], c[:, j]) for j in range(c.shape[1])] for i in range(n_parts)])
    is_class = np.array([name in classes for name in regions])
    rates = occurrence_rates(q, prior)
    # Only active parts are matched: a part left at the prior can still rank cells by its
    # tiny wobbles around p, but it never fires (with --hard the decoder never sees it).
    active = np.flatnonzero(rates >= ACTIVE_RATE)
    matched = {}
    if active.size:
        for j, (row, a) in match_parts(table[active]).items():
            matched[regions[j]] = (int(active[row]), a)
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


def _occurrence_and_cells(model, setup: _Setup, ecfg: EvalConfig):
    """q_occ [n, h, w, N] and one-hot ground-truth cells [n, h, w, C + 1] on the test split.

    Each cell belongs to the region covering most of it; the last region is the background.
    """
    encode = tf.function(lambda x: model.encode(x, training=False), reduce_retracing=True)
    scale = setup.cfg.model.scale
    qs, cells, labels = [], [], []
    for batch in _batches(setup.source, "test", ecfg.eval_examples, ecfg.batch_size):
        qs.append(encode(tf.constant(batch["image"]))["occurrence"].numpy())
        labels.append(batch["label"])
        # The fraction of each scale x scale cell a class covers. Masks are disjoint (later
        # shapes hide earlier ones), so the rest is background; the largest share decides.
        cover = tf.nn.avg_pool2d(tf.constant(batch["masks"]), scale, scale, "VALID").numpy()
        cover = np.concatenate([cover, 1.0 - cover.sum(axis=-1, keepdims=True)], axis=-1)
        cells.append(np.eye(cover.shape[-1], dtype=bool)[cover.argmax(axis=-1)])
    return np.concatenate(qs), np.concatenate(cells), np.concatenate(labels)


def cell_count_accuracy(cells: np.ndarray, labels: np.ndarray) -> float:
    """How often the label is the shape class with the most cells: cells [n, h, w, C + 1]
    one-hot (background last), labels [n].

    What a representation that knew every cell's region, and nothing finer, gives a linear
    probe on its pooled features: per class its cell count, the largest one as the label.
    """
    counts = cells[..., :-1].sum(axis=(1, 2))
    return float(np.mean(np.argmax(counts, axis=-1) == labels))


def part_discovery(model, random_model, setup: _Setup, ecfg: EvalConfig) -> dict:
    """part_scores for the trained model, with a random-init model's as the floor.

    The regions are the shape classes and the background: a part that learns the background
    has found a consistent region too (the decoder can only paint a background where some
    part occurs), and scoring it against shape classes alone would count it below chance.
    """
    regions = (*SHAPE_CLASSES, "background")
    prior = setup.cfg.model.prior
    q, cells, labels = _occurrence_and_cells(model, setup, ecfg)
    result = part_scores(q, cells, regions, SHAPE_CLASSES, prior)
    q_random, _, _ = _occurrence_and_cells(random_model, setup, ecfg)
    floor = part_scores(q_random, cells, regions, SHAPE_CLASSES, prior)
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
    result["cells"] = int(cells[..., 0].size)
    result["cell_count_accuracy"] = cell_count_accuracy(cells, labels)
    result["region_fraction"] = {
        name: float(cells[..., j].mean()) for j, name in enumerate(regions)
    }
    return result


# --- figures -----------------------------------------------------------------


def read_scalars(logdir: str, tags=_CURVES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} of the tf.summary v2 scalars in a TensorBoard log directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not os.path.isdir(logdir):
        return {}
    events = EventAccumulator(logdir, size_guidance={"tensors": 0})
    events.Reload()
    available = set(events.Tags().get("tensors", []))
    series = {}
    for tag in tags:
        if tag in available:
            points = sorted({e.step: e for e in events.Tensors(tag)}.items())  # last write wins
            steps = np.array([s for s, _ in points])
            values = np.array([float(tf.make_ndarray(e.tensor_proto)) for _, e in points])
            series[tag] = (steps, values)
    return series


def reconstruction_error(model, setup: _Setup, ecfg: EvalConfig) -> dict:
    """Mean squared error per pixel of test reconstructions, on the [0, 1] pixel scale,
    beside the floor of drawing every image as the test images' mean image.
    """
    run = tf.function(lambda x: model(x, training=False)["reconstruction"], reduce_retracing=True)
    errors, images = [], []
    for batch in _batches(setup.source, "test", ecfg.eval_examples, ecfg.batch_size):
        x = tf.constant(batch["image"])
        # Pixels in [-1, 1]: halving the difference puts the error on the [0, 1] scale.
        errors.append(np.mean(np.square((run(x).numpy() - batch["image"]) / 2.0), axis=(1, 2, 3)))
        images.append(batch["image"])
    images = np.concatenate(images)
    floor = np.mean(np.square((images - images.mean(axis=0)) / 2.0))
    return {"mse": float(np.concatenate(errors).mean()), "mean_image_mse": float(floor)}


def part_labels(part_discovery: dict | None, num_parts: int) -> list[str]:
    """A figure label per part: index, matched region and its AUROC, mean q_occ."""
    if not part_discovery:
        return [f"part {i}" for i in range(num_parts)]
    labels = []
    for p in part_discovery["parts"]:
        match = (
            f"{p['matched_region']} {p['matched_auroc']:.2f}"
            if p["matched_region"]
            else "unmatched"
        )
        state = "" if p["active"] else " off"
        labels.append(f"part {p['part']}\n{match}\nmean q {p['mean_q_occ']:.3f}{state}")
    return labels


def figures(model, setup: _Setup, ecfg: EvalConfig, part_discovery=None) -> dict[str, np.ndarray]:
    """{name: image [H, W, 3] in [0, 1]} of every figure that applies to this model.

    Image tiles are upscaled (nearest) to at least visualize.MIN_TILE pixels; parts are
    labelled with part_discovery's matches when given.
    """
    source, cfg = setup.source, setup.cfg
    shown = next(_batches(source, "test", _NUM_SHOWN, _NUM_SHOWN))["image"]
    out = {}
    recon = model(tf.constant(shown), training=False)["reconstruction"]
    out["reconstructions"] = visualize.pairs_figure(shown, recon)
    out["samples"] = visualize.tiles_figure(model.sample(2 * _NUM_SHOWN), cols=_NUM_SHOWN)
    if isinstance(model, models.PatchVAE):
        labels = part_labels(part_discovery, cfg.model.num_parts)
        maps = shown[:_NUM_MAPS]
        q = model.encode(tf.constant(maps))["occurrence"]
        out["occurrence_maps"] = visualize.occurrence_figure(maps, q, labels)
        gallery = visualize.PartGallery(cfg.model.num_parts, ecfg.gallery_size)
        encode = tf.function(lambda x: model.encode(x, training=False), reduce_retracing=True)
        for batch in _batches(source, "test", ecfg.eval_examples, ecfg.batch_size):
            gallery.add(batch["image"], encode(tf.constant(batch["image"]))["occurrence"])
        out["parts"] = visualize.gallery_figure(gallery, cfg.model.scale, labels)
    curves = read_scalars(os.path.join(ecfg.workdir, training.LOG_DIR))
    if curves:
        out["training_curves"] = visualize.curves_image(curves)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


# --- the report ------------------------------------------------------------------


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _verdict(r: dict) -> list[str]:
    """The report's opening lines: probe against its floor, distinct parts, reconstruction."""
    lines = []
    if r["linear_probe"]:
        lines.append(
            f"- **Recognition:** linear probe top-1 {r['linear_probe']['top1']:.3f} against "
            f"{r['random_probe']['top1']:.3f} for a random-init encoder "
            f"(chance {_fmt(r['chance_top1'])})."
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
        "with the largest summed AUROC), so one part that fires on every shape counts for "
        "one class only; a part left at the prior is not matched (it can rank cells by tiny "
        "wobbles around the prior, but never fires). Distinct coverage is the mean matched "
        "AUROC over the shape classes, a class without an active part counting 0.5.",
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
        lines += [
            "The label read from cell counts (the shape class with the most cells) is right "
            f"for {pd['cell_count_accuracy']:.3f} of the test images: what a linear probe on "
            "pooled features gets from knowing each cell's region and nothing finer.",
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


def _publish(staging: str, out_dir: str) -> None:
    """Moves every file of the staging directory into out_dir, each one atomically."""
    for dirpath, _, files in os.walk(staging):
        target = os.path.join(out_dir, os.path.relpath(dirpath, staging))
        os.makedirs(target, exist_ok=True)
        for f in files:
            os.replace(os.path.join(dirpath, f), os.path.join(target, f))


def evaluate(ecfg: EvalConfig) -> dict:
    """Runs the sections ecfg asks for and writes WORKDIR/eval/; returns the report."""
    s = setup(ecfg)
    model, cfg = s.model, s.cfg
    random_model = None
    if {"probe", "parts"} & set(s.modes):
        keras.utils.set_random_seed(ecfg.seed + 1)
        random_model = models.build_model(cfg.model, cfg.data.image_size)
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
        report |= _probes(model, random_model, s, ecfg)
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
    _keep_earlier_sections(report, os.path.join(out_dir, "report.json"))
    # Everything is written beside the outputs first, so a failure leaves no half a report.
    staging = tempfile.mkdtemp(prefix=".eval-", dir=ecfg.workdir)
    try:
        for name, image in images.items():
            visualize.save_png(image, os.path.join(staging, f"{name}.png"))
        markdown = _markdown(report)
        report["markdown"] = markdown
        _write_tensorboard(os.path.join(staging, "logs"), report, images, s.step)
        del report["markdown"]
        with open(os.path.join(staging, "report.md"), "w") as f:
            f.write(markdown + "\n")
        with open(os.path.join(staging, "report.json"), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def summary_line(report: dict) -> str:
    """The one line evaluate.py prints: where the report is and its headline numbers."""
    parts = [f"wrote {os.path.join(report['workdir'], EVAL_DIR, 'report.md')}"]
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
