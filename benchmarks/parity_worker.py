"""Runs the authors' PyTorch model on given weights, batch and noise, for benchmarks/parity.py.

Standalone in a PyTorch interpreter, as reference_worker.py (whose checkout loading and
stand-in modules it reuses): it imports nothing from this repository's package. Arrays travel
in .npz files whose paths the JSON requests name. Requests, one JSON line each:

    {"cmd": "info"}
    {"cmd": "layout", "variant": V}  -> the model's weight-bearing modules in order:
        [{"name": "features.0", "type": "Conv2d", "tensors": {"weight": [64, 3, 7, 7]}}, ...]
    {"cmd": "run", "variant": V, "inputs": PATH, "out": PATH, "steps": n, "lr": a,
     "adam_eps": [e_1, ..., e_n], "plain_eps": e}
    {"cmd": "classifier_layout", "classifier": C}
    {"cmd": "classifier_step", "classifier": C, "inputs": PATH, "out": PATH}

V: {"arch": "patchy" | "vae", "image_size", "num_parts", "appearance_dim", "scale",
"base_channels", "categorical", "hard"}. C: V's model fields plus "num_classes" and "freeze".
"""

from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_worker  # noqa: E402  (beside this file; loads the checkout)

_LEAVES = ("Conv2d", "ConvTranspose2d", "BatchNorm2d", "Linear")


class ParityWorker(reference_worker.Worker):
    def _build(self, v):
        torch = self.torch
        torch.manual_seed(0)  # the weights are replaced; this only makes the build repeatable
        size = v["image_size"]
        kwargs = dict(
            input_size=(3, size, size),
            base_depth=v["base_channels"],
            hidden_size=v["appearance_dim"],
            num_parts=v["num_parts"],
            encoder_arch="resnet",
            decoder_arch="pyramid",
            scale=v["scale"],
        )
        if v["arch"] == "vae":
            return self.ref_model.VAE(**kwargs)
        return self.ref_model.PatchyVAE(hard=v["hard"], categorical=v["categorical"], **kwargs)

    def _leaves(self, model):
        return [(name, m) for name, m in model.named_modules() if type(m).__name__ in _LEAVES]

    def _layout(self, model):
        out = []
        for name, m in self._leaves(model):
            tensors = {k: list(t.shape) for k, t in m.named_parameters(recurse=False)}
            tensors |= {
                k: list(t.shape)
                for k, t in m.named_buffers(recurse=False)
                if k != "num_batches_tracked"
            }
            out.append({"name": name, "type": type(m).__name__, "tensors": tensors})
        return out

    def layout(self, r):
        return {"modules": self._layout(self._build(r["variant"]))}

    def _load(self, model, arrays):
        """Every parameter and running statistic from arrays ("module.tensor" -> array); each
        one must be given, with its shape, and nothing else.
        """
        torch = self.torch
        state = {
            k: t for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked")
        }
        missing = sorted(set(state) - set(arrays))
        unknown = sorted(set(arrays) - set(state))
        if missing or unknown:
            raise ValueError(
                f"weights do not match the model: missing {missing}, unknown {unknown}"
            )
        with torch.no_grad():
            for k, t in state.items():
                value = torch.from_numpy(arrays[k])
                if tuple(value.shape) != tuple(t.shape):
                    raise ValueError(
                        f"{k}: shape {tuple(value.shape)}, the model's {tuple(t.shape)}"
                    )
                t.copy_(value)

    @contextlib.contextmanager
    def _replay(self, uniform, normal):
        """torch.rand (the relaxed occurrence samplers' uniforms) and torch.randn_like (the
        appearance epsilons of model.reparameterize) return the given arrays.
        """
        torch = self.torch
        rand, randn_like = torch.rand, torch.randn_like

        def fixed(values, shape, name):
            if values is None or tuple(values.shape) != tuple(shape):
                got = None if values is None else tuple(values.shape)
                raise ValueError(f"{name} asked for shape {tuple(shape)}; given {got}")
            return torch.from_numpy(values)

        def rand_(*size, **kwargs):
            shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
            return fixed(uniform, shape, "torch.rand")

        torch.rand = rand_
        torch.randn_like = lambda t, **kwargs: fixed(normal, t.shape, "torch.randn_like")
        try:
            yield
        finally:
            torch.rand, torch.randn_like = rand, randn_like

    def _loss_fn(self, v):
        if v["arch"] == "vae":
            return self.ref_loss.BetaVaeLoss(beta=1.0)
        return self.ref_loss.BetaVaeConcreteLoss(
            beta_a=1.0, beta_v=10.0, py=1.0 / v["num_parts"], categorical=v["categorical"]
        )

    def _capture(self, model, v):
        """Forward hooks recording the encoder's output and each head's, by name."""
        seen = {}
        names = ["features", "app_mu", "app_logvar"]
        names += ["reduce"] if v["arch"] == "vae" else ["vis_mean_logit"]
        for name in names:
            module = getattr(model, name)
            module.register_forward_hook(
                lambda m, i, o, name=name: seen.__setitem__(name, o.detach().numpy().copy())
            )
        return seen

    def _state(self, model, prefix):
        return {
            f"{prefix}/{k}": t.detach().numpy().copy()
            for k, t in model.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }

    def _prepared(self, model, inputs: str, double: bool):
        """(model, arrays): the model with the run's weights, in train mode, and the run's
        arrays; with double both in float64.
        """
        import numpy as np

        data = dict(np.load(inputs))
        self._load(model, {k[2:]: a for k, a in data.items() if k.startswith("w/")})
        model.train()
        if double:
            model.double()
            data = {
                k: a.astype(np.float64) if a.dtype == np.float32 else a for k, a in data.items()
            }
        return model, data

    def _train(self, r, eps_schedule, record, double=False):
        """Runs run.py's train() step r["steps"] times from the given weights; record: also
        keep the first step's forward tensors, loss terms and gradients. double: the same in
        float64 (weights, batch and noise converted), the float32 runs' rounding floor.
        """
        torch, v = self.torch, r["variant"]
        model, data = self._prepared(self._build(v), r["inputs"], double)
        loss_fn = self._loss_fn(v)
        optimizer = torch.optim.Adam(model.parameters(), lr=r["lr"], betas=(0.5, 0.999))
        seen = self._capture(model, v) if record else {}
        x = torch.from_numpy(data["x"])
        out, terms = {}, {}
        for step in range(r["steps"]):
            optimizer.param_groups[0]["eps"] = eps_schedule[step]
            optimizer.zero_grad()
            uniform = data.get(f"uniform/{step}")
            with self._replay(uniform, data[f"normal/{step}"]):
                recon, mu, var, vis = model(x, float(data["tau"][step]))
            loss, parts = loss_fn(recon, x, mu, var, vis)
            loss.backward()
            if record and step == 0:
                out |= {f"fwd/{k}": a for k, a in seen.items()}
                out |= {
                    "fwd/x_hat": recon.detach().numpy(),
                    "fwd/mu_app": mu.detach().numpy(),
                    "fwd/var_app": var.detach().numpy(),
                    "fwd/q_occ": vis.detach().numpy(),
                }
                terms = {"loss": loss.item(), **{k: t.item() for k, t in parts.items()}}
                out |= {f"grad/{k}": p.grad.numpy().copy() for k, p in model.named_parameters()}
            if record and step == r["steps"] - 1:
                out |= {
                    f"grad{step + 1}/{k}": p.grad.numpy().copy()
                    for k, p in model.named_parameters()
                }
                out |= {
                    f"fwd{step + 1}/x_hat": recon.detach().numpy(),
                    f"fwd{step + 1}/mu_app": mu.detach().numpy(),
                    f"fwd{step + 1}/var_app": var.detach().numpy(),
                    f"fwd{step + 1}/q_occ": vis.detach().numpy(),
                }
            optimizer.step()
            if record and step == 0:
                out |= self._state(model, "step1")
        out |= self._state(model, f"step{r['steps']}")
        return out, terms

    def run(self, r):
        import numpy as np

        out, terms = self._train(r, r["adam_eps"], record=True)
        # Their own Adam epsilon, for the size of the epsilon difference on its own.
        plain, _ = self._train(r, [r["plain_eps"]] * r["steps"], record=False)
        out |= {f"plain_eps/{k}": a for k, a in plain.items()}
        answer = {"terms": terms}
        if r.get("float64"):
            exact, answer["terms64"] = self._train(r, r["adam_eps"], record=True, double=True)
            out |= {f"float64/{k}": a for k, a in exact.items()}
        np.savez(r["out"], **out)
        return answer

    # --- classifier.py -------------------------------------------------------------

    def _classifier(self, c):
        from utils import commons  # the checkout's, with its stand-ins loaded

        self.torch.manual_seed(0)
        size = c["image_size"]
        return commons.load_cls_model(
            "patchy",
            num_classes=c["num_classes"],
            pretrained=None,
            freeze=c["freeze"],
            input_size=(3, size, size),
            encoder_arch="resnet",
            decoder_arch="pyramid",
            hidden_size=c["appearance_dim"],
            num_parts=c["num_parts"],
            base_depth=c["base_channels"],
            scale=c["scale"],
            device="cpu",
        )

    def classifier_layout(self, r):
        model = self._classifier(r["classifier"])
        return {"modules": self._layout(model)}

    def classifier_step(self, r):
        """classifier.py's train(): CrossEntropyLoss, SGD(lr, momentum, weight_decay) over
        every parameter (the frozen ones have requires_grad False), one step, in train mode
        with dropout replaced by the given mask; again in float64, the rounding floor.
        """
        import numpy as np

        out, loss = self._classifier_step(r, double=False)
        exact, loss64 = self._classifier_step(r, double=True)
        out |= {f"float64/{k}": a for k, a in exact.items()}
        np.savez(r["out"], **out)
        return {"loss": loss, "loss64": loss64}

    def _classifier_step(self, r, double):

        torch, c = self.torch, r["classifier"]
        model, data = self._prepared(self._classifier(c), r["inputs"], double)
        # nn.Dropout draws its mask inside the kernel; the given mask (0 or 1 / (1 - p))
        # replaces it, so both sides drop the same units.
        mask = torch.from_numpy(data["dropout_mask"])
        model.classifier[0].forward = lambda h: h * mask
        criterion = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(
            model.parameters(), r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"]
        )
        features = {}
        model.features.register_forward_hook(
            lambda m, i, o: features.__setitem__("f", o.detach().numpy().copy())
        )
        logits = model(torch.from_numpy(data["x"]))
        loss = criterion(logits, torch.from_numpy(data["labels"]).long())
        optimizer.zero_grad()
        loss.backward()
        out = {"fwd/features": features["f"], "fwd/logits": logits.detach().numpy()}
        out |= {
            f"grad/{k}": p.grad.numpy().copy()
            for k, p in model.named_parameters()
            if p.grad is not None
        }
        optimizer.step()
        out |= self._state(model, "step1")
        return out, loss.item()


if __name__ == "__main__":
    sys.exit(reference_worker.main(sys.argv, ParityWorker))
