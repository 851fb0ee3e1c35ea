"""params.yaml: one frozen dataclass per section, validated on load.

Every key is required and every unknown key is refused (with the closest valid key
suggested), so a typo such as ``train.epochz`` fails at once instead of being ignored.
A configuration whose training would need more memory than the machine has (see
training_memory) is refused too, so no stage starts on params that cannot train.
"""

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src.errors import ParamsError

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# model.precision: Keras dtype policies. mixed_bfloat16 keeps the weights in float32 and computes in bfloat16.
PRECISIONS = ("float32", "mixed_bfloat16")


def _rule(*, choices=None, minimum=None, maximum=None, exclusive_minimum=None, exclusive_maximum=None, check=None):
    """Validation rule attached to a dataclass field as metadata."""
    return {
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "exclusive_maximum": exclusive_maximum,
        "check": check,
    }


def _check_url(value: str) -> str | None:
    if value == "" or value.startswith(("http://", "https://", "file://")):
        return None
    if "://" in value:
        return "must be empty, an http://, https:// or file:// URL, or a local path"
    return None


def _check_sha256(value: str) -> str | None:
    if value == "" or SHA256_PATTERN.match(value):
        return None
    return "must be empty or 64 lower-case hex digits (the output of `sha256sum FILE`)"


def _check_train_reviews(value: int) -> str | None:
    return "must be 0 (every training review) or at least 2 (one of each label)" if value == 1 else None


def _check_experiment(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


@dataclass(frozen=True)
class DataParams:
    source: str = field(metadata=_rule(choices=("aclimdb", "keras")))
    url: str = field(metadata=_rule(check=_check_url))
    sha256: str = field(metadata=_rule(check=_check_sha256))


@dataclass(frozen=True)
class PreprocessParams:
    num_words: int = field(metadata=_rule(minimum=4, maximum=10_000_000))
    maxlen: int = field(metadata=_rule(minimum=1, maximum=100_000))
    padding: str = field(metadata=_rule(choices=("pre", "post")))
    truncating: str = field(metadata=_rule(choices=("pre", "post")))
    val_fraction: float = field(metadata=_rule(exclusive_minimum=0.0, exclusive_maximum=1.0))
    seed: int = field(metadata=_rule(minimum=0, maximum=2**32 - 1))
    train_reviews: int = field(default=0, metadata=_rule(minimum=0, maximum=10_000_000, check=_check_train_reviews))


@dataclass(frozen=True)
class ModelParams:
    embedding_dim: int = field(metadata=_rule(minimum=1, maximum=4096))
    units: int = field(metadata=_rule(minimum=1, maximum=4096))
    layers: int = field(metadata=_rule(minimum=1, maximum=16))
    bidirectional: bool = field(metadata=_rule())
    dropout: float = field(metadata=_rule(minimum=0.0, exclusive_maximum=1.0))
    recurrent_dropout: float = field(metadata=_rule(minimum=0.0, exclusive_maximum=1.0))
    pooling: str = field(metadata=_rule(choices=("last", "max", "max_mean")))
    mask_padding: bool = field(metadata=_rule())
    embedding_dropout: float = field(default=0.0, metadata=_rule(minimum=0.0, exclusive_maximum=1.0))
    word_dropout: float = field(default=0.0, metadata=_rule(minimum=0.0, exclusive_maximum=1.0))
    precision: str = field(default="float32", metadata=_rule(choices=PRECISIONS))


@dataclass(frozen=True)
class TrainParams:
    batch_size: int = field(metadata=_rule(minimum=1, maximum=65_536))
    epochs: int = field(metadata=_rule(minimum=1, maximum=10_000))
    optimizer: str = field(metadata=_rule(choices=("adam", "rmsprop", "sgd", "adamw")))
    learning_rate: float = field(metadata=_rule(exclusive_minimum=0.0, maximum=10.0))
    early_stopping_patience: int = field(metadata=_rule(minimum=0, maximum=10_000))
    seed: int = field(metadata=_rule(minimum=0, maximum=2**31 - 1))
    # How batch_size and learning_rate behave across replicas: see src/distribution.py.
    distribution: str = field(metadata=_rule(choices=("none", "mirrored", "multi_worker")))
    bucket_by_length: bool = field(default=False, metadata=_rule())


@dataclass(frozen=True)
class EvaluateParams:
    threshold: float = field(metadata=_rule(exclusive_minimum=0.0, exclusive_maximum=1.0))


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = field(metadata=_rule(check=_check_experiment))


@dataclass(frozen=True)
class Params:
    data: DataParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    mlflow: MlflowParams

    def flat(self) -> dict[str, Any]:
        """Every value, keyed ``section.key`` (as logged to MLflow)."""
        return {
            f"{section.name}.{key}": value
            for section in dataclasses.fields(self)
            for key, value in dataclasses.asdict(getattr(self, section.name)).items()
        }


_SECTION_CLASSES = {
    "data": DataParams,
    "preprocess": PreprocessParams,
    "model": ModelParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "mlflow": MlflowParams,
}
ALL_KEYS = [
    f"{name}.{f.name}" for name, cls in _SECTION_CLASSES.items() for f in dataclasses.fields(cls)
]


def _suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Check a YAML value's type; ints are accepted where floats are expected."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise ParamsError(f"{key}: must be a finite number, got {value}")
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ParamsError(f"{key}: must be {_type_name(kind)}, got {value!r} ({type(value).__name__})")
    return value


def _check_rule(key: str, value: Any, rule: dict) -> None:
    if rule["choices"] is not None and value not in rule["choices"]:
        allowed = ", ".join(rule["choices"])
        raise ParamsError(f"{key}: must be one of {allowed}, got {value!r}{_suggest(str(value), list(rule['choices']))}")
    bounds = (
        ("minimum", lambda v, b: v >= b, ">="),
        ("maximum", lambda v, b: v <= b, "<="),
        ("exclusive_minimum", lambda v, b: v > b, ">"),
        ("exclusive_maximum", lambda v, b: v < b, "<"),
    )
    for name, holds, symbol in bounds:
        bound = rule[name]
        if bound is not None and not holds(value, bound):
            raise ParamsError(f"{key}: must be {symbol} {bound}, got {value}")
    if rule["check"] is not None:
        problem = rule["check"](value)
        if problem:
            raise ParamsError(f"{key}: {problem}, got {value!r}")


def _load_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{name}: must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ParamsError(
                f"{name}.{key}: unknown key{_suggest(f'{name}.{key}', ALL_KEYS)} "
                f"(valid keys in {name}: {', '.join(fields)})"
            )
    values = {}
    for key, f in fields.items():
        full = f"{name}.{key}"
        if key not in raw:
            raise ParamsError(f"{full}: missing; add it to params.yaml")
        value = _coerce(full, raw[key], f.type)
        _check_rule(full, value, f.metadata)
        values[key] = value
    return cls(**values)


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


def check_combination(params: Params) -> None:
    """Raise ParamsError for values that are valid alone but not together."""
    if params.train.bucket_by_length and not params.model.mask_padding:
        raise ParamsError("train.bucket_by_length: true needs model.mask_padding: true (cutting the padding "
                          "changes what an unmasked model computes); set one of them differently")
    if params.train.bucket_by_length and params.train.distribution != "none":
        raise ParamsError(f"train.bucket_by_length: true works with train.distribution: none only, got "
                          f"{params.train.distribution!r}; set train.bucket_by_length: false to distribute")


def params_from_dict(raw: Any) -> Params:
    """Validate a parsed params.yaml and return it as frozen dataclasses."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping with the sections " + ", ".join(_SECTION_CLASSES))
    for name in raw:
        if name not in _SECTION_CLASSES:
            raise ParamsError(f"{name}: unknown section{_suggest(str(name), list(_SECTION_CLASSES))}")
    sections = {}
    for name, cls in _SECTION_CLASSES.items():
        if name not in raw:
            raise ParamsError(f"{name}: section missing from params.yaml")
        sections[name] = _load_section(name, cls, raw[name])
    params = Params(**sections)
    check_combination(params)
    check_training_memory(params)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming the first bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the repository root") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    return params_from_dict(raw)
