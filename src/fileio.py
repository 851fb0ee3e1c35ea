"""Atomic writes: an output either appears whole or not at all.

Each output is written to a temporary name beside it (``.<name>.<pid>.<random>.tmp``) and
renamed over it only once complete. A process killed mid-write (SIGKILL, power loss) leaves
its temporary behind; the next write of that output removes the temporaries of processes
that no longer run. A full disk or a write-protected place becomes one OutputError that names
the output and says what to do, and leaves nothing half-written.
"""

import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from src.errors import OutputError, PipelineError

# A fixed timestamp inside .npz files, so the same arrays give the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

# A temporary of output <name>: .<name>.<pid>.<8 random characters>.<suffix>
_TEMPORARY = re.compile(r"\.(.+)\.(\d+)\.[a-z0-9_]{8}\.[A-Za-z0-9]+")
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WRITE_PROTECTED = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_ROOM_HINT = "free some space there (or raise the file size limit, `ulimit -f`) and run the stage again"
_PROTECTED_HINT = ("make it and its folder writable for this user (see `ls -ld`, `lsattr -d` for the immutable "
                   "flag, `mount` for a read-only file system) and run the stage again")


def _chain(error: BaseException):
    """``error`` and the exceptions it was raised from or while handling (unless it suppressed them)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ if error.__cause__ is not None else (
            None if error.__suppress_context__ else error.__context__)


def _about(path: Path, filename) -> bool:
    """Is ``filename`` (of an OSError) ``path``, one of its temporaries, or inside one? None: unknown, so yes."""
    if filename is None:
        return True
    target, named = Path(os.path.abspath(path)), Path(os.path.abspath(os.fsdecode(filename)))
    for candidate in (named, *named.parents):
        if candidate == target or (candidate.parent == target.parent and candidate.name.startswith(f".{target.name}.")):
            return True
    return False


def storage_problem(error: BaseException) -> tuple[OSError, str] | None:
    """The full-disk or write-protection OSError behind ``error``, and what to do about it."""
    for cause in _chain(error):
        if isinstance(cause, OSError) and cause.errno in _NO_ROOM | _WRITE_PROTECTED:
            return cause, _NO_ROOM_HINT if cause.errno in _NO_ROOM else _PROTECTED_HINT
    return None


def _as_the_user_knows_it(path: Path) -> Path:
    """``path``, or the output it will become if it lies inside this process's temporary of one."""
    shown = path
    for ancestor in path.parents:  # nearest first: the last match is the outermost output
        match = _TEMPORARY.fullmatch(ancestor.name)
        if match and int(match.group(2)) == os.getpid():
            shown = ancestor.parent / match.group(1)
    return shown


def output_error(path: str | Path, error: BaseException) -> OutputError | None:
    """An OutputError naming ``path`` if ``error`` is a full disk or a write-protected place while writing it."""
    found = storage_problem(error)
    if found is None:
        return None
    cause, hint = found
    if not (_about(Path(path), cause.filename) and _about(Path(path), cause.filename2)):
        return None  # about another file (an input, say): not this output's problem
    return OutputError(f"{_as_the_user_knows_it(Path(path))}: cannot write ({os.strerror(cause.errno)}); {hint}")


@contextlib.contextmanager
def _clear_errors(path: Path):
    """Turn a full disk or a write-protected place, while writing ``path``, into an OutputError."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as error:
        mapped = output_error(path, error)
        if mapped is None:
            raise
        raise mapped from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create 0600/0700; give outputs the mode a plain open/mkdir would."""
    os.chmod(path, mode & ~_umask())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead too
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by processes that died mid-write; return them."""
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for sibling in path.parent.iterdir():
            match = _TEMPORARY.fullmatch(sibling.name)
            if not match or match.group(1) != path.name:
                continue
            pid = int(match.group(2))
            if pid == os.getpid() or _process_alive(pid):
                continue
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    sibling.unlink()
            removed.append(sibling)
    return removed


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path`` (ending in ``suffix``); rename it over ``path`` only on success."""
    path = Path(path)
    with _clear_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            _usual_mode(tmp, 0o666)
            yield tmp
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside ``path``; it replaces ``path`` only on success."""
    path = Path(path)
    with _clear_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
        try:
            _usual_mode(tmp, 0o777)
            yield tmp
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".old", dir=path.parent))
                os.replace(path, old / path.name)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old / path.name, path)  # the previous output stays
                    old.rmdir()
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows of dicts (all with the first row's keys) as a CSV file with a header."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write arrays as a compressed .npz that is byte-identical for identical arrays."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(arrays):
                array = np.asarray(arrays[name])
                if array.dtype.hasobject:
                    raise ValueError(f"{name}: object arrays cannot be saved without pickle")
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an .npz written by save_npz (never unpickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
