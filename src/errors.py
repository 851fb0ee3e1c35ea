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


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so cleanup (`finally`, run status) still happens."""
