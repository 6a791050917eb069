"""A lower bound on a training run's memory, checked against the machine's before building."""

from __future__ import annotations

import math
import os

from patchvae_tf.errors import UserError

_FLOAT = 4  # bytes; mixed precision halves some activations, never the variables
_RESNET_WIDTHS = {4: 64, 8: 128, 16: 256, 32: 512}  # channels at 1/scale (networks.ResNetEncoder)


def machine_bytes() -> int:
    """Physical memory, or the cgroup's limit when it is lower (a container's)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def estimate(model_cfg, batch_size: int) -> dict[str, int]:
    """Bytes a training step needs at least, by what holds them.

    A lower bound: only tensors the model cannot do without are counted (the heads' and
    the decoder's first weights with their gradients and Adam's two moments; per image the
    input, the reconstruction, the first encoder feature map and the bottleneck's maps,
    each kept for the backward pass), so a run refused by it could not have fitted.
    """
    m = model_cfg
    s, n, l_ = m.image_size, m.num_parts, m.appearance_dim
    grid = max(s // m.scale, 1)
    depth = max(int(math.log2(m.scale)), 1)
    if m.encoder == "resnet":
        width, first = _RESNET_WIDTHS.get(m.scale, 512), 64
    else:
        width, first = m.base_channels * 2 ** (depth - 1), m.base_channels
    if m.arch == "patchvae":
        # mean and log-variance heads (N L each) and the occurrence head (N), 3 x 3; the
        # decoder's 1 x 1 transposed convolution from N L channels.
        params = 9 * width * (2 * n * l_ + n) + n * l_ * width
        bottleneck = grid * grid * (4 * n * l_ + 3 * n)
    else:
        # the grid x grid convolutions to the code's mean and log-variance, and back.
        params = grid * grid * width * 3 * n * l_
        bottleneck = 4 * n * l_
    per_image = 2 * s * s * 3 + (s // 2) ** 2 * first + bottleneck
    return {
        "variables": params * _FLOAT * 4,  # weights, gradients, Adam's m and v
        "activations": batch_size * per_image * _FLOAT * 2,  # forward values and gradients
    }


def check(cfg, workers: int = 1) -> None:
    """Raises UserError (one line) when the estimate for this host's share of the batch is
    over the machine's memory, unless --nomemory_check.
    """
    if not cfg.train.memory_check:
        return
    per_host = -(-cfg.train.batch_size // max(workers, 1))
    parts = estimate(cfg.model, per_host)
    need, have = sum(parts.values()), machine_bytes()
    if need <= have:
        return
    m = cfg.model
    raise UserError(
        f"this run needs at least {need / 2**30:.1f} GiB ({parts['variables'] / 2**30:.1f} GiB "
        f"of variables, {parts['activations'] / 2**30:.1f} GiB of activations at batch "
        f"{per_host}, --image_size={m.image_size}, --num_parts={m.num_parts}, "
        f"--appearance_dim={m.appearance_dim}) and this machine has {have / 2**30:.1f} GiB; "
        "make it smaller, or pass --nomemory_check to try anyway"
    )
