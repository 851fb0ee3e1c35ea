"""params.yaml: one frozen dataclass per section, validated on load.

Every key is required and every unknown key is refused (with the closest valid key
suggested), so a typo such as ``train.epochz`` fails at once instead of being ignored.
Whether training fits in this machine's memory is src/memory.py's check, which the train
stage runs.
"""

import dataclasses
import difflib
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src.errors import ParamsError
from src.redact import redact_url

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# model.precision: Keras dtype policies. mixed_bfloat16 keeps the weights in float32 and computes in bfloat16.
PRECISIONS = ("float32", "mixed_bfloat16")
# Environment variable holding USER:PASSWORD for data.url's server (src/download.py sends it).
DATA_AUTH_VARIABLE = "IMDB_DATA_AUTH"
# Where a server's user name and password go instead of data.url.
DATA_AUTH_HINT = f"~/.netrc (machine HOST login USER password PASSWORD) or {DATA_AUTH_VARIABLE}=USER:PASSWORD"


def _rule(*, choices=None, minimum=None, maximum=None, exclusive_minimum=None, exclusive_maximum=None, check=None,
          shown=repr):
    """Validation rule attached to a dataclass field as metadata; ``shown`` writes the value in a check's message."""
    return {
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "exclusive_maximum": exclusive_maximum,
        "check": check,
        "shown": shown,
    }


def _check_url(value: str) -> str | None:
    # DVC writes every param's value to dvc.lock and its run-cache, so a password must never be one.
    if "://" in value and "@" in urllib.parse.urlsplit(value).netloc:
        return f"must not hold a user name or password (DVC would write them to dvc.lock); put them in {DATA_AUTH_HINT}"
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
    url: str = field(metadata=_rule(check=_check_url, shown=lambda url: repr(redact_url(url))))
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
class PretrainParams:
    method: str = field(metadata=_rule(choices=("none", "word2vec")))
    algorithm: str = field(metadata=_rule(choices=("cbow", "skipgram")))
    window: int = field(metadata=_rule(minimum=1, maximum=100))
    epochs: int = field(metadata=_rule(minimum=1, maximum=1000))
    sample: float = field(metadata=_rule(minimum=0.0, exclusive_maximum=1.0))
    unlabelled: bool = field(metadata=_rule())
    teacher_reviews: int = field(metadata=_rule(minimum=0, maximum=10_000_000))
    seed: int = field(metadata=_rule(minimum=0, maximum=2**31 - 1))


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
    freeze_embedding: bool = field(default=False, metadata=_rule())


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
    teacher_reviews_per_epoch: int = field(default=0, metadata=_rule(minimum=0, maximum=10_000_000))


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
    pretrain: PretrainParams
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
    "pretrain": PretrainParams,
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
            raise ParamsError(f"{key}: {problem}, got {rule['shown'](value)}")


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


def check_combination(params: Params) -> None:
    """Raise ParamsError for values that are valid alone but not together."""
    if params.pretrain.teacher_reviews and not params.pretrain.unlabelled:
        raise ParamsError("pretrain.teacher_reviews > 0 needs pretrain.unlabelled: true (the teacher labels unlabelled "
                          "reviews); set pretrain.teacher_reviews: 0 to learn from the training reviews alone")
    if params.model.freeze_embedding and params.pretrain.method == "none":
        raise ParamsError("model.freeze_embedding: true needs pretrained vectors (pretrain.method: none leaves the "
                          "embedding random, and a frozen random embedding learns nothing); set one of them differently")
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
