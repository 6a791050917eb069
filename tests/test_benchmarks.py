"""The benchmark command runs end to end at tiny sizes and writes valid JSON (no speed checks)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_json_and_table(tmp_path):
    out = tmp_path / "results" / "run.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", f"--out={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert (tmp_path / "results" / "run.md").read_text().count("|") > 20
    assert not list((tmp_path / "results").glob("*.tmp"))

    matmul = r["matmul_gflops_start"]
    assert 0 < matmul < 1e5
    # FLOPs are counted from the graph: the CIFAR-recipe PatchVAE encoder is a truncated
    # ResNet-18 (about 40 MFLOP at 32 px) plus 7.7 MFLOP of heads, and a training step costs
    # three forward passes (forward, input gradients, weight gradients).
    fl = r["flops_per_image"]["patchvae_32px"]
    assert 45e6 < fl["encoder_inference"]["total"] < 52e6
    assert fl["train_step"]["total"] == 3 * fl["train_forward"]["total"]

    archs = {c["arch"] for c in r["train"]}
    assert archs == {"patchvae", "vae"}
    for c in r["train"] + r["train_knobs"] + r["scaling"]["by_batch"]:
        assert c["images_per_second"] > 0
        # The normalised values are the measured ones divided by the probe, not constants.
        probe = c["probe"]["matmul_gflops"]
        assert abs(c["per_matmul_gflops"] - c["images_per_second"] / probe) < 1e-3
        flops = c["train_gflops_per_image"] * 1e9
        expected = c["images_per_second"] * flops / (probe * 1e9)
        assert abs(c["fraction_of_matmul"] - expected) < 1e-3
        # Paired: each window over the mean of the probes on either side, median of windows.
        rates, probes = c["window_images_per_second"], c["window_matmul_gflops"]
        assert len(probes) == len(rates) + 1
        pairs = zip(rates, probes[:-1], probes[1:], strict=True)
        paired = sorted(w / ((a + b) / 2) for w, a, b in pairs)
        assert min(paired) - 1e-3 <= c["per_paired_matmul_gflops"] <= max(paired) + 1e-3
    summary = r["summary"]["train_patchvae_cifar_recipe"]
    assert summary["met_paired"] == (summary["per_matmul_gflops_paired"] >= 2.5)
    knob = r["train_knobs"][0]
    assert knob["synthetic"] and knob["steps_per_loop"] == 2 and knob["keras_kernels"]

    runtimes = {e["runtime"] for e in r["encoder"]}
    assert runtimes == {"keras", "saved_model", "onnxruntime", "onnxruntime_int8"}
    for e in r["encoder"]:
        assert e["batch1_median_ms"] > 0 and e["batch_images_per_second"] > 0
        assert 0 < e["batch1_best_window_median_ms"] <= e["batch1_p90_ms"]
        # Full speed: the median of the windows whose probes on both sides reached 90% of
        # the run's highest probe (None when no window did).
        medians, probes = e["batch1_window_medians_ms"], e["batch1_window_matmul_gflops"]
        assert len(probes) == len(medians) + 1
        pairs = zip(medians, probes[:-1], probes[1:], strict=True)
        fast = [m for m, a, b in pairs if min(a, b) >= 0.9 * r["matmul_gflops_max"]]
        assert e["batch1_full_speed_windows"] == len(fast)
        if fast:
            assert min(fast) - 1e-3 <= e["batch1_ms_full_speed"] <= max(fast) + 1e-3
    # The run's highest probe is the highest of all of them, between windows included.
    every = [r["matmul_gflops_start"], r["matmul_gflops_end"]]
    for f in r["train"] + r["train_knobs"] + r["scaling"]["by_batch"] + r["encoder"]:
        every += [f["probe"]["matmul_gflops"]]
        every += f.get("window_matmul_gflops", []) + f.get("batch1_window_matmul_gflops", [])
    assert r["matmul_gflops_max"] == round(max(every), 2)
    enc = r["summary"]["onnxruntime_encoder"]
    assert enc["best_window_batch1_met"] == (enc["best_window_batch1_ms"] < 0.3)
    if "full_speed_batch1_ms" in enc:
        assert enc["full_speed_batch1_met"] == (enc["full_speed_batch1_ms"] < 0.3)
    assert sum("iobinding" in e["settings"] for e in r["encoder"]) == 2  # float32 and int8

    runs = r["memory"]["runs"]
    assert [x["dataset_size"] for x in runs] == [16, 64]
    assert all(100 < x["peak_rss_mb"] < 1e5 for x in runs)
    assert set(r["summary"]) == {
        "train_patchvae_cifar_recipe",
        "onnxruntime_encoder",
        "scaling",
        "memory",
    }


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


def test_full_speed_latency_keeps_the_windows_with_fast_probes_on_both_sides():
    from benchmarks import runner

    figure = {
        "batch1_window_medians_ms": [0.30, 0.50, 0.40, 0.34],
        # probes before and after each window; the run's highest is 140, 90% of it 126
        "batch1_window_matmul_gflops": [130.0, 140.0, 80.0, 135.0, 127.0],
    }
    got = runner._full_speed_latency(figure, best=140.0)
    # Windows 1 (130, 140) and 4 (135, 127) qualify; 2 and 3 have the 80 beside them.
    assert got == {"batch1_ms_full_speed": 0.32, "batch1_full_speed_windows": 2}
    slow = {**figure, "batch1_window_matmul_gflops": [80.0] * 5}
    assert runner._full_speed_latency(slow, best=140.0) == {
        "batch1_ms_full_speed": None,
        "batch1_full_speed_windows": 0,
    }
