"""Make a registered version of imdb-sentiment the champion, the one predict and serve use.

    python -m pipeline.promote                      # the workspace's model: the run models/run.json names
    python -m pipeline.promote 4bb4bfe2358e480fadbc065ccb6b8104 --reason "best ROC AUC of the sweep"
    python -m pipeline.promote sweep-3              # a DVC experiment, by its name
    python -m pipeline.promote --version 3          # a version, by its number

A run (or an experiment's runs) may have registered several versions (evaluated again, or at
another threshold): the latest of them is promoted. The alias ``champion`` moves to it; who
(the OS user), when, why (``--reason``) and what it replaced are tagged on the version
(``promoted.*``) and on the registered model (``champion.*``), beside the version's test
metrics, data hashes and commit.
"""

import argparse
import logging
from pathlib import Path

from src.cli import run_stage
from src.errors import RegistryError
from src.params import load_params

log = logging.getLogger("imdb_lstm.promote")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", metavar="RUN_ID | EXPERIMENT",
                        help="an MLflow run id or a DVC experiment name (default: the run models/run.json names)")
    parser.add_argument("--version", help="promote this version number instead")
    parser.add_argument("--reason", default="", help="why: recorded on the version and the model")
    parser.add_argument("--params", default="params.yaml", help="parameters file (mlflow.experiment)")
    parser.add_argument("--run-info", default="models/run.json", help="the train stage's run record (the default run)")
    args = parser.parse_args(argv)
    if args.run and args.version:
        parser.error("give a run, an experiment or --version, not two of them")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    from src.tracking import registry, runs, store

    experiment_id = store.connect(params.mlflow.experiment)
    import mlflow

    client = mlflow.MlflowClient()
    if args.version:
        version = registry.numbered_version(client, args.version)
    elif args.run:
        version = registry.find_version(client, experiment_id, args.run)
    else:
        if not Path(args.run_info).is_file():
            raise RegistryError(f"{args.run_info}: not found: give a run id or a DVC experiment name, "
                                "or run `dvc repro` to train the workspace's model")
        version = registry.version_of_run(client, runs.read_run_info(Path(args.run_info))["run_id"])
    run = client.get_run(version.run_id)
    if registry.champion_version(client) == str(version.version):
        print(f"{registry.CHAMPION_URI} is already version {version.version} (run {run.info.run_name}); nothing changed")
        return
    previous = registry.promote(client, version.version, args.reason)
    accuracy = run.data.metrics.get("test_accuracy")
    figures = f", test accuracy {accuracy:.4f}" if accuracy is not None else ""
    print(f"{registry.CHAMPION_URI} is now version {version.version} (run {run.info.run_name} {run.info.run_id}"
          f"{figures}); it was {f'version {previous}' if previous else 'unset'}")


if __name__ == "__main__":
    run_stage(main)
