"""The building blocks ``python -m tfmarket.train`` and ``python -m tfmarket.adapt`` share, as
public functions.

* ``data``: the training and validation splits of a config's datasets, labels and targets.
* ``build``: the compiled training model from a config (losses, metrics, optimizer).
* ``fit``: the distributed input stream, the callbacks, validation during training, ``fit``.
* ``run``: one training run (strategy, precision, fit, ``model.keras``, ``metrics.json``).
* ``rundir``, ``resume``: what a run directory holds, and where an interrupted run resumes.
* ``distribute``, ``multiworker``: strategy and precision; multi-worker checks and recovery.
* ``evaluation``: predicting records with a Keras model, validation scores and its callback.
* ``callbacks``: the small Keras callbacks of the fit loop.
* ``adapt_plan``, ``adapt_rounds``: adapt's checked inputs and its rounds.

May import: the foundations, ``tfmarket.data``, ``tfmarket.model``, ``tfmarket.retrieval``;
never ``tfmarket.serving`` or a command. ``data``, ``rundir``, ``resume`` and ``adapt_plan``
import no TensorFlow (commands check their inputs with them before TensorFlow loads).
"""
