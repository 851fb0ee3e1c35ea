"""Progress of a long step: a tqdm bar on a terminal, else a plain log line now and then.

A person at a terminal (stderr a TTY, as under `dvc repro` run by hand) sees a bar; DVC's queue
logs, CI logs and files get one log line every LOG_INTERVAL seconds and one at the end, never a
line per item. Every line goes through ``logging``.
"""

import logging
import sys
import time

LOG_INTERVAL = 15.0  # seconds between two log lines of one step when stderr is not a terminal


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (stderr by default) is a terminal, where a progress bar can redraw itself."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _amount(value: float, unit: str, with_unit: bool = True) -> str:
    number = f"{value / 2**20:,.1f}" if unit == "B" else f"{value:,.0f}"
    return f"{number} {'MiB' if unit == 'B' else unit}" if with_unit else number


class Progress:
    """How far one step is: ``update(n)`` as it goes, ``close()`` (or leave the ``with``) when done.

    ``total`` may be None (unknown). On a terminal, a tqdm bar on stderr; otherwise a line
    ``desc: done of total unit (pct), elapsed, about N s left`` at most every ``interval`` seconds,
    and ``desc: done in S s`` at the end (unless ``end_line`` is false: the caller says how it went).
    """

    def __init__(self, desc: str, total: float | None = None, unit: str = "it", logger: logging.Logger | None = None,
                 interval: float = LOG_INTERVAL, end_line: bool = True, **tqdm_options):
        self.desc, self.total, self.unit, self.interval, self.end_line = desc, total, unit, interval, end_line
        self.log = logger or logging.getLogger("imdb_lstm")
        self.done = 0
        self.started = self.last_line = time.monotonic()
        self.closed = False
        self.bar = self.redirect = None
        if on_terminal():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            scale = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                            **scale, **tqdm_options)
            self.redirect = logging_redirect_tqdm()  # log lines print above the bar, not through it
            self.redirect.__enter__()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(completed=kind is None)

    def update(self, n: float = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self.log.info("%s: %s", self.desc, self.status(now - self.started))

    def update_to(self, done: float) -> None:
        """Set how much is done (rather than add to it)."""
        self.update(done - self.done)

    def status(self, elapsed: float) -> str:
        if not self.total:
            return f"{_amount(self.done, self.unit)}, {elapsed:.0f} s"
        share = self.done / self.total
        left = f", about {elapsed * (1 - share) / share:.0f} s left" if share > 0 else ""
        return (f"{_amount(self.done, self.unit, with_unit=False)} of {_amount(self.total, self.unit)} ({share:.0%}), "
                f"{elapsed:.0f} s{left}")

    def close(self, completed: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.redirect.__exit__(None, None, None)
            self.bar.close()
        elif completed and self.end_line:
            self.log.info("%s: %s in %.1f s", self.desc, _amount(self.done, self.unit), time.monotonic() - self.started)


ESTIMATE_AFTER = 5  # batches after the first from which the first epoch's time is estimated


def training_progress(batches: int, epochs: int, logger: logging.Logger):
    """A Keras callback showing each epoch's batches (Progress), and logging the first epoch's expected time.

    The first batch also builds TensorFlow's graph, so the estimate is that batch's time plus the
    mean of the next ESTIMATE_AFTER (or all the epoch has) for each batch left. Keras is imported here.
    """
    import keras

    class TrainingProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.bar = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.first_end = epoch, None
            self.bar = Progress(f"epoch {epoch + 1}/{epochs}", batches, "batches", logger, end_line=False)

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update()
            if self.epoch > 0:
                return
            now = time.monotonic()
            if batch == 0:
                self.first_end = now
            elif batch == min(ESTIMATE_AFTER, batches - 1):
                first = self.first_end - self.bar.started
                each = (now - self.first_end) / batch
                logger.info("expected time of an epoch: about %.0f s for its %d batches (the first took %.1f s, "
                            "TensorFlow building its graph; the next %d %.2f s each), then the validation pass",
                            first + each * (batches - 1), batches, first, batch, each)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.close()

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.close()

    return TrainingProgress()
