"""What every stage script shares: logging set-up and turning errors into one clear line."""

import logging
import os
import signal
import sys
from collections.abc import Callable

from src.errors import PipelineError, Terminated

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _raise_terminated(signum, frame):
    raise Terminated(f"received signal {signum}")


def storage_error_line(error: BaseException) -> str | None:
    """One line for a full disk or a write-protected place that no output write caught (MLflow's artifacts, say)."""
    from src.fileio import storage_problem

    found = storage_problem(error)
    if found is None:
        return None
    cause, hint = found
    where = cause.filename if cause.filename is not None else "a file"
    return f"{where}: {os.strerror(cause.errno)}; {hint}"


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(): a PipelineError becomes one line on stderr and exit code 2.

    So does a full disk or a write-protected place wherever it strikes (outputs are named by
    src.fileio; anything else by the file the OSError names). SIGTERM is raised as Terminated,
    so temporary files are removed and MLflow runs are marked KILLED on the way out, as for Ctrl-C.
    """
    setup_logging()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as error:
        line = storage_error_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
