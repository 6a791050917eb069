"""The targets checked against the measured ratios, and the results as Markdown tables."""

from __future__ import annotations

from benchmarks.markdown import table

NO_REFERENCE = "no reference in this run (--reference=PATH): ratios absent"


def _target(ratio, need) -> dict:
    if ratio is None:
        return {"ratio": None, "target": need, "met": None, "note": NO_REFERENCE}
    return {"ratio": ratio, "target": need, "met": ratio >= need}


def _train(r, recipe, variant, **match):
    for c in r.get("train", []):
        if c["recipe"] == recipe and c["variant"] == variant:
            if all(c.get(k) == v for k, v in match.items()):
                return c
    return None


def summary(r: dict) -> dict:
    """Each target with the ratio measured for it and whether it is met."""
    t, out = r["targets"], {}
    recipes = [c["recipe"] for c in r.get("train", [])]
    cifar = recipes[0] if recipes else None
    default = _train(r, cifar, "default")
    if default:
        # Where default is float32 without XLA, it is also the float32 figure.
        f32 = _train(r, cifar, "float32") or (
            default if default["policy"] == "none" and not default["jit_compile"] else None
        )
        out["train_cifar_default"] = _target(
            default["images_per_second"]["ratio"], t["train_cifar_default"]
        )
        out["train_cifar_default"]["policy"] = default["policy"]
        if f32:
            out["train_cifar_float32"] = _target(
                f32["images_per_second"]["ratio"], t["train_cifar_float32"]
            )
    other = next((c for c in r.get("train", []) if c["recipe"] != cifar), None)
    if other:
        out["train_64px_default"] = _target(
            other["images_per_second"]["ratio"], t["train_64px_default"]
        )
    enc = r.get("encoder", [])

    for name, runtime, key in (
        ("onnxruntime_int8_batch", "onnxruntime_int8", "batch_images_per_second"),
        ("onnxruntime_int8_batch1", "onnxruntime_int8", "batch1_ms"),
        ("onnxruntime_batch", "onnxruntime", "batch_images_per_second"),
        ("onnxruntime_batch1", "onnxruntime", "batch1_ms"),
        ("saved_model_batch", "saved_model", "batch_images_per_second"),
        ("saved_model_batch1", "saved_model", "batch1_ms"),
        ("saved_model_xla_batch", "saved_model_xla", "batch_images_per_second"),
        ("saved_model_xla_batch1", "saved_model_xla", "batch1_ms"),
    ):
        figs = [e for e in enc if e["runtime"] == runtime]
        if figs:
            # Judged on the first (default) setting: the best of several noisy settings
            # would flatter. The best is listed beside it.
            out[name] = _target(figs[0][key]["ratio"], t[name])
            out[name]["setting"] = figs[0]["settings"]
            rated = [e for e in figs if e[key]["ratio"] is not None]
            if len(rated) > 1:
                top = max(rated, key=lambda e: e[key]["ratio"])
                out[name]["best_setting"] = f"{top['settings']}: {top[key]['ratio']}x"
    mem = r.get("memory")
    if mem:
        peak = max(run["peak_rss_mb"] for run in mem["runs"])
        growth = mem["growth_ratio_folder"]
        out["memory"] = {
            "peak_rss_mb": peak,
            "target_mb": 2048.0,
            "met": peak < 2048.0,
            "growth_ratio_image_folder": growth,
            "folder_images": mem["folder_images"],
            "flat_met": None if growth is None else growth <= 1.1,
            "growth_ratio_shapes": mem["growth_ratio_shapes"],
        }
    prec = r.get("precision")
    if prec:
        out["precision"] = {
            name: {"within_spread": v["within_spread"], "steps": v["steps"]}
            for name, v in prec["recipes"].items()
        }
    return out


def _pair(fig: dict, fmt: str) -> list[str]:
    """Ours, theirs and the ratio with its range over window pairs."""
    theirs = "" if fig["theirs"] is None else format(fig["theirs"], fmt)
    if fig["ratio"] is None:
        ratio = "no reference"
    else:
        low, high = fig["ratio_range"]
        ratio = f"**{fig['ratio']}x** ({low} to {high})"
    return [format(fig["ours"], fmt), theirs, ratio]


def markdown(r: dict) -> str:
    """Tables of every figure beside the reference's and the ratio."""
    m = r["machine"]
    ref = r.get("reference")
    lines = [
        f"Run {r['started']} to {r.get('finished', '?')} on {m['cpu']} ({m['cpu_kind']}), "
        f"{m['cores']} cores; float32 matmul {r['matmul_gflops_start']} GFLOP/s at the start, "
        f"{r.get('matmul_gflops_end', '?')} at the end. --mixed_precision=auto: "
        f"{r['auto_precision']['policy']} ({r['auto_precision']['why']}).",
        "",
        (
            f"Reference: {ref['checkout']}, torch {ref['torch']} ({ref['cpu_capability']}), "
            f"torchvision: {ref['modules']['torchvision']}. Each of our windows ran next to one "
            f"of the reference's, which ran at {ref['threads']} threads and at 1 and kept the "
            "faster; the ratio is the median over window pairs (range in brackets), above 1 "
            "meaning ours is faster."
            if ref
            else "Reference: " + NO_REFERENCE + "."
        ),
        "",
    ]
    train = r.get("train", []) + r.get("train_knobs", [])
    if train:
        lines += [
            "Training (shapes images; resnet encoder, scale 8, 64 channels, N=16, L=6; Adam "
            "step included; the reference trains on one fixed batch in memory):",
            "",
        ]
        rows = []
        for c in train:
            setting = f"{c['variant']}: {c['policy']}, XLA {'on' if c['jit_compile'] else 'off'}"
            if c.get("synthetic"):
                setting += ", one fixed batch (no input pipeline)"
            if c.get("steps_per_loop", 1) > 1:
                setting += f", {c['steps_per_loop']} steps per call"
            if c.get("keras_kernels"):
                setting += ", Keras BatchNorm and Adam (unfused)"
            rows.append(
                [
                    f"{c['image_size']} px",
                    c["batch"],
                    setting,
                    *_pair(c["images_per_second"], ".0f"),
                    c.get("gflops_per_second", ""),
                    c["load_average"],
                ]
            )
        header = ["recipe", "batch", "setting", "ours images/s", "reference images/s", "ratio"]
        lines += table(header + ["ours GFLOP/s", "load"], rows)
        if r.get("train_variants_skipped"):
            lines += ["", f"Not timed: {r['train_variants_skipped']}."]
        lines.append("")
    if r.get("encoder"):
        e0 = r["encoder"][0]
        lines += [
            f"Encoder inference, 32 px (ours: pixels in, occurrence, appearance and features "
            f"out; reference: eval-mode model.encode under no_grad). Batch 1 and batch "
            f"{e0['batch']}:",
            "",
        ]
        header = ["runtime", "settings", "ours batch 1 ms", "reference ms", "ratio"]
        header += ["ours images/s", "reference images/s", "ratio"]
        rows = [
            [
                e["runtime"],
                e["settings"],
                *_pair(e["batch1_ms"], ".3f"),
                *_pair(e["batch_images_per_second"], ".0f"),
            ]
            for e in r["encoder"]
        ]
        lines += table(header, rows) + [""]
    if r.get("batching"):
        b = r["batching"]
        rates = ", ".join(f"batch {k}: {v:.0f}" for k, v in b["images_per_second"].items())
        lines += [
            f"serving_default images/s by batch size ({rates}; load {b['load_average']}) give "
            f"TF Serving batching parameters {b['parameters']}.",
            "",
        ]
    if r.get("memory"):
        mem = r["memory"]
        lines += ["Peak resident memory of train.py (CIFAR recipe, default precision):", ""]
        rows = [[x["data"], x["dataset_size"], x["steps"], x["peak_rss_mb"]] for x in mem["runs"]]
        lines += table(["data", "images", "steps", "peak RSS MB"], rows)
        lines.append("")
    if r.get("precision"):
        p = r["precision"]
        lines += [
            "bfloat16 against float32, final loss (mean of the last quarter of the logged "
            f"losses); bfloat16 {'native' if p['bfloat16_native'] else 'emulated, under XLA'}:",
            "",
        ]
        header = ["recipe", "steps", "float32 per seed", "bfloat16 per seed"]
        header += ["difference of means", "run-to-run spread", "same loss"]
        rows = [
            [
                name,
                v["steps"],
                v["float32_final"],
                v["bfloat16_final"],
                v["difference_of_means"],
                v["run_to_run_spread"],
                "yes" if v["within_spread"] else "no",
            ]
            for name, v in p["recipes"].items()
        ]
        lines += table(header, rows) + [""]
    if r.get("profile"):
        lines += _profile(r["profile"])
    if r.get("flops_per_image"):
        rows = [
            [
                k,
                round(v["encoder_inference"]["total"] / 1e9, 4),
                round(v["train_step"]["total"] / 1e9, 4),
            ]
            for k, v in sorted(r["flops_per_image"].items())
        ]
        lines += table(["model", "encoder GFLOP/image", "train step GFLOP/image"], rows) + [""]
    for k, v in r.get("summary", {}).items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def _profile(p: dict) -> list[str]:
    """The profile section: int8 settings side by side, then the largest entries of each
    per-op table (ms per image batch or per train step, and share of the summed op time).
    """
    header = ["variant", "features cosine to float32", "over float32", "images/s"]
    rows = [
        [
            v["variant"],
            v["features_mean_cosine"] or "",
            v["over_float32"],
            *_pair(v["images_per_second"], ".0f"),
        ]
        for v in p["int8_variants"]
    ]
    lines = ["int8 settings, batch images/s in the same windows (2 threads):", ""]
    lines += table(header + ["reference", "ratio"], rows) + [""]
    tables = [
        (f"ONNX Runtime {k}, batch {o['batch']}, {o['model_run_ms']} ms per run", o)
        for k, o in p["onnxruntime"].items()
    ]
    for name, sig in p.get("saved_model_batch1", {}).items():
        tables.append((f"SavedModel {name}, batch 1, {sig['wall_ms']} ms per call", sig))
    tables.append((f"train step (ours, {p['train_step']['step_ms']} ms)", p["train_step"]))
    if p.get("reference_train_step"):
        ref = p["reference_train_step"]
        tables.append((f"train step (reference, {ref['step_ms']} ms)", ref))
    for title, t in tables:
        for key in ("by_phase", "by_op_type", "top_nodes"):
            if key in t:
                entries = ", ".join(f"{e['name']} {e['share']:.1%}" for e in t[key][:8])
                lines.append(f"- {title}, {key.replace('_', ' ')}: {entries}")
    lines.append("")
    return lines
