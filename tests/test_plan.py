"""evaluate.py says what it will run and how long, then shows its progress."""

import dataclasses
import re
import shutil

import pytest

from patchvae_tf.config import EvalConfig


@pytest.fixture(scope="module")
def set_up(trained, tmp_path_factory):
    from patchvae_tf import evaluation

    cfg, _ = trained
    workdir = tmp_path_factory.mktemp("plan") / "w"
    shutil.copytree(cfg.train.workdir, workdir)
    return evaluation.setup(EvalConfig(workdir=str(workdir))), str(workdir)


def _numbers(line: str) -> list[str]:
    """The figures of a plan line in order (1,000 is one): what the line says, not its words."""
    return re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", line)


def test_plan_counts_every_run_and_scales_the_measured_rates(set_up):
    from patchvae_tf.evaluation import plan

    s, workdir = set_up
    ecfg = EvalConfig(workdir=workdir)  # mode all: the authors' 90 epochs at every depth
    head, probe, parts, tune, *_, note = plan.plan(s, ecfg, rate=1000.0, step_time=0.05)
    # 2,048 training images at batch 256: 8 steps an epoch; 3 depths (0, 1, 2), trained and
    # random-init: 6 runs x 90 epochs x 8 steps of 256 images = 4,320 steps at 50 ms, 3 min 36 s,
    # plus 6 x 256 test images at 1,000 images/s: 3 min 38 s.
    assert tune.startswith("  finetune:") and "random-init" in tune
    assert _numbers(tune) == ["6", "0", "1", "2", "90", "8", "256", "4,320", "3", "38"]
    # Probes: 2 encoders x (2,048 + 256) images at 1,000 images/s, 4 probes of 500 steps: 5 s;
    # parts: 2 x 256 images: 1 s.
    assert probe.startswith("  probe:") and _numbers(probe)[-3:] == ["4", "500", "5"]
    assert parts.startswith("  parts:") and _numbers(parts)[-1:] == ["1"]
    # The head: the step, the total (3 min 43 s), and the rates it was scaled from.
    assert head.startswith(f"plan for {workdir} ")
    assert _numbers(head.removeprefix(f"plan for {workdir} ")) == ["300", "3", "43", "1,000", "50"]
    # Finetuning is 14x the 300 training steps: the note points to the shortened protocol.
    assert note.startswith("note:") and _numbers(note)[:2] == ["14", "300"]
    assert "evaluate.py --flagfile=configs/eval/shapes.cfg" in note
    # configs/eval/shapes.cfg's settings: 2 depths x 2 encoders x 4 epochs x 8 = 128 steps, 7 s,
    # and no note.
    quick = dataclasses.replace(
        ecfg, finetune_epochs=4, finetune_lr_step_epochs=2, freeze_stages=(0, -1)
    )
    lines = plan.plan(s, quick, rate=1000.0, step_time=0.05)
    assert _numbers(lines[3])[-2:] == ["128", "7"] and not lines[-1].startswith("note:")


def test_evaluate_prints_the_plan_then_progress_bars(set_up, monkeypatch, capsys):
    from patchvae_tf import evaluation
    from patchvae_tf.evaluation import finetune

    s, workdir = set_up

    class Enough(Exception):
        pass

    real = finetune.progbar

    def stop_after_a_few(total, title):
        bar = real(total, title)
        update = bar.update

        def counted(current, values=None):
            update(current, values)
            if current >= 5:
                raise Enough

        bar.update = counted
        return bar

    monkeypatch.setattr(finetune, "progbar", stop_after_a_few)
    fast = dict(eval_examples=128, batch_size=64, probe_steps=20)
    with pytest.raises(Enough):
        evaluation.evaluate(EvalConfig(workdir=workdir, **fast))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"plan for {workdir} (step 300): about ")
    (tune,) = [ln for ln in lines if ln.startswith("  finetune:")]
    assert _numbers(tune)[:5] == ["6", "0", "1", "2", "90"]  # runs, depths, epochs
    titles = [ln for ln in lines if ln.startswith(("probe: ", "parts: ", "finetune run"))]
    assert titles == [
        "probe: trained train",
        "probe: trained test",
        "probe: random train",
        "probe: random test",
        # Parts are matched to regions on training images and scored on test images.
        "parts: trained train",
        "parts: trained test",
        "parts: random train",
        "parts: random test",
        "finetune run 1 of 6: trained, 0 stages frozen",
    ]
    assert "128/128" in out and "/720" in out and "loss:" in out  # Keras bars, with ETA
