"""FLOPs the LSTM does per review, and the float32 matmul rate this machine reaches (measured).

Only the LSTM's matrix products are counted: per timestep, per direction, per layer, the
gates are one product [batch, input + units] x [input + units, 4 * units], that is
2 * 4 * units * (input + units) FLOPs per review. The embedding lookup, the gate
nonlinearities and the Dense layer are left out (under 1 % at the pipeline's shapes).
Masked and padded timesteps are computed all the same, so a review costs maxlen steps, unless
train.bucket_by_length pads each batch only to its longest review: then only the review's own
steps are counted (its ids after truncation), which leaves out the little padding the buckets
keep, so the FLOP/s reached is, if anything, under-counted.
"""

import time

TRAINING_FACTOR = 3  # forward + backward ~ 3x forward (the backward pass does two products per forward one)
SQUARE = 2048        # the machine's peak is measured on 2048 x 2048 x 2048 products
MIN_FLOPS_PER_CALL = 2e8  # small products are repeated until one call does this much work: call overhead < 1 %
UNROLL = 16               # products per loop step of such a call


def lstm_shapes(model: dict, batch_size: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of each LSTM layer's gate product per timestep: [batch, input+units] x [input+units, 4*units]."""
    directions = 2 if model["bidirectional"] else 1
    shapes, width = [], model["embedding_dim"]
    for _ in range(model["layers"]):
        shapes.append((batch_size, width + model["units"], 4 * model["units"]))
        width = model["units"] * directions
    return shapes


def forward_flops_per_review(model: dict, maxlen: float) -> float:
    """FLOPs of one review's forward pass through the LSTM layers (matrix products only)."""
    directions = 2 if model["bidirectional"] else 1
    return float(sum(2 * k * n for _, k, n in lstm_shapes(model, 1)) * maxlen * directions)


def flop_figures(model: dict, steps: float, batch_size: int, reviews_per_second: float,
                 peaks: dict[str, float], validation_share: float = 0.0) -> dict:
    """FLOPs per review, the FLOP/s training reached, and its share of the measured peaks.

    ``reviews_per_second`` is training reviews per second of epoch time, and an epoch also
    runs the validation reviews forward (``validation_share`` of them per training review):
    the figure "with validation" counts that work too.

    ``peaks`` maps "m x k x n" to measured FLOP/s; the machine's peak is the largest. The
    LSTM-shape peak is the rate at which the LSTM's own products would run if training did
    nothing but them at their measured speed (a FLOP-weighted harmonic mean over layers).
    """
    forward = forward_flops_per_review(model, steps)
    training = TRAINING_FACTOR * forward
    achieved = training * reviews_per_second
    machine_peak = max(peaks.values())
    shapes = lstm_shapes(model, batch_size)
    per_layer = [2 * k * n for _, k, n in shapes]
    lstm_peak = sum(per_layer) / sum(flops / peaks[shape_name(shape)] for flops, shape in zip(per_layer, shapes))
    return {
        "lstm_steps_per_review": steps,
        "forward_flops_per_review": forward,
        "training_flops_per_review": training,
        "achieved_flops_per_second": achieved,
        "achieved_flops_per_second_with_validation": (training + validation_share * forward) * reviews_per_second,
        "machine_peak_flops_per_second": machine_peak,
        "fraction_of_machine_peak": achieved / machine_peak,
        "lstm_shape_peak_flops_per_second": lstm_peak,
        "fraction_of_lstm_shape_peak": achieved / lstm_peak,
    }


def shape_name(shape: tuple[int, int, int]) -> str:
    return " x ".join(str(size) for size in shape)


def matmul_rate(shape: tuple[int, int, int], seconds: float = 1.0, repeats: int = 3) -> float:
    """Best FLOP/s of float32 tf.matmul at ``shape`` over ``repeats`` timings of about ``seconds`` each.

    Small products run many to a tf.function call (UNROLL per loop step, each on an input
    picked by the step, so none can be hoisted out of the loop), so Python and dispatch
    overhead does not count against the machine.
    """
    import tensorflow as tf

    m, k, n = shape
    unroll = max(1, min(UNROLL, int(MIN_FLOPS_PER_CALL // (2 * m * k * n))))
    steps = max(1, int(MIN_FLOPS_PER_CALL // (2 * m * k * n * unroll)))
    a = tf.random.uniform([unroll, m, k], seed=1)
    b = tf.random.uniform([k, n], seed=2)

    @tf.function
    def products():
        total = tf.zeros([m, n])
        for step in tf.range(steps):
            for i in range(unroll):
                total += tf.matmul(tf.gather(a, (step + i) % unroll), b)
        return total[0, 0]

    return best_rate(lambda: products().numpy(), 2.0 * m * k * n * unroll * steps, seconds, repeats)


def best_rate(call, work_per_call: float, seconds: float, repeats: int) -> float:
    """Best work per second over ``repeats`` timings, each of as many ``call()``s as fill ``seconds``; one untimed call first (tracing, warm-up)."""
    call()
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, work_per_call * calls / elapsed)
    return best


def measure_peaks(model: dict, batch_size: int, seconds: float) -> dict[str, float]:
    """Measured FLOP/s at 2048^3 and at each of the LSTM's own shapes, keyed by shape_name."""
    shapes = [(SQUARE, SQUARE, SQUARE), *lstm_shapes(model, batch_size)]
    return {shape_name(shape): matmul_rate(shape, seconds) for shape in dict.fromkeys(shapes)}
