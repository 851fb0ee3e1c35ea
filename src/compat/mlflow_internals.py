"""MLflow internals that src/tracking/lock_retries.py relies on (pinned: mlflow in requirements.txt).

Why not MLflow's public API: MLflow 3.17 retries nothing that finds a SQLite database locked (its
own retries cover creating the engine and PostgreSQL deadlocks), and every session it opens sets
SQLite's busy timeout to 20 s (a PRAGMA in its session maker) with no setting to change it. Its
public way to swap a store, a plugin's ``mlflow.tracking_store`` entry point, needs an installed
package, and this project runs from a clone. So the builders of SQLite stores are wrapped in
MLflow's private store registries, and the store's session maker is wrapped to set the timeout.
"""

import contextlib

SCHEME = "sqlite"
# The logger of MLflow's session maker: it logs every SQLAlchemy OperationalError with its traceback.
STORE_LOGGER = "mlflow.store.db.utils"
_WRAPPED = "wrapped_by_imdb_lstm"


def store_registries() -> tuple:
    """MLflow's registries of tracking stores and of model-registry stores (URI scheme -> builder)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_store_registry, registry_utils._get_store_registry()


def wrap_sqlite_store_builders(wrap) -> None:
    """Make MLflow build every SQLite store with ``wrap(builder)``, once per process.

    Stores MLflow built and cached before are dropped, so the next use builds them wrapped.
    """
    for registry in store_registries():
        build = registry._registry.get(SCHEME)
        if build is not None and not getattr(build, _WRAPPED, False):
            wrapped = wrap(build)
            setattr(wrapped, _WRAPPED, True)
            registry.register(SCHEME, wrapped)
            registry._get_store_with_resolved_uri.cache_clear()


def set_busy_timeout(store, milliseconds) -> None:
    """Every session of the SQLAlchemy ``store`` waits ``milliseconds()`` for another process's lock.

    A callable, read at each session, so a test can shorten the wait of a store already built.
    """
    sessions = store.ManagedSessionMaker

    @contextlib.contextmanager
    def session_maker(*args, **kwargs):
        with sessions(*args, **kwargs) as session:
            import sqlalchemy

            session.execute(sqlalchemy.text(f"PRAGMA busy_timeout = {int(milliseconds())}"))
            yield session

    store.ManagedSessionMaker = session_maker


def store_uri(store) -> str:
    """The database URI of a SQLAlchemy store, for messages."""
    return getattr(store, "db_uri", "the MLflow store")
