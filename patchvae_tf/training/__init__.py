"""Training: the one loop for every strategy (loop.py), the step it runs (step.py), devices
and roles (distribute.py) and mixed precision (precision.py).
"""

from patchvae_tf.training.loop import PREEMPTED_EXIT_CODE, create_strategy, make_iterator, train
from patchvae_tf.training.step import make_optimizer, make_train_step

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "create_strategy",
    "make_iterator",
    "make_optimizer",
    "make_train_step",
    "train",
]
