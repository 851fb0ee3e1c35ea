"""Predicting for a server: model.predict's probabilities (to 1e-6), without its overhead and padding.

``model.predict`` costs about 100 ms a call before any review is read, and steps the LSTM
through every padding position up to maxlen. A ``Predictor`` instead sorts a request's reviews by
length and runs them in batches of similar length, so a batch of short reviews takes few steps,
as training's length buckets do (src/batching.py); with masked padding nothing changes.

For this project's model shapes (one LSTM or bidirectional LSTM over a masked float32 embedding,
pooled by its last state, its maximum or maximum and mean, then Dense(1)) it runs its own forward
pass, compiled by XLA, which does less per step than Keras' LSTM loop: the embedding and the
LSTM's input product are folded into one table (vocabulary x 4 units, computed at load), so a
step is a row lookup and the recurrent product, both directions at once. Every review is padded
in front, so its padding steps come first and leave the state exactly zero, as masking does (the
padding row's input gate is -inf: sigmoid gives exactly 0), and the loop starts at the batch's
longest review. XLA compiles one program per batch size (BATCH_SIZES: a second or two each, at
load in a server, else at first use); a batch is filled up with empty rows to the next size.

Other models (several LSTM layers, unmasked padding, bfloat16) run through Keras' own graph, a
batch cut to the columns its reviews use when the padding is masked. Measured with the default
model: benchmarks/serving.py. Checked against model.predict: tests/test_inference.py.
"""

import numpy as np

BATCH = 128  # reviews per forward pass (at most)
BATCH_SIZES = (1, 8, 32)  # and BATCH: a smaller batch is filled up with empty rows to the next of these


def _fast_layers(model) -> dict | None:
    """The weights the fast forward pass needs, or None when the model is not a shape it handles."""
    from keras import layers

    from src.model import masked_max_mean_pooling, masked_max_pooling, word_dropout

    found = {"pooling": "last"}
    recurrent = []
    for layer in model.layers:
        if layer.dtype_policy.name != "float32":
            return None
        if isinstance(layer, (word_dropout(), layers.SpatialDropout1D, layers.Dropout)):
            continue  # identities when predicting
        if isinstance(layer, layers.Embedding) and "embedding" not in found:
            if not layer.mask_zero:
                return None
            found["embedding"] = layer.embeddings.numpy()
        elif isinstance(layer, (layers.LSTM, layers.Bidirectional)) and "embedding" in found and not recurrent:
            recurrent.append(layer)
        elif type(layer) is masked_max_mean_pooling() and recurrent:
            found["pooling"] = "max_mean"
        elif type(layer) is masked_max_pooling() and recurrent:
            found["pooling"] = "max"
        elif isinstance(layer, layers.Dense) and recurrent and layer is model.layers[-1]:
            if layer.units != 1 or layer.activation.__name__ != "sigmoid" or not layer.use_bias:
                return None
            found["dense"] = (layer.kernel.numpy(), layer.bias.numpy())
        else:
            return None
    if len(recurrent) != 1 or "dense" not in found:
        return None
    layer = recurrent[0]
    if isinstance(layer, layers.Bidirectional):
        if layer.merge_mode != "concat":
            return None
        lstms = [layer.forward_layer, layer.backward_layer]
    else:
        lstms = [layer]
    for lstm, backwards in zip(lstms, (False, True)):
        cell = lstm.cell
        if (lstm.go_backwards != backwards or lstm.return_sequences != (found["pooling"] != "last")
                or cell.activation.__name__ != "tanh" or cell.recurrent_activation.__name__ != "sigmoid"
                or not cell.use_bias):
            return None
    found["cells"] = [(lstm.cell.kernel.numpy(), lstm.cell.recurrent_kernel.numpy(), lstm.cell.bias.numpy())
                      for lstm in lstms]
    return found


def _fast_forward(weights: dict, maxlen: int):
    """An XLA-compiled function: ids [directions, batch, maxlen] (each review padded in front; the
    backward copy reversed) -> probabilities. XLA compiles it once per batch size."""
    import tensorflow as tf

    embedding, pooling = weights["embedding"], weights["pooling"]
    units = weights["cells"][0][1].shape[0]
    tables = []
    for kernel, _, bias in weights["cells"]:
        table = embedding @ kernel + bias  # row w: word w's input product, bias included
        table[0, :units] = -np.inf  # padding: input gate exactly 0, so the zero state stays zero
        tables.append(table.astype(np.float32))
    directions = len(tables)

    def variable(value):  # not a constant: XLA would fold a constant into every program it compiles
        return tf.Variable(np.asarray(value, dtype=np.float32), trainable=False)

    table = variable(np.stack(tables))  # [directions, vocabulary, 4 units]
    recurrent = variable(np.stack([cell[1] for cell in weights["cells"]]))  # [directions, units, 4 units]
    kernel, bias = (variable(value) for value in weights["dense"])

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([directions, None, maxlen], tf.int32)])
    def forward(ids):
        steps = tf.transpose(ids, [2, 0, 1])  # [maxlen, directions, batch]
        padding = tf.where(steps == 0, -np.inf, 0.0)[..., None]  # [maxlen, directions, batch, 1]
        words = tf.reduce_sum(tf.cast(ids[0] != 0, tf.float32), axis=1, keepdims=True)
        first = maxlen - tf.cast(tf.reduce_max(words), tf.int32)  # every review of the batch is padding before it

        def step(t, h, c, maximum, total):
            z = tf.gather(table, steps[t], batch_dims=1) + tf.matmul(h, recurrent)
            i, f, g, o = tf.split(z, 4, axis=-1)  # Keras' gate order
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            # padding steps add exact zeros to the total, and -inf cannot be a maximum
            return t + 1, h, c, tf.maximum(maximum, h + padding[t]), total + h

        shape = [directions, tf.shape(ids)[1], units]
        zeros = tf.zeros(shape)
        # a while_loop, not a for over tf.range: XLA would compile a program for every start step
        _, h, _, maximum, total = tf.while_loop(lambda t, *state: t < maxlen, step,
                                                (first, zeros, zeros, tf.fill(shape, -np.inf), zeros))
        if pooling == "last":
            features = tf.unstack(h)
        else:
            mean = total / tf.maximum(words, 1.0)  # an empty row (batch filler) gets 0, not NaN
            features = tf.unstack(maximum) + (tf.unstack(mean) if pooling == "max_mean" else [])
        return tf.sigmoid(tf.matmul(tf.concat(features, axis=-1), kernel) + bias)[:, 0]

    return forward


def _front_padded(x: np.ndarray, directions: int, rows: int | None = None, width: int | None = None) -> np.ndarray:
    """[directions, rows, width]: each row's non-zero ids padded in front (the second copy reversed), then empty rows.

    ``rows`` defaults to len(x), ``width`` to the longest row's ids.
    """
    kept = x != 0
    lengths = kept.sum(axis=1)
    width = int(lengths.max()) if width is None else width
    ids = x[kept]  # row after row, in order
    row = np.repeat(np.arange(len(x)), lengths)
    offset = np.arange(ids.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # 0 .. length - 1
    out = np.zeros((directions, len(x) if rows is None else rows, width), dtype=np.int32)
    out[0, row, width - lengths[row] + offset] = ids
    if directions == 2:
        out[1, row, width - 1 - offset] = ids
    return out


class Predictor:
    """``predictor(x)``: the probability of "positive" per row of ``x`` (padded ids, as model.predict takes them)."""

    def __init__(self, model, batch_size: int = BATCH, compile_now: bool = False):
        """``compile_now``: compile every batch size's program here (a server), not at its first use."""
        import tensorflow as tf

        from src.model import embedding_layer

        self.batch_size = batch_size
        self.num_words, self.maxlen = embedding_layer(model).input_dim, model.input_shape[1]
        self.masked = embedding_layer(model).mask_zero
        self._keras = tf.function(lambda ids: model(ids, training=False),
                                  input_signature=[tf.TensorSpec([None, None], tf.int32)])
        weights = _fast_layers(model)
        self.fast = weights is not None
        if self.fast:
            self.directions = len(weights["cells"])
            self.sizes = sorted({size for size in BATCH_SIZES if size < batch_size} | {batch_size})
            self._fast = _fast_forward(weights, self.maxlen)
            for size in self.sizes if compile_now else ():
                self._fast(np.zeros((self.directions, size, self.maxlen), dtype=np.int32))

    def _batch(self, x: np.ndarray) -> np.ndarray:
        if self.fast:
            rows = next(size for size in self.sizes if size >= len(x))  # empty rows up to a compiled size
            return self._fast(_front_padded(x, self.directions, rows, self.maxlen)).numpy()[:len(x)]
        if self.masked:  # the columns of the batch some review uses: masked padding changes nothing
            used = np.flatnonzero(x.any(axis=0))
            x = x[:, used[0]:used[-1] + 1]
        return self._keras(x).numpy().reshape(-1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from src.training import check_ids

        check_ids("x", x, self.num_words, self.maxlen)
        x = x.astype(np.int32, copy=False)
        lengths = np.count_nonzero(x, axis=1)
        if not lengths.all():  # a row of padding alone (never from the encoder: every review starts with START)
            return self._keras(x).numpy().reshape(-1).astype(np.float64)
        out = np.empty(len(x), dtype=np.float64)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(x), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._batch(x[rows])
        return out
