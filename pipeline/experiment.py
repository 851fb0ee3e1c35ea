"""Run the whole pipeline with some params overridden, leaving params.yaml as it is.

    python -m pipeline.experiment --epochs 2 --units 64   # what `mlflow run . --experiment-name imdb-lstm -P epochs=2 -P units=64` calls

Overrides are validated like params.yaml, then DVC runs the pipeline as an experiment in a
temporary copy (`dvc exp run --temp`): stages whose inputs did not change come from DVC's
cache, and the workspace (params.yaml, outputs) is not touched. Under `mlflow run`, the train
and evaluate stages log into the run that `mlflow run` created, which must be in params.yaml's
mlflow.experiment (`mlflow run . --experiment-name imdb-lstm`): it is checked before any work,
and this process owns the run until the train stage does (src/tracking/runs.py, claim_mlflow_run).
"""

import argparse
import copy
import dataclasses
import logging
import os
import subprocess
import sys

import yaml

from src.cli import run_stage
from src.errors import ParamsError
from src.memory import check_training_memory
from src.params import ModelParams, PretrainParams, TrainParams, params_from_dict

log = logging.getLogger("imdb_lstm.experiment")

KEEP = "params.yaml"  # an option's default: keep the value params.yaml has

# Plain name -> params.yaml key, for every option `mlflow run -P name=value` can set.
OVERRIDES = {
    **{field.name: f"model.{field.name}" for field in dataclasses.fields(ModelParams)},
    **{field.name: f"train.{field.name}" for field in dataclasses.fields(TrainParams)},
    **{f"pretrain_{field.name}": f"pretrain.{field.name}" for field in dataclasses.fields(PretrainParams)},
    "num_words": "preprocess.num_words",
    "maxlen": "preprocess.maxlen",
    "url": "data.url",
    "sha256": "data.sha256",
    "threshold": "evaluate.threshold",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file the overrides apply to")
    for name, key in OVERRIDES.items():
        parser.add_argument(f"--{name}", default=KEEP, metavar="VALUE", help=f"sets {key}")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the DVC command only")
    return parser.parse_args(argv)


def _typed(key: str, text: str, kind: type):
    """A command-line string as the type params.yaml holds for ``key``."""
    if kind is str:
        return text
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ParamsError(f"{key}: must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ParamsError(f"{key}: must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def apply_overrides(raw: dict, overrides: dict[str, str]) -> dict:
    """params.yaml's dict with ``overrides`` (params.yaml key -> text) applied, then validated.

    Training must fit in memory too: the experiment runs the train stage, which would refuse
    such params only after the data stages ran.
    """
    params = params_from_dict(raw)
    changed = copy.deepcopy(raw)
    for key, text in overrides.items():
        section, name = key.split(".")
        kind = type(getattr(getattr(params, section), name))
        changed[section][name] = _typed(key, text, kind)
    check_training_memory(params_from_dict(changed))
    return changed


def dvc_command(overrides: dict[str, object]) -> list[str]:
    """`dvc exp run --temp` with each override as -S."""
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp"]
    for key, value in overrides.items():
        command += ["-S", f"{key}={_yaml_scalar(value)}"]
    return command


def _yaml_scalar(value) -> str:
    """``value`` as DVC's -S reads it (YAML): '' stays an empty string, 2 an integer."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with open(args.params, encoding="utf-8") as stream:
            raw = yaml.safe_load(stream)
    except OSError as error:
        raise ParamsError(f"{args.params}: cannot read ({error.strerror})") from None
    given = {OVERRIDES[name]: value for name, value in vars(args).items() if name in OVERRIDES and value != KEEP}
    changed = apply_overrides(raw, given)
    overrides = {key: changed[key.split(".")[0]][key.split(".")[1]] for key in given}
    command = dvc_command(overrides)
    log.info("running %s", " ".join(command[2:]))
    if args.dry_run:
        return
    if os.environ.get("MLFLOW_RUN_ID"):
        from src.tracking import runs, store

        runs.claim_mlflow_run(store.connect(changed["mlflow"]["experiment"]))
    result = subprocess.run(command)
    if result.returncode != 0:
        sys.exit(result.returncode)


if __name__ == "__main__":
    run_stage(main)
