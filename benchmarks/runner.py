"""Runs the benchmark sections and writes one JSON file (and a Markdown table beside it)."""

from __future__ import annotations

import datetime
import json
import os
import time

from benchmarks import hardware, table
from benchmarks.progress import log
from benchmarks.recipes import FULL, QUICK, TARGETS, recipe_config
from benchmarks.reference_windows import Windows
from patchvae_tf.config import BenchConfig
from patchvae_tf.training import precision
from patchvae_tf.workdir import write_text_atomic


class Run:
    """One benchmark run: its flags, sizes, the reference's windows (peer, None without
    --reference), the FLOPs counted so far and the results; each section_NAME method fills in
    its part of the results.
    """

    def __init__(self, cfg: BenchConfig, reference=None):
        self.cfg = cfg
        self.sizes = QUICK if cfg.quick else FULL
        self.reference = reference
        self.peer = Windows(reference, cfg.seed) if reference else None
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

    def flops_of(self, image_size: int) -> dict:
        key = f"patchvae_{image_size}px"
        if key not in self.flops:
            from benchmarks import flops
            from patchvae_tf.model import models

            model = models.build_model(recipe_config(image_size, 2, "float32", 0).model)
            self.flops[key] = flops.count(model)
        return self.flops[key]

    # The section modules import TensorFlow and the exporters: only when their section runs.

    def section_flops(self) -> None:
        for _, size, _ in self.sizes.recipes:
            self.flops_of(size)

    def section_train(self) -> None:
        from benchmarks import train_bench

        self.results |= train_bench.section(self)

    def section_encoder(self) -> None:
        from benchmarks import encoder_bench

        self.results |= encoder_bench.section(self)

    def section_memory(self) -> None:
        from benchmarks import memory

        self.results |= memory.section(self)

    def section_precision(self) -> None:
        from benchmarks import precision_loss

        self.results["precision"] = precision_loss.run(
            quick=self.cfg.quick,
            steps=self.cfg.precision_steps,
            seeds=self.cfg.precision_seeds,
            native=self.results["auto_precision"]["policy"] == "mixed_bfloat16",
            log=log,
        )

    def section_profile(self) -> None:
        from benchmarks import op_profile

        self.results |= op_profile.section(self)

    def run(self) -> dict:
        self.results["matmul_gflops_start"] = round(hardware.matmul_gflops(), 2)
        log(
            f"{self.results['machine']['cpu']} ({self.results['machine']['cpu_kind']}), "
            f"matmul {self.results['matmul_gflops_start']} GFLOP/s, --mixed_precision=auto -> "
            f"{self.results['auto_precision']['policy']}; reference: "
            + (f"torch {self.reference.info['torch']}" if self.reference else "none")
        )
        sections = self.cfg.sections
        log(f"plan: {len(sections)} sections, {', '.join(sections)}, each timed as it ends")
        start = time.perf_counter()
        for i, section in enumerate(sections):
            log(f"section {section} ({i + 1} of {len(sections)})")
            began = time.perf_counter()
            getattr(self, f"section_{section}")()
            log(
                f"section {section} took {time.perf_counter() - began:.0f} s; "
                f"{time.perf_counter() - start:.0f} s so far, {len(sections) - i - 1} to go"
            )
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
    from parity import reference

    # Timing needs only the same layers: where torchvision does not import, the worker's own
    # ResNet-18 stands in (reported in the results' reference modules). Parity refuses it.
    ref = reference.start(
        cfg.reference,
        cfg.reference_python,
        cfg.reference_setup,
        cfg.reference_venv,
        stand_in=True,
    )
    try:
        results = Run(cfg, ref).run()
    finally:
        if ref:
            ref.close()
    write(cfg.out, results)
    print(table.markdown(results))
    return results
