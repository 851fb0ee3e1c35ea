"""Errors a user can fix. Each message says what went wrong and what to do about it."""


class PipelineError(Exception):
    """Base class: the stage runner prints the message as one line and exits non-zero."""


class ParamsError(PipelineError):
    """A value in params.yaml (or an override) is missing, unknown or out of range."""


class DownloadError(PipelineError):
    """The data could not be fetched or verified."""


class ChecksumError(DownloadError):
    """A downloaded file does not have the expected sha256."""


class UnsafeArchiveError(PipelineError):
    """An archive holds a member that must not be extracted."""


class DataError(PipelineError):
    """Input data is missing or not in the expected shape."""


class OutputError(PipelineError):
    """An output cannot be written: the disk is full, or the place is write-protected."""


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be used."""


class RegistryError(PipelineError):
    """The registered model has no version for what was asked (a run, an experiment), or no champion."""


class DistributionError(PipelineError):
    """TF_CONFIG is missing or wrong, or the workers do not agree."""


class BenchmarkError(PipelineError):
    """A command of the benchmark failed, or its input is unusable."""


class InvalidInput(ValueError):
    """A request to the served model: its reviews are not a non-empty list of strings of sensible length.

    Not a PipelineError: src.serving turns it into the scoring server's 400 answer.
    """


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so cleanup (`finally`, run status) still happens."""
