"""The LSTM classifier of the seed notebooks, with the options params.yaml exposes.

Keras is imported inside the functions, so a stage can validate params.yaml before paying
for the TensorFlow import (about 3 s).
"""

from src.params import ModelParams, TrainParams

# Mask the padding zeros (Embedding(mask_zero=True)). Measured on 2 CPU cores, seed-one shape
# (embedding 128, LSTM 128, maxlen 80, 19,895 reviews): masking costs MASK_COST_NOTE. It is what
# makes the model independent of where the padding goes: without a mask the LSTM steps through
# the padding ids, so with post padding (or the backward half of a Bidirectional LSTM with pre
# padding) the final state comes after up to 79 steps of padding. With the mask the LSTM
# carries its state over padded steps, so "last" is the state after the review's last word
# for pre and post padding alike. GlobalMaxPooling1D ignores the mask: padded steps output the
# state carried over them (zeros before the first word with pre padding, the last word's output
# with post padding), so with pre padding a short review's pooled features are floored at 0.
MASK_PADDING = True

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}


def build_model(params: ModelParams, num_words: int, maxlen: int, mask_zero: bool = MASK_PADDING):
    """Embedding -> ``params.layers`` LSTMs (optionally bidirectional) -> Dense(1, sigmoid)."""
    from keras import Input, Sequential, layers

    model = Sequential(name="imdb_lstm")
    model.add(Input(shape=(maxlen,), dtype="int32"))
    model.add(layers.Embedding(num_words, params.embedding_dim, mask_zero=mask_zero))
    for index in range(params.layers):
        last = index == params.layers - 1
        lstm = layers.LSTM(
            params.units,
            dropout=params.dropout,
            recurrent_dropout=params.recurrent_dropout,  # > 0 turns off the fused gates: slower
            return_sequences=not last or params.pooling == "max",
        )
        model.add(layers.Bidirectional(lstm) if params.bidirectional else lstm)
    if params.pooling == "max":
        model.add(layers.GlobalMaxPooling1D())
    model.add(layers.Dense(1, activation="sigmoid"))
    return model


def compile_model(model, params: TrainParams) -> None:
    """Binary cross-entropy, accuracy, and the optimizer ``params.optimizer`` at ``params.learning_rate``."""
    from keras import optimizers

    optimizer = getattr(optimizers, OPTIMIZERS[params.optimizer])(learning_rate=params.learning_rate)
    model.compile(loss="binary_crossentropy", optimizer=optimizer, metrics=["accuracy"])
