"""The benchmark command runs end to end at tiny sizes and writes valid JSON (no speed checks);
the pieces that turn timings into ratios and judgements check their numbers.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, random_pixels

from patchvae_tf.errors import UserError


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(results JSON, Markdown table, results folder) of one python -m benchmarks --quick run
    without a reference, its memory section on a small image folder.
    """
    from benchmarks import image_folder

    tmp_path = tmp_path_factory.mktemp("bench")
    folder = tmp_path / "folder"
    assert image_folder.main([f"--out={folder}", "--images=40", "--test_images=10"]) == 0
    out = tmp_path / "results" / "run.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            f"--out={out}",
            "--sections=flops,train,encoder,memory,profile",
            f"--memory_folder={folder}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = tmp_path / "results"
    return json.loads(out.read_text()), (results / "run.md").read_text(), results


@pytest.mark.slow
def test_quick_run_without_reference_writes_json_and_table(quick_run):
    r, table, results = quick_run
    assert "no reference in this run" in table and table.count("|") > 20
    assert not list(results.glob("*.tmp"))
    assert r["reference"] is None
    assert r["machine"]["cpu_kind"] in ("AMX", "AVX-512 with BF16", "AVX-512", "AVX2", "other")
    # FLOPs are counted from the graph: the CIFAR-recipe PatchVAE encoder is a truncated
    # ResNet-18 (about 40 MFLOP at 32 px) plus 7.7 MFLOP of heads, and a training step costs
    # three forward passes (forward, input gradients, weight gradients).
    fl = r["flops_per_image"]["patchvae_32px"]
    assert 45e6 < fl["encoder_inference"]["total"] < 52e6
    assert fl["train_step"]["total"] == 3 * fl["train_forward"]["total"]
    summary = r["summary"]
    for name in ("train_cifar_default", "onnxruntime_int8_batch", "saved_model_batch"):
        assert summary[name]["ratio"] is None and summary[name]["met"] is None


@pytest.mark.slow
def test_quick_run_times_training_in_windows_without_ratios(quick_run):
    r, _, _ = quick_run
    for c in r["train"] + r["train_knobs"]:
        fig = c["images_per_second"]
        assert fig["ratio"] is None and fig["theirs"] is None
        assert len(fig["ours_windows"]) == 2 and min(fig["ours_windows"]) > 0
        assert min(fig["ours_windows"]) <= fig["ours"] <= max(fig["ours_windows"])
    assert r["train"][0]["policy"] == r["auto_precision"]["policy"]
    knob = r["train_knobs"][0]
    assert knob["synthetic"] and knob["steps_per_loop"] == 2 and knob["keras_kernels"]


@pytest.mark.slow
def test_quick_run_times_every_encoder_runtime_and_batching(quick_run):
    r, table, _ = quick_run
    runtimes = {e["runtime"] for e in r["encoder"]}
    assert runtimes == {
        "keras",
        "saved_model",
        "saved_model_xla",
        "onnxruntime",
        "onnxruntime_int8",
        "litert",
        "litert_int8",
        "openvino",
        "openvino_int8",
    }
    b = r["batching"]
    assert set(b["images_per_second"]) == {"1"}  # --quick: an encoder batch of 4
    assert b["parameters"]["max_batch_size"] == 1 and "batching parameters" in table
    for e in r["encoder"]:
        assert e["batch1_ms"]["ours"] > 0 and e["batch_images_per_second"]["ours"] > 0
        assert e["batch1_ms"]["ratio"] is None


@pytest.mark.slow
def test_quick_run_profile_tables_add_up(quick_run):
    """Each per-op table adds up to the op time it divides, which is within the time of the
    runs it comes from.
    """
    from benchmarks.op_profile import VARIANTS

    r, table, _ = quick_run
    prof = r["profile"]
    for name, o in prof["onnxruntime"].items():
        kinds = {e["name"] for e in o["by_op_type"]}
        assert ("QLinearConv" if name == "int8" else "Conv") in kinds, kinds
        assert sum(e["ms"] for e in o["by_op_type"]) == pytest.approx(o["kernels_ms"], abs=0.01)
        assert sum(e["share"] for e in o["by_op_type"]) == pytest.approx(1, abs=0.01)
        assert 0 < o["kernels_ms"] <= o["model_run_ms"]
        assert o["top_nodes"][0]["ms"] >= o["top_nodes"][-1]["ms"] > 0
    for name, sig in prof["saved_model_batch1"].items():
        kinds = {e["name"]: e for e in sig["by_op_type"]}
        assert sum(e["ms"] for e in sig["by_op_type"]) == pytest.approx(sig["ops_ms"], abs=0.01)
        assert 0 < sig["ops_ms"] and sig["batch"] == 1
        if name == "serving_default":  # the convolutions run as oneDNN or Eigen kernels
            assert any("Conv2D" in k for k in kinds), kinds
        else:  # the encoder is one XLA cluster; the checks run beside it
            assert "XLA executable" in kinds and "CheckNumerics" in kinds, kinds
            assert not any("Conv2D" in k for k in kinds), kinds
    step = prof["train_step"]
    assert {e["name"] for e in step["by_phase"]} == {"forward", "backward", "optimizer"}
    assert sum(e["ms"] for e in step["by_phase"]) == pytest.approx(step["ops_ms"], rel=0.01)
    assert any("Conv2DBackpropFilter" in e["name"] for e in step["by_op_type"])
    # Summed over the executor's threads (at most one per core), the ops fit in the wall time.
    assert 0 < step["ops_ms"] <= os.cpu_count() * step["step_ms"] * 1.05
    variants = {v["variant"]: v for v in prof["int8_variants"]}
    assert set(variants) == {"float32", *VARIANTS}
    assert variants["float32"]["over_float32"] == 1.0
    assert all(v["features_mean_cosine"] > 0.9 for k, v in variants.items() if k != "float32")
    assert "int8 settings" in table


@pytest.mark.slow
def test_quick_run_measures_peak_memory_on_each_dataset_size(quick_run):
    runs = quick_run[0]["memory"]["runs"]
    assert [x["dataset_size"] for x in runs] == [16, 64, 16, 40]
    assert all(100 < x["peak_rss_mb"] < 1e5 for x in runs)
    assert quick_run[0]["memory"]["growth_ratio_folder"] == round(
        runs[3]["peak_rss_mb"] / runs[2]["peak_rss_mb"], 3
    )


def test_pairs_alternate_and_ratios_are_ours_faster_above_one():
    from benchmarks import paired

    calls = []
    ours, theirs = paired.interleave(
        lambda: calls.append("a") or 100.0 + len(calls),
        lambda: calls.append("b") or 50.0,
        windows=3,
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert ours == [101.0, 104.0, 105.0] and theirs == [50.0] * 3
    rates = paired.compare([100.0, 90.0, 120.0], [50.0, 60.0, 40.0], higher_is_better=True)
    assert rates["ratio"] == 2.0  # median of 2.0, 1.5, 3.0
    assert rates["ratio_range"] == [1.5, 3.0]
    assert rates["ours"] == 100.0 and rates["theirs"] == 50.0
    times = paired.compare([0.5, 0.4], [2.0, 2.4], higher_is_better=False)
    assert times["ratio"] == 5.0  # median of 4.0 and 6.0: theirs over ours
    assert paired.compare([1.0], None, True)["ratio"] is None
    with pytest.raises(ValueError):
        paired.compare([1.0, 2.0], [1.0], True)


def test_auto_precision_follows_the_hardware():
    from patchvae_tf.training import precision

    avx2 = frozenset({"avx", "avx2", "fma"})
    bf16 = avx2 | {"avx512f", "avx512_bf16", "avx512_vnni"}
    assert precision.auto_policy("CPU", flags=avx2)[0] == "none"
    assert precision.auto_policy("CPU", flags=avx2 | {"avx512f"})[0] == "none"
    assert precision.auto_policy("CPU", flags=bf16)[0] == "mixed_bfloat16"
    assert precision.auto_policy("CPU", flags=avx2 | {"amx_bf16"})[0] == "mixed_bfloat16"
    assert precision.auto_policy("GPU", (7, 0))[0] == "mixed_float16"
    assert precision.auto_policy("GPU", (8, 6))[0] == "mixed_bfloat16"
    assert precision.auto_policy("TPU")[0] == "mixed_bfloat16"
    assert precision.cpu_kind(avx2) == "AVX2"
    assert precision.cpu_kind(bf16) == "AVX-512 with BF16"
    assert precision.resolve("mixed_float16") == ("mixed_float16", "as given")


def test_bfloat16_is_judged_against_the_run_to_run_spread(tmp_path):
    import tensorflow as tf

    from benchmarks import precision_loss

    writer = tf.summary.create_file_writer(str(tmp_path / "logs"))
    with writer.as_default():
        for step, loss in [(10, 9.0), (20, 7.0), (30, 5.0), (40, 4.0)]:
            tf.summary.scalar("loss", loss, step=step)
            tf.summary.scalar("recon", 100.0, step=step)
    writer.close()
    final, curve = precision_loss.final_loss(str(tmp_path))
    assert curve == [9.0, 7.0, 5.0, 4.0]
    assert final == 4.0  # the last quarter of 40 steps: step 40 only
    same = precision_loss.judge([10.0, 11.0], [10.6, 10.2])
    assert same["run_to_run_spread"] == 1.0 and same["difference_of_means"] == 0.1
    assert same["within_spread"]
    assert not precision_loss.judge([10.0, 10.2], [11.0, 11.1])["within_spread"]


def test_reference_needs_a_checkout_and_a_torch_interpreter(tmp_path):
    from parity import reference

    with pytest.raises(UserError, match="not a checkout of kampta/PatchVAE"):
        reference.check_checkout(str(tmp_path))
    with pytest.raises(UserError, match="--reference_python"):
        reference.interpreter(None, setup=False)
    with pytest.raises(UserError, match="does not exist"):
        reference.interpreter(str(tmp_path / "python"), setup=False)
    if importlib.util.find_spec("torch") is None:  # torch is no dependency of the project
        with pytest.raises(UserError, match="cannot import torch"):
            reference.interpreter(sys.executable, setup=False)


def test_bench_flags_name_the_bad_value(tmp_path):
    from patchvae_tf.config import BenchConfig
    from patchvae_tf.config.checks import validate_bench

    with pytest.raises(UserError, match="need --reference"):
        validate_bench(BenchConfig(reference_python="/usr/bin/python3"))
    with pytest.raises(UserError, match="no train/ subfolder"):
        validate_bench(BenchConfig(memory_folder=str(tmp_path)))
    with pytest.raises(UserError, match="precision_seeds"):
        validate_bench(BenchConfig(precision_seeds=1))


def test_peak_rss_is_the_child_s_own_not_the_benchmark_s():
    """A child inherits its parent's high-water mark at exec; the measured one must not."""
    from benchmarks import memory

    held = bytearray(800 * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page: 800 MB resident here
    mb, lines = memory.peak_rss_mb([sys.executable, "-c", "print('hello')"])
    assert lines == ["hello"]
    assert 1 < mb < 200
    big, _ = memory.peak_rss_mb(
        [sys.executable, "-c", "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"]
    )
    assert 300 < big < 500
    del held


def test_benchmark_iobinding_runner_returns_what_run_returns(exported):
    """The benchmark's IOBinding path (a latency knob) computes the same outputs as run()."""
    from benchmarks import encoder_bench

    ecfg, _ = exported
    session = encoder_bench.ort_session(os.path.join(ecfg.export_dir, "onnx", "encoder.onnx"), 1)
    plain, bound = encoder_bench.ort_fn(session), encoder_bench.ort_fn(session, iobinding=True)
    for batch in (1, 3, 1):  # a second shape, then the first again (its binding is reused)
        x = random_pixels(batch, seed=batch)
        for a, b in zip(plain(x), bound(x), strict=True):
            np.testing.assert_array_equal(a, b)


def test_markdown_table_has_a_rule_and_one_line_per_row():
    from benchmarks.markdown import sci, table

    lines = table(["a", "b"], [[1, None], ["x", sci(1.234e-9)]])
    assert lines == ["| a | b |", "| --- | --- |", "| 1 |  |", "| x | 1.23e-09 |"]
    assert sci(None) == "" and sci(2.6e-3, 0) == "3e-03"


@pytest.mark.slow
def test_recognition_benchmark_rows_and_table(trained, shapes_folder, tmp_path):
    """python -m benchmarks.recognition's run on the session model: one row per encoder and
    input, the mean and spread of each K's draws, and the table that shows them.
    """
    from benchmarks import recognition

    cfg, _ = trained
    bench = recognition.RecognitionBenchConfig(
        patchvae=cfg.train.workdir,
        dataset=f"folder:{shapes_folder}",
        labels_per_class=(2, 0),
        draws=2,
        epochs=3,
        out=str(tmp_path / "r.json"),
    )
    r = recognition.run(bench)
    rows = {(row["row"], row["labels_per_class"]): row for row in r["rows"]}
    assert sorted({name for name, _ in rows}) == [
        "PatchVAE features",
        "PatchVAE part codes",
        "random-init features",
        "random-init part codes",
    ]
    two = rows["PatchVAE features", 2]
    assert len(two["top1"]) == 2 and two["train_examples"] == 6
    assert two["mean"] == pytest.approx(np.mean(two["top1"]))
    assert two["std"] == pytest.approx(np.std(two["top1"], ddof=1))
    every = rows["PatchVAE part codes", 0]
    assert len(every["top1"]) == 1 and every["train_examples"] == 300
    table = recognition.markdown(r)
    assert f"| PatchVAE features | {two['mean']:.3f} ± {two['std']:.3f} |" in table
    assert "every label" in table and "majority label top-1 0.333" in table
