"""Each recipe in configs/ against the authors' run (their README commands and run.py)."""

import os

import pytest
from conftest import ROOT

from patchvae_tf.config import Config, EvalConfig, cli

# run.py's defaults, which every one of the authors' commands keeps unless it says otherwise.
RUN_PY = {
    "arch": "patchvae",
    "encoder": "resnet",
    "scale": 8,
    "base_channels": 64,  # --ngf
    "num_parts": 16,
    "appearance_dim": 6,  # --hidden-size
    "prior": 1 / 16,  # --py: 1 / num_parts
    "categorical": False,
    "hard": False,
    "occurrence_rate_epsilon": 1e-7,  # loss.py's eps inside the occurrence rate's logs
    "beta_app": 1.0,  # --beta-a
    "beta_occ": 10.0,  # --beta-v
    "edge_weighting": False,  # --recon-mask unset
    "tau_init": 1.0,  # --temp
    "tau_min": 0.1,  # --min-temp
    "anneal_rate": 3e-5,  # --anneal
    "anneal_schedule": "reference",
    "initialization": "reference",
    "batch_norm_momentum": 0.9,  # PyTorch's momentum 0.1
    "batch_norm_epsilon": 1e-5,
    "decoder_batch_norm_updates": 2,  # model.py's decode() runs self.decoder twice
    "batch_size": 128,
    "learning_rate": 1e-4,
    "adam_epsilon": 1e-8,
    "mixed_precision": "none",  # float32
    # --num-epochs 30 of --img-per-epoch 50,000 images: 50,000 // 128 steps each.
    "train_steps": 30 * (50_000 // 128),
}

RECIPES = {
    # --dataset=cifar100 --num-parts=16 --hidden-size=6 --inet; no flip in their CIFAR loader.
    "cifar100": {
        "dataset": "cifar100",
        "image_size": 32,
        "normalization": "imagenet",
        "random_flip": False,
    },
    # --dataset=places205 --num-parts=16 --hidden-size=6 --inet, --size 64 by default.
    "places205": {
        "dataset": "places365_small",
        "image_size": 64,
        "normalization": "imagenet",
        "random_flip": True,
    },
    # --num-parts=64 --hidden-size=16 --lr=2e-4 --num-epochs=140 --inet --size=224
    # --batch-size=256 --scale=32
    "imagenet": {
        "dataset": "imagenet2012",
        "image_size": 224,
        "normalization": "imagenet",
        "random_flip": True,
        "num_parts": 64,
        "appearance_dim": 16,
        "prior": 1 / 64,
        "learning_rate": 2e-4,
        "batch_size": 256,
        "scale": 32,
        "train_steps": 140 * (50_000 // 256),
    },
    # No command in their README: Places205's settings; the VAE trains on "allminustest".
    "indoor67": {
        "image_size": 64,
        "normalization": "imagenet",
        "random_flip": True,
        "train_split": "all_but_test",
    },
    # run.py --dataset=mnist: Resize(32), (0.5, 0.5) normalisation, no flip.
    "mnist": {
        "dataset": "mnist",
        "image_size": 32,
        "normalization": "unit",
        "random_flip": False,
    },
}


def _load(name):
    return cli.parse(Config, ["train.py", f"--flagfile={ROOT}/configs/{name}.cfg"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_follows_the_authors_run(name):
    cfg = _load(name)
    values = {
        **{k: getattr(cfg.data, k) for k in ("dataset", "random_flip")},
        "train_split": cfg.data.train_split,
        **cfg.model.__dict__,
        "prior": cfg.model.prior,
        **cfg.train.__dict__,
        "mixed_precision": cfg.distribute.mixed_precision,
    }
    expected = {**RUN_PY, **RECIPES[name]}
    wrong = {k: (values[k], v) for k, v in expected.items() if values[k] != pytest.approx(v)}
    assert not wrong, f"{name}: (ours, theirs) {wrong}"
    assert cfg.train.workdir == f"runs/{name}"


def test_every_recipe_is_pinned():
    names = {f[:-4] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".cfg")}
    # shapes.cfg is our own default run on synthetic data, not one of the paper's.
    assert names - {"shapes"} == set(RECIPES)


def test_eval_flagfile_of_the_default_run():
    ecfg = cli.parse(EvalConfig, ["evaluate.py", f"--flagfile={ROOT}/configs/eval/shapes.cfg"])
    assert ecfg.workdir == "runs/shapes" and ecfg.freeze_stages == (0, -1)
    assert (ecfg.finetune_epochs, ecfg.finetune_lr_step_epochs) == (4, 2)
    # The rest of the protocol is the authors'.
    assert (ecfg.finetune_batch_size, ecfg.finetune_learning_rate) == (256, 0.1)


def test_eval_flagfile_of_imagenet_is_their_classifier_command():
    ecfg = cli.parse(EvalConfig, ["evaluate.py", f"--flagfile={ROOT}/configs/eval/imagenet.cfg"])
    # Their README's ImageNet classifier runs --arch=resnet18 (the last --arch): pooled.
    assert ecfg.classifier_head == "pool" and ecfg.workdir == "runs/imagenet"
    assert (ecfg.finetune_epochs, ecfg.finetune_batch_size, ecfg.finetune_learning_rate) == (
        30,
        256,
        0.1,
    )
    assert ecfg.freeze_stages == (0, -1) and ecfg.mode == "finetune"
    # Every other recipe keeps the flattened head of their classifier on PatchVAE features.
    assert EvalConfig().classifier_head == "flatten"
