"""Runs the authors' PyTorch model on given weights, batch and noise, for parity/harness.py.

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
            encoder_arch=v.get("encoder", "resnet"),
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
        """torch.rand (the relaxed occurrence samplers' uniforms, inside torch's rsample) and
        torch.randn_like (the appearance epsilons of model.reparameterize) return the given
        arrays: their production samplers turn our seeded draws into samples.
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
            return self.ref_loss.BetaVaeLoss(beta=v.get("beta_a", 1.0))
        return self.ref_loss.BetaVaeConcreteLoss(
            beta_a=v.get("beta_a", 1.0),
            beta_v=v.get("beta_v", 10.0),
            py=1.0 / v["num_parts"],
            categorical=v["categorical"],
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

    def _prepared(self, model, inputs: str, double: bool, perturb: bool = False):
        """(model, arrays): the model with the run's weights, in train mode, and the run's
        arrays; with double both in float64. perturb: every weight and statistic moved by
        one unit in the last place of the run's dtype (away from zero), to measure how far
        rounding alone carries a run.
        """
        import numpy as np

        data = dict(np.load(inputs))
        weights = {k[2:]: a for k, a in data.items() if k.startswith("w/")}
        if double:
            weights = {k: a.astype(np.float64) for k, a in weights.items()}
        if perturb:
            weights = {k: np.nextafter(a, np.copysign(np.inf, a)) for k, a in weights.items()}
        if double:
            model.double()
        self._load(model, weights)
        model.train()
        return model, data

    def _styled(self, model, v):
        """The variant's BatchNorm constants (PyTorch's momentum is 1 - Keras's)."""
        for m in model.modules():
            if type(m).__name__ == "BatchNorm2d":
                m.momentum = v.get("bn_momentum", 0.1)
                m.eps = v.get("bn_eps", 1e-5)

    def start(self, r):
        """A training run of run.py's train() from the given weights: Adam(lr, betas), the
        loss, the temperature schedule of run.py (tau_init, then after each step t with
        t % 1000 == 1, tau = max(tau exp(-anneal t), min_temp)).
        """
        torch, v = self.torch, r["variant"]
        model = self._build(v)
        self._styled(model, v)
        model, data = self._prepared(model, r["inputs"], r["double"], r.get("perturb", False))
        optimizer = torch.optim.Adam(
            model.parameters(), lr=r["lr"], betas=tuple(r["betas"]), eps=r["adam_eps"][0]
        )
        self.cases[r["key"]] = {
            "model": model,
            "optimizer": optimizer,
            "loss": self._loss_fn(v),
            # float32 runs' arrays in float64 for the double model (their rounding reference).
            "x": torch.from_numpy(data["x"]).to(next(model.parameters()).dtype),
            "seen": self._capture(model, v),
            "variant": v,
            "eps": r["adam_eps"],
            "temp": r["tau"]["init"],
            "tau": r["tau"],
            "steps": 0,
            # False: PyTorch's own CPU kernels instead of oneDNN's (another op order).
            "mkldnn": r.get("mkldnn", True),
        }
        return {}

    def step(self, r):
        """One step of the run; writes the forward pass, the loss terms, the gradients and
        then the parameters, Adam's moments and the BatchNorm statistics after the step.
        """
        import numpy as np

        c = self.cases[r["key"]]
        model, optimizer = c["model"], c["optimizer"]
        noise = self._noise(r["noise"], c["x"].dtype)
        optimizer.param_groups[0]["eps"] = c["eps"][c["steps"]]
        optimizer.zero_grad()
        tau = c["temp"]
        with self.torch.backends.mkldnn.flags(enabled=c["mkldnn"]):
            with self._replay(noise.get("uniform"), noise["normal"]):
                recon, mu, var, vis = model(c["x"], tau)
            loss, parts = c["loss"](recon, c["x"], mu, var, vis)
            loss.backward()
        out = {f"fwd/{k}": a for k, a in c["seen"].items()}
        out |= self._outputs(recon, mu, var, vis, c["variant"])
        out |= {f"grad/{k}": p.grad.numpy().copy() for k, p in model.named_parameters()}
        optimizer.step()
        out |= self._state(model, "state")
        for k, p in model.named_parameters():
            state = optimizer.state[p]
            out[f"adam_m/{k}"] = state["exp_avg"].numpy().copy()
            out[f"adam_v/{k}"] = state["exp_avg_sq"].numpy().copy()
        np.savez(r["out"], **out)
        # run.py's schedule, after the step.
        c["steps"] += 1
        if c["steps"] % 1000 == 1:
            t = c["tau"]
            c["temp"] = max(c["temp"] * np.exp(-t["anneal"] * c["steps"]), t["min"])
        terms = {"loss": loss.item(), **{k: t.item() for k, t in parts.items()}}
        return {"terms": terms, "tau": tau}

    def _noise(self, path, dtype):
        """The step's draws, in the model's dtype (float64 draws for the float64 run of a
        float32 comparison are the float32 ones, widened).
        """
        import numpy as np

        wide = dtype == self.torch.float64
        return {k: a.astype(np.float64) if wide else a for k, a in np.load(path).items()}

    def _outputs(self, recon, mu, var, vis, v):
        out = {
            "fwd/x_hat": recon.detach().numpy(),
            "fwd/mu_app": mu.detach().numpy().reshape(mu.shape[0], -1),
            "fwd/var_app": var.detach().numpy().reshape(var.shape[0], -1),
        }
        if v["arch"] != "vae":  # their VAE returns zeros there
            out["fwd/q_occ"] = vis.detach().numpy()
        return out

    def infer(self, r):
        """The model in eval mode (BatchNorm's running statistics), the same forward pass
        on the run's batch with the given noise; the model is put back in train mode.
        """
        import numpy as np

        c = self.cases[r["key"]]
        model = c["model"]
        noise = self._noise(r["noise"], c["x"].dtype)
        model.eval()
        try:
            with (
                self.torch.no_grad(),
                self.torch.backends.mkldnn.flags(enabled=c["mkldnn"]),
                self._replay(noise.get("uniform"), noise["normal"]),
            ):
                recon, mu, var, vis = model(c["x"], c["temp"])
        finally:
            model.train()
        out = {f"fwd/{k}": a for k, a in c["seen"].items()}
        out |= self._outputs(recon, mu, var, vis, c["variant"])
        np.savez(r["out"], **out)
        return {"tau": c["temp"]}

    def drop(self, r):
        self.cases.pop(r["key"], None)
        return {}

    # --- classifier.py -------------------------------------------------------------

    def _classifier(self, c):
        from utils import commons  # the checkout's, with its stand-ins loaded

        self.torch.manual_seed(0)
        size = c["image_size"]
        model = {
            "device": "cpu",
            "encoder_arch": "resnet",
            "decoder_arch": "pyramid",
            "hidden_size": c["appearance_dim"],
            "num_parts": c["num_parts"],
            "base_depth": c["base_channels"],
            "scale": c["scale"],
        }
        if c.get("head") == "pool":
            # Their --arch=resnet18 classifier: the encoder's features averaged over the grid
            # (an AdaptiveAvgPool2d appended to features), then the same SimpleClassifier.
            vae, _ = commons.load_vae_model((3, size, size), "patchy", **model)
            vae.features.add_module("avgpool", self.torch.nn.AdaptiveAvgPool2d(1))
            channels = 16 * c["scale"]
            clf = commons.SimpleClassifier(vae.features, channels, c["num_classes"])
            clf.classifier.apply(commons.init_weights)
            return clf
        return commons.load_cls_model(
            "patchy",
            num_classes=c["num_classes"],
            pretrained=None,
            freeze=c["freeze"],
            input_size=(3, size, size),
            **model,
        )

    def classifier_layout(self, r):
        model = self._classifier(r["classifier"])
        return {"modules": self._layout(model)}

    def classifier_step(self, r):
        """classifier.py's train(): CrossEntropyLoss, SGD(lr, momentum, weight_decay) over
        every parameter (the frozen ones have requires_grad False), one step, in train mode
        with dropout replaced by the given mask; in float64 with double.
        """
        import numpy as np

        out, loss = self._classifier_step(r, double=r["double"])
        np.savez(r["out"], **out)
        return {"loss": loss}

    def _classifier_step(self, r, double):
        import numpy as np

        torch, c = self.torch, r["classifier"]
        model, data = self._prepared(self._classifier(c), r["inputs"], double)
        if double:
            data = {
                k: a.astype(np.float64) if a.dtype == np.float32 else a for k, a in data.items()
            }
        # nn.Dropout draws its mask inside the kernel; the given mask (0 or 1 / (1 - p))
        # replaces it, so both sides drop the same units.
        mask = torch.from_numpy(data["dropout_mask"])
        model.classifier[0].forward = lambda h: h * mask
        criterion = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(
            model.parameters(), r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"]
        )
        features = {}
        # The encoder's map: before the pooled head's AdaptiveAvgPool2d.
        children = list(model.features.children())
        pooled = type(children[-1]).__name__ == "AdaptiveAvgPool2d"
        (children[-2] if pooled else model.features).register_forward_hook(
            lambda m, i, o: features.__setitem__("f", o.detach().numpy().copy())
        )
        x = torch.from_numpy(data["x"])
        logits = model(x)
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
        out |= self._state(model, "state")
        # Inference: running statistics, no dropout.
        model.eval()
        model.classifier[0].forward = lambda h: h
        with torch.no_grad():
            out["infer/logits"] = model(x).numpy()
        return out, loss.item()


if __name__ == "__main__":
    sys.exit(reference_worker.main(sys.argv, ParityWorker))
