"""The serving Predictor gives model.predict's probabilities, to 1e-6, for every model shape params.yaml can build."""

import dataclasses
import itertools

import numpy as np
import pytest

from src.inference import Predictor, _front_padded
from src.model import build_model
from src.params import ModelParams

NUM_WORDS, MAXLEN = 50, 30


def model_params(**changes) -> ModelParams:
    base = ModelParams(embedding_dim=8, units=6, layers=1, bidirectional=True, dropout=0.0, recurrent_dropout=0.0,
                       pooling="max_mean", mask_padding=True, embedding_dropout=0.2, word_dropout=0.2)
    return dataclasses.replace(base, **changes)


def model_with_random_weights(params: ModelParams, seed: int = 0):
    """Weights drawn wide enough that gates saturate and the probabilities spread over (0, 1)."""
    model = build_model(params, NUM_WORDS, MAXLEN)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 1.0, weight.shape).astype(weight.dtype) for weight in model.get_weights()])
    return model


def reviews(count: int, padding: str, seed: int = 1) -> np.ndarray:
    """Encoder-like rows: START, then words, 1 to MAXLEN ids, padded on ``padding``'s side."""
    rng = np.random.default_rng(seed)
    x = np.zeros((count, MAXLEN), dtype=np.int32)
    for row in x:
        length = int(rng.integers(1, MAXLEN + 1))
        ids = np.concatenate([[1], rng.integers(2, NUM_WORDS, size=length - 1)])
        if padding == "pre":
            row[MAXLEN - length:] = ids
        else:
            row[:length] = ids
    return x


def expected(model, x: np.ndarray) -> np.ndarray:
    return model.predict(x, batch_size=512, verbose=0).reshape(-1).astype(np.float64)


FAST = list(itertools.product((True, False), ("last", "max", "max_mean")))


@pytest.mark.parametrize(("bidirectional", "pooling"), FAST)
def test_the_fast_path_gives_model_predicts_probabilities(bidirectional, pooling):
    model = model_with_random_weights(model_params(bidirectional=bidirectional, pooling=pooling))
    predictor = Predictor(model, batch_size=8)  # several batches of different lengths
    assert predictor.fast
    for padding in ("pre", "post"):
        x = reviews(300, padding)
        got, want = predictor(x), expected(model, x)
        assert got.dtype == np.float64 and got.shape == (300,)
        assert want.std() > 0.05  # the weights spread the probabilities: a wrong pass could not match by chance
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"padding {padding}")
        np.testing.assert_allclose(predictor(x[7:8]), want[7:8], rtol=0, atol=1e-6)  # one review alone


@pytest.mark.parametrize("changes", [{"layers": 2}, {"mask_padding": False}, {"mask_padding": False, "pooling": "last"},
                                     {"precision": "mixed_bfloat16"}])
def test_other_models_run_through_keras_with_the_same_probabilities(changes):
    model = model_with_random_weights(model_params(**changes))
    x = reviews(200, "pre")
    predictor = Predictor(model, batch_size=8)
    assert not predictor.fast
    np.testing.assert_allclose(predictor(x), expected(model, x), rtol=0, atol=1e-6)


def test_a_row_of_padding_alone_gets_what_predict_gives():
    model = model_with_random_weights(model_params())
    x = reviews(10, "pre")
    x[3] = 0
    np.testing.assert_allclose(Predictor(model)(x), expected(model, x), rtol=0, atol=1e-6)


def test_rows_are_padded_in_front_and_reversed_for_the_backward_direction():
    x = np.array([[0, 0, 1, 5, 6], [1, 7, 0, 0, 0], [1, 2, 3, 4, 9]], dtype=np.int32)
    front = _front_padded(x, 2)
    np.testing.assert_array_equal(front[0], [[0, 0, 1, 5, 6], [0, 0, 0, 1, 7], [1, 2, 3, 4, 9]])
    np.testing.assert_array_equal(front[1], [[0, 0, 6, 5, 1], [0, 0, 0, 7, 1], [9, 4, 3, 2, 1]])
    np.testing.assert_array_equal(_front_padded(x[:2, :], 1)[0], [[1, 5, 6], [0, 1, 7]])


def test_ids_outside_the_vocabulary_are_refused():
    from src.errors import DataError

    model = model_with_random_weights(model_params())
    x = reviews(3, "pre")
    x[0, -1] = NUM_WORDS
    with pytest.raises(DataError, match="token ids must lie in"):
        Predictor(model)(x)
