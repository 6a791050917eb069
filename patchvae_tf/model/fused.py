"""Keras's BatchNormalization and Adam on TensorFlow's fused kernels: same variables, fewer ops."""

from __future__ import annotations

import keras
import tensorflow as tf

# The dtypes TF's FusedBatchNormV3 kernel takes (float32 statistics for the half types);
# it has no float64 kernel.
_FUSED_BN_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package="patchvae_tf")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization whose training step is one FusedBatchNormV3 op (and one gradient op).

    Keras 3 normalises with separate mean, variance, subtract, multiply and add ops; each
    walks the whole activation tensor, and so does each of their gradients. TF's fused
    kernel (oneDNN's on CPU) does it in one pass. The variables are Keras's own, so
    checkpoints, get_config and freezing (trainable=False) are unchanged.

    One difference, as in Keras 2's fused path and in PyTorch: in training the moving
    variance averages the unbiased batch variance (times n / (n - 1), n = batch * h * w),
    while the output is normalised with the biased one. The kernel is chosen by dtype: TF has
    no float64 one, so in float64 the same computation runs as separate ops (the parity
    harness's float64 runs). Anything this layer cannot fuse (masks, renorm, a channel axis
    other than the last, other ranks, synchronized statistics across replicas) runs Keras's
    own implementation.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        # Inference and frozen layers keep Keras's ops: a multiply-add grappler folds, where
        # TF's fused inference kernel made the batch-1 encoder several times slower.
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        if keras.backend.standardize_dtype(inputs.dtype) not in _FUSED_BN_DTYPES:
            return self._unfused_training(inputs)
        # As Keras does: statistics in float32 even under mixed precision.
        x = tf.cast(inputs, "float32")
        ones = tf.ones([x.shape[-1]], "float32")
        scale = tf.convert_to_tensor(self.gamma) if self.scale else ones
        offset = tf.convert_to_tensor(self.beta) if self.center else tf.zeros_like(ones)
        # With exponential_avg_factor the kernel returns the updated moving averages.
        y, new_mean, new_variance = tf.compat.v1.nn.fused_batch_norm(
            x,
            scale,
            offset,
            mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance),
            epsilon=self.epsilon,
            is_training=True,
            exponential_avg_factor=1.0 - self.momentum,
        )
        self.moving_mean.assign(new_mean)
        self.moving_variance.assign(new_variance)
        return tf.cast(y, self.compute_dtype)

    def _unfused_training(self, x):
        """The fused kernel's training step as separate ops, in x's dtype (float64)."""
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        ones = tf.ones_like(mean)
        scale = tf.cast(self.gamma, x.dtype) if self.scale else ones
        offset = tf.cast(self.beta, x.dtype) if self.center else tf.zeros_like(ones)
        y = tf.nn.batch_normalization(x, mean, variance, offset, scale, self.epsilon)
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
        unbiased = variance * n / tf.maximum(n - 1.0, 1.0)
        m = self.momentum
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * tf.stop_gradient(mean))
        self.moving_variance.assign(
            m * self.moving_variance + (1.0 - m) * tf.stop_gradient(unbiased)
        )
        return tf.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="patchvae_tf")
class FusedAdam(keras.optimizers.Adam):
    """Adam whose per-variable update is one ResourceApplyAdam op.

    Keras 3's Adam spends about a dozen elementwise ops per variable (each a pass over the
    variable, plus its dispatch); the fused kernel reads the gradient and the two moments
    once. The update is the same formula (epsilon added to sqrt(v), as in Keras), and the
    slots are Keras's own variables, so checkpoints are interchangeable with
    keras.optimizers.Adam. The kernel has every float dtype (float64 included); AMSGrad and
    sparse gradients take Keras's path.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        if isinstance(variable, keras.Variable):
            variable = variable.value
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m = self._momentums[index].value
        v = self._velocities[index].value
        step = tf.cast(self.iterations + 1, dtype)
        # tf.constant, not tf.cast: casting a Python float goes through float32, which in
        # float64 moved beta_2 = 0.999 by 1.3e-8 (and v by 1.3e-5 of itself).
        beta_1 = tf.constant(self.beta_1, dtype)
        beta_2 = tf.constant(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=m.handle,
            v=v.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.constant(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
