"""Peak memory of one request per decompression bomb, through serving and through load().encode:

    python -m benchmarks.image_bombs --export_dir=E --out=benchmarks/results/image_bombs.json

E is an export (python -m export). Each bomb is a small PNG whose header promises a huge
image (zlib-compressed zero rows, so it is a real image that decodes). Each (bomb, target)
runs in a fresh process that loads the model, sends one valid image, then the bomb; the
figure is that process's whole peak resident memory (ru_maxrss), beside its peak before the
bomb. A process is stopped past --cap_gb of data memory or --timeout seconds (reported as
such): without the limits, the largest bombs take the host down.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib

# name -> (width, height, PNG colour type (0 grey, 2 RGB), copies in the one request)
BOMBS = {
    "png_10000x10000_rgb": (10_000, 10_000, 2, 1),
    "png_20000x20000_grey": (20_000, 20_000, 0, 1),
    "png_100000x1_rgb": (100_000, 1, 2, 1),
    "png_100000x1_rgb_x8": (100_000, 1, 2, 8),
    # Not bombs: images at the default pixel limit, which are decoded (what the limit costs).
    "png_4096x4096_rgb_at_limit": (4096, 4096, 2, 1),
    "png_4096x4096_rgb_at_limit_x4": (4096, 4096, 2, 4),
}
TARGETS = ("serving", "encode")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_png(path: str, width: int, height: int, colour: int) -> int:
    """A PNG of zeros, width x height, 8 bits (colour 0 grey, 2 RGB); returns its size."""
    channels = {0: 1, 2: 3}[colour]
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + width * channels)  # filter byte 0, then the pixels
    parts = [packer.compress(row) for _ in range(height)]
    idat = b"".join(parts) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def _peak_mb() -> float:
    """The peak resident memory of this process alone, in MB.

    VmHWM belongs to the process's address space, which exec replaces; ru_maxrss keeps the
    parent's high-water mark across exec, so a worker started by a large process (pytest
    after a whole suite) would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(target: str, export_dir: str, paths: list[str], valid: str, version: str = "") -> dict:
    """In the fresh process: load (the newest version, or the one named), one valid image,
    then the bomb request.
    """
    version_dir = os.path.join(export_dir, "saved_model", version or _version(export_dir))
    import numpy as np
    import tensorflow as tf

    import patchvae_tf

    if target == "serving":
        loaded = tf.saved_model.load(version_dir)
        serve = loaded.signatures["serve_image_bytes"]

        def call(files):
            blobs = [open(p, "rb").read() for p in files]
            return serve(image_bytes=tf.constant(blobs))
    else:
        model = patchvae_tf.load(version_dir)

        def call(files):
            return model.encode(files)

    call([valid])
    before = _peak_mb()
    started = time.perf_counter()
    try:
        out = call(paths)
        result = "encoded: " + ", ".join(
            f"{k} {list(np.shape(v))}" for k, v in sorted(dict(out).items())
        )
    except Exception as e:  # what the request gives back is the measurement
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # TF's InvalidArgument opens with "Graph execution error:"; the refusal is further on.
        said = [line for line in lines if "limit" in line or "must" in line or "OOM" in line]
        result = f"refused: {type(e).__name__}: " + ((said or lines or [""])[0])[:300]
    return {
        "peak_before_mb": round(before, 1),
        "peak_mb": round(_peak_mb(), 1),
        "seconds": round(time.perf_counter() - started, 2),
        "result": result,
    }


def _version(export_dir: str) -> str:
    with open(os.path.join(export_dir, "export_report.json")) as f:
        return str(json.load(f)["version"])


def _limit(cap_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (cap_bytes, cap_bytes))

    return apply


def run(export_dir: str, cap_gb: float, timeout: float, bombs=None) -> dict:
    """{bomb: {"file_bytes", "pixels", target: {peak_mb, peak_before_mb, result, ...}}}."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        valid = os.path.join(tmp, "valid.png")
        write_png(valid, 48, 40, 2)
        for name in bombs or BOMBS:
            width, height, colour, copies = BOMBS[name]
            path = os.path.join(tmp, f"{name}.png")
            size = write_png(path, width, height, colour)
            entry = {"file_bytes": size, "width": width, "height": height, "copies": copies}
            for target in TARGETS:
                cmd = [
                    sys.executable, "-m", "benchmarks.image_bombs", "--worker", target,
                    f"--export_dir={export_dir}", f"--valid={valid}", *[path] * copies,
                ]  # fmt: skip
                started = time.perf_counter()
                try:
                    proc = subprocess.run(
                        cmd,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        preexec_fn=_limit(int(cap_gb * 2**30)),
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                    )
                    lines = proc.stdout.strip().splitlines()
                    if proc.returncode == 0 and lines:
                        entry[target] = json.loads(lines[-1])
                    else:
                        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
                        entry[target] = {
                            "result": f"process died (exit {proc.returncode}) at the "
                            f"{cap_gb:g} GB data limit or before: {tail}",
                            "peak_mb": f"> {cap_gb * 1024:.0f} (stopped)",
                        }
                except subprocess.TimeoutExpired:
                    entry[target] = {
                        "result": f"still running after {timeout:g} s (stopped)",
                        "peak_mb": "unknown (stopped)",
                    }
                entry[target]["wall_seconds"] = round(time.perf_counter() - started, 1)
                print(f"{name} {target}: {entry[target]}", flush=True)
            results[name] = entry
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", required=True)
    parser.add_argument("--out", default="benchmarks/results/image_bombs.json")
    parser.add_argument("--cap_gb", type=float, default=6.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--bombs", default=",".join(BOMBS))
    parser.add_argument("--worker", choices=TARGETS)
    parser.add_argument("--valid", default="")
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.export_dir, args.paths, args.valid)))
        return 0
    from benchmarks.hardware import machine

    results = {
        "host": machine(),
        "cap_gb": args.cap_gb,
        "bombs": run(args.export_dir, args.cap_gb, args.timeout, args.bombs.split(",")),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
