import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import EVAL_FAST, ROOT, copy_workdir, tiny_config
from PIL import Image

from patchvae_tf.config import EvalConfig
from patchvae_tf.errors import UserError


def _png_shape(path):
    with Image.open(path) as im:
        return np.asarray(im).shape


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """(cfg, summary, workdir, report) of a full evaluation of the fixture model."""
    from patchvae_tf import evaluation

    cfg, summary = trained
    workdir = copy_workdir(cfg, tmp_path_factory.mktemp("evaluated"))
    report = evaluation.evaluate(EvalConfig(workdir=workdir, mode="all", **EVAL_FAST))
    return cfg, summary, workdir, report


def test_report_has_every_key(evaluated):
    from patchvae_tf import evaluation

    cfg, summary, workdir, report = evaluated
    for key in evaluation.REPORT_KEYS:
        assert report[key] is not None, key
    for key in ("linear_probe", "part_code_probe", "random_probe", "random_part_code_probe"):
        assert set(report[key]) >= {"top1", "top5", "train_examples", "test_examples"}
        assert report[key]["test_examples"] == 256
        assert 0.0 <= report[key]["top1"] <= report[key]["top5"] <= 1.0
    # The probe on the fixture's codes reads the label better than always guessing the most
    # common one (top-5 of three classes is 1 by construction, so it says nothing here).
    probe = report["linear_probe"]
    assert probe["top1"] > probe["majority_top1"]
    ft = report["finetune"]
    assert ft["encoder_stages"] == 2 and [r["frozen_stages"] for r in ft["runs"]] == [2]
    assert [r["frozen_stages"] for r in ft["random"]] == [2]
    # The fixture's 2048 training images in batches of 128, two epochs, every test image.
    assert ft["steps_per_epoch"] == 16 and len(ft["runs"][0]["epoch_losses"]) == 2
    assert ft["runs"][0]["test_examples"] == 256
    assert report["checkpoint_step"] == summary["step"] == cfg.train.train_steps
    assert report["config"]["model"] == json.loads(cfg.to_json())["model"]
    assert report["skipped"] == {}
    on_disk = json.load(open(os.path.join(workdir, "eval", "report.json")))
    assert on_disk == json.loads(json.dumps(report))
    markdown = open(os.path.join(workdir, "eval", "report.md")).read()
    for name in ("reconstructions", "occurrence_maps", "samples", "parts", "training_curves"):
        assert f"![{name}]({name}.png)" in markdown
    # The verdict comes first: probe, parts, reconstruction, then the figures.
    verdict = markdown.split("## ")[0]
    assert "linear probe top-1" in verdict and "distinct coverage" in verdict
    assert "mean squared error" in verdict
    assert markdown.index("## Figures") < markdown.index("## Recognition")
    rec = report["reconstruction"]
    assert 0.0 < rec["mse"] < rec["mean_image_mse"] < 1.0
    assert os.listdir(os.path.join(workdir, "eval", "logs"))
    assert not [f for f in os.listdir(workdir) if f.startswith(".eval-")]


def test_probe_beats_chance(evaluated):
    *_, report = evaluated
    assert report["chance_top1"] == pytest.approx(1 / 3)
    assert report["linear_probe"]["top1"] > report["chance_top1"] + 0.1
    assert report["part_code_probe"]["top1"] > report["chance_top1"] + 0.1


def test_part_discovery_beats_random_floor(evaluated):
    *_, report = evaluated
    pd = report["part_discovery"]
    assert len(pd["parts"]) == 8
    assert pd["cells"] == 256 * 8 * 8
    assert sum(pd["region_fraction"].values()) == pytest.approx(1.0)
    # Cell counts mostly agree with the area-based label; near ties at cell size do not.
    assert 0.85 < pd["cell_count_accuracy"] < 1.0
    for p in pd["parts"]:
        per_region = p["auroc_per_region"]
        assert p["auroc"] == max(per_region.values())
        assert p["class_auroc"] == max(v for k, v in per_region.items() if k != "background")
    assert pd["mean_auroc"] == pytest.approx(np.mean([p["auroc"] for p in pd["parts"]]))
    assert pd["mean_auroc"] > pd["random"]["mean_auroc"]
    assert pd["region_coverage"] == pytest.approx(np.mean(list(pd["per_region_best"].values())))
    # One part per region, and the classes' matched AUROCs average to the distinct coverage.
    matched = pd["matched"]
    assert len({m["part"] for m in matched.values()}) == len(matched)
    assert len(matched) == min(4, pd["active_parts"])
    for region, m in matched.items():
        assert m["auroc"] == pd["parts"][m["part"]]["auroc_per_region"][region]
        assert pd["parts"][m["part"]]["matched_region"] == region
        assert pd["parts"][m["part"]]["active"]
    classes = [
        matched[k]["auroc"] if k in matched else 0.5 for k in ("circle", "triangle", "square")
    ]
    assert pd["distinct_coverage"] == pytest.approx(np.mean(classes))
    assert pd["classes_detected"] == sum(a >= 0.85 for a in classes)
    assert pd["active_parts"] == sum(p["occurrence_rate"] >= 0.01 for p in pd["parts"])
    for region, m in matched.items():
        assert m["auroc"] <= pd["per_region_best"][region]
    # Every shape class and the background has a part that finds it better than any part of a
    # random network does.
    for region, best in pd["per_region_best"].items():
        assert best > pd["random"]["per_region_best"][region], region


def test_pngs_are_upscaled_to_readable_tiles(evaluated):
    cfg, _, workdir, _ = evaluated
    out = os.path.join(workdir, "eval")
    tile = 96  # 32-pixel images, upscaled 3 times
    n = cfg.model.num_parts
    # (rows, columns) of image tiles per figure; labels and the colour bar add to that.
    grids = {
        "reconstructions": (2, 8),
        "samples": (2, 8),
        "occurrence_maps": (4, n + 1),
        "parts": (n, 5),
    }
    for name, (rows, cols) in grids.items():
        h, w, c = _png_shape(os.path.join(out, f"{name}.png"))
        assert h >= rows * tile and w >= cols * tile and c == 3, name
        assert h < rows * (tile + 60) and w < cols * (tile + 60) + 120, name
    h, w, c = _png_shape(os.path.join(out, "training_curves.png"))
    assert h > 200 and w > 400 and c == 3


def test_linear_probe_separates_and_topk():
    from patchvae_tf import evaluation

    rng = np.random.default_rng(0)
    # Eight classes, so that top-5 can miss: well-separated centres put every label in it.
    centres = rng.normal(size=[8, 6]) * 4
    y = rng.integers(0, 8, 400)
    x = centres[y] + rng.normal(size=[400, 6])
    result = evaluation.linear_probe(x[:300], y[:300], x[300:], y[300:], 8, 200, 0.05)
    assert result["top1"] > 0.9
    assert result["top5"] == 1.0
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert evaluation.topk_accuracy(logits, np.array([0, 1]), 1) == 0.5
    assert evaluation.topk_accuracy(logits, np.array([1, 0]), 2) == 0.5


def _write_folder(root, classes, per_class, size=32):
    """Root/{train,test}/CLASS/*.png: each class a noisy flat colour."""
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "blue": (40, 40, 200), "green": (40, 200, 40)}
    for split in ("train", "test"):
        for name in classes:
            os.makedirs(root / split / name)
            for i in range(per_class):
                noise = rng.integers(-40, 40, [size, size, 3])
                pixels = np.clip(np.array(colours[name]) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return f"folder:{root}"


@pytest.mark.slow
def test_folder_dataset_gets_probe_numbers(trained, tmp_path):
    from patchvae_tf import evaluation

    cfg, _ = trained
    workdir = copy_workdir(cfg, tmp_path)
    dataset = _write_folder(tmp_path / "images", ["blue", "red"], 12)
    report = evaluation.evaluate(
        EvalConfig(workdir=workdir, mode="probe", dataset=dataset, **EVAL_FAST)
    )
    assert report["num_classes"] == 2 and report["dataset"] == dataset
    assert report["linear_probe"]["test_examples"] == 24
    # Red against blue is easy for any encoder, trained or random.
    assert report["linear_probe"]["top1"] > 0.9
    assert report["random_probe"]["top1"] > 0.9
    assert report["part_discovery"] is None and report["finetune"] is None
    saved = json.load(open(os.path.join(workdir, "eval", "report.json")))
    assert saved["linear_probe"]["top1"] == report["linear_probe"]["top1"]


def test_bad_inputs_are_user_errors(trained, tmp_path):
    from patchvae_tf import evaluation

    cfg, _ = trained
    workdir = copy_workdir(cfg, tmp_path)
    with pytest.raises(UserError, match="--image_size=64 does not match the model's image size"):
        evaluation.evaluate(EvalConfig(workdir=workdir, image_size=64, **EVAL_FAST))
    one_class = _write_folder(tmp_path / "one", ["red"], 2)
    with pytest.raises(UserError, match="has 1 class; probe needs labels"):
        evaluation.evaluate(EvalConfig(workdir=workdir, mode="probe", dataset=one_class))
    with pytest.raises(UserError, match="no ground-truth part masks"):
        evaluation.evaluate(EvalConfig(workdir=workdir, mode="parts", dataset=one_class))
    with pytest.raises(UserError, match="--freeze_stages=3 exceeds the 2 stages"):
        evaluation.evaluate(EvalConfig(workdir=workdir, mode="finetune", freeze_stages=(0, 3)))
    with pytest.raises(UserError, match="unknown --mode 'probes'"):
        EvalConfig(mode="probes")
    with pytest.raises(UserError, match="--probe_steps must be positive, got 0"):
        EvalConfig(probe_steps=0)
    assert not [f for f in os.listdir(workdir) if "eval" in f]


def _run(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "evaluate.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_workdir_without_checkpoint_exits_2(trained, tmp_path):
    cfg, _ = trained
    workdir = tmp_path / "empty"
    workdir.mkdir()
    shutil.copy(os.path.join(cfg.train.workdir, "config.json"), workdir)
    result = _run(f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: workdir") and "has no checkpoint" in lines[-1]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(workdir / "eval")


def test_cli_bad_flag_exits_2():
    result = _run("--mode=bogus")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown --mode 'bogus'")


@pytest.mark.slow
def test_a_later_partial_run_keeps_the_earlier_sections(evaluated, tmp_path):
    """--mode=parts after --mode=all replaces the part scores and keeps the rest."""
    from patchvae_tf import evaluation

    _, _, workdir, before = evaluated
    copy = str(tmp_path / "workdir")
    shutil.copytree(workdir, copy)
    report = evaluation.evaluate(EvalConfig(workdir=copy, mode="parts", **EVAL_FAST))
    saved = json.load(open(os.path.join(copy, "eval", "report.json")))
    assert saved == json.loads(json.dumps(report))
    assert saved["linear_probe"] == before["linear_probe"]
    assert saved["finetune"] == before["finetune"]
    assert saved["images"] == before["images"]
    assert "part_discovery" not in saved["from_earlier_run"]
    assert set(saved["from_earlier_run"]) >= {"linear_probe", "finetune", "images"}
    assert "Kept from an earlier run" in open(os.path.join(copy, "eval", "report.md")).read()
    # Another dataset is another report: nothing is carried over.
    dataset = _write_folder(tmp_path / "images", ["blue", "red"], 6)
    other = evaluation.evaluate(
        EvalConfig(workdir=copy, mode="probe", dataset=dataset, **EVAL_FAST)
    )
    assert other["from_earlier_run"] == [] and other["finetune"] is None


@pytest.mark.slow
def test_compare_puts_patchvae_vae_and_random_init_side_by_side(evaluated, tmp_path):
    """A tiny VAE trained and evaluated beside the fixture's PatchVAE, through the CLI."""
    from patchvae_tf import evaluation, training
    from patchvae_tf.evaluation import comparison

    cfg, _, patch_workdir, patch_report = evaluated
    vae_cfg = tiny_config(str(tmp_path / "vae"), train_steps=60)
    vae_cfg = vae_cfg.replace(model=dataclasses.replace(vae_cfg.model, arch="vae", beta_app=4.0))
    training.train(vae_cfg)
    evaluation.evaluate(
        EvalConfig(
            workdir=vae_cfg.train.workdir, mode="probe", **{**EVAL_FAST, "freeze_stages": ()}
        )
    )
    out = tmp_path / "comparison"
    result = _run(f"--compare={patch_workdir},{vae_cfg.train.workdir}", f"--compare_dir={out}")
    assert result.returncode == 0, result.stderr
    saved = json.load(open(out / "report.json"))
    models = [row["model"] for row in saved["rows"]]
    assert models == ["PatchVAE", "beta-VAE (beta=4)", "random init (pyramid, 1/4)"]
    patch, vae, floor = saved["rows"]
    assert patch["linear_probe"]["top1"] == patch_report["linear_probe"]["top1"]
    assert patch["finetune"]["2"]["top1"] == patch_report["finetune"]["runs"][0]["top1"]
    assert floor["linear_probe"]["top1"] == patch_report["random_probe"]["top1"]
    assert vae["finetune"] == {} and vae["parts"] == {}
    markdown = open(out / "report.md").read()
    assert "| beta-VAE (beta=4) |" in markdown and "finetune top-1 (k=2 frozen)" in markdown
    best = max(patch["linear_probe"]["top1"], vae["linear_probe"]["top1"])
    assert "- Probe top-1, best first: " in markdown and f" {best:.3f}, " in markdown
    assert comparison.model_name({"arch": "vae", "beta_app": 1.0}) == "VAE"
    missing = _run(f"--compare={tmp_path / 'nowhere'}")
    assert missing.returncode == 2
    assert "has no evaluation report" in missing.stderr.strip().splitlines()[-1]


def test_compare_names_the_leader_of_each_probe():
    from patchvae_tf.evaluation import comparison

    def row(model, workdir, probe, code):
        top = lambda v: {"top1": v, "top5": 1.0} if v is not None else {}  # noqa: E731
        return {
            "model": model,
            "workdir": workdir,
            "linear_probe": top(probe),
            "part_code_probe": top(code),
        }

    rows = [
        row("PatchVAE", "runs/p", 0.725, 0.940),
        row("VAE", "runs/v", 0.738, 0.686),
        row("random init (pyramid, 1/4)", None, 0.750, 0.706),
    ]
    assert comparison._leaders(rows) == [
        "- Probe top-1, best first: random init (pyramid, 1/4) 0.750, VAE 0.738, PatchVAE 0.725.",
        "- Part-code probe top-1, best first: PatchVAE 0.940, random init (pyramid, 1/4) 0.706, "
        "VAE 0.686.",
    ]


@pytest.mark.slow
def test_indoor_style_run_imagenet_normalised_through_evaluation_and_export(tmp_path):
    """Indoor67's layout: the model trains on every image TestImages.txt does not list,
    recognition on TrainImages.txt; ImageNet normalisation travels into the exported encoder,
    which still takes pixels 0..255.
    """
    import tensorflow as tf

    from export import exporter
    from patchvae_tf import evaluation, training
    from patchvae_tf.config import ExportConfig

    images = tmp_path / "Images"
    _write_folder(images, ["blue", "red"], 6)  # images/{train,test}/CLASS/i.png
    listed = [
        f"{s}/{c}/{i}.png" for s in ("train", "test") for c in ("blue", "red") for i in (0, 1)
    ]
    (tmp_path / "TrainImages.txt").write_text("\n".join(listed[:4]) + "\n")
    (tmp_path / "TestImages.txt").write_text("\n".join(listed[4:]) + "\n")
    cfg = tiny_config(str(tmp_path / "workdir"), train_steps=4)
    cfg = cfg.replace(
        train=dataclasses.replace(cfg.train, batch_size=4),
        data=dataclasses.replace(
            cfg.data,
            dataset=f"folder:{images}",
            train_split_file=str(tmp_path / "TrainImages.txt"),
            test_split_file=str(tmp_path / "TestImages.txt"),
            train_split="all_but_test",
        ),
        model=dataclasses.replace(cfg.model, normalization="imagenet"),
    )
    summary = training.train(cfg)
    assert np.isfinite(summary["last_loss"])
    report = evaluation.evaluate(
        EvalConfig(workdir=cfg.train.workdir, mode="probe", **{**EVAL_FAST, "freeze_stages": ()})
    )
    # 24 images, 4 listed for testing: the model saw 20; the probe trains on the 4 listed.
    assert report["linear_probe"]["train_examples"] == 4
    assert report["linear_probe"]["test_examples"] == 4

    ecfg = ExportConfig(
        workdir=cfg.train.workdir,
        export_dir=str(tmp_path / "export"),
        parity_images=4,
        calibration_images=4,
    )
    rep = exporter.export(ecfg)
    served = tf.saved_model.load(os.path.join(ecfg.export_dir, "saved_model", str(rep["version"])))
    model, _ = evaluation.restore_model(evaluation.setup(EvalConfig(workdir=cfg.train.workdir)).cfg)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    out = served.signatures["serving_default"](images=tf.constant(pixels))
    expected = model.encode(tf.constant(pixels / 127.5 - 1.0))
    np.testing.assert_allclose(out["occurrence"], expected["occurrence"], atol=1e-4)
    np.testing.assert_allclose(out["features"], expected["features"], atol=1e-4)
