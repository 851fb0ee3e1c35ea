"""A SQLite store shared by several processes (``dvc queue start -j 2``) loses nothing.

A store call that finds the database locked for longer than SQLite's busy timeout is retried,
with backoff, instead of failing the stage. MLflow's hooks for this: src/compat/mlflow_internals.py.
"""

import functools
import inspect
import logging
import random
import threading
import time

from src.compat import mlflow_internals
from src.errors import TrackingError
from src.redact import redact_url

log = logging.getLogger("imdb_lstm.tracking")

# How long one SQLite statement waits for another process's lock (MLflow sets 20 s itself).
SQLITE_BUSY_TIMEOUT_MS = 20_000
# How long a store call keeps retrying a locked SQLite database before the stage gives up.
LOCK_RETRY_SECONDS = 600.0
# Backoff between retries: doubles from the first delay up to the last, with jitter.
LOCK_BACKOFF_SECONDS = (0.2, 10.0)

_retrying = threading.local()  # depth of store calls in this thread: only the outermost one retries


def _locked(error: BaseException) -> bool:
    """Is ``error`` SQLite's "database is locked" (raw, or as MLflow wraps it)?"""
    return "database is locked" in str(error) or "database table is locked" in str(error)


def _store_full_or_read_only(error: BaseException) -> str | None:
    text = str(error)
    if "database or disk is full" in text:
        return "the disk holding it is full; free some space and run the stage again"
    if "readonly database" in text or "read-only database" in text:
        return "it is write-protected; make it (and its folder) writable for this user and run the stage again"
    return None


def _retry_when_locked(method):
    """``method`` of an MLflow SQLAlchemy store, retried with backoff while SQLite is locked.

    SQLite already waits SQLITE_BUSY_TIMEOUT_MS for a lock; past that (a long transaction of
    another process, an open `sqlite3` shell) MLflow raises, and the metric or the run's end
    would be lost. A failed attempt committed nothing (MLflow rolls its session back), and the
    store's writes are idempotent (a metric logged twice is stored once), so retrying is safe.
    """
    @functools.wraps(method)
    def call(*args, **kwargs):
        if getattr(_retrying, "depth", 0):  # a store method calling another: the outer one retries
            return method(*args, **kwargs)
        _retrying.depth = 1
        try:
            give_up = time.monotonic() + LOCK_RETRY_SECONDS
            delay, attempt = LOCK_BACKOFF_SECONDS[0], 1
            while True:
                try:
                    return method(*args, **kwargs)
                except Exception as error:
                    store = mlflow_internals.store_uri(args[0])
                    problem = _store_full_or_read_only(error)
                    if problem:
                        raise TrackingError(f"MLflow store {redact_url(store)}: {problem}") from None
                    if not _locked(error):
                        raise
                    if time.monotonic() + delay > give_up:
                        raise TrackingError(
                            f"MLflow store {redact_url(store)} stayed locked by another process for "
                            f"{LOCK_RETRY_SECONDS:g} s; end that process (an open sqlite3 shell, a stuck "
                            "stage) and run the stage again") from None
                    pause = delay * random.uniform(0.5, 1.0)
                    log.warning("MLflow store is locked by another process (%s); retrying in %.1f s (attempt %d)",
                                method.__name__, pause, attempt + 1)
                    time.sleep(pause)
                    delay, attempt = min(2 * delay, LOCK_BACKOFF_SECONDS[1]), attempt + 1
        finally:
            _retrying.depth = 0

    return call


@functools.cache
def _retrying_class(cls: type) -> type:
    """A subclass of the store class ``cls`` whose public methods retry while SQLite is locked."""
    methods = {name: _retry_when_locked(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
               if not name.startswith("_") and not isinstance(inspect.getattr_static(cls, name), staticmethod)}
    return type(f"LockRetrying{cls.__name__}", (cls,), methods)


def _with_lock_retries(build):
    """Wrap MLflow's builder of SQLite stores: the store it builds retries calls and waits longer."""
    def build_store(store_uri, *args, **kwargs):
        store = _retry_when_locked(build)(store_uri, *args, **kwargs)
        store.__class__ = _retrying_class(type(store))  # a subclass: MLflow's isinstance checks still hold
        mlflow_internals.set_busy_timeout(store, lambda: SQLITE_BUSY_TIMEOUT_MS)
        return store

    return build_store


class _RetriedLockErrors(logging.Filter):
    """Drop MLflow's traceback of a "database is locked" error that _retry_when_locked will retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_retrying, "depth", 0) and _locked(record.getMessage()))


def install_lock_retries() -> None:
    """Make MLflow's SQLite tracking and model-registry stores retry calls that find the database locked."""
    db_log = logging.getLogger(mlflow_internals.STORE_LOGGER)
    if not any(isinstance(f, _RetriedLockErrors) for f in db_log.filters):
        db_log.addFilter(_RetriedLockErrors())
    mlflow_internals.wrap_sqlite_store_builders(_with_lock_retries)
