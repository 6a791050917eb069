"""The export's report and model card: the report's parts merge without overwriting; the card
says what was exported and how it was evaluated.
"""

import json
import os

import pytest


def test_report_parts_merge_without_overwriting():
    from export import report

    merged = report.merge({"step": 3, "parity": {"a": 1.0}}, {"parity": {"b": 2.0}, "files": {}})
    assert merged == {"step": 3, "parity": {"a": 1.0, "b": 2.0}, "files": {}}
    for clash in ({"step": 4}, {"parity": {"a": 0.0}}, {"parity": 1.0}):
        with pytest.raises(ValueError, match="two parts of the report give"):
            report.merge(merged, clash)


def test_every_export_has_a_model_card(trained, exported, tmp_path):
    from export import model_card

    cfg, _ = trained
    ecfg, rep = exported
    card = rep["model_card"]
    with open(os.path.join(ecfg.export_dir, "export_report.json")) as f:
        assert json.load(f)["model_card"] == card
    assert card["steps"] == 300 and card["data"]["dataset"] == "shapes"
    assert card["recipe"]["train_steps"] == 300 and card["recipe"]["beta_occ"] == 1.0
    assert card["outputs"]["occurrence"]["shape"] == [None, 8, 8, 8]
    assert card["parity_max_abs"]["keras_file_vs_keras"] <= 1e-5
    assert card["evaluation"] is None  # not evaluated
    assert card["int8"]["written"] and card["int8"]["mean_cosine"]["features"] >= 0.99
    with open(os.path.join(ecfg.export_dir, "MODEL_CARD.md")) as f:
        text = f.read()
    assert text.startswith("# Model card: PatchVAE encoder (pyramid, scale 4, 8 parts x 4")
    assert "- output `occurrence` [batch, 8, 8, 8]: [0, 1]" in text
    assert "## Not for" in text and "Not evaluated: run `evaluate.py" in text
    assert any("keras.saving.load_model" in line for line in card["use"])
    assert any("ONNX Runtime: `onnx/encoder.onnx`" in line for line in card["use"])
    # With an evaluation report in the workdir, its figures go in, and a step that differs
    # from the exported one is said.
    workdir = tmp_path / "w"
    os.makedirs(workdir / "eval")
    evaluation = {
        "checkpoint_step": 200,
        "dataset": "shapes",
        "chance_top1": 1 / 3,
        "linear_probe": {"top1": 0.625},
        "part_code_probe": {"top1": 0.875},
        "finetune": {
            "runs": [{"frozen_stages": 2, "top1": 0.75}],
            "random": [{"frozen_stages": 2, "top1": 0.5}],
        },
        "part_discovery": {"mean_auroc": 0.9, "classes_detected": 2, "active_parts": 7},
    }
    (workdir / "eval" / "report.json").write_text(json.dumps(evaluation))
    fields = model_card.card(cfg, rep, str(workdir))
    assert fields["evaluation"]["part_code_probe_top1"] == 0.875
    assert fields["evaluation"]["finetune_top1"] == {"2 frozen": 0.75}
    assert fields["evaluation"]["finetune_random_init_top1"] == {"2 frozen": 0.5}
    assert fields["evaluation"]["note"] == "evaluated at step 200, exported at 300"
    text = model_card.markdown(fields)
    assert "- part_discovery_mean_auroc: 0.9" in text and "- linear_probe_top1: 0.625" in text
