"""Which labelled training images a classifier learns from: K per class drawn with a seed,
and a validation share held out of them (never the test split).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from patchvae_tf import data


@dataclasses.dataclass(frozen=True)
class Selection:
    """Indices (in the training split's reader order) of the images to train on and of the
    ones held out for validation; ``train`` None: every training image, none held out.
    """

    train: np.ndarray | None
    validation: np.ndarray
    # What the draw found: per class, the labelled images there were and the ones drawn.
    available: tuple[int, ...] = ()

    def count(self, total: int) -> int:
        return total if self.train is None else len(self.train)


def draw(
    labels: np.ndarray, num_classes: int, per_class: int, share: float, seed: int
) -> Selection:
    """K = per_class images of each class (every one when 0 or when a class has fewer), drawn
    with seed; then, per class, round(share * drawn) of them held out (at least one when
    share > 0 and the class has two or more) so every class stays in training.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, validation, available = [], [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        available.append(len(members))
        chosen = rng.permutation(members)
        if per_class:
            chosen = chosen[:per_class]
        held = int(round(share * len(chosen)))
        if share > 0 and len(chosen) >= 2:
            held = min(max(held, 1), len(chosen) - 1)
        else:
            held = 0
        validation.append(chosen[:held])
        train.append(chosen[held:])
    train_idx = np.sort(np.concatenate(train)).astype(np.int64)
    val_idx = np.sort(np.concatenate(validation)).astype(np.int64)
    return Selection(train_idx, val_idx, tuple(available))


def split_labels(source: data.Source, split: str, batch_size: int = 256) -> np.ndarray:
    """Every label of a split in reader order: from the source when it knows them (folders),
    else read once through the pipeline.
    """
    if split in source.labels:
        return np.asarray(source.labels[split], np.int64)
    ds = data.input_dataset(source, split, batch_size, training=False)
    return np.concatenate([b["label"].numpy() for b in ds]).astype(np.int64)


def select(source: data.Source, per_class: int, share: float, seed: int) -> Selection:
    """The Selection of source's training split: every image (no read) when neither K nor a
    validation share is asked for.
    """
    if not per_class and not share:
        return Selection(None, np.zeros([0], np.int64))
    labels = split_labels(source, "train")
    return draw(labels, source.num_classes, per_class, share, seed)
