"""The parity harness against the authors' PyTorch code, in a small configuration."""

import os

import pytest
from conftest import ROOT

from parity import harness, reference, tensors


def _checkout() -> str | None:
    """A checkout of kampta/PatchVAE: $PATCHVAE_REFERENCE, or one beside this repository."""
    candidates = [os.environ.get("PATCHVAE_REFERENCE", "")]
    candidates += [os.path.join(ROOT, "..", d, "PatchVAE") for d in ("", "ref")]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "model.py")):
            return os.path.abspath(path)
    return None


def _python() -> str | None:
    python = os.environ.get(
        "PATCHVAE_REFERENCE_PYTHON", os.path.join(reference.DEFAULT_VENV, "bin", "python")
    )
    return python if os.path.isfile(python) and reference._has_torch(python) else None


def test_relative_difference_is_scaled_by_the_reference_tensor():
    abs_diff, scale, rel = tensors.difference([1.0, -4.0, 0.0], [1.0, -3.0, 0.5])
    assert (abs_diff, scale, rel) == (1.0, 3.0, pytest.approx(1 / 3))
    assert tensors.difference([0.0], [0.0])[2] == 0.0
    row = tensors.row("v", "gradient", "w", [1.0, 2.0], [1.0, 2.0001], 1e-4)
    assert row["within_tolerance"] and row["difference"] == pytest.approx(0.0001 / 2.0001)


def test_float32_rows_are_rounding_only_within_their_runs_spread_of_that_tensor():
    def outside(ours, theirs, spread=None):
        r = {"within_tolerance": False, "tolerance": 1e-3}
        r |= {"ours_vs_float64": ours, "theirs_vs_float64": theirs}
        return r | ({} if spread is None else {"float32_spread": spread})

    rows = harness.explain(
        [
            outside(0.05, 0.02),  # within 3 x their run
            outside(0.07, 0.02),  # beyond 3 x their run, no spread measured
            outside(0.07, 0.02, spread=0.03),  # within 3 x the furthest of their runs
            outside(0.10, 0.02, spread=0.03),  # beyond it
            outside(9e-4, 1e-6, spread=1e-6),  # within the tolerance itself
        ]
    )
    assert ["reason" in r for r in rows] == [True, False, True, False, True]
    assert "up to 3.0e-02" in rows[2]["reason"]
    assert (
        harness.first_outside(
            [
                r | {"variant": "v", "step": 1, "group": "g", "name": "n", "difference": 1.0}
                for r in rows
            ]
        )["name"]
        == "n"
    )


def test_markdown_lists_each_row_outside_with_its_reason():
    rows = harness.explain(
        [
            {
                "variant": "cifar",
                "step": 1,
                "group": "gradient",
                "name": f"w{i}",
                "difference": d,
                "tolerance": 1e-3,
                "within_tolerance": d <= 1e-3,
                "ours_vs_float64": d,
                "theirs_vs_float64": 0.02,
            }
            for i, d in enumerate([1e-4, 0.05, 0.5])
        ]
    )
    results = {
        "machine": {"cpu": "cpu", "cpu_kind": "AVX2", "cores": 2},
        "command": "python -m parity",
        "reference": {"torch": "t"},
        "torchvision": "v",
        "difference": "d",
        "tolerances": {},
        "authors_values": {},
        "rows": rows,
        "summary": harness.summary(rows),
    }
    text = harness.markdown(results)
    outside = text.split("## Rows outside their tolerance")[1].strip().splitlines()
    assert len(outside) == 4  # header, rule, the two rows outside
    assert outside[2].startswith("| cifar | 1 | gradient | w1 | 5.00e-02 |")
    assert "float32 rounding" in outside[2] and outside[3].endswith("|  |")
    summary = [line for line in text.splitlines() if line.startswith("| cifar | 1 | 3 |")]
    assert summary == ["| cifar | 1 | 3 | 2 | 1 | gradient w2 | 5.00e-01 | 1e-03 | 5.00e-01 |  |"]


def test_keras_kernels_take_torch_layouts():
    import numpy as np

    conv = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # HWIO
    assert tensors.to_torch(conv).shape == (5, 4, 2, 3)  # OIHW
    assert tensors.to_torch(conv)[1, 2, 0, 1] == conv[0, 1, 2, 1]
    dense = np.arange(6).reshape(2, 3)
    assert (tensors.to_torch(dense) == dense.T).all()


_NO_REFERENCE = pytest.mark.skipif(
    _checkout() is None or _python() is None,
    reason=(
        "parity against the authors' code needs a checkout of kampta/PatchVAE "
        "($PATCHVAE_REFERENCE, or ../PatchVAE, ../ref/PatchVAE) and a Python with torch and "
        "torchvision ($PATCHVAE_REFERENCE_PYTHON, or ~/.cache/patchvae-tf/torch-venv): "
        f"checkout {'found' if _checkout() else 'not found'}, "
        f"torch Python {'found' if _python() else 'not found'}"
    ),
)


@pytest.fixture(scope="module")
def ref():
    """One worker running the authors' code for every test here."""
    worker = reference.start(_checkout(), _python(), False, None, harness.WORKER)
    yield worker
    worker.close()


def _run(ref, tmp_path, variants, seed=0, steps=2):
    """float64, batch 4, 16-pixel images (the recipes' networks on a 2 x 2 grid)."""
    pcfg = harness.ParityConfig(
        reference=_checkout(),
        out=str(tmp_path / f"parity_{seed}.json"),
        variants=variants,
        steps=steps,
        batch_size=4,
        image_size=16,
        seed=seed,
        growth=False,
    )
    return harness.run(pcfg, ref)


@pytest.mark.slow
@_NO_REFERENCE
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_float64_parity_every_tensor_every_step(ref, tmp_path, seed):
    """Both sides in float64: every tensor after each of two steps, and the inference-mode
    forward pass, within the flat tolerances (1e-9 for the first forward pass and loss terms,
    1e-8 for the rest), in the CIFAR recipe with --categorical --hard and (at one seed) in
    the classifier's SGD step.
    """
    variants = ("categorical_hard", "classifier") if seed == 1 else ("categorical_hard",)
    results = _run(ref, tmp_path, variants, seed)
    assert results["first_outside"] is None, results["first_outside"]
    rows = results["rows"]
    groups = {(r["variant"], r["group"]) for r in rows}
    for group in ("forward", "loss", "gradient", "parameter", "adam_m", "adam_v", "statistic"):
        assert ("categorical_hard", group) in groups, group
    if seed == 1:
        assert ("classifier", "inference") in groups
    assert {r["step"] for r in rows if r["variant"] == "categorical_hard"} == {1, 2, 3}
    # Not a lucky tolerance: the worst row is far inside it.
    assert max(r["difference"] for r in rows) < 1e-10


def _pooling_without_stop_gradient(monkeypatch):
    import tensorflow as tf

    from patchvae_tf.model import latents

    class TensorFlowWithoutStopGradient:
        def __getattr__(self, name):
            return getattr(tf, name)

        @staticmethod
        def stop_gradient(x):
            return x

    monkeypatch.setattr(latents, "tf", TensorFlowWithoutStopGradient())


def _adam_beta_1(monkeypatch):
    from patchvae_tf.model.fused import FusedAdam
    from patchvae_tf.training import step

    def make_optimizer(cfg):
        t = cfg.train
        return FusedAdam(t.learning_rate, beta_1=0.9, beta_2=0.999, epsilon=t.adam_epsilon)

    monkeypatch.setattr(step, "make_optimizer", make_optimizer)


def _batch_norm_momentum(monkeypatch):
    import dataclasses

    from patchvae_tf.training import precision

    build = precision.build_model_in_policy

    def build_model_in_policy(model_cfg, name):
        return build(dataclasses.replace(model_cfg, batch_norm_momentum=0.95), name)

    monkeypatch.setattr(precision, "build_model_in_policy", build_model_in_policy)


def _temperature_one_step_late(monkeypatch):
    import tensorflow as tf

    from patchvae_tf.model import latents

    temperature = latents.temperature

    def late(step, *args, **kwargs):
        return temperature(tf.maximum(tf.cast(step, tf.int64) - 1, 0), *args, **kwargs)

    monkeypatch.setattr(latents, "temperature", late)


def _straight_through_value_relaxed(monkeypatch):
    from patchvae_tf.model import latents

    sample = latents.sample_occurrence

    def relaxed(*args, **kwargs):
        return sample(*args, **{**kwargs, "hard": False})

    monkeypatch.setattr(latents, "sample_occurrence", relaxed)


def _occurrence_kl_sign(monkeypatch):
    from patchvae_tf.model import losses

    rate = losses.rate_occ
    monkeypatch.setattr(losses, "rate_occ", lambda *a, **k: -rate(*a, **k))


def _pooling_epsilon(monkeypatch):
    from patchvae_tf.model import latents

    monkeypatch.setattr(latents, "_EPS", 1e-3)


# name: (inject, variant, steps): each injected on our side only.
MUTATIONS = {
    "occurrence KL sign": (_occurrence_kl_sign, "cifar", 1),
    "pooling epsilon 1e-3": (_pooling_epsilon, "cifar", 1),
    "no stop-gradient on the pooling weights": (_pooling_without_stop_gradient, "cifar", 1),
    "Adam beta_1 0.9": (_adam_beta_1, "cifar", 1),
    "BatchNorm momentum 0.95 (theirs 0.9)": (_batch_norm_momentum, "cifar", 1),
    # The temperature first changes after the first step.
    "temperature one step late": (_temperature_one_step_late, "cifar", 2),
    "straight-through forward value relaxed": (_straight_through_value_relaxed, "hard", 1),
}


@pytest.fixture(scope="module")
def controls(ref, tmp_path_factory):
    """The unmutated runs, by (variant, steps): each must pass for a flag to mean anything."""
    cache = {}

    def control(variant, steps):
        if (variant, steps) not in cache:
            tmp = tmp_path_factory.mktemp("control")
            cache[(variant, steps)] = _run(ref, tmp, (variant,), steps=steps)
        return cache[(variant, steps)]

    return control


@pytest.mark.slow
@_NO_REFERENCE
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_float64_harness_flags_each_injected_bug(ref, controls, tmp_path, monkeypatch, mutation):
    """Each bug injected on our side alone makes the float64 comparison fail, where the same
    run without it passes.
    """
    inject, variant, steps = MUTATIONS[mutation]
    control = controls(variant, steps)
    assert control["first_outside"] is None, control["first_outside"]
    inject(monkeypatch)
    results = _run(ref, tmp_path, (variant,), steps=steps)
    first = results["first_outside"]
    assert first is not None, f"{mutation} was not flagged"
    print(f"\n{mutation}: first outside {first}")  # pytest -s shows what caught it
    assert first["difference"] > 1e3 * max(r["difference"] for r in control["rows"]), first
