"""The whole DVC pipeline on tiny data, and what it leaves in MLflow."""

import json

import mlflow
import numpy as np
import pytest

from src.params import ALL_KEYS

from project import TINY, copy_of, dvc, update_params
from project import run as run_command

pytestmark = pytest.mark.slow

EPOCHS = TINY["train"]["epochs"]
STAGES = ("download", "preprocess", "baseline", "pretrain", "train", "evaluate")


@pytest.fixture(scope="module")
def project(trained_project):
    return trained_project


@pytest.fixture(scope="module")
def store(project):
    root, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def run(project, store):
    root, _ = project
    run_id = json.loads((root / "models" / "run.json").read_text())["run_id"]
    return store.get_run(run_id)


def test_repro_runs_every_stage_and_writes_every_output(project):
    root, output = project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output
    for path in ("data/raw/source.json", "data/raw/aclImdb/unsup.jsonl", "data/processed/train.npz",
                 "data/processed/vocab.json", "data/pretrained/word_vectors.npz", "data/pretrained/pretrain.json",
                 "models/model.keras", "models/run.json", "metrics/preprocess.json", "metrics/baseline.json",
                 "metrics/evaluate.json", "timings/baseline.json", "plots/history.csv", "plots/confusion.csv", "plots/roc.csv",
                 "plots/confusion.png", "plots/roc.png", "plots/training_curves.png"):
        assert (root / path).is_file(), path
    assert (root / "mlflow.db").is_file()


def test_second_repro_runs_nothing(project):
    root, _ = project
    second = dvc(root, "repro")
    assert "Running stage" not in second.stdout
    assert dvc(root, "status").stdout.strip() == "Data and pipelines are up to date."


def test_metrics_and_plots_are_visible_to_dvc(project):
    root, _ = project
    shown = json.loads(dvc(root, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    evaluate = files["metrics/evaluate.json"]["data"]
    assert 0.0 <= evaluate["accuracy"] <= 1.0 and "roc_auc" in evaluate and "f1" in evaluate
    assert "accuracy" in files["metrics/baseline.json"]["data"]
    assert files["metrics/preprocess.json"]["data"]
    plots = json.loads(dvc(root, "plots", "show", "--json").stdout)["data"]
    for title in ("Loss per epoch", "Accuracy per epoch", "Confusion matrix (test)", "ROC curve (test)"):
        assert plots[title][0]["type"] == "vega", title
        assert plots[title][0]["content"]["data"]["values"], f"{title} has no data"
    for image in ("plots/confusion.png", "plots/roc.png", "plots/training_curves.png"):
        assert plots[image][0]["type"] == "image", image


def test_one_finished_run_holds_every_param(project, store, run):
    root, _ = project
    experiment = store.get_experiment_by_name("imdb-lstm")
    runs = store.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith(f"lstm-u8-e{EPOCHS}-lr")
    params = run.data.params
    assert params["train.epochs"] == str(EPOCHS)
    assert params["model.units"] == "8"
    assert params["preprocess.maxlen"] == "24"
    assert params["evaluate.threshold"] == "0.5"
    assert params["data.url"].startswith("file://")
    assert params["pretrain.method"] == "word2vec" and params["model.freeze_embedding"] == "False"
    assert set(params) == set(ALL_KEYS)  # every key of params.yaml, nothing else


def test_run_holds_per_epoch_test_and_baseline_metrics(project, store, run):
    root, _ = project
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "system/epoch_seconds", "system/reviews_per_second"):
        history = store.get_metric_history(run.info.run_id, key)
        assert [point.step for point in history] == list(range(1, EPOCHS + 1)), key
    assert "epoch_seconds" not in run.data.metrics, "timings are system metrics, not the model's"
    assert run.data.metrics["best_epoch"] == EPOCHS, "without early stopping the last epoch's weights are kept"
    evaluate = json.loads((root / "metrics" / "evaluate.json").read_text())
    baseline = json.loads((root / "metrics" / "baseline.json").read_text())
    metrics = run.data.metrics
    for key in ("accuracy", "loss", "roc_auc", "precision", "recall", "f1"):
        assert metrics[f"test_{key}"] == pytest.approx(evaluate[key])
        assert metrics[f"baseline_{key}"] == pytest.approx(baseline[key])
    # the baseline's size and wall time are tags, not metrics beside the models' quality
    assert sorted(key for key in metrics if key.startswith("baseline_")) == [
        "baseline_accuracy", "baseline_f1", "baseline_loss", "baseline_precision", "baseline_recall", "baseline_roc_auc"]
    assert run.data.tags["baseline.train_reviews"] == str(baseline["train_reviews"])
    assert float(run.data.tags["baseline.seconds"]) == json.loads((root / "timings" / "baseline.json").read_text())["seconds"] > 0


def test_run_holds_artifacts_and_tags(store, run):
    names = {item.path for item in store.list_artifacts(run.info.run_id)}
    assert {"vocab.json", "params.yaml", "dvc.lock", "plots", "history.csv"} <= names
    plots = {item.path for item in store.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion.png", "plots/roc.png", "plots/training_curves.png"} <= plots
    tags = run.data.tags
    assert len(tags["git.commit"]) == 40
    assert tags["git.dirty"] in ("true", "false")
    assert tags["dvc.data/processed.md5"].endswith(".dir")
    assert tags["dvc.data/raw.md5"].endswith(".dir")
    assert tags["dvc.data/pretrained.md5"].endswith(".dir")  # the run names the vectors it started from


def test_run_holds_the_keras_and_the_raw_text_models(store, run):
    infos = {}
    for output in run.outputs.model_outputs:
        info = mlflow.models.get_model_info(f"models:/{output.model_id}")
        infos[info.name] = info
    assert set(infos) == {"model", "sentiment"}
    assert "keras" in infos["model"].flavors
    assert infos["model"].signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "int32", "shape": (-1, 24)}
    assert "python_function" in infos["sentiment"].flavors
    versions = store.search_model_versions("name='imdb-sentiment'")
    assert run.info.run_id in {version.run_id for version in versions}, "registered as imdb-sentiment"


def test_the_first_version_is_champion_and_tagged_with_its_figures_data_and_commit(store, run):
    champion = store.get_model_version_by_alias("imdb-sentiment", "champion")
    assert champion.run_id == run.info.run_id and str(champion.version) == "1"
    tags = champion.tags
    for key in ("accuracy", "roc_auc", "f1"):
        assert tags[f"test_{key}"] == f"{run.data.metrics[f'test_{key}']:.4f}"
    for key in ("git.commit", "dvc.data/raw.md5", "dvc.data/processed.md5"):
        assert tags[key] == run.data.tags[key], key
    assert tags["promoted.reason"].startswith("the first version registered")
    assert champion.description.startswith(f"test accuracy {tags['test_accuracy']}, ROC AUC {tags['test_roc_auc']}")


def test_the_run_names_its_data_with_the_md5s_dvc_recorded(project, store, run):
    """Each split's digest against DVC's own listing of data/processed (its .dir file in the cache)."""
    import yaml

    root, _ = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    (out,) = [out for out in lock["stages"]["preprocess"]["outs"] if out["path"] == "data/processed"]
    folder_md5 = out["md5"].removesuffix(".dir")
    listing = json.loads((root / ".dvc" / "cache" / "files" / "md5" / folder_md5[:2] / f"{folder_md5[2:]}.dir").read_text())
    dvc_md5 = {entry["relpath"]: entry["md5"] for entry in listing}
    logged = {entry.tags[0].value: entry.dataset for entry in run.inputs.dataset_inputs}
    assert {context: dataset.name for context, dataset in logged.items()} == {
        "training": "train.npz", "validation": "val.npz", "test": "test.npz"}
    for dataset in logged.values():
        assert dataset.digest == dvc_md5[dataset.name]
        assert json.loads(dataset.source) == {"uri": f"data/processed/{dataset.name}"}


def test_the_experiment_is_a_model_training_one(store):
    from src.tracking.store import EXPERIMENT_TAGS

    assert store.get_experiment_by_name("imdb-lstm").tags == EXPERIMENT_TAGS


def test_logged_model_predicts_exactly_what_the_saved_one_does(project, run):
    root, _ = project
    import keras

    from src.fileio import load_npz
    from src.model import register_custom_layers

    register_custom_layers()  # the model's own layers and optimizer, as any process loading it must
    x = load_npz(root / "data" / "processed" / "test.npz")["x"]
    saved = keras.saving.load_model(root / "models" / "model.keras", compile=False, safe_mode=True)
    logged = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    np.testing.assert_array_equal(saved.predict(x, verbose=0), logged.predict(x, verbose=0))


def test_changing_only_epochs_reruns_only_train_and_evaluate(project, store):
    root, _ = project
    update_params(root, {"train": {"epochs": 1}})
    result = dvc(root, "repro")
    output = result.stdout
    assert "Running stage 'train'" in output and "Running stage 'evaluate'" in output
    for stage in ("download", "preprocess", "baseline"):
        assert f"Running stage '{stage}'" not in output
    runs = store.search_runs([store.get_experiment_by_name("imdb-lstm").experiment_id])
    assert sorted(r.data.params["train.epochs"] for r in runs) == ["1", str(EPOCHS)]
    assert all(r.info.status == "FINISHED" for r in runs)
    newest = max(runs, key=lambda r: r.info.start_time)
    assert store.get_model_version_by_alias("imdb-sentiment", "champion").run_id != newest.info.run_id, \
        "a new version waits for a promotion"


def test_a_forced_rerun_with_the_same_params_changes_no_metric(project, tmp_path):
    root = copy_of(project[0], tmp_path / "copy")
    run_command(["git", "add", "-A"], root)
    run_command(["git", "commit", "-q", "-m", "the first run's metrics"], root)
    timing = root / "timings" / "baseline.json"
    timing.write_text('{"seconds": -1}\n')  # a value no run writes: the forced run must write its own
    again = dvc(root, "repro", "--force")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in again.stdout, stage
    diff = json.loads(dvc(root, "metrics", "diff", "--all", "--json").stdout)
    assert sorted(diff) == ["metrics/baseline.json", "metrics/evaluate.json", "metrics/preprocess.json"]
    changed = {f"{path}:{key}": figures for path, metrics in diff.items() for key, figures in metrics.items()
               if figures["old"] != figures["new"]}
    assert changed == {}
    assert "metrics/evaluate.json:accuracy" in {f"{path}:{key}" for path, metrics in diff.items() for key in metrics}
    assert json.loads(timing.read_text())["seconds"] >= 0, "the wall time is still measured"


def test_keras_source_runs_the_data_stages_end_to_end(tmp_path):
    """data.source: keras, from a Keras-format npz served over loopback HTTP, through preprocess."""
    import hashlib

    from http_server import FileServer
    from project import make_project
    from src.fileio import load_npz
    from synthetic import write_keras_files

    root = make_project(tmp_path / "project", tmp_path / "data")
    npz, _ = write_keras_files(tmp_path / "keras", train=60, test=30)
    with FileServer(folder=tmp_path / "keras") as server:
        update_params(root, {"data": {"source": "keras", "url": server.url("/imdb.npz"),
                                      "sha256": hashlib.sha256(npz.read_bytes()).hexdigest()}})
        first = dvc(root, "repro", "preprocess")
    assert "Running stage 'download'" in first.stdout and "Running stage 'preprocess'" in first.stdout
    assert json.loads((root / "data" / "raw" / "source.json").read_text())["source"] == "keras"
    train = load_npz(root / "data" / "processed" / "train.npz")
    assert train["x"].shape[1] == 24 and train["x"].max() < 60
    assert "Running stage" not in dvc(root, "repro", "preprocess").stdout


def test_mlflow_ui_started_from_the_repository_root_shows_the_runs(project):
    """`mlflow ui` with no options, in the repository root, reads the pipeline's store."""
    import sys

    import requests

    from project import server_process

    root, _ = project
    with server_process([sys.executable, "-m", "mlflow", "ui"], root, "/health", timeout=90) as url:
        experiments = requests.get(f"{url}/api/2.0/mlflow/experiments/get-by-name",
                                   params={"experiment_name": "imdb-lstm"}, timeout=30).json()
        experiment_id = experiments["experiment"]["experiment_id"]
        runs = requests.post(f"{url}/api/2.0/mlflow/runs/search",
                             json={"experiment_ids": [experiment_id]}, timeout=30).json()["runs"]
    assert runs
    params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
    metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
    assert "train.epochs" in params and "test_accuracy" in metrics
