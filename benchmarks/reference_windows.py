"""The reference's timing windows: the requests each section interleaves with its own."""

from __future__ import annotations

import statistics


class Windows:
    """Asks a running reference.Reference to set up the recipe's model once per key, then
    builds window callables for paired.interleave.

    The reference runs at its default thread count and at one thread, and each window
    keeps the faster: on a loaded host PyTorch's OpenMP threads wait for each other at
    every op, and the reference should be compared at its best. Each window appends both
    figures to the list it is given (the results' reference_by_threads).
    """

    def __init__(self, reference, seed: int):
        self.reference = reference
        self.seed = seed
        self._keys: set = set()

    def setup(self, cmd: str, key: str, size: int, **extra) -> None:
        if key not in self._keys:
            self.reference.request(
                {
                    "cmd": cmd,
                    "key": key,
                    "image_size": size,
                    "num_parts": 16,
                    "appearance_dim": 6,
                    "scale": 8,
                    "base_channels": 64,
                    "seed": self.seed,
                    **extra,
                }
            )
            self._keys.add(key)

    def threads(self) -> list[int]:
        default = self.reference.info["threads"]
        return [default, 1] if default > 1 else [default]

    def train(self, size: int, batch: int, steps: int, by_threads: list):
        """A window returning the reference's images/s over `steps` train steps."""
        key = f"train_{size}_{batch}"
        self.setup("train_setup", key, size, batch=batch)

        def window():
            rates = {}
            for t in self.threads():
                request = {"cmd": "train", "key": key, "steps": steps, "threads": t}
                rates[t] = steps * batch / self.reference.request(request)["seconds"]
            by_threads.append({str(t): round(r, 2) for t, r in rates.items()})
            return max(rates.values())

        return window

    def encode(self, size: int, batch: int, calls: int, by_threads: list):
        """A window returning the reference encoder's seconds per call, `calls` calls; the
        encoder must be set up first (setup("encoder_setup", ...)).
        """

        def window():
            runs = {}
            for t in self.threads():
                request = {"cmd": "encode", "key": f"encoder_{size}", "batch": batch}
                request |= {"calls": calls, "threads": t}
                runs[t] = self.reference.request(request)["seconds"]
            by_threads.append(
                {str(t): round(statistics.median(x) * 1e3, 4) for t, x in runs.items()}
            )
            return min(runs.values(), key=statistics.median)

        return window
