"""How fast one Keras LSTM layer trains by itself: the ceiling on any whole model built on it.

A training step of the pipeline's model does the LSTM's forward and backward passes and more
(the embedding, its gradient, the optimizer, the validation pass of each epoch). Timing the
LSTM layer alone, on random inputs of the model's shape, gives the most reviews per second any
choice around it can reach: if seed one's configuration trains at R reviews/s, no batching,
dropout or input-pipeline choice can make the same shape train faster than ceiling / R times
seed one, while the LSTM is Keras'.
"""

from benchmarks.flops import best_rate


def lstm_layer_rate(embedding_dim: int, units: int, maxlen: int, batch_size: int, seconds: float = 3.0,
                    repeats: int = 3, precision: str = "float32") -> float:
    """Best reviews/s of one keras.layers.LSTM's forward + backward pass at this shape (no mask).

    ``precision`` is a model.precision: the LSTM's dtype policy.

    Each timing runs whole steps (a tf.function: forward, loss, gradients of the layer's
    weights and of its inputs, as in training) for about ``seconds``; the best of ``repeats``.
    """
    import keras
    import tensorflow as tf

    inputs = tf.random.uniform([batch_size, maxlen, embedding_dim], -0.05, 0.05, seed=3)
    lstm = keras.layers.LSTM(units, dtype=precision)
    lstm(inputs)  # build

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(tf.cast(lstm(inputs, training=True), "float32"))
        gradients = tape.gradient(loss, [inputs, *lstm.trainable_variables])
        return tf.add_n([tf.reduce_sum(g) for g in gradients])

    return best_rate(lambda: step().numpy(), batch_size, seconds, repeats)


def ceilings(embedding_dim: int, units: int, maxlen: int, batch_sizes: list[int], seconds: float,
             precision: str = "float32") -> dict[str, float]:
    """lstm_layer_rate at each batch size, keyed by the batch size (as text, for JSON)."""
    return {str(batch): lstm_layer_rate(embedding_dim, units, maxlen, batch, seconds, precision=precision)
            for batch in batch_sizes}
