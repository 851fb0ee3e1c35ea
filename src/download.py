"""Download stage: fetch the IMDB data, verify its sha256 and lay it out for preprocessing.

The fetched file is kept in a downloads folder between runs (and not fetched again while its
hash verifies); a local file (``file://`` URL or plain path) is used in place. The output
folder appears whole or not at all and holds ``source.json`` describing what it contains.

From aclImdb's archive the reviews are kept as one JSON Lines file per folder kind,
``aclImdb/train.jsonl``, ``aclImdb/test.jsonl`` (labelled) and ``aclImdb/unsup.jsonl`` (the
unlabelled reviews of ``train/unsup``, empty when the archive has none), rather than one file
per review: tens of thousands of tiny files are slow to create and slow for DVC to hash and
cache. Each line is ``{"id": 123, "rating": 8, "label": 1, "movie": "tt0453418", "text": "..."}``:
id and rating from the member's name ``<id>_<rating>.txt``; label 1 for pos, 0 for neg, null
for unsup; movie the IMDB title of the review's page, from line <id> of the folder's
``urls_<pos|neg|unsup>.txt``, or null when the archive does not say; text decoded as UTF-8
with undecodable bytes replaced. Negative reviews come first, then positive, each in
file-name order, whatever the order of the archive's members. Every other member (``README``,
``imdb.vocab``, the bag-of-words ``*.feat`` files) is checked for safety and skipped.

A server that asks for a password gets it from the environment variable IMDB_DATA_AUTH
(``USER:PASSWORD``), else from ``~/.netrc``, which requests reads for any request given no
credentials (``machine HOST login USER password PASSWORD``; ``NETRC`` names another file).
Never from data.url itself: params.py refuses a URL holding them, as DVC would record it.
requests sends either to data.url's host only, not to another host it is redirected to.
"""

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import requests

from src.errors import ChecksumError, DataError, DownloadError, UnsafeArchiveError
from src.fileio import atomic_dir, atomic_path, write_json
from src.params import DATA_AUTH_HINT, DATA_AUTH_VARIABLE, DataParams
from src.progress import Progress
from src.redact import redact_text, redact_url

log = logging.getLogger("imdb_lstm.download")

# (url, sha256) of each source's official file.
OFFICIAL = {
    "aclimdb": ("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"),
    "keras": ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/imdb.npz",
              "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f"),
}
WORD_INDEX_NAME = "imdb_word_index.json"  # Keras' word index, beside imdb.npz
MAX_REVIEW_BYTES = 1 << 20  # the longest real review is about 14 KB
MAX_TOTAL_BYTES = 1 << 30  # the 100,000 reviews of the official archive, labelled and not, are about 130 MB
MAX_URLS_BYTES = 16 << 20  # a urls_*.txt: the official urls_unsup.txt is about 2.5 MB
CHUNK_BYTES = 1 << 20
REVIEW_MEMBER = re.compile(r"aclImdb/(train/(?:pos|neg|unsup)|test/(?:pos|neg))/(\d+_\d+\.txt)")
URLS_MEMBER = re.compile(r"aclImdb/(train|test)/urls_(pos|neg|unsup)\.txt")  # line <id>: review <id>'s page
MOVIE_ID = re.compile(r"/title/(tt\d+)")
SPLITS = ("train", "test")
LABELS = {"neg": 0, "pos": 1}  # in line order: negative reviews first, as read_aclimdb has always returned them
LABELLED_FOLDERS = tuple(f"{split}/{side}" for split in SPLITS for side in LABELS)
UNLABELLED_FOLDER = "train/unsup"
LOCAL_COPY_HINT = ("download the file elsewhere and set data.url to its path or a file:// URL, "
                   "and data.sha256 to its hash")


@dataclass(frozen=True)
class Source:
    name: str  # aclimdb or keras
    url: str
    sha256: str
    filename: str  # name in the downloads folder


class _Transient(Exception):
    """A failure worth retrying that requests does not raise itself (5xx, short body)."""


def resolve_source(data: DataParams) -> Source:
    """The URL, expected sha256 and file name to use for ``data`` (empty means official)."""
    official_url, official_sha256 = OFFICIAL[data.source]
    url = data.url or official_url
    filename = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
    return Source(data.source, url, data.sha256 or official_sha256,
                  filename or PurePosixPath(official_url).name)


def local_path(url: str) -> Path | None:
    """The file a ``file://`` URL or plain path names; None for http(s) URLs."""
    if url.startswith(("http://", "https://")):
        return None
    if not url.startswith("file://"):
        return Path(url)
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DownloadError(f"{redact_url(url)}: a file:// URL must name a file on this machine")
    return Path(urllib.request.url2pathname(parts.path))


def credentials_from_environment() -> tuple[str, str] | None:
    """(user, password) from IMDB_DATA_AUTH; None when it is unset or empty (requests then reads ~/.netrc)."""
    value = os.environ.get(DATA_AUTH_VARIABLE, "")
    if not value:
        return None
    user, colon, password = value.partition(":")
    if not (colon and user):
        raise DownloadError(f"{DATA_AUTH_VARIABLE}: must be USER:PASSWORD (a user name, a colon, the password); "
                            "its value is not shown")
    return user, password


def file_sha256(path: Path) -> str:
    """sha256 of a file, with a progress bar if hashing takes more than a second (a line every 15 s in logs)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream, Progress(f"sha256 {path.name}", path.stat().st_size, "B", log,
                                             end_line=False, delay=1.0) as bar:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _checksum_error(where: str, expected: str, actual: str) -> ChecksumError:
    return ChecksumError(f"{where}: sha256 mismatch: expected {expected}, got {actual}; "
                         f"if you trust this file, set data.sha256 to {actual}")


def _reason(error: Exception, connect_timeout: float, read_timeout: float) -> str:
    """A short, password-free description of a failed request."""
    text = redact_text(str(error))
    if isinstance(error, requests.ConnectTimeout):
        return f"no connection within {connect_timeout:g} s"
    if isinstance(error, requests.ReadTimeout) or "Read timed out" in text:
        return f"no data for {read_timeout:g} s"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "connection closed before the whole file arrived"
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip().lower()
    return text if isinstance(error, _Transient) else f"{type(error).__name__}: {text}"


def _get_once(url: str, tmp: Path, connect_timeout: float, read_timeout: float, auth: tuple[str, str] | None) -> str:
    """One GET of ``url`` into ``tmp``; return the sha256 of what arrived."""
    headers = {"Accept-Encoding": "identity"}  # the bytes as stored, so Content-Length counts them
    with requests.get(url, stream=True, timeout=(connect_timeout, read_timeout), headers=headers,
                      auth=auth) as response:
        status = f"HTTP {response.status_code} {response.reason}"
        if response.status_code >= 500:
            raise _Transient(status)
        if response.status_code == 401:
            raise DownloadError(f"could not download {redact_url(url)}: {status}; give the server's user name and "
                                f"password in {DATA_AUTH_HINT}, or {LOCAL_COPY_HINT}")
        if response.status_code >= 400:
            raise DownloadError(f"could not download {redact_url(url)}: {status}; check data.url, or {LOCAL_COPY_HINT}")
        size = response.headers.get("Content-Length")
        expected = int(size) if size and size.isdigit() else None
        digest, received = hashlib.sha256(), 0
        with tmp.open("wb") as out, Progress(f"downloading {PurePosixPath(urllib.parse.urlsplit(url).path).name}",
                                             expected, "B", log) as bar:
            for chunk in response.iter_content(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if expected is not None and "Content-Encoding" not in response.headers and received != expected:
            raise _Transient(f"connection closed after {received} of {expected} bytes")
    return digest.hexdigest()


def _get(url: str, tmp: Path, connect_timeout: float, read_timeout: float, attempts: int, backoff: float,
         auth: tuple[str, str] | None) -> str:
    """GET with retries (exponential backoff) on connection errors, timeouts, short bodies and 5xx."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    shown = redact_url(url)
    retryable = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Transient)
    for attempt in range(1, attempts + 1):
        try:
            return _get_once(url, tmp, connect_timeout, read_timeout, auth)
        except requests.exceptions.SSLError as error:  # a certificate problem will not go away
            reason = _reason(error, connect_timeout, read_timeout)
            raise DownloadError(f"could not download {shown}: {reason}; {LOCAL_COPY_HINT}") from None
        except retryable as error:
            reason = _reason(error, connect_timeout, read_timeout)
            if attempt == attempts:
                raise DownloadError(f"could not download {shown} ({attempts} attempts, last: {reason}); "
                                    f"{LOCAL_COPY_HINT}") from None
            delay = backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %g s (attempt %d of %d)", shown, reason, delay, attempt + 1, attempts)
            time.sleep(delay)
        except requests.RequestException as error:  # a malformed URL and the like
            reason = _reason(error, connect_timeout, read_timeout)
            raise DownloadError(f"could not download {shown}: {reason}; check data.url") from None


def fetch(url: str, dest: str | Path, sha256: str | None, *, connect_timeout: float = 5.0,
          read_timeout: float = 30.0, attempts: int = 3, backoff: float = 1.0,
          auth: tuple[str, str] | None = None) -> Path:
    """Download ``url`` to ``dest`` and verify it, unless ``dest`` already verifies; return ``dest``.

    ``sha256=None`` (a file whose hash is not known) keeps any ``dest`` already present.
    ``auth`` (user, password) is sent to the server; without it requests looks in ~/.netrc.
    With the defaults an unreachable host fails within 3 * 5 s + 1 s + 2 s of back-off.
    """
    dest, shown = Path(dest), redact_url(url)
    if dest.is_file():
        if sha256 is None:
            log.info("%s: already downloaded, not fetching it again", dest)
            return dest
        if file_sha256(dest) == sha256:
            log.info("%s: already downloaded and its sha256 verifies, not fetching it again", dest)
            return dest
        log.warning("%s: sha256 does not verify, fetching it again", dest)
        dest.unlink()
    log.info("downloading %s to %s", shown, dest)
    with atomic_path(dest) as tmp:
        actual = _get(url, tmp, connect_timeout, read_timeout, attempts, backoff, auth)
        if sha256 is not None and actual != sha256:
            raise _checksum_error(shown, sha256, actual)
    return dest


def _obtain(url: str, dest: Path, sha256: str | None, fetch_options: dict) -> Path:
    """A verified local file: ``url`` itself if it is local, else fetched into ``dest``."""
    path = local_path(url)
    if path is None:
        return fetch(url, dest, sha256, **fetch_options)
    if not path.is_file():
        raise DownloadError(f"{path}: no such file (from data.url); check the path")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise _checksum_error(str(path), sha256, actual)
        log.info("%s: sha256 verified, using it in place", path)
    return path


def _unsafe(archive: Path, problem: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive}: refusing the whole archive: {problem}; nothing was extracted")


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse a member that could write outside the output folder or is not a plain file."""
    name = member.name
    if name.startswith("/"):
        problem = "has an absolute path"
    elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
        problem = "has a '..' path component"
    elif member.issym():
        problem = f"is a symlink (to {member.linkname!r})"
    elif member.islnk():
        problem = f"is a hard link (to {member.linkname!r})"
    elif member.isdev():
        problem = "is a device or fifo"
    else:
        return
    raise _unsafe(archive, f"member {name!r} {problem}")


def _read_members(archive: Path):
    """Yield (folder, file name, bytes) of each review and (folder, None, bytes) of each urls file.

    Every member of the archive is checked (_check_member); members of any other name are
    skipped without being read.
    """
    total, seen = 0, set()
    try:
        with open(archive, "rb") as file, gzip.GzipFile(fileobj=file) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as tar, \
                Progress(f"extracting {archive.name}", archive.stat().st_size, "B", log) as bar:
            for member in tar:
                bar.update_to(file.tell())  # compressed bytes read
                _check_member(archive, member)
                review, urls = REVIEW_MEMBER.fullmatch(member.name), URLS_MEMBER.fullmatch(member.name)
                if not ((review or urls) and member.isreg()):
                    continue
                if member.name in seen:
                    raise _unsafe(archive, f"member {member.name!r} appears twice")
                limit = MAX_REVIEW_BYTES if review else MAX_URLS_BYTES
                if member.size > limit:
                    raise _unsafe(archive, f"member {member.name!r} is {member.size} bytes, more than the "
                                           f"{limit} allowed for {'a review' if review else 'a urls file'}")
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise _unsafe(archive, f"its reviews exceed {MAX_TOTAL_BYTES} bytes in total")
                seen.add(member.name)
                data = tar.extractfile(member).read()
                if review:
                    yield review.group(1), review.group(2), data
                elif f"{urls.group(1)}/{urls.group(2)}" in (*LABELLED_FOLDERS, UNLABELLED_FOLDER):
                    yield f"{urls.group(1)}/{urls.group(2)}", None, data
            while stream.read(CHUNK_BYTES):  # to the gzip trailer: an archive cut short at a member's end fails here
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{archive}: not a readable .tar.gz archive ({error}); "
                        "check data.url and data.source") from None


def movie_of(url: str) -> str | None:
    """The movie a review's IMDB page is about: its title id (tt0453418), else the page itself; None if blank."""
    url = url.strip()
    found = MOVIE_ID.search(url)
    return found.group(1) if found else (url or None)


def _review_record(name: str, label: int | None, movies: list[str], data: bytes) -> dict:
    """The record of the review ``data`` in member ``name`` (``<id>_<rating>.txt``)."""
    review_id, rating = map(int, name.removesuffix(".txt").split("_"))
    movie = movie_of(movies[review_id]) if review_id < len(movies) else None
    return {"id": review_id, "rating": rating, "label": label, "movie": movie,
            "text": data.decode("utf-8", errors="replace")}


def safe_extract_reviews(archive: str | Path, out_dir: str | Path) -> int:
    """Write the reviews of an aclImdb .tar.gz to ``out_dir``/aclImdb/{train,test,unsup}.jsonl; return how many.

    Only aclImdb/{train,test}/{pos,neg}/ and aclImdb/train/unsup/ <id>_<rating>.txt regular
    files and the urls_*.txt beside them are kept, read in one pass (at most MAX_TOTAL_BYTES
    of them are held in memory, to be written in a fixed order); an unsafe member anywhere
    refuses the whole archive and leaves nothing behind.
    """
    archive = Path(archive)
    reviews = {folder: [] for folder in (*LABELLED_FOLDERS, UNLABELLED_FOLDER)}  # (file name, bytes)
    urls = {}  # folder -> the lines of its urls file
    with atomic_dir(Path(out_dir) / "aclImdb") as tmp:
        for folder, name, data in _read_members(archive):
            if name is None:
                urls[folder] = data.decode("utf-8", errors="replace").splitlines()
            else:
                reviews[folder].append((name, data))
        if not any(reviews[folder] for folder in LABELLED_FOLDERS):
            raise DataError(f"{archive}: no reviews found (expected aclImdb/<train|test>/<pos|neg>/"
                            "<id>_<rating>.txt); check data.url and data.source")
        empty = [f"aclImdb/{folder}" for folder in LABELLED_FOLDERS if not reviews[folder]]
        if empty:
            raise DataError(f"{archive}: no reviews in {', '.join(empty)}; the archive is incomplete")
        files = {split: [(f"{split}/{side}", label) for side, label in LABELS.items()] for split in SPLITS}
        files["unsup"] = [(UNLABELLED_FOLDER, None)]
        with_movie = 0
        for file_name, folders in files.items():
            with (tmp / f"{file_name}.jsonl").open("w", encoding="utf-8", newline="\n") as out:
                for folder, label in folders:
                    for name, data in sorted(reviews[folder], key=lambda review: review[0]):
                        record = _review_record(name, label, urls.get(folder, []), data)
                        with_movie += record["movie"] is not None
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts = {folder: len(found) for folder, found in reviews.items()}
    log.info("extracted %d reviews (%s); the movie of %d of them is known (urls_*.txt)", sum(counts.values()),
             ", ".join(f"{folder}: {n}" for folder, n in sorted(counts.items())), with_movie)
    if not counts[UNLABELLED_FOLDER]:
        log.info("the archive has no unlabelled reviews (aclImdb/%s/): unsup.jsonl is empty", UNLABELLED_FOLDER)
    return sum(counts.values())


def check_word_index(path: Path) -> str:
    """Check ``path`` is a JSON object of word -> positive int rank; return its sha256."""
    try:
        index = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); expected Keras' {WORD_INDEX_NAME}") from None
    if not (isinstance(index, dict) and index and all(
            isinstance(rank, int) and not isinstance(rank, bool) and rank > 0 for rank in index.values())):
        raise DataError(f"{path}: not a word index (a JSON object of word -> positive integer rank)")
    return file_sha256(path)


def word_index_url(npz_url: str) -> str:
    """The URL or path of the word index that sits beside ``npz_url``."""
    path = local_path(npz_url)
    if path is None or npz_url.startswith("file://"):
        return urllib.parse.urljoin(npz_url, WORD_INDEX_NAME)
    return str(path.parent / WORD_INDEX_NAME)


def _keras_word_index(npz_url: str, downloads_dir: Path, fetch_options: dict) -> tuple[Path, str]:
    """The word index beside the npz, and its sha256; a bad downloaded copy is deleted."""
    url = word_index_url(npz_url)
    path = _obtain(url, downloads_dir / WORD_INDEX_NAME, None, fetch_options)
    try:
        return path, check_word_index(path)
    except DataError:
        if local_path(url) is None:
            path.unlink()
        raise


def download(data: DataParams, downloads_dir: str | Path = "data/downloads", out_dir: str | Path = "data/raw",
             **fetch_options) -> dict:
    """Fetch and verify ``data``'s file, write ``out_dir`` (with source.json) and return its record.

    Credentials for the server come from IMDB_DATA_AUTH (or ``fetch_options["auth"]``), else ~/.netrc.
    """
    source, downloads_dir = resolve_source(data), Path(downloads_dir)
    fetch_options = {"auth": credentials_from_environment(), **fetch_options}
    archive = _obtain(source.url, downloads_dir / source.filename, source.sha256, fetch_options)
    record = {"source": source.name, "url": redact_url(source.url), "sha256": source.sha256,
              "bytes": archive.stat().st_size}
    if source.name == "keras":
        word_index, record["word_index_sha256"] = _keras_word_index(source.url, downloads_dir, fetch_options)
    with atomic_dir(out_dir) as tmp:
        if source.name == "aclimdb":
            safe_extract_reviews(archive, tmp)
        else:
            shutil.copyfile(archive, tmp / "imdb.npz")
            shutil.copyfile(word_index, tmp / WORD_INDEX_NAME)
        write_json(tmp / "source.json", record)
    log.info("wrote %s: %s data from %s (sha256 %s)", out_dir, source.name, record["url"], source.sha256)
    return record
