"""The authors' PyTorch code as a timed peer: its interpreter, and the worker process that
runs reference_worker.py in it, one request at a time between our own timing windows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

from patchvae_tf.errors import UserError

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_worker.py")
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "patchvae-tf", "torch-venv")
# What the worker needs (their encoder is torchvision's ResNet-18); scikit-learn and
# matplotlib are optional (see reference_worker._stand_ins). pip picks the builds for this
# machine.
PACKAGES = ("torch", "torchvision", "numpy")


def check_checkout(path: str) -> str:
    """The checkout's directory, if it holds the authors' model.py and loss.py."""
    path = os.path.abspath(os.path.expanduser(path))
    missing = [
        f
        for f in ("model.py", "loss.py", "utils/commons.py")
        if not os.path.isfile(os.path.join(path, f))
    ]
    if missing:
        raise UserError(
            f"--reference={path!r} is not a checkout of kampta/PatchVAE: no {', '.join(missing)}"
        )
    return path


def _has_torch(python: str, torchvision: bool = False) -> bool:
    probe = "import torch" + (", torchvision" if torchvision else "")
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def interpreter(python: str | None, setup: bool, venv_dir: str | None = None) -> str:
    """The PyTorch interpreter: the one named, or with setup a virtual environment that this
    creates once (venv_dir, default ~/.cache/patchvae-tf/torch-venv) and installs torch into.
    """
    if python:
        python = os.path.expanduser(python)
        if not os.path.isfile(python):
            raise UserError(f"--reference_python={python!r} does not exist")
        if not _has_torch(python):
            raise UserError(f"--reference_python={python!r} cannot import torch")
        return python
    if not setup:
        raise UserError(
            "--reference needs a Python with PyTorch: --reference_python=PATH, or "
            "--reference_setup to create one"
        )
    venv_dir = venv_dir or DEFAULT_VENV
    python = os.path.join(venv_dir, "bin", "python")
    if os.path.isfile(python) and _has_torch(python, torchvision=True):
        return python
    print(f"creating {venv_dir} and installing {' '.join(PACKAGES)} (once)", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", *PACKAGES])
    if install.returncode or not _has_torch(python, torchvision=True):
        raise UserError(
            f"could not install {' '.join(PACKAGES)} into {venv_dir}; "
            "install PyTorch yourself and pass --reference_python=PATH"
        )
    return python


class Reference:
    """The worker process: request() sends one JSON request and returns its answer."""

    def __init__(self, python: str, checkout: str, worker: str = WORKER, stand_in: bool = False):
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        flags = ["--torchvision_stand_in"] if stand_in else []
        self.proc = subprocess.Popen(
            [python, worker, checkout, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        first = self._read()
        if "error" in first:
            self.close()
            raise UserError(f"the reference checkout {checkout!r} did not load: {first['error']}")
        self.info = self.request({"cmd": "info"})

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference worker exited ({self.proc.wait()})")
        return json.loads(line)

    def request(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"reference worker, {request['cmd']}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start(
    checkout: str | None,
    python: str | None,
    setup: bool,
    venv_dir: str | None,
    worker: str = WORKER,
    stand_in: bool = False,
):
    """A running Reference for the benchmark's flags, or None without --reference; worker:
    the script it runs (reference_worker.py, or worker.py for python -m parity);
    stand_in: allow this project's ResNet-18 where torchvision does not import.
    """
    if not checkout:
        return None
    checkout = check_checkout(checkout)
    return Reference(interpreter(python, setup, venv_dir), checkout, worker, stand_in)


if __name__ == "__main__":  # python -m parity.reference CHECKOUT PYTHON: a smoke check
    ref = Reference(sys.argv[2], check_checkout(sys.argv[1]))
    print(ref.info)
    ref.close()
