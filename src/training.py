"""Seeding, training with a per-epoch record, and saving and loading the model.

A History is a plain list with one dict per epoch (see EPOCH_KEYS), so a caller can log each
epoch to MLflow through ``on_epoch`` and write the list as JSON without touching Keras objects.
Keras is imported inside the functions (the TensorFlow import takes seconds).

Training under a tf.distribute strategy (``train.distribution``): see src/distribution.py.
"""

import logging
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from src.distribution import keras_fit_under, scope
from src.errors import DataError
from src.fileio import atomic_path
from src.params import ModelParams, TrainParams

EPOCH_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "reviews_per_second")

log = logging.getLogger("imdb_lstm.train")

History = list[dict[str, float]]
ArrayPair = tuple[np.ndarray, np.ndarray]


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras, and make TensorFlow's ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()  # a flag: setting it again is harmless


def check_ids(name: str, x: np.ndarray, num_words: int, maxlen: int) -> None:
    """Raise DataError unless ``x`` is integers of shape [n, maxlen], each in [0, num_words)."""
    if x.ndim != 2 or x.shape[1] != maxlen or not np.issubdtype(x.dtype, np.integer):
        raise DataError(f"{name}: x must be integers of shape [n, {maxlen}], got {x.dtype} {list(x.shape)}; "
                        "re-run the preprocess stage")
    if x.size and (x.min() < 0 or x.max() >= num_words):
        raise DataError(f"{name}: token ids must lie in [0, {num_words}), got [{x.min()}, {x.max()}]; "
                        "vocab.json and the model disagree, re-run the preprocess stage")


def check_split(name: str, x: np.ndarray, y: np.ndarray, num_words: int, maxlen: int) -> None:
    """check_ids, and ``y`` must be one label, 0 or 1, per review."""
    check_ids(name, x, num_words, maxlen)
    if len(x) == 0:
        raise DataError(f"{name}: no reviews; re-run the preprocess stage")
    if y.shape != (x.shape[0],):
        raise DataError(f"{name}: y must have shape [{x.shape[0]}] to match x, got {list(y.shape)}")
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"{name}: labels must be 0 or 1")


def _model_input_size(model) -> tuple[int, int]:
    """(num_words, maxlen) the model was built for."""
    from src.model import embedding_layer

    return embedding_layer(model).input_dim, model.input_shape[1]


def dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None, extra=None):
    """A tf.data pipeline of (ids, float32 labels) batches, reshuffled each epoch when given a seed.

    ``extra`` (src.batching.with_a_sample_each_epoch's: reviews, labels, how many) adds that many
    of those reviews, drawn afresh each epoch.

    The order depends on the seeds alone (this one and the global one make_deterministic
    sets): each epoch a new one, the same on every worker, as sharding by DATA needs
    (src/distribution.py). Keras' own shuffling of NumPy arrays repeats the first epoch's
    order in every epoch once a global seed is set (Keras 3.15). It is no slower than Keras'
    NumPy pipeline (benchmarks/results/README.md).
    """
    import tensorflow as tf

    from src.batching import prefetched, with_a_sample_each_epoch

    data, size = with_a_sample_each_epoch(x, y, extra, shuffle_seed or 0)
    if shuffle_seed is not None:
        data = data.shuffle(size, seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return prefetched(data.batch(batch_size), options)


def teacher_sample(teacher_xy: ArrayPair | None, params: TrainParams):
    """(reviews, probabilities, how many each epoch) of the teacher's reviews, or None without them."""
    if teacher_xy is None:
        return None
    per_epoch = params.teacher_reviews_per_epoch or len(teacher_xy[0])
    return teacher_xy[0], teacher_xy[1], min(per_epoch, len(teacher_xy[0]))


def training_data(train_xy: ArrayPair, val_xy: ArrayPair, params: TrainParams, teacher_xy: ArrayPair | None = None) -> tuple:
    """model.fit's training data and validation_data: tf.data pipelines, or length-bucketed batches.

    With ``params.bucket_by_length`` (src/batching.py) each batch holds reviews of similar length
    and is padded only to its longest: the default model trains faster at maxlen 400 (benchmarks/results/README.md).
    With ``teacher_xy``, each epoch also trains on ``params.teacher_reviews_per_epoch`` of them, drawn afresh.
    """
    (x_train, y_train), (x_val, y_val) = train_xy, val_xy
    extra = teacher_sample(teacher_xy, params)
    if not params.bucket_by_length:
        return (dataset(x_train, y_train, params.batch_size, shuffle_seed=params.seed, extra=extra),
                dataset(x_val, y_val, params.batch_size))
    from src.batching import length_bucketed_dataset

    return (length_bucketed_dataset(x_train, y_train, params.batch_size, params.seed, extra),
            length_bucketed_dataset(x_val, y_val, params.batch_size, params.seed))


def _one_epoch(x_train: np.ndarray, extra, params: TrainParams) -> tuple[int, int]:
    """(reviews, batches) of one epoch: the labelled reviews and as many of ``extra``'s (teacher_sample) as it draws.

    With a teacher and length buckets the batch count is about right: it is counted from the
    first reviews an epoch could draw, and each epoch draws others.
    """
    from src.batching import batches_per_epoch

    drawn = () if extra is None else (extra[0][:extra[2]],)
    reviews = len(x_train) + sum(len(part) for part in drawn)
    return reviews, batches_per_epoch(x_train, params.batch_size, params.bucket_by_length, *drawn)


def plan(x_train: np.ndarray, x_val: np.ndarray, params: TrainParams, teacher_xy: ArrayPair | None = None) -> str:
    """What training is about to do, in words: reviews, batches per epoch (about, with a teacher), epochs."""
    extra = teacher_sample(teacher_xy, params)
    batches = _one_epoch(x_train, extra, params)[1]
    how = f"length-bucketed batches of at most {params.batch_size}" if params.bucket_by_length else \
        f"batches of {params.batch_size}"
    patience = params.early_stopping_patience
    stopping = f", stopping once val_loss has not improved for {patience} epoch{'s' * (patience > 1)}" if patience else ""
    teacher = "" if extra is None else f" and {extra[2]:,} of {len(extra[0]):,} teacher-labelled reviews drawn afresh each epoch"
    return (f"training on {len(x_train):,} reviews{teacher}, validating on {len(x_val):,}: {batches:,} {how} an epoch, "
            f"at most {params.epochs} epoch{'s' * (params.epochs > 1)}{stopping}")


def new_model(model_params: ModelParams, train_params: TrainParams, num_words: int, maxlen: int, strategy=None,
              word_vectors=None):
    """Seed everything, then build and compile the model, in ``strategy``'s scope when given.

    ``word_vectors`` (the pretrain stage's, src.pretrain.WordVectors) start the Embedding.
    """
    from src.model import build_model, compile_model, start_embedding_from

    make_deterministic(train_params.seed)
    with scope(strategy):
        model = build_model(model_params, num_words, maxlen)
        if word_vectors is not None:
            start_embedding_from(model, word_vectors.vectors, word_vectors.known)
        compile_model(model, train_params)
    return model


def train(model, train_xy: ArrayPair, val_xy: ArrayPair, params: TrainParams,
          callbacks: Sequence = (), on_epoch: Callable[[dict], None] | None = None,
          verbose: int | str = 0, strategy=None, teacher_xy: ArrayPair | None = None) -> History:
    """Fit a compiled model; return one record per epoch, also passed to ``on_epoch`` as it ends.

    With ``teacher_xy`` (reviews and a teacher's probabilities, src/pretrain.py), every epoch
    also trains on ``params.teacher_reviews_per_epoch`` of them (0: all), a new seeded draw
    each epoch, shuffled in among the labelled reviews; loss and accuracy are over both.

    With ``params.early_stopping_patience`` > 0, training stops once val_loss has not improved
    for that many epochs, and the weights of the epoch with the lowest val_loss are restored
    (the history keeps every epoch run). ``callbacks`` are extra keras.callbacks.Callback
    objects, run after the recorder. ``verbose`` is Keras': 0 silent, 1 its progress bar; each epoch's
    batches are shown anyway (src/progress.py: a bar on a terminal, a log line every 15 s otherwise).

    With a tf.distribute ``strategy`` (the model built in its scope: new_model), batches of
    ``params.batch_size`` reviews, the global batch, are split over its replicas; the
    records hold the metrics of the whole splits, the same on every worker, and
    reviews_per_second counts every worker's reviews.
    """
    import keras

    from src.progress import training_progress

    num_words, maxlen = _model_input_size(model)
    (x_train, y_train), (x_val, y_val) = train_xy, val_xy
    check_split("train", x_train, y_train, num_words, maxlen)
    check_split("val", x_val, y_val, num_words, maxlen)
    if teacher_xy is not None:
        check_ids("teacher", teacher_xy[0], num_words, maxlen)
        if teacher_xy[1].shape != (len(teacher_xy[0]),) or not ((teacher_xy[1] >= 0) & (teacher_xy[1] <= 1)).all():
            raise DataError("teacher: y must hold one probability in [0, 1] per review; re-run the pretrain stage")

    history: History = []
    started = [0.0]

    def begin(epoch, logs=None):
        started[0] = time.perf_counter()

    def end(epoch, logs):
        seconds = time.perf_counter() - started[0]
        record = {key: float(logs[key]) for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
        record = {"epoch": epoch + 1, **record, "epoch_seconds": seconds,
                  "reviews_per_second": epoch_reviews / seconds}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    recorder = keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)
    epoch_reviews, epoch_batches = _one_epoch(x_train, teacher_sample(teacher_xy, params), params)
    progress = training_progress(epoch_batches, params.epochs, log)
    stopper = []
    if params.early_stopping_patience > 0:
        stopper = [keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=params.early_stopping_patience, restore_best_weights=True)]
    train_data, val_data = training_data(train_xy, val_xy, params, teacher_xy)
    sample_batch = (x_train[:1], y_train[:1].astype("float32"))
    if strategy is None:  # keras_fit_under builds them under a strategy
        _build_optimizer_and_metrics(model, sample_batch[1])
    with keras_fit_under(model, strategy, sample_batch), warnings.catch_warnings():
        # Length-bucketed batches are counted only by running an epoch, so Keras 3.15 warns at each
        # epoch's end that the input "ran out of data": that end is the epoch's end, nothing is lost.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            train_data,
            validation_data=val_data,
            epochs=params.epochs,
            shuffle=False,  # the dataset shuffles itself
            callbacks=[progress, recorder, *stopper, *callbacks],
            verbose=verbose,
        )
    return history


def _build_optimizer_and_metrics(model, y_sample: np.ndarray) -> None:
    """Create the optimizer's and the metrics' variables before fit, from float32 labels.

    Keras otherwise creates them while TensorFlow traces the first training step, and a
    tf.function that created variables is traced a second time: a second or more of every
    training (a third of a tiny one's). The values are the same either way (zeros).
    """
    model.optimizer.build(model.trainable_variables)
    model.compute_metrics(None, y_sample, np.full((len(y_sample), 1), 0.5, dtype="float32"))
    model.reset_metrics()


def kept_epoch(history: History, params: TrainParams) -> int:
    """The epoch whose weights ``train`` ends with: with early stopping, the first with the lowest val_loss; else the last.

    Keras' EarlyStopping (restore_best_weights) restores the last epoch whose val_loss was strictly
    below the best before it, also when training ran every epoch. The first epoch is the first
    best, whatever its val_loss: after a NaN there, no epoch improves (nothing is below NaN).
    """
    if params.early_stopping_patience <= 0:
        return int(history[-1]["epoch"])
    best, kept = history[0]["val_loss"], history[0]["epoch"]
    for record in history[1:]:
        if record["val_loss"] < best:
            best, kept = record["val_loss"], record["epoch"]
    return int(kept)


def predict(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Probability of "positive" for each review, as a 1-D float64 array."""
    check_ids("x", x, *_model_input_size(model))
    return model.predict(x, batch_size=batch_size, verbose=0).reshape(-1).astype(np.float64)


def save_model(model, path: str | Path) -> None:
    """Write Keras' native .keras file atomically: a temporary .keras beside it, then a rename."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a Keras model file must end in .keras")
    try:
        with atomic_path(path, suffix=".keras") as tmp:
            model.save(tmp)
    except OSError as error:
        raise DataError(f"{path}: cannot write the model ({error.strerror or error}); "
                        "check that the folder is writable and the disk has room") from None


def load_model(path: str | Path):
    """Read a .keras file written by save_model (safe mode: no code in the file is run).

    The model comes back uncompiled: it is for predicting. Raises DataError when the file is
    missing or unreadable.
    """
    import keras

    from src.model import register_custom_layers

    register_custom_layers()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model not found; run the train stage first")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError, OSError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable Keras model ({type(error).__name__}: {error}); "
                        "delete it and run the train stage again") from None
