"""Runs the benchmark sections and writes one JSON file (and a Markdown table beside it)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks import hardware, paired, table
from patchvae_tf import precision
from patchvae_tf.config import (
    BenchConfig,
    Config,
    DataConfig,
    DistributeConfig,
    ModelConfig,
    TrainConfig,
)
from patchvae_tf.workdir import write_text_atomic

# Ours over the authors' code (kampta/PatchVAE, float32, PyTorch's defaults), measured
# interleaved in the same run; above 1 is faster.
TARGETS = {
    "train_cifar_default": 1.5,
    "train_cifar_float32": 1.3,
    "train_64px_default": 1.5,
    "onnxruntime_int8_batch": 3.0,
    "onnxruntime_int8_batch1": 5.0,
    "onnxruntime_batch": 1.5,
    "onnxruntime_batch1": 1.5,
    "saved_model_batch": 1.2,
}
PEAK_RSS_TARGET_MB = 2048.0
FLAT_MEMORY_TARGET = 1.1  # peak RSS on the large dataset over the small one
VARIANTS = {  # name -> (jit_compile, mixed_precision); None and "auto" as train.py decides
    "default": (None, "auto"),
    "float32": (False, "none"),
    "float32_xla": (True, "none"),
    "bfloat16": (False, "mixed_bfloat16"),
    "bfloat16_xla": (True, "mixed_bfloat16"),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each section runs; --quick shrinks everything to check the harness."""

    recipes: tuple  # (name, image size, global batch); the first is the CIFAR recipe
    windows: int  # interleaved timing windows per training figure
    window_steps: dict  # image size -> train steps per window
    encoder_batch: int
    encoder_windows: int
    calls_batch1: int  # per window
    calls_batch: int  # per window
    memory_steps: int
    memory_dataset_sizes: tuple
    memory_folder_small: int  # images in the small copy of --memory_folder
    calibration_images: int
    parity_images: int


FULL = Sizes(
    recipes=(("cifar_32px", 32, 128), ("64px", 64, 128)),
    windows=4,
    window_steps={32: 3, 64: 2},
    encoder_batch=128,
    encoder_windows=5,
    calls_batch1=100,
    calls_batch=4,
    memory_steps=30,
    memory_dataset_sizes=(1280, 128000),
    memory_folder_small=1280,
    calibration_images=128,
    parity_images=32,
)
QUICK = Sizes(
    recipes=(("cifar_32px", 32, 4),),
    windows=2,
    window_steps={32: 2},
    encoder_batch=4,
    encoder_windows=2,
    calls_batch1=3,
    calls_batch=2,
    memory_steps=1,
    memory_dataset_sizes=(16, 64),
    memory_folder_small=16,
    calibration_images=4,
    parity_images=4,
)


def recipe_config(image_size: int, batch: int, variant: str, seed: int) -> Config:
    """The CIFAR recipe's model (resnet, scale 8, 64 base channels, N=16, L=6, the authors'
    initialization and BatchNorm constants) on shapes images of image_size.
    """
    jit, policy = VARIANTS[variant]
    return Config(
        data=DataConfig(dataset="shapes", image_size=image_size, shapes_train_size=10000),
        model=ModelConfig(
            arch="patchvae",
            encoder="resnet",
            scale=8,
            base_channels=64,
            num_parts=16,
            appearance_dim=6,
            initialization="reference",
            batch_norm_momentum=0.9,
            batch_norm_epsilon=1e-5,
        ),
        train=TrainConfig(batch_size=batch, seed=seed, learning_rate=1e-4, adam_epsilon=1e-8),
        distribute=DistributeConfig(jit_compile=jit, mixed_precision=policy),
    )


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _ratio_text(c: dict) -> str:
    return f"{c['ratio']}x" if c.get("ratio") is not None else "no reference"


class Run:
    def __init__(self, cfg: BenchConfig, reference=None):
        self.cfg = cfg
        self.sizes = QUICK if cfg.quick else FULL
        self.reference = reference
        self._ref_keys: set = set()
        self._by_threads: list = []
        self.flops: dict = {}
        auto, why = precision.resolve("auto")
        self.results: dict = {
            "command": "python -m benchmarks "
            + " ".join(f"--{k}={v}" for k, v in cfg.to_dict().items() if v not in ("", None)),
            "config": cfg.to_dict(),
            "started": _now(),
            "machine": hardware.machine(),
            "auto_precision": {"policy": auto, "why": why},
            "targets": TARGETS,
            "reference": reference.info if reference else None,
        }

    # --- the reference -------------------------------------------------------------------

    def _reference_setup(self, cmd: str, key: str, size: int, **extra) -> None:
        if key not in self._ref_keys:
            self.reference.request(
                {
                    "cmd": cmd,
                    "key": key,
                    "image_size": size,
                    "num_parts": 16,
                    "appearance_dim": 6,
                    "scale": 8,
                    "base_channels": 64,
                    "seed": self.cfg.seed,
                    **extra,
                }
            )
            self._ref_keys.add(key)

    def _reference_threads(self) -> list[int]:
        """The reference runs at its default thread count and at one thread, and each window
        keeps the faster: on a loaded host PyTorch's OpenMP threads wait for each other at
        every op, and the reference should be compared at its best. The figures keep
        both (reference_by_threads).
        """
        default = self.reference.info["threads"]
        return [default, 1] if default > 1 else [default]

    def _reference_train_window(self, size: int, batch: int, steps: int):
        key = f"train_{size}_{batch}"
        self._reference_setup("train_setup", key, size, batch=batch)

        def window():
            rates = {}
            for t in self._reference_threads():
                request = {"cmd": "train", "key": key, "steps": steps, "threads": t}
                rates[t] = steps * batch / self.reference.request(request)["seconds"]
            self._by_threads.append({str(t): round(r, 2) for t, r in rates.items()})
            return max(rates.values())

        return window

    # --- sections ------------------------------------------------------------------------

    def flops_of(self, image_size: int) -> dict:
        key = f"patchvae_{image_size}px"
        if key not in self.flops:
            from benchmarks import flops
            from patchvae_tf import models

            model = models.build_model(recipe_config(image_size, 2, "float32", 0).model, image_size)
            self.flops[key] = flops.count(model)
        return self.flops[key]

    def section_flops(self) -> None:
        for _, size, _ in self.sizes.recipes:
            self.flops_of(size)

    def _train_case(self, recipe, size, batch, variant, **knobs) -> dict:
        from benchmarks import train_bench

        cfg = recipe_config(size, batch, variant, self.cfg.seed)
        spl = knobs.get("steps_per_loop", 1)
        steps = self.cfg.steps or self.sizes.window_steps[size]
        calls = max(1, steps // spl)
        session = train_bench.Session(cfg, **knobs)
        self._by_threads = []
        try:
            theirs = (
                self._reference_train_window(size, batch, calls * spl) if self.reference else None
            )
            if theirs:
                ours_w, theirs_w = paired.interleave(
                    lambda: session.window(calls), theirs, self.sizes.windows
                )
            else:
                ours_w = [session.window(calls) for _ in range(self.sizes.windows)]
                theirs_w = None
        finally:
            session.close()
        case = {
            "recipe": recipe,
            "image_size": size,
            "batch": batch,
            "variant": variant,
            "policy": session.policy,
            "jit_compile": session.jit_compile,
            **knobs,
            "steps_per_window": calls * spl,
            "first_call_seconds": round(session.first_call_seconds, 2),
            "loss_first_last": [round(session.first_loss, 3), round(session.last_loss, 3)],
            "images_per_second": paired.compare(ours_w, theirs_w, higher_is_better=True),
            # The reference's images/s per window at each thread count; the faster counts.
            "reference_by_threads": self._by_threads,
            "load_average": round(hardware.load_average(), 2),
        }
        # What the step reaches in convolution and matmul FLOPs, against the float32 matmul
        # rate measured at the start: how far from the machine's dense-math speed it runs.
        per_image = self.flops_of(size)["train_step"]["total"]
        case["gflops_per_second"] = round(case["images_per_second"]["ours"] * per_image / 1e9, 1)
        _log(
            f"train {recipe} b{batch} {variant} ({session.policy}, XLA {session.jit_compile}) "
            f"{knobs or ''}: {case['images_per_second']['ours']:.0f} images/s, reference "
            f"{case['images_per_second']['theirs']}, {_ratio_text(case['images_per_second'])} "
            f"(load {case['load_average']})"
        )
        return case

    def _variants(self) -> list[str]:
        """Default always; float32 where default is not float32 without XLA; XLA; bfloat16
        (with and without XLA) only where it is native: emulated bfloat16 measures nothing
        of use.
        """
        auto = self.results["auto_precision"]["policy"]
        names = ["default"]
        if auto != "none":
            names.append("float32")
        names.append("float32_xla")
        if auto == "mixed_bfloat16":
            names += ["bfloat16_xla"]
        return names if not self.cfg.quick else ["default"]

    def section_train(self) -> None:
        cases = []
        (cifar, size, batch), *others = self.sizes.recipes
        for variant in self._variants():
            cases.append(self._train_case(cifar, size, batch, variant))
        for name, other_size, other_batch in others:
            cases.append(self._train_case(name, other_size, other_batch, "default"))
        self.results["train"] = cases
        self.results["train_variants_skipped"] = (
            "bfloat16: not native on this CPU (emulated, slower than float32)"
            if self.results["auto_precision"]["policy"] != "mixed_bfloat16"
            else None
        )
        # Where the time goes: Keras's unfused BatchNorm and Adam, the input pipeline, and
        # the per-call dispatch.
        if self.cfg.quick:  # one case runs every code path
            knobs = [
                self._train_case(
                    cifar,
                    size,
                    batch,
                    "default",
                    synthetic=True,
                    steps_per_loop=2,
                    keras_kernels=True,
                )
            ]
        else:
            knobs = [
                self._train_case(cifar, size, batch, "default", keras_kernels=True),
                self._train_case(cifar, size, batch, "default", synthetic=True),
                self._train_case(cifar, size, batch, "default", steps_per_loop=4),
            ]
        self.results["train_knobs"] = knobs

    def _encoder_runtimes(self, model, sm: str, onnx_dir: str):
        from benchmarks import encoder_bench

        runtimes = [
            ("keras", "tf.function", lambda: encoder_bench.keras_fn(model, False)),
            ("keras", "tf.function, XLA", lambda: encoder_bench.keras_fn(model, True)),
            ("saved_model", "serving_default", lambda: encoder_bench.saved_model_fn(sm)),
        ]
        settings = [(2, True, True, False), (1, True, True, False)]
        if not self.cfg.quick:
            settings += [(2, True, True, True), (2, True, False, False)]
        else:
            settings += [(2, True, True, True)]
        for fname, label in (
            ("encoder.onnx", "onnxruntime"),
            ("encoder.int8.onnx", "onnxruntime_int8"),
        ):
            path = os.path.join(onnx_dir, fname)
            for threads, optimize, spin, bound in settings:
                knobs = f"threads={threads}, spinning={'on' if spin else 'off'}" + (
                    ", iobinding" if bound else ""
                )
                runtimes.append(
                    (
                        label,
                        knobs,
                        lambda path=path, t=threads, o=optimize, sp=spin, b=bound: (
                            encoder_bench.ort_fn(encoder_bench.ort_session(path, t, o, sp), b)
                        ),
                    )
                )
        return runtimes

    def section_encoder(self) -> None:
        from benchmarks import encoder_bench

        s = self.sizes
        size = s.recipes[0][1]
        cfg = recipe_config(size, s.encoder_batch, "float32", self.cfg.seed)
        rng = np.random.default_rng(self.cfg.seed)
        batch = rng.uniform(0, 255, (s.encoder_batch, size, size, 3)).astype(np.float32)
        one = batch[:1]
        if self.reference:
            self._reference_setup(
                "encoder_setup", f"encoder_{size}", size, batches=[1, s.encoder_batch]
            )

        def theirs(b, calls):
            def window():
                runs = {}
                for t in self._reference_threads():
                    request = {"cmd": "encode", "key": f"encoder_{size}", "batch": b}
                    request |= {"calls": calls, "threads": t}
                    runs[t] = self.reference.request(request)["seconds"]
                self._by_threads.append(
                    {str(t): round(statistics.median(x) * 1e3, 4) for t, x in runs.items()}
                )
                return min(runs.values(), key=statistics.median)

            return window

        figures = []
        with tempfile.TemporaryDirectory() as root:
            _log("encoder: exporting SavedModel, ONNX and int8 ONNX")
            model, export_dir, rep = encoder_bench.export_artifacts(
                cfg, root, s.calibration_images, s.parity_images
            )
            sm = os.path.join(export_dir, "saved_model", str(rep["version"]))
            onnx_dir = os.path.join(export_dir, "onnx")
            for runtime, knobs, make in self._encoder_runtimes(model, sm, onnx_dir):
                fn = make()
                fn(one), fn(one), fn(batch), fn(batch)  # warm-up

                def ours(x, calls, fn=fn):
                    return lambda: encoder_bench.timings(fn, x, calls)

                fig = {"runtime": runtime, "settings": knobs, "batch": s.encoder_batch}
                for label, x, b, calls, per_call in (
                    ("batch1_ms", one, 1, s.calls_batch1, lambda t: statistics.median(t) * 1e3),
                    (
                        "batch_images_per_second",
                        batch,
                        s.encoder_batch,
                        s.calls_batch,
                        lambda t: s.encoder_batch / statistics.median(t),
                    ),
                ):
                    # The reference's median ms per call, per window and thread count.
                    self._by_threads = fig[f"reference_ms_by_threads_{label}"] = []
                    if self.reference:
                        a, t = paired.interleave(
                            ours(x, calls), theirs(b, calls), s.encoder_windows
                        )
                        theirs_w = [per_call(w) for w in t]
                    else:
                        a = [ours(x, calls)() for _ in range(s.encoder_windows)]
                        theirs_w = None
                    fig[label] = paired.compare(
                        [per_call(w) for w in a], theirs_w, higher_is_better=label != "batch1_ms"
                    )
                fig["load_average"] = round(hardware.load_average(), 2)
                _log(
                    f"encoder {runtime} ({knobs}): batch 1 {fig['batch1_ms']['ours']} ms "
                    f"({_ratio_text(fig['batch1_ms'])}), batch {s.encoder_batch} "
                    f"{fig['batch_images_per_second']['ours']:.0f} images/s "
                    f"({_ratio_text(fig['batch_images_per_second'])})"
                )
                figures.append(fig)
            self.results["export"] = {
                "files": rep["files"],
                "int8_agreement": rep.get("int8", {}).get("agreement_with_float32"),
            }
        self.results["encoder"] = figures

    def section_memory(self) -> None:
        from benchmarks import memory

        s = self.sizes
        name, size, batch = s.recipes[0]
        cfg = recipe_config(size, batch, "default", self.cfg.seed)
        runs = []
        with tempfile.TemporaryDirectory() as root:
            for n in s.memory_dataset_sizes:
                run = memory.peak_rss(cfg, os.path.join(root, f"shapes_{n}"), s.memory_steps, n)
                _log(f"memory: shapes, {n} images -> peak RSS {run['peak_rss_mb']} MB")
                runs.append(run | {"data": "shapes (generated)"})
            if self.cfg.memory_folder:
                small = memory.subset_folder(
                    self.cfg.memory_folder, os.path.join(root, "small"), s.memory_folder_small
                )
                for folder in (small, self.cfg.memory_folder):
                    run = memory.peak_rss(
                        cfg,
                        os.path.join(root, f"folder_{len(runs)}"),
                        s.memory_steps,
                        folder=folder,
                    )
                    _log(
                        f"memory: {folder}, {run['dataset_size']} images -> "
                        f"peak RSS {run['peak_rss_mb']} MB"
                    )
                    runs.append(run | {"data": "image folder (JPEG files)"})
        shapes = [r for r in runs if r["data"].startswith("shapes")]
        files = [r for r in runs if not r["data"].startswith("shapes")]
        self.results["memory"] = {
            "recipe": name,
            "runs": runs,
            "growth_ratio_shapes": round(shapes[-1]["peak_rss_mb"] / shapes[0]["peak_rss_mb"], 3),
            "growth_ratio_folder": round(files[-1]["peak_rss_mb"] / files[0]["peak_rss_mb"], 3)
            if files
            else None,
            "folder_images": files[-1]["dataset_size"] if files else None,
        }

    def section_precision(self) -> None:
        from benchmarks import precision_loss

        self.results["precision"] = precision_loss.run(
            quick=self.cfg.quick,
            steps=self.cfg.precision_steps,
            seeds=self.cfg.precision_seeds,
            native=self.results["auto_precision"]["policy"] == "mixed_bfloat16",
            log=_log,
        )

    def run(self) -> dict:
        self.results["matmul_gflops_start"] = round(hardware.matmul_gflops(), 2)
        _log(
            f"{self.results['machine']['cpu']} ({self.results['machine']['cpu_kind']}), "
            f"matmul {self.results['matmul_gflops_start']} GFLOP/s, --mixed_precision=auto -> "
            f"{self.results['auto_precision']['policy']}; reference: "
            + (f"torch {self.reference.info['torch']}" if self.reference else "none")
        )
        for section in self.cfg.sections:
            _log(f"section {section}")
            getattr(self, f"section_{section}")()
        self.results["matmul_gflops_end"] = round(hardware.matmul_gflops(), 2)
        self.results["flops_per_image"] = self.flops
        self.results["summary"] = table.summary(self.results)
        self.results["finished"] = _now()
        return self.results


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write(path: str, results: dict) -> None:
    """The JSON file and, beside it, the Markdown tables; each appears whole or not at all."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for target, text in (
        (path, json.dumps(results, indent=2, sort_keys=True) + "\n"),
        (os.path.splitext(path)[0] + ".md", table.markdown(results)),
    ):
        write_text_atomic(target, text)


def main(cfg: BenchConfig) -> dict:
    from benchmarks import reference

    ref = reference.start(
        cfg.reference, cfg.reference_python, cfg.reference_setup, cfg.reference_venv
    )
    try:
        results = Run(cfg, ref).run()
    finally:
        if ref:
            ref.close()
    write(cfg.out, results)
    print(table.markdown(results))
    return results
