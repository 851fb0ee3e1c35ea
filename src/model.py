"""The LSTM classifier of the seed notebooks, with the options params.yaml exposes.

Keras is imported inside the functions, so a stage can validate params.yaml before paying
for the TensorFlow import (seconds).
"""

import functools

from src.params import ModelParams, TrainParams
from src.text import OOV

# model.mask_padding masks the padding zeros (Embedding(mask_zero=True)): the LSTM carries
# its state over padded steps, so the state the Dense layer sees is the one after the
# review's last word (first word, for the backward half of a Bidirectional LSTM) with pre
# and post padding alike.
# Unmasked, that state has run through up to maxlen - 1 padding steps after the words: with
# post padding forwards, with pre padding backwards. Masking costs a few percent of the
# training speed (benchmarks/results/README.md). The seeds did not mask; mask_padding: false reproduces them.

OPTIMIZERS = {"adam": "FusedAdam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}  # class names


def build_model(params: ModelParams, num_words: int, maxlen: int):
    """[WordDropout] -> Embedding -> ``params.layers`` LSTMs (optionally bidirectional) -> Dense(1, sigmoid)."""
    from keras import Input, Sequential, layers

    dtype = params.precision  # the policy of the embedding and the LSTMs; pooling and output stay float32
    model = Sequential(name="imdb_lstm")
    model.add(Input(shape=(maxlen,), dtype="int32"))
    if params.word_dropout:
        model.add(word_dropout()(params.word_dropout))
    model.add(layers.Embedding(num_words, params.embedding_dim, mask_zero=params.mask_padding, dtype=dtype,
                               trainable=not params.freeze_embedding))
    if params.embedding_dropout:
        # Drops whole embedding channels for the whole review: a word's vector is never half there.
        model.add(layers.SpatialDropout1D(params.embedding_dropout, dtype=dtype))
    for index in range(params.layers):
        last = index == params.layers - 1
        lstm = layers.LSTM(
            params.units,
            dropout=params.dropout,
            recurrent_dropout=params.recurrent_dropout,  # > 0: four matmuls a step, not one (slower)
            return_sequences=not last or params.pooling != "last",
            dtype=dtype,
        )
        model.add(layers.Bidirectional(lstm, dtype=dtype) if params.bidirectional else lstm)
    if params.pooling == "max":
        model.add(masked_max_pooling()())  # pooling and output in float32: a bfloat16 mean over 400 steps is coarse
    elif params.pooling == "max_mean":
        model.add(masked_max_mean_pooling()())
    model.add(layers.Dense(1, activation="sigmoid", dtype="float32"))
    return model


def embedding_layer(model):
    """The model's Embedding layer (the first layer, or the one after WordDropout)."""
    from keras import layers

    return next(layer for layer in model.layers if isinstance(layer, layers.Embedding))


def start_embedding_from(model, vectors, known) -> None:
    """The Embedding rows of the ``known`` ids take the pretrained ``vectors``; the others keep their random start."""
    layer = embedding_layer(model)
    weights = layer.get_weights()[0]
    weights[known] = vectors[known]
    layer.set_weights([weights])


@functools.cache
def word_dropout() -> type:
    """The class of a layer that, in training only, hides words: each becomes out-of-vocabulary at ``rate``.

    The model then cannot lean on any one word, such as a training movie's title or cast,
    which the test movies do not share. Padding and the start marker are kept, so the mask
    is unchanged. What it gained on the development data: benchmarks/results/README.md.
    Registered for load_model; built on first use.
    """
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="imdb_lstm")
    class WordDropout(keras.layers.Layer):
        """ids [batch, steps] -> the same ids, each word id replaced by OOV with probability ``rate`` in training."""

        def __init__(self, rate: float, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.rate = rate
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, inputs, training=False):
            if not training or not self.rate:
                return inputs
            hidden = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) < self.rate
            return ops.where(ops.logical_and(hidden, inputs > OOV), ops.full_like(inputs, OOV), inputs)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "rate": self.rate, "seed": self.seed}

    return WordDropout


@functools.cache
def masked_max_pooling() -> type:
    """The class of a GlobalMaxPooling1D that skips padded steps, registered for load_model.

    Keras' GlobalMaxPooling1D drops the mask (with a warning) and pools over the padded steps
    too, where the LSTM outputs the state carried over them: zeros before the first word with
    pre padding, which floors a short review's features at 0. Built on first use, so importing
    this module does not import Keras.
    """
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="imdb_lstm")
    class MaskedGlobalMaxPooling1D(keras.layers.Layer):
        """Maximum over the time steps the mask keeps, per feature: [batch, steps, features] -> [batch, features]."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs, mask=None):
            if mask is not None:
                # A padded step takes the review's smallest value, so it can never be the maximum.
                floor = ops.min(inputs, axis=1, keepdims=True)
                inputs = ops.where(ops.expand_dims(mask, -1), inputs, floor)
            return ops.max(inputs, axis=1)

        def compute_mask(self, inputs, mask=None):
            return None

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[2])

    return MaskedGlobalMaxPooling1D


@functools.cache
def masked_max_mean_pooling() -> type:
    """The class of a pooling layer giving the masked maximum and the masked mean, side by side.

    [batch, steps, features] -> [batch, 2 x features]. On the development data, max and mean
    together beat max alone (benchmarks/results/README.md).
    """
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="imdb_lstm")
    class MaskedGlobalMaxMeanPooling1D(masked_max_pooling()):
        """Maximum and mean over the time steps the mask keeps, per feature, concatenated."""

        def call(self, inputs, mask=None):
            maximum = super().call(inputs, mask)
            if mask is None:
                return ops.concatenate([maximum, ops.mean(inputs, axis=1)], axis=-1)
            kept = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
            mean = ops.sum(inputs * kept, axis=1) / ops.maximum(ops.sum(kept, axis=1), 1.0)
            return ops.concatenate([maximum, mean], axis=-1)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 2 * input_shape[2])

    return MaskedGlobalMaxMeanPooling1D


@functools.cache
def fused_adam() -> type:
    """The class of Adam updating each weight in one fused TensorFlow op (ResourceApplyAdam).

    The same rule as keras.optimizers.Adam, with two differences that matter here:
    - Speed: one op reads and writes each weight and its two moments once, where Keras
      runs about ten separate element-wise ops; seed one's shape (2.6 million embedding
      weights) trains faster (benchmarks/results/README.md).
    - A word used twice in a batch: its embedding gradient is the sum of both uses, and
      the second moment takes the square of that sum, as in Adam's paper and in Keras 2.
      Keras 3.15's Adam squares each use's gradient apart (it squares the sparse
      gradient's slices before adding them up), so a frequent word's step is larger.
    Registered for load_model; built on first use. Reads Keras' moments through
    src/compat/keras_internals.py.
    """
    import keras
    import tensorflow as tf

    from src.compat.keras_internals import adam_moments

    @keras.saving.register_keras_serializable(package="imdb_lstm")
    class FusedAdam(keras.optimizers.Adam):
        """keras.optimizers.Adam whose update of each weight is TensorFlow's fused ResourceApplyAdam."""

        def update_step(self, gradient, variable, learning_rate):
            if self.amsgrad:
                return super().update_step(gradient, variable, learning_rate)
            momentum, velocity = adam_moments(self, variable)
            dtype = variable.dtype
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=momentum.value.handle, v=velocity.value.handle,
                beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
                grad=tf.cast(tf.convert_to_tensor(gradient), dtype))  # a sparse gradient is summed per row first

    return FusedAdam


@functools.cache
def label_accuracy():
    """The accuracy metric: the share of reviews on their label's side of 0.5.

    A teacher's probability (train.teacher_reviews_per_epoch) counts as the label it leans to;
    Keras' "accuracy" would count it wrong unless exactly 0 or 1. On 0/1 labels the two agree.
    """
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="imdb_lstm")
    def accuracy(y_true, y_pred):
        return ops.cast(ops.equal(ops.reshape(y_true, (-1,)) > 0.5, ops.reshape(y_pred, (-1,)) > 0.5), "float32")

    return accuracy


def register_custom_layers() -> None:
    """Make the custom layers, the metric and the optimizer known to keras.saving.load_model."""
    label_accuracy()
    word_dropout()
    masked_max_pooling()
    masked_max_mean_pooling()
    fused_adam()


def make_optimizer(name: str, learning_rate: float):
    """The optimizer ``name`` (a train.optimizer choice) at ``learning_rate``; adam is fused_adam's."""
    from keras import optimizers

    if name == "adam":
        return fused_adam()(learning_rate=learning_rate)
    return getattr(optimizers, OPTIMIZERS[name])(learning_rate=learning_rate)


def compile_model(model, params: TrainParams) -> None:
    """Binary cross-entropy, accuracy, and the optimizer ``params.optimizer`` at ``params.learning_rate``."""
    model.compile(loss="binary_crossentropy", optimizer=make_optimizer(params.optimizer, params.learning_rate),
                  metrics=[label_accuracy()])
