"""The headline figures, checked against the targets, and the results as Markdown tables."""

from __future__ import annotations


def _best(figures, key, **match):
    chosen = [f for f in figures if all(f.get(k) == v for k, v in match.items())]
    return max(chosen, key=lambda f: f[key]) if chosen else None


def summary(r: dict) -> dict:
    """Headline figures and, for each target, the measured value and whether it is met."""
    out: dict = {}
    t, ref = r["targets"], r["reference"]
    train = r.get("train", [])
    recipe = train[0]["recipe"] if train else None
    best = _best(train, "images_per_second", recipe=recipe, arch="patchvae")
    if best:
        out["train_patchvae_cifar_recipe"] = {
            "variant": best["variant"],
            "images_per_second": best["images_per_second"],
            "per_matmul_gflops_probe": best["per_matmul_gflops"],
            "per_matmul_gflops_run_max": best["per_max_matmul_gflops"],
            "fraction_of_matmul_run_max": best["fraction_of_max_matmul"],
            "target_per_matmul_gflops": t["train_images_per_second_per_matmul_gflops"],
            "reference_per_matmul_gflops": round(
                ref["train_images_per_second_per_matmul_gflops"], 3
            ),
            "met": best["per_max_matmul_gflops"] >= t["train_images_per_second_per_matmul_gflops"],
        }
        # Each window against the probes beside it (train_bench).
        paired = best["per_paired_matmul_gflops"]
        out["train_patchvae_cifar_recipe"] |= {
            "per_matmul_gflops_paired": paired,
            "met_paired": paired >= t["train_images_per_second_per_matmul_gflops"],
        }
    enc = [e for e in r.get("encoder", []) if e["runtime"].startswith("onnxruntime")]
    if enc:
        fast_batch = max(enc, key=lambda e: e["batch_images_per_second"])
        fast_one = min(enc, key=lambda e: e["batch1_median_ms"])
        low, high = ref["encoder_batch128_images_per_second"]
        need = t["onnx_batch128_speedup_vs_reference"]
        out["onnxruntime_encoder"] = {
            "batch": fast_batch["batch"],
            "best_batch_images_per_second": fast_batch["batch_images_per_second"],
            "best_batch_setting": f"{fast_batch['runtime']} ({fast_batch['settings']})",
            "speedup_vs_reference_low_high": [
                round(fast_batch["batch_images_per_second"] / high, 2),
                round(fast_batch["batch_images_per_second"] / low, 2),
            ],
            "target_speedup": need,
            "met_vs_reference_low_end": fast_batch["batch_images_per_second"] >= need * low,
            "met_vs_reference_high_end": fast_batch["batch_images_per_second"] >= need * high,
            "best_batch1_ms": fast_one["batch1_median_ms"],
            "best_batch1_setting": f"{fast_one['runtime']} ({fast_one['settings']})",
            "target_batch1_ms": t["onnx_batch1_ms"],
            "batch1_met": fast_one["batch1_median_ms"] < t["onnx_batch1_ms"],
        }
        # The least contended window (encoder_bench.measure).
        quiet = min(enc, key=lambda e: e["batch1_best_window_median_ms"])
        out["onnxruntime_encoder"] |= {
            "best_window_batch1_ms": quiet["batch1_best_window_median_ms"],
            "best_window_batch1_setting": f"{quiet['runtime']} ({quiet['settings']})",
            "best_window_batch1_met": quiet["batch1_best_window_median_ms"] < t["onnx_batch1_ms"],
        }
        full = [e for e in enc if e["batch1_ms_full_speed"] is not None]
        if full:  # windows in which the host ran at full speed (runner._full_speed_latency)
            steady = min(full, key=lambda e: e["batch1_ms_full_speed"])
            out["onnxruntime_encoder"] |= {
                "full_speed_batch1_ms": steady["batch1_ms_full_speed"],
                "full_speed_batch1_setting": f"{steady['runtime']} ({steady['settings']})",
                "full_speed_batch1_met": steady["batch1_ms_full_speed"] < t["onnx_batch1_ms"],
            }
    scaling = r.get("scaling")
    if scaling and scaling.get("us_per_image_spread_batch_32_to_256") is not None:
        spread = scaling["us_per_image_spread_batch_32_to_256"]
        out["scaling"] = {
            "us_per_image_spread_batch_32_to_256": spread,
            "target_spread": t["time_per_image_spread_batch_32_to_256"],
            "met": spread <= t["time_per_image_spread_batch_32_to_256"],
            "cost_ratio_vs_pixel_ratio": scaling["cost_ratio_vs_pixel_ratio"],
        }
    mem = r.get("memory")
    if mem:
        peak = max(run["peak_rss_mb"] for run in mem["runs"])
        out["memory"] = {
            "peak_rss_mb": peak,
            "target_mb": t["train_peak_rss_mb"],
            "met": peak < t["train_peak_rss_mb"],
            "growth_ratio_with_dataset_size": mem["growth_ratio"],
        }
    return out


def _full_speed_cell(e: dict) -> str:
    if e["batch1_ms_full_speed"] is None:
        return "none (0 windows)"
    return f"{e['batch1_ms_full_speed']} ({e['batch1_full_speed_windows']})"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(r: dict) -> str:
    """Tables of every figure with its matmul-normalised value."""
    lines = [
        f"Run {r['started']} to {r.get('finished', '?')} on {r['machine']['cpu']}, "
        f"{r['machine']['cores']} cores; float32 matmul {r['matmul_gflops_start']} GFLOP/s at "
        f"the start, {r.get('matmul_gflops_end', '?')} at the end, median of the per-figure "
        f"probes {r.get('matmul_gflops_median_of_probes', '?')}, highest "
        f"{r.get('matmul_gflops_max', '?')}. Figures are divided by the highest (other processes "
        "only lower a probe); the probe taken just before each figure is listed beside it.",
        "",
    ]
    if r.get("train"):
        lines += [
            "Training (shapes images, resnet encoder, scale 8, N=16, L=6; Adam step included):",
            "",
            _row(
                [
                    "recipe",
                    "model",
                    "variant",
                    "batch",
                    "images/s",
                    "per matmul-GFLOP/s",
                    "of matmul rate",
                    "probes beside it, GFLOP/s",
                    "per paired matmul-GFLOP/s",
                    "load",
                ]
            ),
            _row(["---"] * 10),
        ]
        for c in r["train"] + r.get("train_knobs", []):
            probes = c["window_matmul_gflops"]
            variant = c["variant"]
            if c.get("synthetic"):
                variant += ", no input pipeline"
            if c.get("steps_per_loop", 1) > 1:
                variant += f", {c['steps_per_loop']} steps per call"
            if c.get("keras_kernels"):
                variant += ", Keras BatchNorm and Adam (unfused)"
            lines.append(
                _row(
                    [
                        f"{c['image_size']} px",
                        c["arch"],
                        variant,
                        c["batch"],
                        c["images_per_second"],
                        c["per_max_matmul_gflops"],
                        f"{c['fraction_of_max_matmul']:.1%}",
                        f"{min(probes):.0f} to {max(probes):.0f}",
                        c["per_paired_matmul_gflops"],
                        c["probe"]["load_average"],
                    ]
                )
            )
        lines.append("")
    if r.get("encoder"):
        lines += [
            "Encoder inference (PatchVAE, 32 px, occurrence + appearance + features):",
            "",
            _row(
                [
                    "runtime",
                    "settings",
                    "batch 1 median ms",
                    "batch 1, quietest window ms",
                    "batch 1 ms, host at full speed (windows)",
                    "batch",
                    "images/s",
                    "per matmul-GFLOP/s",
                    "of matmul rate",
                    "probe GFLOP/s",
                ]
            ),
            _row(["---"] * 10),
        ]
        for e in r["encoder"]:
            lines.append(
                _row(
                    [
                        e["runtime"],
                        e["settings"],
                        e["batch1_median_ms"],
                        e["batch1_best_window_median_ms"],
                        _full_speed_cell(e),
                        e["batch"],
                        e["batch_images_per_second"],
                        e["per_max_matmul_gflops"],
                        f"{e['fraction_of_max_matmul']:.1%}",
                        e["probe"]["matmul_gflops"],
                    ]
                )
            )
        lines.append("")
    if r.get("scaling"):
        s = r["scaling"]
        lines += [
            f"Scaling (PatchVAE training, {s['variant']}):",
            "",
            _row(
                [
                    "image size",
                    "batch",
                    "images/s",
                    "us per image",
                    "per matmul-GFLOP/s",
                    "of matmul rate",
                ]
            ),
            _row(["---"] * 6),
        ]
        for c in s["by_batch"] + s["by_image_size"]:
            lines.append(
                _row(
                    [
                        c["image_size"],
                        c["batch"],
                        c["images_per_second"],
                        c["us_per_image"],
                        c["per_max_matmul_gflops"],
                        f"{c['fraction_of_max_matmul']:.1%}",
                    ]
                )
            )
        lines.append("")
    if r.get("memory"):
        m = r["memory"]
        lines += ["Peak resident memory of train.py:", ""]
        lines += [_row(["variant", "dataset images", "steps", "peak RSS MB"]), _row(["---"] * 4)]
        lines += [
            _row([x["variant"], x["dataset_size"], x["steps"], x["peak_rss_mb"]])
            for x in m["runs"] + m["other_variants"]
        ]
        lines.append("")
    if r.get("flops_per_image"):
        lines += [
            _row(["model", "encoder GFLOP/image", "train step GFLOP/image"]),
            _row(["---"] * 3),
        ]
        for k, v in sorted(r["flops_per_image"].items()):
            lines.append(
                _row(
                    [
                        k,
                        round(v["encoder_inference"]["total"] / 1e9, 4),
                        round(v["train_step"]["total"] / 1e9, 4),
                    ]
                )
            )
        lines.append("")
    for k, v in r.get("summary", {}).items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"
