"""Which data a run used: its train, validation and test arrays, logged as MLflow datasets.

Each split is logged with ``mlflow.log_input`` under its context (training, validation, test)
as a NumPy dataset, so MLflow records its shapes and dtypes. Its source is the path DVC tracks
it under (``data/processed/train.npz``, inside the output ``data/processed``) and its digest is
the file's md5, the hash DVC records for that file; the run's tag ``dvc.data/processed.md5``
holds the whole folder's, as dvc.lock has it. The runs table's Dataset column and the run page
then name the data: ``train.npz (<md5>)``, with its path on the run page.
"""

import hashlib
from pathlib import Path

import numpy as np

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes: DVC 3's hash of a file (dvc.lock, and a folder's .dir listing)."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "md5").hexdigest()


def tracked_path(path: Path, root: Path) -> str:
    """``path`` as DVC names it, relative to the repository ``root``; absolute when it lies outside."""
    path = Path(path).absolute()
    try:
        return path.relative_to(Path(root).absolute()).as_posix()
    except ValueError:
        return path.as_posix()


def split_dataset(path: Path, arrays: dict[str, np.ndarray], root: Path):
    """The split stored at ``path`` (its ``x`` and ``y``) as an MLflow dataset named by its file, digest its md5."""
    import mlflow.data
    from mlflow.data.sources import LocalArtifactDatasetSource  # given, not resolved: MLflow warns the path is ambiguous

    path = Path(path)
    source = LocalArtifactDatasetSource(tracked_path(path, root))
    return mlflow.data.from_numpy(arrays["x"], targets=arrays["y"], source=source, name=path.name, digest=file_md5(path))


def log_splits(folder: Path, splits: dict[str, dict[str, np.ndarray]], root: Path) -> None:
    """Log each split (``train``, ``val``, ``test``: the arrays of ``folder/<split>.npz``) into the active run."""
    import mlflow

    for split, arrays in splits.items():
        mlflow.log_input(split_dataset(Path(folder) / f"{split}.npz", arrays, root), context=CONTEXTS[split])
