"""Keras callbacks in the custom training loop: its start, each logged step, its end, and a
stop that every worker agrees on.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from patchvae_tf.errors import UserError
from patchvae_tf.training import distribute


class Callbacks:
    """The keras.callbacks.Callback objects of a run, called as ``fit`` would call them.

    ``on_train_begin`` once the model is restored; ``on_train_batch_end(step, logs)`` at every
    step the loop logs (every --log_every steps and the last), ``step`` the number of steps
    done and ``logs`` the logged metrics (the loss terms, temperature, learning_rate,
    images_per_second), then ``on_epoch_end(step, logs)``: the loop has no epochs, so each
    logging interval counts as one for callbacks that act per epoch (keras.callbacks.
    EarlyStopping(monitor="loss"), CSVLogger); ``on_train_end`` with the last logs. One that sets
    ``model.stop_training = True`` ends training after that step, with a checkpoint there;
    under several workers the stop is agreed (any worker's stop stops all), so none waits on
    a collective the others left.
    """

    def __init__(self, callbacks, model: keras.Model, strategy, params: dict):
        self.callbacks = list(callbacks or ())
        for cb in self.callbacks:
            if not isinstance(cb, keras.callbacks.Callback):
                raise UserError(
                    f"callbacks must be keras.callbacks.Callback objects; got a {type(cb).__name__}"
                )
        self.model, self.strategy = model, strategy
        model.stop_training = False
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params({"verbose": 0, **params})
        self.logs: dict = {}

    def begin(self) -> None:
        for cb in self.callbacks:
            cb.on_train_begin({})

    def logged(self, step: int, logs: dict) -> bool:
        """Calls on_train_batch_end; whether training stops here (agreed by every worker)."""
        if not self.callbacks:
            return False
        self.logs = dict(logs)
        for cb in self.callbacks:
            cb.on_train_batch_end(step, dict(logs))
        for cb in self.callbacks:
            cb.on_epoch_end(step, dict(logs))
        return self._agreed(bool(self.model.stop_training))

    def end(self) -> None:
        for cb in self.callbacks:
            cb.on_train_end(dict(self.logs))

    def _agreed(self, stop: bool) -> bool:
        """Stop if any worker stops: the sum of every worker's flag (tf.distribute reduces
        by SUM or MEAN only), one all-reduce.
        """
        if distribute.task(self.strategy)[0] is None:
            return stop
        flag = tf.constant(1.0 if stop else 0.0)
        value = self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, self.strategy.run(lambda: tf.identity(flag)), axis=None
        )
        agreed = float(value) > 0.5
        self.model.stop_training = agreed
        return agreed
