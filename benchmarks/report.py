"""The benchmark's figures as one JSON document, and the same as a Markdown summary with tables."""

from benchmarks.compare import steady_reviews_per_second
from benchmarks.flops import flop_figures

METRICS = ("accuracy", "roc_auc", "f1", "precision", "recall", "loss")


def build_report(*, params: dict, stages: dict, pipeline_seconds: float, outputs: dict, peaks: dict,
                 overheads: dict, **context) -> dict:
    """Everything measured, with the derived figures (throughput, FLOP/s, checks). ``context`` is kept as is."""
    history, statistics = outputs["history"], outputs["preprocess"]
    rate = steady_reviews_per_second(history)
    validation_share = statistics["val"]["reviews"] / statistics["train"]["reviews"]
    steps = params["preprocess"]["maxlen"]
    if params["train"].get("bucket_by_length") and "kept_mean" in statistics["train"]:
        steps = statistics["train"]["kept_mean"]  # each batch padded only to its longest review
    flops = flop_figures(params["model"], steps, params["train"]["batch_size"], rate, peaks, validation_share)
    lstm, baseline = outputs["evaluate"], outputs["baseline"]
    return {
        **context,
        "params": params,
        "dataset": {split: statistics[split]["reviews"] for split in ("train", "val", "test")},
        "stages": stages,
        "pipeline_seconds": pipeline_seconds,
        "training": {"steady_reviews_per_second": rate, "epochs": history},
        "flops": {**flops, "measured_peaks_flops_per_second": peaks},
        "accuracy": {"lstm": {key: lstm[key] for key in METRICS},
                     "baseline": {key: baseline[key] for key in METRICS if key in baseline},
                     "lstm_minus_baseline": lstm["accuracy"] - baseline["accuracy"]},
        "overheads": overheads,
        "checks": {name: figures["ok"] for name, figures in overheads.items()},
    }


def _n(value: float, digits: int = 3) -> str:
    """A number for people: thousands separated, ``digits`` significant figures for small ones."""
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""]


def _ok(flag: bool) -> str:
    return "pass" if flag else "**FAIL**"


def _paragraph(*parts: str) -> list[str]:
    return ["".join(parts), ""]


def to_markdown(report: dict) -> str:
    """A readable summary of ``report``: headline figures first, then one section per topic."""
    sections = [_summary, _stages, _training, _compute, _accuracy, _ablation, _learning_curve, _overheads, _seed_one,
                _machine, _params]
    return "\n".join(line for section in sections for line in section(report))


def _summary(report: dict) -> list[str]:
    flops, accuracy, machine, data = report["flops"], report["accuracy"], report["machine"], report["dataset"]
    largest = max(report["stages"], key=lambda name: report["stages"][name]["max_rss_mib"])
    compare = report.get("compare_seed_one")
    lines = [f"# imdb-lstm benchmark, {report['created']}", ""]
    lines += _paragraph(
        f"Archive `{report['archive']['path']}` (sha256 `{report['archive']['sha256'][:16]}...`): ",
        f"{data['train']:,} training, {data['val']:,} validation and {data['test']:,} test reviews. ",
        f"Machine: {machine['cpu_model']}, {machine['usable_cpus']} usable cores, TensorFlow {machine['tensorflow']}; ",
        f"load average {machine['load_average_start'][0]:.2f} at the start, {machine['load_average_end'][0]:.2f} at the end.")
    return lines + ["## Summary", ""] + _table(["figure", "value"], [
        ["training throughput (median of epochs after the first)",
         f"{_n(report['training']['steady_reviews_per_second'])} reviews/s"],
        ["training compute reached", f"{_n(flops['achieved_flops_per_second'] / 1e9)} GFLOP/s"],
        ["share of the machine's matmul peak (best rate measured)", _pct(flops["fraction_of_machine_peak"])],
        ["share of the matmul rate at the LSTM's own shapes", _pct(flops["fraction_of_lstm_shape_peak"])],
        ["test accuracy: LSTM / baseline",
         f"{accuracy['lstm']['accuracy']:.4f} / {accuracy['baseline']['accuracy']:.4f}"],
        [f"pipeline wall time ({len(report['stages'])} stages)", f"{_n(report['pipeline_seconds'])} s"],
        ["largest memory (max RSS)", f"{report['stages'][largest]['max_rss_mib']:.0f} MiB ({largest} stage)"],
        *([["seed one -> the pipeline's choices (same shape): throughput", f"{compare['speedup']:.2f}x"],
           ["seed one -> the LSTM layer alone at that shape (the ceiling)",
            " / ".join(f"{x:.2f}x (batch {size})" for size, x in compare["lstm_alone"]["speedup_ceiling"].items())]]
          if compare else []),
        *[[f"check: {name.replace('_', ' ')}", _ok(flag)] for name, flag in report["checks"].items()],
    ])


def _stages(report: dict) -> list[str]:
    lines = ["## Stages", ""] + _paragraph(
        "Wall time of `dvc repro --single-item <stage>` (DVC's own start-up and hashing included) ",
        "and the largest resident memory of any process it ran.")
    return lines + _table(["stage", "seconds", "max RSS (MiB)", "ran"], [
        [name, f"{s['seconds']:.1f}", f"{s['max_rss_mib']:.0f}", "yes" if s["ran"] else "no (unchanged)"]
        for name, s in report["stages"].items()])


def _training(report: dict) -> list[str]:
    lines = ["## Training, per epoch", ""] + _paragraph(
        "Epoch time includes the validation pass; reviews/s = reviews trained on (labelled and teacher-labelled) / epoch time.")
    return lines + _table(["epoch", "seconds", "reviews/s", "loss", "accuracy", "val_loss", "val_accuracy"], [
        [r["epoch"], f"{r['epoch_seconds']:.1f}", _n(r["reviews_per_second"]), f"{r['loss']:.4f}",
         f"{r['accuracy']:.4f}", f"{r['val_loss']:.4f}", f"{r['val_accuracy']:.4f}"] for r in report["training"]["epochs"]])


def _compute(report: dict) -> list[str]:
    flops = report["flops"]
    lines = ["## Compute", ""] + _paragraph(
        f"LSTM matrix products per review ({_n(flops['lstm_steps_per_review'])} steps): "
        f"{_n(flops['forward_flops_per_review'] / 1e6)} MFLOP forward, ",
        f"{_n(flops['training_flops_per_review'] / 1e6)} MFLOP to train (3x forward). Reached: ",
        f"{_n(flops['achieved_flops_per_second'] / 1e9)} GFLOP/s training only, ",
        f"{_n(flops['achieved_flops_per_second_with_validation'] / 1e9)} GFLOP/s counting the validation pass.")
    return lines + _table(["tf.matmul float32, m x k x n", "measured GFLOP/s"], [
        [shape, _n(rate / 1e9)] for shape, rate in flops["measured_peaks_flops_per_second"].items()])


def _accuracy(report: dict) -> list[str]:
    lstm, baseline = report["accuracy"]["lstm"], report["accuracy"]["baseline"]
    return ["## Accuracy (test split)", ""] + _table(["metric", "LSTM", "baseline (TF-IDF + logistic regression)"], [
        [key, f"{lstm[key]:.4f}", f"{baseline[key]:.4f}" if key in baseline else ""] for key in METRICS])


def _ablation(report: dict) -> list[str]:
    rows = report.get("ablation")
    if not rows:
        return []
    lines = ["## Ablation: what pretraining gives", ""] + _paragraph(
        "Each row re-runs pretrain, train and evaluate with the pretraining it names, everything else as in the ",
        "run above (the row marked *default*). Validation accuracy is the kept epoch's (lowest val_loss).")
    return lines + _table(["variant", "test accuracy", "- baseline", "test ROC AUC", "val accuracy",
                           "epochs (kept)", "pretrain s", "train s"], [
        [f"{row['variant']}{' (*default*)' if row['is_default'] else ''}", f"{row['test_accuracy']:.4f}",
         f"{row['test_accuracy'] - row['baseline_accuracy']:+.4f}", f"{row['test_roc_auc']:.4f}",
         f"{row['val_accuracy']:.4f}", f"{row['epochs_run']} ({row['kept_epoch']})",
         f"{row['pretrain_stage_seconds']:.1f}", f"{row['train_stage_seconds']:.1f}"] for row in rows])


def _learning_curve(report: dict) -> list[str]:
    points = report.get("learning_curve")
    if not points:
        return []
    lines = ["## Learning curve: test accuracy against training reviews", ""] + _paragraph(
        "Each row trains on that many of the training reviews (`preprocess.train_reviews`; each row's reviews ",
        "are among the next row's), with the same validation and test reviews and params; the last row is the run ",
        "above. Without pretraining: the same with `pretrain.method: none` and `pretrain.teacher_reviews: 0` ",
        "(no word vectors, no teacher).")
    without = {point["train_reviews"]: point for point in report.get("learning_curve_without_pretraining", [])}
    return lines + _table(["training reviews", "LSTM", "LSTM without pretraining", "baseline", "LSTM - baseline",
                           "LSTM epochs (lowest val_loss at)", "train stage s"], [
        [f"{point['train_reviews']:,}", f"{point['lstm_accuracy']:.4f}",
         f"{without[point['train_reviews']]['lstm_accuracy']:.4f}" if point["train_reviews"] in without else "n/a",
         f"{point['baseline_accuracy']:.4f}", f"{point['lstm_accuracy'] - point['baseline_accuracy']:+.4f}",
         f"{point['epochs_run']} ({point['lowest_val_loss_epoch']})", f"{point['train_stage_seconds']:.1f}"]
        for point in points])


def _overheads(report: dict) -> list[str]:
    over = report["overheads"]
    noop, mlflow, change = over["noop_repro"], over["mlflow"], over["training_change"]
    lines = ["## Overheads", "", "".join((
        f"- `dvc repro` with nothing changed: median {noop['median_seconds']:.2f} s of ",
        f"{', '.join(f'{s:.2f}' for s in noop['seconds'])} s (limit {noop['limit_seconds']:g} s), ",
        f"stages run: {', '.join(noop['stages_run']) or 'none'}: {_ok(noop['ok'])}.")), "".join((
        f"- MLflow in the train stage ({_n(mlflow['train_stage_seconds'])} s): its calls, replayed into the store ",
        f"the stage used, take {_pct(mlflow['fraction_of_train_stage'])} of it ",
        f"(limit {mlflow['limit_fraction']:.0%}): {_ok(mlflow['ok'])}. Only a repository's first run also creates ",
        f"the store: connecting took {mlflow['new_store']['connect']:.2f} s then (done before the stages here).")), "".join((
        f"- Only a training param changed ({change['change']}): `dvc repro --dry` would run ",
        f"{', '.join(change['repro_dry_would_run']) or 'nothing'}: {_ok(change['ok'])}.")), ""]
    return lines + _table(["MLflow step (replayed)", "seconds"], [
        [step, f"{seconds:.3f}"] for step, seconds in mlflow["replay"].items() if step != "calls"])


def _seed_one(report: dict) -> list[str]:
    compare = report.get("compare_seed_one")
    if not compare:
        return []
    seed, ours = compare["seed_one"], compare["pipeline"]
    differing = [key for key in ours["params"] if ours["params"][key] != seed["params"][key]]
    lines = ["## Seed one vs the pipeline's choices (same shape)", ""] + _paragraph(
        "Both: num_words 20000, maxlen 80, embedding 128, one LSTM of 128, ",
        f"at most {compare['epochs_trained']} epochs, stopping after 2 without a better val_loss "
        "(the best epoch's weights kept). ",
        f"The pipeline's choices give {_n(compare['speedup'])}x seed one's throughput.")
    return lines + _table(["", "seed one", "pipeline"], [
        *[[key, f"`{seed['params'][key]}`", f"`{ours['params'][key]}`"] for key in differing],
        ["reviews/s (median of epochs after the first)", _n(seed["reviews_per_second"]),
         _n(ours["reviews_per_second"])],
        ["train stage seconds", f"{seed['train_stage_seconds']:.1f}", f"{ours['train_stage_seconds']:.1f}"],
        ["epochs run", str(len(seed["epochs"])), str(len(ours["epochs"]))],
        ["test accuracy", f"{seed['test_accuracy']:.4f}", f"{ours['test_accuracy']:.4f}"],
        ["test ROC AUC", f"{seed['test_roc_auc']:.4f}", f"{ours['test_roc_auc']:.4f}"],
    ]) + _ceiling(compare)


def _ceiling(compare: dict) -> list[str]:
    alone = compare["lstm_alone"]
    lines = ["### The ceiling: the LSTM layer alone", ""] + _paragraph(
        "One `keras.layers.LSTM(128)` on random inputs of this shape, forward and backward, nothing else ",
        "(no embedding, optimizer or validation pass): no choice around the LSTM can train this shape faster.")
    return lines + _table(["batch", "reviews/s", "x seed one"], [
        [size, _n(rate), f"{alone['speedup_ceiling'][size]:.2f}x"] for size, rate in alone["reviews_per_second"].items()])


def _machine(report: dict) -> list[str]:
    def shown(value):
        return ", ".join(f"{v:.2f}" for v in value) if isinstance(value, (list, tuple)) else value

    return ["## Machine", ""] + _table(["", ""], [[key, shown(value)] for key, value in report["machine"].items()])


def _params(report: dict) -> list[str]:
    return ["## Params", ""] + _table(["key", "value"], [
        [f"{section}.{key}", f"`{value}`"] for section, values in report["params"].items() for key, value in values.items()])
