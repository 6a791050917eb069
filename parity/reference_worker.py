"""Times the authors' PyTorch PatchVAE, driven by parity/reference.py over stdin/stdout.

Runs in a PyTorch interpreter (torch is no dependency of this project), standalone: it
imports nothing from this repository, only the user's checkout of kampta/PatchVAE, by path.

    python reference_worker.py CHECKOUT [--torchvision_stand_in]

Each stdin line is a JSON request, answered by one JSON line on stdout; anything the
authors' code prints goes to stderr. Requests:

    {"cmd": "info"}
    {"cmd": "train_setup", "key": K, "image_size": S, "batch": B, "num_parts": N,
     "appearance_dim": L, "scale": 8, "base_channels": 64, "seed": 0}
    {"cmd": "train", "key": K, "steps": n, "threads": t} -> {"seconds": t, "loss": x}
    {"cmd": "profile_train", "key": K, "steps": n, "threads": t}
                          -> torch.profiler's op time per op and per phase (as op_profile.py's)
    {"cmd": "encoder_setup", "key": K, ... as train_setup, "batches": [1, 128]}
    {"cmd": "encode", "key": K, "batch": b, "calls": n, "threads": t}
                                                      -> {"seconds": [t, ...]}

"threads" (optional) sets torch's intra-op thread count first.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.machinery
import json
import os
import sys
import time
import types

STAND_IN_FLAG = "--torchvision_stand_in"


def _stand_ins(allow_torchvision_stand_in: bool = False) -> dict:
    """Modules that the checkout's model.py imports (through utils/commons.py) but that no
    timed code calls, put in place only where the real package does not import.

    Their encoder is torchvision's ResNet-18, so torchvision is required: without it the
    worker refuses to start, unless allowed (STAND_IN_FLAG) to use a ResNet-18 built here
    with the same layers in the same order (conv1, bn1, relu, maxpool, layer1..4, avgpool,
    fc), which the checkout slices; info's "modules" then says so.
    """
    used = {}
    try:
        import torchvision  # noqa: F401

        used["torchvision"] = torchvision.__version__
    except Exception as e:  # ImportError, or RuntimeError from a mismatched C extension
        if not allow_torchvision_stand_in:
            raise RuntimeError(
                f"torchvision does not import ({type(e).__name__}: {e}); install it beside "
                f"torch (their encoder is torchvision's ResNet-18), or pass {STAND_IN_FLAG} "
                "to use this project's copy of it"
            ) from None
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _install_torchvision_stand_in()
        used["torchvision"] = f"stand-in ResNet-18 ({type(e).__name__} importing torchvision)"
    for name, attrs in (("sklearn.metrics", ("confusion_matrix",)), ("matplotlib.pyplot", ())):
        try:
            __import__(name)
            used[name.split(".")[0]] = "installed"
        except ImportError:
            parent, _, child = name.partition(".")
            top, sub = types.ModuleType(parent), types.ModuleType(name)
            # Some torch code asks importlib.util.find_spec about optional packages.
            top.__spec__ = importlib.machinery.ModuleSpec(parent, None)
            sub.__spec__ = importlib.machinery.ModuleSpec(name, None)
            for attr in attrs:
                setattr(sub, attr, _unavailable(f"{name}.{attr}"))
            setattr(top, child, sub)
            sys.modules[parent], sys.modules[name] = top, sub
            used[parent] = "absent (not needed for timing)"
    return used


def _unavailable(name):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{name} is not installed in this interpreter")

    return fail


class _Inert:
    """What a stand-in module's names give: building one (as utils/commons.py does with
    transforms.Normalize at import) works; using it raises.
    """

    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        return _Inert(self._name)

    def __getattr__(self, attr):
        raise RuntimeError(f"{self._name} is a stand-in: torchvision is not installed")


class _Placeholders(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Inert(f"{self.__name__}.{attr}")


def _install_torchvision_stand_in() -> None:
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + shortcut)

    class ResNet18(nn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            widths, cin = (64, 128, 256, 512), 64
            for i, cout in enumerate(widths):
                stride = 1 if i == 0 else 2
                setattr(
                    self,
                    f"layer{i + 1}",
                    nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)),
                )
                cin = cout
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

    def resnet18(pretrained=False, **kwargs):
        if pretrained:
            raise RuntimeError("the stand-in ResNet-18 has no pretrained weights")
        return ResNet18(**kwargs)

    root = types.ModuleType("torchvision")
    root.__version__ = "stand-in"
    root.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    for name in ("models", "transforms", "datasets", "utils"):
        module = _Placeholders(f"torchvision.{name}")
        module.__spec__ = importlib.machinery.ModuleSpec(f"torchvision.{name}", None)
        setattr(root, name, module)
        sys.modules[f"torchvision.{name}"] = module
    root.models.resnet18 = resnet18
    sys.modules["torchvision"] = root


class Worker:
    def __init__(self, checkout: str, allow_torchvision_stand_in: bool = False):
        self.checkout = os.path.abspath(checkout)
        self.stand_ins = _stand_ins(allow_torchvision_stand_in)
        sys.path.insert(0, self.checkout)
        import torch

        self.torch = torch
        import loss as ref_loss  # the checkout's loss.py
        import model as ref_model  # the checkout's model.py

        self.ref_model, self.ref_loss = ref_model, ref_loss
        self.cases: dict = {}

    def info(self, request):
        torch = self.torch
        return {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "python": sys.version.split()[0],
            "checkout": self.checkout,
            "modules": self.stand_ins,
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
            "mkldnn": torch.backends.mkldnn.is_available(),
        }

    def _model(self, r):
        """The checkout's PatchyVAE as its run.py builds it for the recipe (pyramid decoder)."""
        self.torch.manual_seed(r.get("seed", 0))
        size = r["image_size"]
        return self.ref_model.PatchyVAE(
            input_size=(3, size, size),
            base_depth=r.get("base_channels", 64),
            hidden_size=r["appearance_dim"],
            num_parts=r["num_parts"],
            encoder_arch="resnet",
            decoder_arch="pyramid",
            scale=r.get("scale", 8),
        )

    def _images(self, r, batch):
        g = self.torch.Generator().manual_seed(r.get("seed", 0))
        size = r["image_size"]
        return self.torch.rand(batch, 3, size, size, generator=g) * 2 - 1

    def train_setup(self, r):
        """run.py's train(): Adam(lr 1e-4, betas 0.5/0.999), BetaVaeConcreteLoss with its
        defaults (beta_a 1, beta_v 10, py 1/N), the model in train mode, temperature 1.
        """
        torch = self.torch
        model = self._model(r)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))
        loss_fn = self.ref_loss.BetaVaeConcreteLoss(
            beta_a=1.0, beta_v=10.0, py=1.0 / r["num_parts"], categorical=False
        )
        x = self._images(r, r["batch"])

        def step(phase=_no_phase):
            with phase("forward"):
                optimizer.zero_grad()
                recon, mu, var, vis = model(x, 1.0)
                loss, _ = loss_fn(
                    recon, x, mu, var, vis, categorical=False, py=1.0 / r["num_parts"]
                )
            with phase("backward"):
                loss.backward()
            with phase("optimizer"):
                optimizer.step()
            return loss.item()  # run.py reads it every step

        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        for _ in range(2):
            step()
        self.cases[r["key"]] = step
        return {"first_call_seconds": first}

    def _threads(self, r):
        if r.get("threads"):
            self.torch.set_num_threads(r["threads"])

    def train(self, r):
        self._threads(r)
        step = self.cases[r["key"]]
        start = time.perf_counter()
        for _ in range(r["steps"]):
            loss = step()
        return {"seconds": time.perf_counter() - start, "loss": loss}

    def profile_train(self, r):
        """torch.profiler over `steps` train steps: self CPU time per op (summed over
        threads) and per phase, in ms per step and share of the summed op time.
        """
        from torch.profiler import ProfilerActivity, profile, record_function

        self._threads(r)
        step, steps = self.cases[r["key"]], r["steps"]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                step(record_function)
            seconds = time.perf_counter() - start
        by_op, by_phase = collections.Counter(), collections.Counter()
        for e in prof.events():
            if e.name in ("forward", "backward", "optimizer"):
                continue
            by_op[e.name] += e.self_cpu_time_total
            # An op's phase is that of the enclosing record_function range, if any.
            parent, phase = e.cpu_parent, "other"
            while parent is not None:
                if parent.name in ("forward", "backward", "optimizer"):
                    phase = parent.name
                parent = parent.cpu_parent
            by_phase[phase] += e.self_cpu_time_total
        total = sum(by_op.values())
        unit = 1e3 * steps  # microseconds -> ms per step

        def table(times, top=12):
            return [
                {"name": n, "ms": round(t / unit, 3), "share": round(t / total, 4)}
                for n, t in times.most_common(top)
            ]

        return {
            "steps": steps,
            "threads": self.torch.get_num_threads(),
            "step_ms": round(seconds / steps * 1e3, 3),
            "ops_ms": round(total / unit, 3),
            "by_phase": table(by_phase),
            "by_op_type": table(by_op),
        }

    def encoder_setup(self, r):
        """The model in eval mode, model.encode (features and the three heads) under
        no_grad, as the checkout's test() runs it.
        """
        torch = self.torch
        model = self._model(r)
        model.eval()
        inputs = {b: self._images(r, b) for b in r["batches"]}

        def encode(batch):
            with torch.no_grad():
                out = model.encode(inputs[batch])
            return [o.numpy() for o in out]

        for b in r["batches"]:
            encode(b)
            encode(b)
        self.cases[r["key"]] = encode
        return {}

    def encode(self, r):
        self._threads(r)
        encode, out = self.cases[r["key"]], []
        for _ in range(r["calls"]):
            start = time.perf_counter()
            encode(r["batch"])
            out.append(time.perf_counter() - start)
        return {"seconds": out}


def _no_phase(name):
    return contextlib.nullcontext()


def main(argv, worker_class=Worker) -> int:
    if len(argv) not in (2, 3) or argv[2:] not in ([], [STAND_IN_FLAG]):
        print(__doc__, file=sys.stderr)
        return 2
    protocol = sys.stdout
    sys.stdout = sys.stderr  # the checkout prints; only answers go to the protocol stream
    try:
        worker = worker_class(argv[1], allow_torchvision_stand_in=len(argv) == 3)
    except Exception as e:
        protocol.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        protocol.flush()
        return 1
    protocol.write(json.dumps({"ready": True}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = getattr(worker, request["cmd"])(request)
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
