"""Length-bucketed batches: every review exactly once per epoch, padding cut, the same model output."""

import numpy as np
import pytest

from src.batching import bucketed_batches, cut_padding, length_bucketed_dataset, review_lengths


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


@pytest.mark.parametrize("count,batch_size", [(1000, 32), (33, 32), (5, 8)])
def test_every_review_lands_in_exactly_one_batch(count, batch_size):
    lengths = np.random.default_rng(1).integers(1, 400, size=count)
    batches = bucketed_batches(lengths, batch_size, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(count))
    assert len(batches) == -(-count // batch_size)
    assert all(len(batch) <= batch_size for batch in batches)


def test_batches_hold_reviews_of_similar_length():
    lengths = np.random.default_rng(1).integers(1, 400, size=4096)
    batches = bucketed_batches(lengths, 32, np.random.default_rng(0))
    kept = sum(lengths[batch].max() * len(batch) for batch in batches)
    assert kept < 1.1 * lengths.sum()  # unbucketed, every batch would cost ~ its longest: ~1.9x here


def test_order_depends_on_the_seed_only():
    lengths = np.arange(500) % 97
    first = bucketed_batches(lengths, 16, np.random.default_rng(3))
    again = bucketed_batches(lengths, 16, np.random.default_rng(3))
    other = bucketed_batches(lengths, 16, np.random.default_rng(4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_cut_padding_keeps_every_word(padding):
    x = padded([2, 5, 3], 9, padding)
    cut = cut_padding(x)
    assert cut.shape == (3, 5)
    assert [sorted(row[row != 0]) for row in cut] == [sorted(row[row != 0]) for row in x]


def test_cut_padding_of_empty_reviews_keeps_one_column():
    assert cut_padding(np.zeros((2, 6), np.int32)).shape == (2, 1)


def test_dataset_covers_the_data_each_epoch_in_a_new_order():
    x = padded(np.random.default_rng(2).integers(1, 30, size=70), 30)
    y = np.arange(70, dtype=np.float32)  # the label names its row, to check the pairing
    data = length_bucketed_dataset(x, y, 16, seed=5)
    epochs = []
    for _ in range(2):
        seen = []
        for index in range(len(data)):
            batch_x, batch_y = data[index]
            rows = batch_y.astype(int)
            assert np.array_equal(batch_x, x[rows][:, 30 - batch_x.shape[1]:])
            assert (review_lengths(batch_x) == review_lengths(x[rows])).all()
            seen.extend(rows.tolist())
        assert sorted(seen) == list(range(70))
        epochs.append(seen)
        data.on_epoch_end()
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_a_masked_lstm_gives_the_same_output_on_cut_batches(padding):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40,), dtype="int32"), keras.layers.Embedding(60, 8, mask_zero=True),
                              keras.layers.LSTM(6), keras.layers.Dense(1)])
    x = padded([5, 12, 3, 9], 40, padding)
    full = model.predict(x, verbose=0)
    cut = model.predict(cut_padding(x), verbose=0)
    np.testing.assert_allclose(cut, full, rtol=1e-5, atol=1e-6)


def test_bucketed_training_learns_and_is_reproducible(tiny_params):
    """train() with bucket_by_length: the same seed gives the same weights, and the model learns."""
    import dataclasses

    from test_training import assert_same_weights, fit_tiny

    bucketed = dataclasses.replace(tiny_params, train=dataclasses.replace(tiny_params.train, bucket_by_length=True))
    model_a, history_a = fit_tiny(bucketed, seed=7)
    model_b, _ = fit_tiny(bucketed, seed=7)
    assert_same_weights(model_a.get_weights(), model_b.get_weights())
    assert history_a[-1]["val_accuracy"] > 0.8
    assert history_a[-1]["loss"] < history_a[0]["loss"]
    unbucketed, _ = fit_tiny(tiny_params, seed=7)
    assert any(not np.array_equal(a, b) for a, b in zip(model_a.get_weights(), unbucketed.get_weights()))
