"""build_model and compile_model: structure for every option, sizes against the seeds' own summaries."""

import dataclasses
import itertools

import keras
import numpy as np
import pytest

from src.model import (OPTIMIZERS, build_model, compile_model, embedding_layer, fused_adam, make_optimizer,
                       masked_max_pooling, word_dropout)
from src.params import ModelParams
from src.text import OOV

NUM_WORDS, MAXLEN = 60, 12  # short rows: the tests call the models eagerly, a step at a time


def model_params(**changes) -> ModelParams:
    base = ModelParams(embedding_dim=8, units=6, layers=1, bidirectional=False, dropout=0.0,
                       recurrent_dropout=0.0, pooling="last", mask_padding=True)
    return dataclasses.replace(base, **changes)


def random_ids(count: int, seed: int = 0) -> np.ndarray:
    """Pre-padded reviews of random length (at least the start id 1 and one word)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((count, MAXLEN), dtype=np.int32)
    for row in x:
        length = rng.integers(2, MAXLEN + 1)
        row[MAXLEN - length:] = np.concatenate([[1], rng.integers(2, NUM_WORDS, size=length - 1)])
    return x


OPTIONS = list(itertools.product((1, 2), (False, True), ("last", "max", "max_mean"), (0.0, 0.3)))
POOLING_LAYERS = {"last": [], "max": ["MaskedGlobalMaxPooling1D"], "max_mean": ["MaskedGlobalMaxMeanPooling1D"]}


@pytest.mark.parametrize("layers, bidirectional, pooling, dropout", OPTIONS)
def test_structure_and_output_for_every_option(layers, bidirectional, pooling, dropout):
    params = model_params(layers=layers, bidirectional=bidirectional, pooling=pooling,
                          dropout=dropout, recurrent_dropout=dropout / 2)
    model = build_model(params, NUM_WORDS, MAXLEN)

    recurrent = model.layers[1:1 + layers]
    expected_types = (["Embedding"] + [("Bidirectional" if bidirectional else "LSTM")] * layers
                      + POOLING_LAYERS[pooling] + ["Dense"])
    assert [type(layer).__name__ for layer in model.layers] == expected_types
    assert model.layers[0].input_dim == NUM_WORDS and model.layers[0].output_dim == 8
    assert model.layers[0].mask_zero
    for index, layer in enumerate(recurrent):
        lstm = layer.forward_layer if bidirectional else layer
        assert lstm.units == 6
        assert lstm.dropout == dropout and lstm.recurrent_dropout == dropout / 2
        assert lstm.return_sequences == (index < layers - 1 or pooling != "last")
    assert model.layers[-1].units == 1 and model.layers[-1].activation.__name__ == "sigmoid"

    width = (12 if bidirectional else 6) * (2 if pooling == "max_mean" else 1)
    assert model.layers[-2].output.shape == (None, width)
    if not dropout:  # predicting, dropout changes nothing: one call per shape (each takes a while, eagerly)
        probabilities = np.asarray(model(random_ids(5), training=False))
        assert probabilities.shape == (5, 1)
        assert ((probabilities > 0) & (probabilities < 1)).all()


@pytest.mark.parametrize("params, num_words, expected", [
    # Parameter counts printed by the seed notebooks' model.summary() (Keras 2).
    (ModelParams(128, 128, 1, False, 0.2, 0.2, "last", False), 20_000, 2_691_713),  # seed one
    (ModelParams(32, 100, 1, False, 0.0, 0.0, "last", False), 5_000, 213_301),  # seed two
])
def test_seed_models_have_the_seeds_parameter_counts(params, num_words, expected):
    assert build_model(params, num_words, maxlen=80).count_params() == expected


def lstm_weights(inputs: int, units: int) -> int:
    """Four gates, each with input weights, recurrent weights and a bias."""
    return 4 * (units * (inputs + units) + units)


def test_bidirectional_and_stacked_sizes_by_hand():
    params = model_params(layers=2, bidirectional=True)
    # embedding, 2 directions x (8 inputs -> 6 units), 2 directions x (12 inputs -> 6), dense 12 -> 1
    expected = NUM_WORDS * 8 + 2 * lstm_weights(8, 6) + 2 * lstm_weights(12, 6) + (12 + 1)
    assert build_model(params, NUM_WORDS, MAXLEN).count_params() == expected


@pytest.mark.parametrize("bidirectional, pooling", itertools.product((False, True), ("last", "max", "max_mean")))
def test_mask_makes_pre_and_post_padding_equivalent(bidirectional, pooling):
    keras.utils.set_random_seed(3)
    model = build_model(model_params(layers=2, bidirectional=bidirectional, pooling=pooling), NUM_WORDS, MAXLEN)
    pre = random_ids(6, seed=1)
    post = np.zeros_like(pre)
    for row_pre, row_post in zip(pre, post):
        words = row_pre[row_pre != 0]
        row_post[:len(words)] = words
    both = np.asarray(model(np.concatenate([pre, post]), training=False))  # one eager call, not two
    np.testing.assert_allclose(both[:len(pre)], both[len(pre):], rtol=1e-5, atol=1e-6)


def test_max_mean_pooling_is_the_masked_max_and_mean():
    """Against NumPy on the LSTM's own outputs, over the steps the mask keeps."""
    keras.utils.set_random_seed(4)
    model = build_model(model_params(pooling="max_mean"), NUM_WORDS, MAXLEN)
    x = random_ids(4, seed=2)
    sequences = keras.Model(model.inputs, model.layers[1].output)(x, training=False)
    pooled = np.asarray(keras.Model(model.inputs, model.layers[2].output)(x, training=False))
    for row, (ids, steps) in enumerate(zip(x, np.asarray(sequences))):
        kept = steps[ids != 0]
        np.testing.assert_allclose(pooled[row], np.concatenate([kept.max(axis=0), kept.mean(axis=0)]), rtol=1e-5, atol=1e-6)


def test_embedding_dropout_drops_whole_channels_in_training_only():
    model = build_model(model_params(embedding_dropout=0.5), NUM_WORDS, MAXLEN)
    assert [type(layer).__name__ for layer in model.layers][:2] == ["Embedding", "SpatialDropout1D"]
    dropout = model.layers[1]
    embedded = keras.ops.ones((2, MAXLEN, 8))
    dropped = np.asarray(dropout(embedded, training=True))
    assert np.array_equal(np.asarray(dropout(embedded, training=False)), np.ones((2, MAXLEN, 8)))
    assert (dropped == 0).any() and (dropped != 0).any()
    for review in dropped:  # a channel is zero at every step or at none
        assert ((review == 0).all(axis=0) | (review != 0).all(axis=0)).all()


def test_word_dropout_hides_words_in_training_only():
    model = build_model(model_params(word_dropout=0.25), NUM_WORDS, MAXLEN)
    assert [type(layer).__name__ for layer in model.layers][:2] == ["WordDropout", "Embedding"]
    assert embedding_layer(model) is model.layers[1] and embedding_layer(model).mask_zero
    x = random_ids(400, seed=4)
    hidden = np.asarray(model.layers[0](x, training=True))
    assert np.array_equal(np.asarray(model.layers[0](x, training=False)), x)
    changed = hidden != x
    assert (hidden[changed] == OOV).all()  # a hidden word becomes out-of-vocabulary, never another word
    assert (x[changed] > OOV).all()  # padding, the start marker and OOV itself stay
    assert np.array_equal(hidden == 0, x == 0)  # so the mask is the same
    share = changed.sum() / (x > OOV).sum()
    assert 0.2 < share < 0.3, share
    assert not np.array_equal(np.asarray(model.layers[0](x, training=True)), hidden)  # new words each call


def test_word_dropout_zero_adds_no_layer():
    model = build_model(model_params(word_dropout=0.0), NUM_WORDS, MAXLEN)
    assert "WordDropout" not in [type(layer).__name__ for layer in model.layers]


def test_word_dropout_layer_by_hand():
    layer = word_dropout()(0.5, seed=1)
    ids = np.array([[0, 0, 1, 2, 5, 6, 7, 8]], dtype="int32")
    assert np.array_equal(np.asarray(word_dropout()(0.0)(ids, training=True)), ids)
    draws = [np.asarray(layer(ids, training=True)) for _ in range(40)]
    for hidden in draws:
        assert np.array_equal(hidden[:, :4], ids[:, :4]) and set(np.unique(hidden[:, 4:])) <= {OOV, 5, 6, 7, 8}
    assert any((hidden[:, 4:] == OOV).all() for hidden in draws) and any((hidden == ids).all() for hidden in draws)
    assert layer.get_config()["rate"] == 0.5 and layer.get_config()["seed"] == 1


def test_without_mask_padding_changes_the_prediction():
    """The reference point for the test above: unmasked, the LSTM reads the padding."""
    keras.utils.set_random_seed(3)
    model = build_model(model_params(mask_padding=False), NUM_WORDS, MAXLEN)
    pre = random_ids(6, seed=1)
    post = np.stack([np.concatenate([row[row != 0], row[row == 0]]) for row in pre])
    assert not np.allclose(model(pre, training=False), model(post, training=False), atol=1e-6)


def test_masked_max_pooling_by_hand():
    pooling = masked_max_pooling()()
    values = np.array([[[5.0, -1.0], [-3.0, -2.0], [0.5, 4.0]]], dtype="float32")  # 1 review, 3 steps, 2 features
    mask = np.array([[False, True, True]])
    np.testing.assert_array_equal(pooling(values, mask=mask), [[0.5, 4.0]])  # the padded 5.0 is skipped
    np.testing.assert_array_equal(pooling(values, mask=np.array([[False, True, False]])), [[-3.0, -2.0]])
    np.testing.assert_array_equal(pooling(values), [[5.0, 4.0]])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_compile_for_every_optimizer(name, tiny_params):
    train_params = dataclasses.replace(tiny_params.train, optimizer=name, learning_rate=0.05)
    model = build_model(model_params(), NUM_WORDS, MAXLEN)
    compile_model(model, train_params)

    assert type(model.optimizer).__name__ == OPTIMIZERS[name]
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    model.run_eagerly = True  # the optimizer is what is tested: tracing the step would take seconds each
    x, y = random_ids(8), np.array([0, 1] * 4, dtype="float32")
    before = [w.copy() for w in model.get_weights()]
    loss, accuracy = model.train_on_batch(x, y)
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def numpy_adam(weight, gradients, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam as its paper writes it (Kingma and Ba, Algorithm 1, with Keras' epsilon), one dense gradient a step."""
    m, v = np.zeros_like(weight), np.zeros_like(weight)
    for step, gradient in enumerate(gradients, start=1):
        m = beta_1 * m + (1 - beta_1) * gradient
        v = beta_2 * v + (1 - beta_2) * gradient**2
        alpha = learning_rate * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
        weight = weight - alpha * m / (np.sqrt(v) + epsilon)
    return weight


def test_train_optimizer_adam_is_the_fused_adam():
    assert isinstance(make_optimizer("adam", 0.01), fused_adam())
    assert isinstance(make_optimizer("adam", 0.01), keras.optimizers.Adam)  # its config and defaults are Adam's


def test_fused_adam_follows_the_paper_with_a_word_used_twice_in_a_batch():
    # An embedding's gradient is sparse: one slice per use of a word. Row 1 is used twice per
    # step; its gradient is the sum of both slices, and Adam squares that sum.
    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3)).astype("float32")
    steps = [rng.normal(size=(3, 3)).astype("float32") for _ in range(3)]
    rows = np.array([1, 1, 3])
    dense = []
    for values in steps:
        gradient = np.zeros_like(start)
        np.add.at(gradient, rows, values)
        dense.append(gradient)

    import tensorflow as tf

    weight = keras.Variable(start)
    optimizer = fused_adam()(learning_rate=0.1)
    for values in steps:
        optimizer.apply_gradients([(tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant(start.shape)),
                                    weight)])
    np.testing.assert_allclose(np.asarray(weight), numpy_adam(start, dense, 0.1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(weight)[[0, 2]], start[[0, 2]])  # unused words do not move


def test_fused_adam_matches_keras_adam_on_dense_gradients():
    rng = np.random.default_rng(1)
    start = rng.normal(size=(5, 4)).astype("float32")
    steps = [rng.normal(size=start.shape).astype("float32") for _ in range(4)]
    weights = {}
    for name, optimizer in (("fused", fused_adam()(learning_rate=0.05)), ("keras", keras.optimizers.Adam(0.05))):
        weight = keras.Variable(start)
        for gradient in steps:
            optimizer.apply_gradients([(gradient, weight)])
        weights[name] = np.asarray(weight)
    np.testing.assert_allclose(weights["fused"], weights["keras"], rtol=1e-5, atol=1e-5)  # float32 rounding
    np.testing.assert_allclose(weights["fused"], numpy_adam(start, steps, 0.05), rtol=1e-5, atol=1e-6)


def test_mixed_bfloat16_computes_in_bfloat16_and_outputs_float32(tiny_params):
    model = build_model(model_params(precision="mixed_bfloat16", bidirectional=True, pooling="max_mean"),
                        NUM_WORDS, MAXLEN)
    embedding, recurrent, pooling, output = model.layers
    for layer in (embedding, recurrent):
        assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    assert pooling.compute_dtype == output.compute_dtype == "float32"
    assert all(weight.dtype == "float32" for weight in model.weights)

    compile_model(model, tiny_params.train)
    model.run_eagerly = True  # as in the test above: the dtypes are what is tested, not Keras' traced step
    x, y = random_ids(16), np.array([0, 1] * 8, dtype="float32")
    loss, _ = model.train_on_batch(x, y)
    probabilities = np.asarray(model(x, training=False))
    assert np.isfinite(loss) and probabilities.dtype == np.float32
    # The same weights in float32 give nearly the same probabilities: bfloat16 keeps 8 bits of mantissa.
    exact = build_model(model_params(bidirectional=True, pooling="max_mean"), NUM_WORDS, MAXLEN)
    exact.set_weights(model.get_weights())
    np.testing.assert_allclose(probabilities, exact(x, training=False), atol=0.02)


def test_accuracy_counts_a_teachers_probability_as_the_label_it_leans_to():
    from src.model import label_accuracy

    y_true = np.array([0.0, 1.0, 0.8, 0.3, 0.5], np.float32)  # 0/1 labels, then a teacher's probabilities
    y_pred = np.array([[0.2], [0.9], [0.6], [0.7], [0.5]], np.float32)
    assert np.asarray(label_accuracy()(y_true, y_pred)).tolist() == [1, 1, 1, 0, 1]
