"""Train stage: fit the LSTM on the preprocessed arrays, tracked as one MLflow run.

    python -m pipeline.train [--params params.yaml] [--data data/processed] [--pretrained data/pretrained]
                             [--model models/model.keras] [--run-info models/run.json] [--history plots/history.csv]

The run holds every param (``train.epochs``), per-epoch metrics ending on the kept epoch's
(src/tracking/metrics.py), the train and validation data it used, the model (mlflow.keras
flavor), the vocabulary and params.yaml; models/run.json names it for the evaluate stage.
With ``train.distribution: multi_worker`` every worker runs this with its own TF_CONFIG;
only the chief logs and writes outputs (src/distribution.py).
"""

import argparse
import logging
from pathlib import Path

from src.cli import run_stage
from src.memory import check_training_memory
from src.params import load_params

log = logging.getLogger("imdb_lstm.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--data", default="data/processed", help="the preprocess stage's output folder")
    parser.add_argument("--pretrained", default="data/pretrained", help="the pretrain stage's output folder")
    parser.add_argument("--model", default="models/model.keras", help="where to save the Keras model")
    parser.add_argument("--run-info", default="models/run.json", help="where to record the MLflow run's id")
    parser.add_argument("--history", default="plots/history.csv", help="per-epoch metrics, for dvc plots")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    check_training_memory(params)  # before TensorFlow loads: params that cannot train stop here
    from src import distribution

    task = distribution.cluster_task(params.train)  # a bad TF_CONFIG stops here, before TensorFlow loads
    chief = task is None or task.is_chief

    from src.fileio import load_npz
    from src.text import read_vocab_json
    from src.pretrain import load_teacher_labels, load_word_vectors
    from src.training import plan

    data = Path(args.data)
    encoder = read_vocab_json(data / "vocab.json")
    splits = {name: load_npz(data / f"{name}.npz") for name in ("train", "val")}
    teacher = load_teacher_labels(args.pretrained, encoder.vocabulary.num_words, encoder.maxlen)
    teacher_xy = None if teacher is None else (teacher.x, teacher.y)
    # within a second or two of starting: MLflow and TensorFlow take several more to load
    log.info("%s; loading MLflow and TensorFlow", plan(splits["train"]["x"], splits["val"]["x"], params.train, teacher_xy))
    if chief:
        from src.tracking import store

        experiment_id = store.connect(params.mlflow.experiment)  # fails fast, before any training
    word_vectors = load_word_vectors(args.pretrained, encoder.vocabulary.num_words, params.model.embedding_dim)
    if word_vectors is None:
        log.info("the embedding starts random (pretrain.method: none)")
    else:
        log.info("the embedding starts from %d pretrained word vectors (%s)", word_vectors.known.sum(),
                 "frozen" if params.model.freeze_embedding else "fine-tuned")

    strategy = distribution.start(params, task, splits)  # before any other TensorFlow use; waits for every worker

    if not chief:
        model, _ = fit(params, encoder, splits, (word_vectors, teacher_xy), strategy,
                       on_epoch=lambda record: log_epoch(f"{task.name}: ", record))
        log.info("%s done: final weights %s; the chief saves the model", task.name,
                 distribution.weights_digest(model.get_weights()))
        return

    import mlflow

    from src.fileio import write_csv
    from src.redact import redact_url
    from src.tracking import artifacts, inputs, lineage, metrics, runs
    from src.training import kept_epoch, save_model

    with runs.tracked_run(**runs.start_run_arguments(experiment_id, params)) as run:
        log.info("MLflow run %s (%s) in %s", run.info.run_name, run.info.run_id, redact_url(store.tracking_uri()))
        artifacts.log_params(params)
        mlflow.set_tags({**lineage.run_tags(Path.cwd()), "distribution.replicas": str(distribution.replicas(strategy))})
        inputs.log_splits(data, splits, Path.cwd())

        def on_epoch(record: dict) -> None:
            log_epoch(f"{task.name} (chief): " if task else "", record)
            mlflow.log_metrics(metrics.epoch_metrics(record), step=record["epoch"])

        model, history = fit(params, encoder, splits, (word_vectors, teacher_xy), strategy, on_epoch)
        final, step = metrics.final_metrics(history, kept_epoch(history, params.train))
        mlflow.log_metrics(final, step=step)
        log.info("final weights %s (epoch %d's)", distribution.weights_digest(model.get_weights()), final["best_epoch"])
        save_model(model, args.model)
        write_csv(args.history, history)
        artifacts.log_keras_model(model, encoder.maxlen)
        mlflow.log_artifact(str(data / "vocab.json"))
        artifacts.log_text_artifact(args.params)
        mlflow.log_artifact(args.history)
        runs.write_run_info(Path(args.run_info), run)
    log.info("saved %s; MLflow run %s", args.model, run.info.run_id)


def fit(params, encoder, splits, pretrained, strategy, on_epoch):
    """Build the model (from the pretrained word vectors, if any) and train it (with the teacher's reviews, if any)."""
    from src.training import new_model, train

    word_vectors, teacher_xy = pretrained
    model = new_model(params.model, params.train, encoder.vocabulary.num_words, encoder.maxlen, strategy, word_vectors)
    history = train(model, (splits["train"]["x"], splits["train"]["y"]), (splits["val"]["x"], splits["val"]["y"]),
                    params.train, on_epoch=on_epoch, strategy=strategy, teacher_xy=teacher_xy)
    return model, history


def log_epoch(prefix: str, record: dict) -> None:
    log.info("%sepoch %d: %s", prefix, record["epoch"],
             ", ".join(f"{key} {value:.4g}" for key, value in record.items() if key != "epoch"))


if __name__ == "__main__":
    run_stage(main)
