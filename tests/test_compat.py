"""The library internals src/compat/ relies on are still there in the installed versions.

When one changes (a library upgrade), the failure names the package, its version and the module
to update, rather than breaking tracking, distributed training or the fused Adam far away.
"""

import importlib
import inspect

import numpy as np
import pytest

from src.compat import keras_internals, mlflow_internals, mlflow_scoring


def changed(package: str, internal: str, module: str) -> str:
    version = importlib.import_module(package).__version__
    return f"{package} {version}: {internal}; src/compat/{module} must be updated"


# --- MLflow: the SQLite lock retries (src/tracking/lock_retries.py) -------------------------------

def test_mlflow_keeps_its_store_builders_in_registries_by_scheme():
    try:
        registries = mlflow_internals.store_registries()
    except (ImportError, AttributeError) as error:
        pytest.fail(changed("mlflow", f"the tracking or model-registry store registry is gone ({error})",
                            "mlflow_internals.py"))
    for registry in registries:
        kind = type(registry).__name__
        assert isinstance(getattr(registry, "_registry", None), dict) and mlflow_internals.SCHEME in registry._registry, \
            changed("mlflow", f"{kind}._registry no longer maps 'sqlite' to a store builder", "mlflow_internals.py")
        assert callable(getattr(registry, "register", None)), \
            changed("mlflow", f"{kind}.register is gone", "mlflow_internals.py")
        assert callable(getattr(getattr(registry, "_get_store_with_resolved_uri", None), "cache_clear", None)), \
            changed("mlflow", f"{kind}._get_store_with_resolved_uri is no longer a cache to clear", "mlflow_internals.py")


def test_mlflow_builds_sqlite_stores_that_retry_and_wait_as_long_as_we_say(mlflow_db, monkeypatch):
    import sqlalchemy

    from src.tracking import lock_retries

    lock_retries.install_lock_retries()
    monkeypatch.setattr(lock_retries, "SQLITE_BUSY_TIMEOUT_MS", 1234)
    uri = f"sqlite:///{mlflow_db}"
    for registry in mlflow_internals.store_registries():
        kind = type(registry).__name__
        store = registry.get_store(uri)
        assert type(store).__name__.startswith("LockRetrying"), \
            changed("mlflow", f"{kind} built its SQLite store without the wrapped builder", "mlflow_internals.py")
        assert mlflow_internals.store_uri(store) == uri, \
            changed("mlflow", f"the SQLite store of {kind} no longer has db_uri", "mlflow_internals.py")
        with store.ManagedSessionMaker() as session:
            timeout = session.execute(sqlalchemy.text("PRAGMA busy_timeout")).scalar()
        assert timeout == 1234, \
            changed("mlflow", f"the store's ManagedSessionMaker no longer gives the sessions its {kind} store uses",
                    "mlflow_internals.py")


def test_mlflow_logs_its_database_errors_under_the_logger_we_filter():
    try:
        db_utils = importlib.import_module(mlflow_internals.STORE_LOGGER)
    except ImportError:
        pytest.fail(changed("mlflow", f"{mlflow_internals.STORE_LOGGER} is gone", "mlflow_internals.py"))
    assert "_logger.exception" in inspect.getsource(db_utils) and db_utils._logger.name == mlflow_internals.STORE_LOGGER, \
        changed("mlflow", f"database errors are no longer logged by {mlflow_internals.STORE_LOGGER}", "mlflow_internals.py")



# --- MLflow: the scoring server's error answers (src/serving.py) -------------------------------------

def test_mlflow_scoring_server_looks_invocations_up_at_each_request_and_names_its_model_in_the_environment():
    from mlflow.pyfunc import scoring_server

    assert isinstance(getattr(scoring_server, "_SERVER_MODEL_PATH", None), str), \
        changed("mlflow", "scoring_server._SERVER_MODEL_PATH is gone", "mlflow_scoring.py")
    command, env = scoring_server.get_cmd("/some/model")
    assert env[scoring_server._SERVER_MODEL_PATH], \
        changed("mlflow", "the server command no longer names its model in _SERVER_MODEL_PATH", "mlflow_scoring.py")
    assert "to_thread(invocations," in inspect.getsource(scoring_server.init), \
        changed("mlflow", "the server's /invocations no longer calls the module's invocations()", "mlflow_scoring.py")
    assert "e.message = f\"Failed to predict data '{data}'. \\nError: {e.message}\"" in \
        inspect.getsource(scoring_server.invocations), \
        changed("mlflow", "invocations() puts the request before a model's error otherwise", "mlflow_scoring.py")
    assert mlflow_scoring.model_message("Failed to predict data '[1, 2]'. \nError: the model's") == "the model's"


def test_mlflow_scoring_errors_pass_through_the_rewrite(monkeypatch):
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    monkeypatch.setattr(scoring_server, "invocations", scoring_server.invocations)  # restored after the test
    seen = []
    mlflow_scoring.rewrite_scoring_errors(seen.append)
    mlflow_scoring.rewrite_scoring_errors(seen.append)  # once per process: not wrapped twice
    with pytest.raises(MlflowException) as raised:
        scoring_server.invocations(b"{not json", "application/json", SimpleNamespace(metadata=None), None)
    assert seen == [raised.value], changed("mlflow", "invocations() raises no MlflowException for a body that is not JSON",
                                           "mlflow_scoring.py")
    assert type(raised.value.__cause__).__name__ == "JSONDecodeError", \
        changed("mlflow", "the MlflowException for a body that is not JSON is no longer caused by the JSONDecodeError",
                "mlflow_scoring.py")


# --- Keras: Model.fit under a tf.distribute strategy (src/distribution.py) ------------------------

def _tiny_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy", optimizer="sgd", metrics=["accuracy"])
    return model


def test_keras_fit_builds_through_the_step_keras_internals_skips(monkeypatch):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _tiny_model()
    trainer = type(model)
    for name, parameters in (("_symbolic_build", ["iterator", "data_batch"]),
                             ("_maybe_symbolic_build", ["iterator", "data_batch"])):
        assert list(inspect.signature(getattr(model, name, lambda: None)).parameters) == parameters, \
            changed("keras", f"Trainer.{name}(iterator, data_batch) is gone or takes other arguments",
                    "keras_internals.py")

    builds = []
    build = trainer._maybe_symbolic_build
    monkeypatch.setattr(trainer, "_maybe_symbolic_build", lambda self, *args, **kwargs: builds.append(1) or build(self, *args, **kwargs))
    x, y = np.ones((8, 3), "float32"), np.ones((8, 1), "float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert builds, changed("keras", "Model.fit no longer builds through Trainer._maybe_symbolic_build", "keras_internals.py")

    with strategy.scope():
        model = _tiny_model()
    builds.clear()
    with keras_internals.fit_built_beforehand(model, strategy, (x[:1], y[:1]), logs_as_vectors=False):
        assert model.built and model.optimizer.built
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not builds, changed("keras", "an instance attribute no longer shadows Trainer._maybe_symbolic_build",
                               "keras_internals.py")
    assert "_maybe_symbolic_build" not in vars(model)


def test_keras_steps_are_read_from_the_instance_where_the_vector_logs_shim_sits():
    model = _tiny_model()
    for make, step in (("make_train_function", "self.train_step"), ("make_test_function", "self.test_step")):
        assert step in inspect.getsource(getattr(type(model), make)), \
            changed("keras", f"Trainer.{make} no longer calls {step}", "keras_internals.py")


# --- Keras: Adam's moments (the fused Adam of src/model.py) ---------------------------------------

def test_keras_adam_keeps_each_weights_moments_where_keras_internals_reads_them():
    import keras

    assert list(inspect.signature(keras.optimizers.Adam.update_step).parameters) == \
        ["self", "gradient", "variable", "learning_rate"], \
        changed("keras", "Adam.update_step(gradient, variable, learning_rate) takes other arguments", "keras_internals.py")
    weights = [keras.Variable(np.zeros((2, 3), "float32")), keras.Variable(np.zeros(4, "float32"))]
    optimizer = keras.optimizers.Adam(learning_rate=0.1, beta_1=0.9, beta_2=0.999)
    optimizer.apply([np.full((2, 3), 2.0, "float32"), np.full(4, 3.0, "float32")], weights)
    for variable, gradient in zip(weights, (2.0, 3.0)):
        try:
            momentum, velocity = keras_internals.adam_moments(optimizer, variable)
            handles = momentum.value.handle, velocity.value.handle
        except (AttributeError, IndexError, KeyError) as error:
            pytest.fail(changed("keras", f"Adam's _get_variable_index, _momentums or _velocities changed ({error!r})",
                                "keras_internals.py"))
        assert all(handle is not None for handle in handles)
        np.testing.assert_allclose(np.asarray(momentum), 0.1 * gradient, rtol=1e-6,
                                   err_msg=changed("keras", "Adam's _momentums are not the first moments",
                                                   "keras_internals.py"))
        np.testing.assert_allclose(np.asarray(velocity), 0.001 * gradient**2, rtol=1e-5,
                                   err_msg=changed("keras", "Adam's _velocities are not the second moments",
                                                   "keras_internals.py"))
