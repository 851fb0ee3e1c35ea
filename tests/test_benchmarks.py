"""The benchmark harness: its FLOP count and seed-one variants, and one end-to-end run on a tiny synthetic archive."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from project import TINY
from synthetic import write_aclimdb_tarball

from src.params import params_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SETS = [arg for section, values in TINY.items() for key, value in values.items()
             for arg in ("--set", f"{section}.{key}={value}")]
STAGES = ["download", "preprocess", "baseline", "pretrain", "train", "evaluate"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, str, Path]:
    base = tmp_path_factory.mktemp("benchmark")
    archive = write_aclimdb_tarball(base / "aclImdb_tiny.tar.gz", train=160, test=80)
    out = base / "results"
    command = [sys.executable, "-m", "benchmarks.run", "--archive", str(archive), "--out", str(out),
               "--peak-seconds", "0.05", "--noop-runs", "1", "--learning-curve", "30", "--ablation", *TINY_SETS]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), out


@pytest.mark.slow
def test_report_covers_every_stage_and_its_cost(results):
    report, _, _ = results
    assert list(report["stages"]) == STAGES
    for stage in report["stages"].values():
        assert stage["ran"] and stage["seconds"] > 0 and stage["max_rss_mib"] > 0
    assert sum(stage["seconds"] for stage in report["stages"].values()) <= report["pipeline_seconds"]
    assert report["pipeline_seconds"] <= report["benchmark_seconds"]
    dataset = report["dataset"]
    assert dataset["train"] + dataset["val"] == 160 and dataset["val"] > 0 and dataset["test"] == 80


@pytest.mark.slow
def test_throughput_and_flops_are_consistent(results):
    report, _, _ = results
    epochs = report["training"]["epochs"]
    assert [row["epoch"] for row in epochs] == [1, 2]
    # an epoch's reviews: every training review and the teacher-labelled ones it draws (train.teacher_reviews_per_epoch)
    reviews = [row["reviews_per_second"] * row["epoch_seconds"] for row in epochs]
    assert reviews[0] == pytest.approx(reviews[1]) and reviews[0] == pytest.approx(round(reviews[0]))
    assert round(reviews[0]) > report["dataset"]["train"] if report["params"]["pretrain"]["teacher_reviews"] else \
        round(reviews[0]) == report["dataset"]["train"]
    assert report["training"]["steady_reviews_per_second"] == pytest.approx(epochs[1]["reviews_per_second"])
    flops = report["flops"]
    # tiny model: 2 * 4*8 * (8+8) FLOPs per step, one direction; training is 3x that. With length
    # buckets (the default) a review costs its own ids' steps, at most maxlen 24.
    steps = flops["lstm_steps_per_review"]
    assert 1 < steps <= 24 and (steps == 24) != report["params"]["train"]["bucket_by_length"]
    assert flops["forward_flops_per_review"] == pytest.approx(2 * 32 * 16 * steps)
    assert flops["training_flops_per_review"] == 3 * flops["forward_flops_per_review"]
    assert flops["achieved_flops_per_second"] == pytest.approx(
        flops["training_flops_per_review"] * report["training"]["steady_reviews_per_second"])
    assert set(flops["measured_peaks_flops_per_second"]) == {"2048 x 2048 x 2048", "16 x 16 x 32"}
    assert 0 < flops["fraction_of_machine_peak"] <= 1
    assert 0 < flops["fraction_of_lstm_shape_peak"] <= 1


@pytest.mark.slow
def test_accuracy_overheads_and_machine(results):
    report, _, _ = results
    accuracy = report["accuracy"]
    assert 0 <= accuracy["lstm"]["accuracy"] <= 1 and 0 <= accuracy["baseline"]["accuracy"] <= 1
    assert accuracy["lstm_minus_baseline"] == pytest.approx(accuracy["lstm"]["accuracy"] - accuracy["baseline"]["accuracy"])
    overheads = report["overheads"]
    assert overheads["noop_repro"]["median_seconds"] > 0
    assert overheads["training_change"]["ok"], overheads["training_change"]
    assert "train" in overheads["training_change"]["repro_dry_would_run"]
    mlflow = overheads["mlflow"]
    assert 0 < mlflow["replay"]["calls"] < mlflow["replay"]["total"]
    assert mlflow["replay"]["log_model"] > 0 and mlflow["new_store"]["connect"] > 0
    assert mlflow["fraction_of_train_stage"] == pytest.approx(mlflow["replay"]["total"] / report["stages"]["train"]["seconds"])
    assert mlflow["ok"] == (mlflow["fraction_of_train_stage"] <= 0.03)
    assert set(report["checks"]) == {"noop_repro", "training_change", "mlflow"}
    assert report["machine"]["usable_cpus"] >= 1 and report["machine"]["tensorflow"]
    assert report["params"]["model"]["units"] == 8 and report["params"]["data"]["url"].startswith("file://")


@pytest.mark.slow
def test_markdown_summary_has_a_table_per_topic(results):
    _, markdown, out = results
    for heading in ("## Summary", "## Stages", "## Training, per epoch", "## Compute", "## Accuracy",
                    "## Overheads", "## Machine", "## Params"):
        assert heading in markdown
    assert "| train |" in markdown
    assert (out / "logs" / "train.log").is_file()


@pytest.mark.slow
def test_learning_curve_trains_on_nested_subsets_and_ends_with_the_full_run(results):
    report, markdown, out = results
    points = report["learning_curve"]
    assert [point["train_reviews"] for point in points] == [30, report["dataset"]["train"]]
    full = points[-1]
    assert full["lstm_accuracy"] == report["accuracy"]["lstm"]["accuracy"]
    assert full["baseline_accuracy"] == report["accuracy"]["baseline"]["accuracy"]
    for point in points:
        assert 0 <= point["lstm_accuracy"] <= 1 and 0 <= point["baseline_accuracy"] <= 1
        assert 1 <= point["lowest_val_loss_epoch"] <= point["epochs_run"] == 2 and point["train_stage_seconds"] > 0
    for size in (30,):  # each point's stages ran, on that many reviews
        assert f"train: x ({size}, 24) int32" in (out / "logs" / f"curve-{size}" / "preprocess.log").read_text()
        assert f"({size} training reviews" in (out / "logs" / f"curve-{size}" / "baseline.log").read_text()
    assert "## Learning curve" in markdown and "| 30 |" in markdown
    # The project copy's params.yaml was restored: the report's params are the benchmark's own.
    assert report["params"]["preprocess"]["train_reviews"] == 0
    without = report["learning_curve_without_pretraining"]
    assert [point["train_reviews"] for point in without] == [30, report["dataset"]["train"]]
    for size in (30,):  # the same reviews (preprocess is as for the curve before), the embedding left random
        assert "pretrain none" in (out / "logs" / f"curve-none-{size}" / "pretrain.log").read_text()
        assert f"training on {size} reviews" in (out / "logs" / f"curve-none-{size}" / "train.log").read_text()


@pytest.mark.slow
def test_ablation_runs_each_pretraining_variant_once(results):
    from benchmarks.ablation import VARIANTS

    report, markdown, out = results
    rows = {row["variant"]: row for row in report["ablation"]}
    assert list(rows) == list(VARIANTS)
    default = [name for name, row in rows.items() if row["is_default"]]
    assert len(default) == 1 and rows[default[0]]["test_accuracy"] == report["accuracy"]["lstm"]["accuracy"]
    for number, (name, row) in enumerate(rows.items(), start=1):
        assert 0 <= row["test_accuracy"] <= 1 and row["pretrain_stage_seconds"] > 0 and row["train_stage_seconds"] > 0
        logs = out / "logs" / f"ablation-{number}"
        assert logs.is_dir() != row["is_default"]  # the default is the run itself, not run again
    def stage_log(number: int, stage: str) -> str:
        return (out / "logs" / f"ablation-{number}" / f"{stage}.log").read_text()

    names = list(rows)
    assert "pretrain none: nothing to learn" in stage_log(1, "pretrain") and "starts random" in stage_log(1, "train")
    assert "teacher" not in stage_log(2, "train")
    alone = names.index("word2vec skipgram from the training reviews alone, no teacher") + 1
    assert "unlabelled_reviews 0" in stage_log(alone, "pretrain") and "teacher" not in stage_log(alone, "train")
    teacher_only = names.index("teacher only (random embedding)") + 1
    assert "starts random" in stage_log(teacher_only, "train") and "teacher-labelled reviews drawn afresh" in stage_log(teacher_only, "train")
    assert "(frozen)" in stage_log(names.index("word2vec skipgram, frozen, teacher") + 1, "train")
    assert "## Ablation" in markdown and "(*default*)" in markdown


@pytest.mark.parametrize("text,expected", [("8000,2000,4000", [2000, 4000, 8000]), ("500", [500]),
                                           ("100, 100,", [100])])
def test_learning_curve_sizes_are_parsed(text, expected):
    from benchmarks.learning_curve import parse_sizes

    assert parse_sizes(text) == expected


@pytest.mark.parametrize("argument", ["", "1,100", "a,b", "2000;4000"])
def test_bad_learning_curve_sizes_are_refused_before_anything_runs(argument, tmp_path):
    archive = write_aclimdb_tarball(tmp_path / "tiny.tar.gz", train=20, test=10)
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--archive", str(archive), "--out",
                           str(tmp_path / "out"), "--learning-curve", argument],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--learning-curve" in done.stderr
    assert not (tmp_path / "out").exists()


def test_learning_curve_refuses_sizes_the_split_cannot_give(tmp_path):
    from benchmarks.learning_curve import learning_curve
    from src.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="the split leaves 120 training reviews"):
        learning_curve(tmp_path, tmp_path / "logs", {}, [60, 120, 500], all_reviews=120)


def test_params_whose_training_cannot_fit_are_refused_before_anything_runs(tmp_path):
    from benchmarks.run import benchmark_params
    from src.errors import ParamsError

    with pytest.raises(ParamsError, match=r"^preprocess\.maxlen 100000 x train\.batch_size 4096 needs about "):
        benchmark_params(tmp_path / "tiny.tar.gz", "", ["preprocess.maxlen=100000", "train.batch_size=4096"])


def test_lstm_flops_count_every_layer_direction_and_step():
    from benchmarks.flops import forward_flops_per_review, lstm_shapes

    model = {"embedding_dim": 32, "units": 16, "layers": 2, "bidirectional": True}
    assert lstm_shapes(model, 64) == [(64, 48, 64), (64, 48, 64)]  # layer 2 reads both directions: 2 * 16
    assert forward_flops_per_review(model, maxlen=10) == 2 * (2 * 48 * 64) * 10 * 2


def test_seed_one_and_pipeline_share_the_shape_and_epochs(real_params_dict):
    from benchmarks.compare import pipeline_precision, variants

    both = variants(real_params_dict, epochs=2)
    for params in both.values():
        assert (params["preprocess"]["num_words"], params["preprocess"]["maxlen"]) == (20000, 80)
        assert (params["model"]["embedding_dim"], params["model"]["units"], params["model"]["layers"]) == (128, 128, 1)
        assert (params["train"]["epochs"], params["train"]["early_stopping_patience"]) == (2, 2)
        params_from_dict(params)  # a valid combination
    seed, ours = both["seed_one"], both["pipeline"]
    assert seed["model"]["recurrent_dropout"] == 0.2 and seed["model"]["mask_padding"] is False
    assert seed["model"]["word_dropout"] == seed["model"]["embedding_dropout"] == 0.0  # not the defaults
    assert seed["train"]["batch_size"] == 32 and seed["train"]["optimizer"] == "adam"
    assert seed["model"]["precision"] == "float32"
    assert ours["model"]["recurrent_dropout"] == 0.0 and ours["model"]["mask_padding"] is False
    assert ours["model"]["precision"] == pipeline_precision()
    assert ours["train"]["batch_size"] > seed["train"]["batch_size"]


@pytest.mark.parametrize("flags, expected", [("fpu avx2 amx_bf16 amx_tile", True), ("fpu avx512f avx512_bf16", True),
                                             ("fpu avx2 avx512f fma", False)])
def test_bfloat16_units_are_read_from_the_cpu_flags(tmp_path, flags, expected):
    from benchmarks.compare import bfloat16_units

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n", encoding="utf-8")
    assert bfloat16_units(str(cpuinfo)) is expected
    assert bfloat16_units(str(tmp_path / "missing")) is False


def test_lstm_layer_alone_is_timed_per_batch_size():
    from benchmarks.ceiling import ceilings

    for precision in ("float32", "mixed_bfloat16"):
        rates = ceilings(embedding_dim=8, units=8, maxlen=6, batch_sizes=[4, 8], seconds=0.05, precision=precision)
        assert list(rates) == ["4", "8"]
        assert all(0 < rate < float("inf") for rate in rates.values())


def test_seed_one_section_shows_the_ceiling_against_seed_one():
    from benchmarks.report import _seed_one

    run = {"params": {"train.batch_size": 32}, "reviews_per_second": 200.0, "train_stage_seconds": 10.0,
           "epochs": [{}], "test_accuracy": 0.8, "test_roc_auc": 0.9}
    compare = {"seed_one": run, "pipeline": {**run, "params": {"train.batch_size": 512}, "reviews_per_second": 700.0},
               "speedup": 3.5, "epochs_trained": 1,
               "lstm_alone": {"reviews_per_second": {"512": 1000.0, "1024": 1300.0},
                              "speedup_ceiling": {"512": 5.0, "1024": 6.5}}}
    lines = _seed_one({"compare_seed_one": compare})
    assert "| train.batch_size | `32` | `512` |" in lines
    assert "| 512 | 1,000 | 5.00x |" in lines and "| 1024 | 1,300 | 6.50x |" in lines


@pytest.mark.slow
def test_the_serving_benchmark_checks_what_the_server_answers(trained_project, tmp_path):
    root, _ = trained_project
    archive = write_aclimdb_tarball(tmp_path / "tiny.tar.gz", train=40, test=60)
    out = tmp_path / "results"
    command = [sys.executable, "-m", "benchmarks.serving", "--model", str(root / "models" / "model.keras"),
               "--vocab", str(root / "data" / "processed" / "vocab.json"), "--archive", str(archive), "--out", str(out),
               "--single", "20", "--batch", "300", "--batch-repeats", "2", "--error-body-mb", "1"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "serving.json").read_text())
    assert report["model"] == {"trained": True, "path": str(root / "models" / "model.keras"), "fast_path": True}
    assert report["agreement"]["reviews_compared"] == 10 + 20 + 300  # warm-up, timed, the large request
    assert report["agreement"]["max_abs_difference"] <= 1e-6 and report["checks"]["agreement"]
    single, batch = report["single"], report["batch"]
    assert single["requests"] == 20 and 0 < single["p50_ms"] <= single["p90_ms"] <= single["p99_ms"]
    assert batch["reviews"] == 300 and len(batch["seconds"]) == 2
    assert batch["reviews_per_second"] == pytest.approx(300 / np.median(batch["seconds"]))
    assert len(report["errors"]) == 5 and report["server_alive_after_errors"] and report["checks"]["error_answers"]
    for error in report["errors"].values():
        assert error["body_bytes"] > 10**6 and error["status"] == 400 and error["answer_bytes"] <= 4096
    assert report["errors"]["a number after 9,999 reviews"]["message"] == "review 9999 is int, not a string"
    assert report["errors"]["not JSON"]["message"].startswith("the request is not valid JSON")
    markdown = (out / "serving.md").read_text()
    assert "| one review a request: p50 / p90 / p99 |" in markdown and "| not UTF-8 | 1.0 MB | 400 |" in markdown
