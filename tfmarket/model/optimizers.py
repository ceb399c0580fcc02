"""Adam, AdamW and SGD whose update is one fused TensorFlow kernel per variable.

Keras 3 updates each variable with a chain of element-wise ops (Adam: the first moment, the
second moment and the step, each a separate pass over the variable; AdamW adds two more for the
decay). For ResNet50's 320 variables that is about 11,700 ops per training step, each a full
read and write of its tensor. On the TensorFlow backend these classes run the same update as one
``ResourceApplyAdam`` / ``ResourceApplyKerasMomentum`` per variable: a single multi-threaded pass
on CPUs (GPU and XLA kernels exist too).

Same math as Keras's classes (TensorFlow's kernels implement the formulas Keras's optimizers
were written to match), to float rounding; same variables, config and saved state, so a run
can resume from a backup written with Keras's optimizer and back. What the kernels do not
cover (other backends, sparse gradients, AMSGrad, SGD without momentum) runs Keras's own code.
"""

from __future__ import annotations

import keras


def _fusable_backend() -> bool:
    return keras.backend.backend() == "tensorflow"


def _fusable(gradient, variable) -> bool:
    """Whether TensorFlow's dense kernels can update ``variable`` with ``gradient``."""
    if not _fusable_backend():
        return False
    import tensorflow as tf

    return not isinstance(gradient, tf.IndexedSlices) and variable.dtype in (
        "float32", "float16", "bfloat16", "float64")


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable; for a distributed variable,
    inside ``strategy.extended.update``, that of the device being updated."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


class _FusedAdamUpdate:
    """``update_step`` of :class:`keras.optimizers.Adam` as one ``ResourceApplyAdam``:

    m += (g - m)(1 - b1);  v += (g² - v)(1 - b2);
    var -= lr √(1 - b2^t) / (1 - b1^t) · m / (√v + ε)
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        return tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )


@keras.saving.register_keras_serializable(package="tfmarket")
class Adam(_FusedAdamUpdate, keras.optimizers.Adam):
    """:class:`keras.optimizers.Adam`, updating each variable with one fused kernel."""


@keras.saving.register_keras_serializable(package="tfmarket")
class AdamW(_FusedAdamUpdate, keras.optimizers.AdamW):
    """:class:`keras.optimizers.AdamW`, updating each variable with one fused kernel.

    The decoupled decay ``var -= lr · wd · var`` runs in the same per-variable update, just
    before the Adam step (Keras decays every variable first, then steps each: the same result,
    since no variable's update reads another's), as one multiply instead of two.
    """

    def _apply_weight_decay(self, variables):
        if not _fusable_backend():
            return super()._apply_weight_decay(variables)
        return None  # applied in update_step

    def update_step(self, gradient, variable, learning_rate):
        if _fusable_backend() and self.weight_decay is not None \
                and self._use_weight_decay(variable):
            import tensorflow as tf

            tensor = variable.value if isinstance(variable, keras.Variable) else variable
            rate = tf.cast(learning_rate, tensor.dtype) * tf.cast(self.weight_decay,
                                                                   tensor.dtype)
            tensor.assign_sub(tensor * rate)
        return super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="tfmarket")
class SGD(keras.optimizers.SGD):
    """:class:`keras.optimizers.SGD`; with momentum, each variable's update is one
    ``ResourceApplyKerasMomentum``:

    m = μ m - lr g;  var += m  (Nesterov: var += μ m - lr g)
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=_handle(variable),
            accum=_handle(self.momentums[self._get_variable_index(variable)]),
            lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype),
            use_locking=False,
            use_nesterov=self.nesterov,
        )


def fused(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The fused class's twin of a Keras Adam / AdamW / SGD (same config); others as given."""
    for keras_class, fused_class in ((keras.optimizers.AdamW, AdamW),
                                     (keras.optimizers.Adam, Adam),
                                     (keras.optimizers.SGD, SGD)):
        if type(optimizer) is keras_class:
            return fused_class.from_config(optimizer.get_config())
    return optimizer
