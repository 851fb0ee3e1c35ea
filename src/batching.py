"""Batches of reviews of similar length, each padded only to its longest review (train.bucket_by_length).

A padded review costs as much as a full one: the LSTM steps through every padding position,
masked or not. With maxlen 400 most reviews are shorter than their row, so grouping reviews of
similar length into a batch and padding it only to its longest review skips most of the
padding, and an epoch of the default model runs markedly faster; at a maxlen that most
reviews fill (seed one's 80), it gains nothing. The figures: benchmarks/results/README.md.

With mask_padding the model's output does not depend on how much padding a review carries, or
on which side (tested), so the batches change nothing but which reviews train together. The
order is seeded: the same seed gives the same batches, epoch after epoch.
"""

import numpy as np

# Reviews go to buckets of this many lengths (1-16, 17-32, ...): a batch is padded by at most 15.
BUCKET_WIDTH = 16


def review_lengths(x: np.ndarray) -> np.ndarray:
    """Tokens per row of a padded id array (padding is id 0; no word or marker has id 0)."""
    return np.count_nonzero(x, axis=1)


def bucket_boundaries(maxlen: int, width: int = BUCKET_WIDTH) -> list[int]:
    """The upper bounds (exclusive) of the length buckets: width + 1, 2 width + 1, ... up to maxlen."""
    return list(range(width + 1, maxlen + 1, width))


def prefetched(data, options=None):
    """``data`` with two batches prefetched and tf.data's autotuning off (in ``options``, or new ones).

    With autotuning on, Keras deleting the used-up iterator before a validation pass sometimes
    waited for tf.data's tuning thread, the process idle, for a good part of an epoch's time
    (measured: benchmarks/results/README.md). Nothing here needs tuning (one map, no parallel
    reads), and the batches and their order do not change.
    """
    import tensorflow as tf

    options = options or tf.data.Options()
    options.autotune.enabled = False
    return data.prefetch(2).with_options(options)


def with_a_sample_each_epoch(x: np.ndarray, y: np.ndarray, extra, seed: int):
    """(tf.data.Dataset of every (x, float32 y) and, with ``extra`` = (reviews, labels, count), count of
    those reviews drawn afresh each epoch (seeded); the number of examples an epoch holds)."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x, y.astype("float32")))
    if extra is None:
        return data, len(x)
    extra_x, extra_y, count = extra
    drawn = tf.data.Dataset.from_tensor_slices((extra_x, extra_y.astype("float32")))
    drawn = drawn.shuffle(len(extra_x), seed=seed + 1, reshuffle_each_iteration=True).take(count)
    return data.concatenate(drawn), len(x) + count


def length_bucketed_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, extra=None):
    """A tf.data.Dataset of (ids, float32 labels) batches of reviews of similar length, reshuffled each epoch.

    Each review loses its padding, the reviews are shuffled, and tf.data's
    bucket_by_sequence_length batches them by length, padding each batch (after the words)
    to its longest review. Every review is in exactly one batch per epoch. ``extra``
    (reviews, labels, count) adds count of those reviews to each epoch, drawn afresh.
    """
    import tensorflow as tf

    boundaries = bucket_boundaries(x.shape[1])
    data, size = with_a_sample_each_epoch(x, y, extra, seed)
    data = data.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    data = data.map(lambda ids, label: (tf.boolean_mask(ids, ids != 0), label))
    data = data.bucket_by_sequence_length(
        lambda ids, label: tf.shape(ids)[0], boundaries, [batch_size] * (len(boundaries) + 1),
        padded_shapes=([None], []))
    return prefetched(data)


def batches_per_epoch(x: np.ndarray, batch_size: int, bucketed: bool, *more: np.ndarray) -> int:
    """How many batches an epoch of ``x`` and the ``more`` arrays (as one) has: ceil(n / batch_size),
    or with length buckets each bucket's own ceiling.

    bucket_by_sequence_length puts a review of length L in the bucket whose upper bound is the
    first above L, and emits every bucket's last, partial batch at the epoch's end.
    """
    parts = (x, *more)
    if not bucketed:
        return -(-sum(len(part) for part in parts) // batch_size)
    boundaries = bucket_boundaries(x.shape[1])
    counts = sum(np.bincount(np.searchsorted(boundaries, review_lengths(part), side="right"),
                             minlength=len(boundaries) + 1) for part in parts)
    return int(sum(-(-int(count) // batch_size) for count in counts))
