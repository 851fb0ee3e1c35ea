"""Length-bucketed batches: every review exactly once per epoch, padding cut, the same model output."""

import numpy as np
import pytest

from src.batching import bucket_boundaries, length_bucketed_dataset, review_lengths


def padded(lengths, maxlen, padding="pre", seed=0):
    """Rows of ids 3.. with the given lengths, zero-padded to maxlen."""
    rng = np.random.default_rng(seed)
    x = np.zeros((len(lengths), maxlen), np.int32)
    for row, length in enumerate(lengths):
        ids = rng.integers(3, 50, size=length)
        if padding == "pre":
            x[row, maxlen - length:] = ids
        else:
            x[row, :length] = ids
    return x


def test_review_lengths_count_the_non_padding_ids():
    x = padded([3, 0, 7], 7)
    assert review_lengths(x).tolist() == [3, 0, 7]


def test_bucket_boundaries_cover_every_length():
    assert bucket_boundaries(80, 16) == [17, 33, 49, 65]
    assert bucket_boundaries(10, 16) == []


def epochs_of(data, count: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    return [list(data.as_numpy_iterator()) for _ in range(count)]


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_every_review_once_per_epoch_with_its_words_and_label(padding):
    lengths = np.random.default_rng(2).integers(1, 60, size=300)
    x = padded(lengths, 60, padding)
    y = np.arange(300, dtype=np.float32)  # the label names its row, to check the pairing
    for epoch in epochs_of(length_bucketed_dataset(x, y, 16, seed=5), 2):
        seen = []
        for batch_x, batch_y in epoch:
            assert len(batch_y) <= 16
            for ids, row in zip(batch_x, batch_y.astype(int)):
                words = x[row][x[row] != 0]
                assert np.array_equal(ids[:len(words)], words) and not ids[len(words):].any()
            seen.extend(batch_y.astype(int).tolist())
        assert sorted(seen) == list(range(300))


def test_batches_hold_reviews_of_similar_length():
    lengths = np.random.default_rng(1).integers(1, 400, size=2048)
    x = padded(lengths, 400)
    batches = list(length_bucketed_dataset(x, np.zeros(2048, np.float32), 32, seed=0).as_numpy_iterator())
    kept = sum(batch_x.size for batch_x, _ in batches)
    assert kept < 1.15 * lengths.sum() < 0.6 * x.size  # unbucketed, every batch is 400 wide: 2x the words


def test_order_is_new_each_epoch_and_fixed_by_the_seed():
    x = padded(np.random.default_rng(3).integers(1, 40, size=200), 40)
    y = np.arange(200, dtype=np.float32)

    def orders(seed):
        return [np.concatenate([b for _, b in epoch]).tolist()
                for epoch in epochs_of(length_bucketed_dataset(x, y, 16, seed=seed), 2)]

    first, again, other = orders(7), orders(7), orders(8)
    assert first == again
    assert first[0] != first[1]
    assert first[0] != other[0]


@pytest.mark.parametrize("bucketed", [True, False])
def test_each_epoch_draws_a_new_sample_of_the_extra_reviews_beside_every_labelled_one(bucketed):
    """The teacher's reviews (train.teacher_reviews_per_epoch): count of them an epoch, a new seeded draw each epoch."""
    from src.training import dataset

    x = padded(np.random.default_rng(4).integers(1, 40, size=100), 40)
    y = np.arange(100, dtype=np.float32)  # rows 0-59 labelled, 60-99 the extra ones: the label names the row

    def epochs(seed):
        extra = (x[60:], y[60:], 15)
        data = length_bucketed_dataset(x[:60], y[:60], 8, seed, extra) if bucketed else \
            dataset(x[:60], y[:60], 8, shuffle_seed=seed, extra=extra)
        return [sorted(np.concatenate([b for _, b in epoch]).astype(int).tolist()) for epoch in epochs_of(data, 3)]

    first, again, other = epochs(7), epochs(7), epochs(8)
    for rows in first:
        assert rows[:60] == list(range(60))  # every labelled review once
        assert len(rows) == 75 and len(set(rows)) == 75 and all(60 <= row < 100 for row in rows[60:])
    assert first == again
    assert len({tuple(rows) for rows in first}) == 3 and first != other


@pytest.mark.parametrize("bucketed", [True, False])
def test_training_batches_run_without_tf_data_autotuning(bucketed):
    """With it on, deleting an epoch's iterator sometimes left training idle for tens of seconds (benchmarks/results)."""
    from src.training import dataset

    x = padded([3, 9, 17, 30], 40)
    y = np.zeros(4, np.float32)
    data = length_bucketed_dataset(x, y, 2, 0) if bucketed else dataset(x, y, 2, shuffle_seed=0)
    assert data.options().autotune.enabled is False
    if not bucketed:  # the multi-worker sharding option is kept beside it
        assert data.options().experimental_distribute.auto_shard_policy.name == "DATA"


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_a_masked_lstm_gives_the_same_output_on_bucketed_batches(padding):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40,), dtype="int32"), keras.layers.Embedding(60, 8, mask_zero=True),
                              keras.layers.LSTM(6), keras.layers.Dense(1)])
    x = padded([5, 12, 3, 9], 40, padding)
    full = model.predict(x, verbose=0)
    y = np.arange(len(x), dtype=np.float32)
    for batch_x, batch_y in length_bucketed_dataset(x, y, 2, seed=0).as_numpy_iterator():
        np.testing.assert_allclose(model.predict(batch_x, verbose=0), full[batch_y.astype(int)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("maxlen", "batch_size", "bucketed"), [(60, 16, True), (60, 7, True), (60, 16, False),
                                                                (10, 4, True), (60, 500, True)])
def test_batches_per_epoch_counts_the_batches_an_epoch_yields(maxlen, batch_size, bucketed):
    from src.batching import batches_per_epoch
    from src.training import dataset

    lengths = np.random.default_rng(5).integers(1, maxlen + 1, size=301)
    x, y = padded(lengths, maxlen), np.zeros(301, np.float32)
    data = length_bucketed_dataset(x, y, batch_size, seed=1) if bucketed else dataset(x, y, batch_size, 1)
    assert batches_per_epoch(x, batch_size, bucketed) == sum(1 for _ in data)
    assert batches_per_epoch(x[:100], batch_size, bucketed, x[100:250], x[250:]) == sum(1 for _ in data)
