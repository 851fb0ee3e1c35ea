"""Will training fit in this machine's memory? A rough estimate, to refuse hopeless params at once.

The train stage (and what runs it: `mlflow run`'s entry point, the benchmarks) checks before
TensorFlow loads; the other stages do not train, so they do not check.
"""

import os
from dataclasses import dataclass

from src.errors import ParamsError
from src.params import ModelParams, Params, PreprocessParams, TrainParams

GIB = 2**30
FLOAT_BYTES = 4  # float32 weights and activations
ACTIVATION_SAFETY = 1.5  # backward-pass temporaries and allocator slack on top of the kept activations
RUNTIME_BYTES = 3 * GIB // 4  # Python, TensorFlow, the data: above what they took (benchmarks/results/README.md)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes training needs, in three parts (see training_memory)."""

    activations: int
    weights: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.activations + self.weights + self.runtime


def training_memory(preprocess: PreprocessParams, model: ModelParams, train: TrainParams) -> MemoryEstimate:
    """A rough estimate of the memory training these params needs: to refuse the hopeless, not to plan.

    Backpropagation through time keeps every time step's tensors until the backward pass.
    Per review in the batch, time step, layer and direction, that is the layer's input
    (embedding_dim for the first layer, units x directions above it), the four gates before
    and after their activations (8 x units) and the states c, h, tanh(c) and the h carried
    in (4 x units), as float32, times ACTIVATION_SAFETY. The weights (embedding, LSTMs,
    Dense) count four times: the weight, its gradient and Adam's two moments. RUNTIME_BYTES
    covers Python, TensorFlow and the arrays. Dropout masks and data size are ignored.

    Against the process' measured peak memory it errs on the high side (benchmarks/results/README.md).
    ``train.batch_size`` is the global batch: with several workers each one holds only its
    share, so for them this over-estimates.
    """
    directions = 2 if model.bidirectional else 1
    per_step = 0  # floats kept per review and time step, over every layer and direction
    weights = preprocess.num_words * model.embedding_dim
    layer_input = model.embedding_dim
    for _ in range(model.layers):
        per_step += directions * (layer_input + 12 * model.units)
        weights += directions * 4 * model.units * (layer_input + model.units + 1)
        layer_input = directions * model.units
    weights += layer_input + 1  # the Dense output
    activations = train.batch_size * preprocess.maxlen * per_step * FLOAT_BYTES * ACTIVATION_SAFETY
    return MemoryEstimate(activations=int(activations), weights=4 * weights * FLOAT_BYTES)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read().strip())
    except (OSError, ValueError):  # missing, or cgroup v2's "max": no limit
        return None


def machine_memory() -> int | None:
    """Bytes of memory this process can have: the physical memory, or its cgroup's limit when lower.

    Physical memory, not what is free at this moment: a check on params must give the same
    answer every time (DVC and the tests rely on that). None when the system does not say.
    """
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
    limits = [_read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")]
    return min([physical, *(limit for limit in limits if limit)])


def _gib(size: float) -> str:
    return f"{size / GIB:.1f}" if size < 100 * GIB else f"{size / GIB:,.0f}"


def check_training_memory(params: Params, available: int | None = None) -> None:
    """Raise ParamsError when training would need more memory than ``available`` (default: this machine's)."""
    available = machine_memory() if available is None else available
    if available is None:
        return
    need = training_memory(params.preprocess, params.model, params.train)
    if need.total <= available:
        return
    if need.weights + need.runtime > available:
        raise ParamsError(
            f"preprocess.num_words {params.preprocess.num_words} x model.embedding_dim {params.model.embedding_dim} "
            f"(with model.units {params.model.units}) needs about {_gib(need.weights + need.runtime)} GiB for the "
            f"weights and optimizer state alone, more than the {_gib(available)} GiB this machine has; lower one of them")
    raise ParamsError(
        f"preprocess.maxlen {params.preprocess.maxlen} x train.batch_size {params.train.batch_size} needs about "
        f"{_gib(need.total)} GiB for training (model.embedding_dim {params.model.embedding_dim}, model.units "
        f"{params.model.units}, model.layers {params.model.layers}), more than the {_gib(available)} GiB this machine "
        "has; lower one of them")
