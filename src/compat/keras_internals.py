"""Keras internals that src/distribution.py and src/model.py rely on (pinned: keras in requirements.txt).

Why not Keras' public API:
- Model.fit under MultiWorkerMirroredStrategy fails in Keras 3.15 (tensorflow/tensorflow#72388):
  it reduces its first input batch over the replicas to build the model (the strategy cannot
  reduce an (x, y) tuple), and under any strategy it draws that batch even when everything is
  built, which moves the shuffling on by one epoch. fit has no option to skip that step: the
  model is built here through Trainer._symbolic_build and the step fit calls,
  Trainer._maybe_symbolic_build, is shadowed on the instance.
- Keras' Adam keeps its moments in private lists (_momentums, _velocities, indexed by
  _get_variable_index). Keras has no fused update (TensorFlow's ResourceApplyAdam) and no
  option to square a sparse gradient after adding up its slices; the fused Adam of src/model.py
  needs each weight's moments to hand them to that op.
"""

import contextlib


def _already_built(iterator=None, data_batch=None) -> None:
    """Stands in for Trainer._maybe_symbolic_build once everything is built."""


def _logs_as_vectors(step):
    """A train/test step whose scalar logs have shape [1], which the strategy can reduce along axis 0."""
    import tensorflow as tf

    def vector_step(data):
        return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    return vector_step


@contextlib.contextmanager
def fit_built_beforehand(model, strategy, sample_batch, logs_as_vectors: bool):
    """Model.fit of ``model`` under ``strategy``, with everything built from ``sample_batch`` beforehand.

    The model, its metrics and its optimizer are built now, in the strategy's scope, from
    ``sample_batch`` (numpy (x, y)), and fit's own building step is skipped. With
    ``logs_as_vectors``, each train and test step returns its scalar logs as [1] vectors, which
    MultiWorkerMirroredStrategy can average over the workers along axis 0; epoch logs are read
    from the metrics and stay scalars. Keras is put back as it was on the way out.
    """
    with strategy.scope():
        model._symbolic_build(data_batch=sample_batch)
    shims = {"_maybe_symbolic_build": _already_built}
    if logs_as_vectors:
        shims.update(train_step=_logs_as_vectors(model.train_step), test_step=_logs_as_vectors(model.test_step))
    for name, shim in shims.items():
        object.__setattr__(model, name, shim)
    try:
        yield
    finally:
        for name in shims:
            object.__delattr__(model, name)


def adam_moments(optimizer, variable) -> tuple:
    """The first and second moment (Keras variables) that a built keras.optimizers.Adam keeps for ``variable``."""
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]
