"""Download stage: sources, caching, HTTP failures, safe extraction and the command line."""

import copy
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from http_server import FileServer
from project import free_port
from synthetic import write_aclimdb_tarball, write_keras_files
from src import download as dl
from src.download import download, redact_url, resolve_source, safe_extract_reviews
from src.errors import ChecksumError, DataError, DownloadError, UnsafeArchiveError
from src.params import DATA_AUTH_VARIABLE, DataParams

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = {"connect_timeout": 1.0, "read_timeout": 0.3, "attempts": 3, "backoff": 0.01}
TARBALL = "/aclImdb_v1.tar.gz"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (relative, sorted); [] if it does not exist."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def review_names(archive: Path) -> list[str]:
    """The members a correct extraction keeps, worked out independently of the code under test."""
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar if m.isfile()]
    return sorted(n for n in names if n.count("/") == 3 and n.split("/")[1] in ("train", "test")
                  and n.split("/")[2] in ("pos", "neg") and n.endswith(".txt"))


def expected_records(archive: Path) -> dict[str, list[dict]]:
    """split -> the records its .jsonl must hold, in order: negative then positive, by file name."""
    with tarfile.open(archive) as tar:
        texts = {name: tar.extractfile(name).read().decode("utf-8", errors="replace") for name in review_names(archive)}
        urls = {m.name: tar.extractfile(m).read().decode().splitlines() for m in tar if "/urls_" in m.name}
    records = {"train": [], "test": []}
    for name in sorted(texts, key=lambda n: (n.split("/")[2] == "pos", n.split("/")[3])):
        _, split, side, file_name = name.split("/")
        review_id, rating = file_name[:-4].split("_")
        lines = urls.get(f"aclImdb/{split}/urls_{side}.txt", [])
        movie = lines[int(review_id)].split("/")[4] if int(review_id) < len(lines) else None
        records[split].append({"id": int(review_id), "rating": int(rating), "label": int(side == "pos"),
                               "movie": movie, "text": texts[name]})
    return records


def jsonl_records(path: Path) -> list[dict]:
    """The records of a .jsonl, checking it is UTF-8 with one "\\n"-terminated line per record."""
    data = path.read_bytes().decode("utf-8")
    assert data.endswith("\n") and "\r" not in data
    return [json.loads(line) for line in data.split("\n")[:-1]]


def add(tar: tarfile.TarFile, name: str, data: bytes = b"a fine film", **fields) -> None:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    if info.isreg():
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def write_tar(path: Path, folders=("train/pos", "train/neg", "test/pos", "test/neg"), extra=None) -> Path:
    """A small aclImdb archive: two reviews per folder, then ``extra`` (name, fields) as the last member."""
    with tarfile.open(path, "w:gz") as tar:
        for folder in folders:
            for number in range(2):
                add(tar, f"aclImdb/{folder}/{number}_7.txt")
        if extra is not None:
            add(tar, extra[0], **extra[1])
    return path


@pytest.fixture
def tarball(tmp_path) -> Path:
    return write_aclimdb_tarball(tmp_path / "src" / "aclImdb_v1.tar.gz", train=8, test=4)


@pytest.fixture
def keras_files(tmp_path) -> tuple[Path, Path]:
    return write_keras_files(tmp_path / "keras", train=8, test=4)


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


@pytest.fixture
def downloads(tmp_path) -> Path:
    return tmp_path / "downloads"


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "raw"


# --- URLs and sources ---------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("https://user:secret@example.com/a.tar.gz", "https://***@example.com/a.tar.gz"),
    ("http://token@example.com:8080/a.tar.gz?x=1", "http://***@example.com:8080/a.tar.gz?x=1"),
    ("http://user:p@ss@example.com/a", "http://***@example.com/a"),
    ("https://example.com/a.tar.gz", "https://example.com/a.tar.gz"),
    ("file:///data/me@home/a.tar.gz", "file:///data/me@home/a.tar.gz"),
    ("data/me@home/a.tar.gz", "data/me@home/a.tar.gz"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_resolve_source_official_and_custom():
    official = resolve_source(DataParams("aclimdb", "", ""))
    assert official == dl.Source("aclimdb", dl.OFFICIAL["aclimdb"][0], dl.OFFICIAL["aclimdb"][1], "aclImdb_v1.tar.gz")
    assert resolve_source(DataParams("keras", "", "")).filename == "imdb.npz"
    mirror = resolve_source(DataParams("aclimdb", "http://mirror.example/imdb%20copy.tgz", ""))
    assert (mirror.sha256, mirror.filename) == (dl.OFFICIAL["aclimdb"][1], "imdb copy.tgz")
    assert resolve_source(DataParams("keras", "x/imdb.npz", "a" * 64)).sha256 == "a" * 64


# --- success paths ------------------------------------------------------------------------

def test_aclimdb_over_http(server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    url = server.url(TARBALL, userinfo="reader:hunter2")
    record = download(DataParams("aclimdb", url, sha256(tarball)), downloads, out, **FAST)

    expected = {"source": "aclimdb", "url": redact_url(url), "sha256": sha256(tarball), "bytes": tarball.stat().st_size}
    assert record == expected
    assert json.loads((out / "source.json").read_text()) == expected
    assert "hunter2" not in (out / "source.json").read_text()
    assert files_under(out) == ["aclImdb/test.jsonl", "aclImdb/train.jsonl", "aclImdb/unsup.jsonl", "source.json"]
    wanted = expected_records(tarball)
    assert [len(wanted["train"]), len(wanted["test"])] == [8, 4]
    for split in ("train", "test"):
        records = jsonl_records(out / "aclImdb" / f"{split}.jsonl")
        assert records == wanted[split]
        assert [r["label"] for r in records] == sorted(r["label"] for r in records)  # negative first
    # Only the reviews are kept: README, imdb.vocab, imdbEr.txt, *Bow.feat and urls_*.txt are skipped.
    texts = {r["text"] for split in ("train", "test", "unsup") for r in jsonl_records(out / "aclImdb" / f"{split}.jsonl")}
    assert not texts & {"readme", "the\nfilm\n", "0.1\n-0.2\n", "0 0:1\n"}
    assert not any("imdb.com" in text for text in texts)
    assert len(jsonl_records(out / "aclImdb" / "unsup.jsonl")) == 30
    assert files_under(downloads) == ["aclImdb_v1.tar.gz"]


def test_second_run_uses_the_verified_download(server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    data = DataParams("aclimdb", server.url(TARBALL), sha256(tarball))
    download(data, downloads, out, **FAST)
    download(data, downloads, out, **FAST)
    assert server.hits[TARBALL] == 1

    (downloads / "aclImdb_v1.tar.gz").write_bytes(b"damaged")  # no longer verifies: fetched again
    download(data, downloads, out, **FAST)
    assert server.hits[TARBALL] == 2
    assert sha256(downloads / "aclImdb_v1.tar.gz") == sha256(tarball)


def test_keras_over_http(server, keras_files, downloads, out):
    npz, index = keras_files
    server.add_folder(npz.parent)
    data = DataParams("keras", server.url("/imdb.npz"), sha256(npz))
    record = download(data, downloads, out, **FAST)

    assert record == {"source": "keras", "url": server.url("/imdb.npz"), "sha256": sha256(npz),
                      "bytes": npz.stat().st_size, "word_index_sha256": sha256(index)}
    assert json.loads((out / "source.json").read_text()) == record
    assert files_under(out) == ["imdb.npz", "imdb_word_index.json", "source.json"]
    assert (out / "imdb.npz").read_bytes() == npz.read_bytes()
    assert (out / "imdb_word_index.json").read_bytes() == index.read_bytes()

    download(data, downloads, out, **FAST)
    assert server.hits == {"/imdb.npz": 1, "/imdb_word_index.json": 1}


@pytest.mark.parametrize("form", ["file_url", "absolute_path", "relative_path"])
@pytest.mark.parametrize("source", ["aclimdb", "keras"])
def test_local_file_is_used_in_place(source, form, tmp_path, tarball, keras_files, downloads, out, monkeypatch):
    archive = tarball if source == "aclimdb" else keras_files[0]
    monkeypatch.chdir(tmp_path)
    url = {"file_url": archive.as_uri(), "absolute_path": str(archive),
           "relative_path": str(archive.relative_to(tmp_path))}[form]
    record = download(DataParams(source, url, sha256(archive)), downloads, out)

    assert record["url"] == url and record["sha256"] == sha256(archive)
    assert not downloads.exists()  # nothing copied
    assert "source.json" in files_under(out)
    if source == "keras":
        assert record["word_index_sha256"] == sha256(keras_files[1])


# --- verification -------------------------------------------------------------------------

@pytest.mark.parametrize("over_http", [True, False])
def test_checksum_mismatch_leaves_nothing(over_http, server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    url = server.url(TARBALL) if over_http else tarball.as_uri()
    with pytest.raises(ChecksumError) as caught:
        download(DataParams("aclimdb", url, "0" * 64), downloads, out, **FAST)
    message = str(caught.value)
    assert "0" * 64 in message and sha256(tarball) in message and "data.sha256" in message
    assert files_under(downloads) == []
    assert not out.exists()


def test_missing_local_file(tmp_path, downloads, out):
    missing = tmp_path / "nowhere" / "aclImdb_v1.tar.gz"
    with pytest.raises(DownloadError, match=str(missing)):
        download(DataParams("aclimdb", missing.as_uri(), ""), downloads, out)
    assert not out.exists()


def test_bad_word_index_is_refused_and_not_kept(server, keras_files, downloads, out):
    npz, index = keras_files
    index.write_text(json.dumps({"the": 1, "film": -2}))
    server.add_folder(npz.parent)
    with pytest.raises(DataError, match="word index"):
        download(DataParams("keras", server.url("/imdb.npz"), sha256(npz)), downloads, out, **FAST)
    assert files_under(downloads) == ["imdb.npz"]
    assert not out.exists()


# --- HTTP failures ------------------------------------------------------------------------

def test_404_fails_at_once(server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    server.program(TARBALL, "404")
    with pytest.raises(DownloadError) as caught:
        download(DataParams("aclimdb", server.url(TARBALL), sha256(tarball)), downloads, out, **FAST)
    assert server.url(TARBALL) in str(caught.value) and "404" in str(caught.value)
    assert server.hits[TARBALL] == 1
    assert files_under(downloads) == [] and not out.exists()


def test_500_then_success(server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    server.program(TARBALL, "500", times=2)
    download(DataParams("aclimdb", server.url(TARBALL), sha256(tarball)), downloads, out, **FAST)
    assert server.hits[TARBALL] == 3
    assert (out / "source.json").exists()


def test_500_every_time_gives_up_after_the_attempts(server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    server.program(TARBALL, "500")
    with pytest.raises(DownloadError, match="HTTP 500"):
        download(DataParams("aclimdb", server.url(TARBALL), sha256(tarball)), downloads, out, **FAST)
    assert server.hits[TARBALL] == FAST["attempts"]
    assert files_under(downloads) == [] and not out.exists()


def test_stalled_server_times_out(server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    server.program(TARBALL, "stall")
    start = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download(DataParams("aclimdb", server.url(TARBALL), sha256(tarball)), downloads, out,
                 **{**FAST, "attempts": 2})
    assert time.monotonic() - start < 5
    assert "no data for 0.3 s" in str(caught.value) and "data.url" in str(caught.value)
    assert server.hits[TARBALL] == 2
    assert files_under(downloads) == [] and not out.exists()


def test_truncated_body_is_retried(server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    server.program(TARBALL, "truncate", times=1)
    download(DataParams("aclimdb", server.url(TARBALL), sha256(tarball)), downloads, out, **FAST)
    assert server.hits[TARBALL] == 2
    assert sha256(downloads / "aclImdb_v1.tar.gz") == sha256(tarball)


def test_truncated_body_every_time_fails(server, tarball, downloads, out):
    server.files[TARBALL] = tarball.read_bytes()
    server.program(TARBALL, "truncate")
    with pytest.raises(DownloadError, match="before the whole file arrived"):
        download(DataParams("aclimdb", server.url(TARBALL), sha256(tarball)), downloads, out, **FAST)
    assert files_under(downloads) == [] and not out.exists()


def test_unreachable_host_fails_fast_with_one_line(downloads, out, monkeypatch):
    url = f"http://reader:hunter2@127.0.0.1:{free_port()}/aclImdb_v1.tar.gz"
    waits = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)  # the backoff's waits: added up, not slept
    start = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download(DataParams("aclimdb", url, ""), downloads, out)  # the real defaults
    assert waits == [1.0, 2.0]  # three attempts
    assert time.monotonic() - start + sum(waits) < 30
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message
    assert redact_url(url) in message and "data.url" in message and "file://" in message
    assert files_under(downloads) == [] and not out.exists()


# --- a server that asks for a password -------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty home folder, so ~/.netrc is only what a test writes; IMDB_DATA_AUTH unset."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv(DATA_AUTH_VARIABLE, raising=False)
    return home


@pytest.mark.parametrize("given", ["environment", "netrc", "environment over netrc", "nowhere"])
def test_credentials_come_from_the_environment_or_netrc(given, home, tarball, downloads, out, monkeypatch):
    if "environment" in given:
        monkeypatch.setenv(DATA_AUTH_VARIABLE, "reader:hunter2")
    if given == "netrc":
        (home / ".netrc").write_text("machine 127.0.0.1 login reader password hunter2\n")
    if given == "environment over netrc":
        (home / ".netrc").write_text("machine 127.0.0.1 login reader password outdated\n")
    with FileServer({TARBALL: tarball.read_bytes()}, credentials=("reader", "hunter2")) as server:
        url = server.url(TARBALL)
        data = DataParams("aclimdb", url, sha256(tarball))
        if given == "nowhere":
            with pytest.raises(DownloadError) as caught:
                download(data, downloads, out, **FAST)
            assert str(caught.value) == (f"could not download {url}: HTTP 401 Unauthorized; give the server's user "
                                         "name and password in ~/.netrc (machine HOST login USER password PASSWORD) "
                                         f"or IMDB_DATA_AUTH=USER:PASSWORD, or {dl.LOCAL_COPY_HINT}")
            assert files_under(downloads) == [] and not out.exists()
        else:
            assert download(data, downloads, out, **FAST)["url"] == url
            assert files_under(out) == ["aclImdb/test.jsonl", "aclImdb/train.jsonl", "aclImdb/unsup.jsonl", "source.json"]
        assert server.hits[TARBALL] == 1


@pytest.mark.parametrize("value", ["hunter2", ":hunter2"])
def test_a_malformed_credentials_variable_is_refused_without_showing_it(value, home, tarball, downloads, out,
                                                                        monkeypatch):
    monkeypatch.setenv(DATA_AUTH_VARIABLE, value)
    with FileServer({TARBALL: tarball.read_bytes()}, credentials=("reader", "hunter2")) as server:
        with pytest.raises(DownloadError) as caught:
            download(DataParams("aclimdb", server.url(TARBALL), sha256(tarball)), downloads, out, **FAST)
        assert server.hits[TARBALL] == 0
    assert str(caught.value) == ("IMDB_DATA_AUTH: must be USER:PASSWORD (a user name, a colon, the password); "
                                 "its value is not shown")
    assert not downloads.exists() and not out.exists()


# --- extraction ---------------------------------------------------------------------------

def write_members(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            add(tar, name, data)
    return path


def test_line_order_does_not_depend_on_member_order(tmp_path):
    names = [f"aclImdb/{split}/{side}/{number}_{rating}.txt" for split in ("train", "test")
             for side, rating in (("pos", 8), ("neg", 2)) for number in (10, 2, 1, 30)]
    members = [(name, f"review {name}".encode()) for name in names]
    outputs = []
    for order, listed in (("as_listed", members), ("reversed", members[::-1]),
                          ("interleaved", members[1::2] + members[::2])):
        assert safe_extract_reviews(write_members(tmp_path / f"{order}.tar.gz", listed), tmp_path / order) == 16
        outputs.append([(tmp_path / order / "aclImdb" / f"{split}.jsonl").read_bytes() for split in ("train", "test")])
    assert outputs[0] == outputs[1] == outputs[2]
    records = jsonl_records(tmp_path / "as_listed" / "aclImdb" / "train.jsonl")
    # negative then positive, each in file-name (string) order: "10_2.txt" comes before "1_2.txt" and "2_2.txt"
    assert [(r["label"], r["id"], r["rating"]) for r in records] == \
        [(0, 10, 2), (0, 1, 2), (0, 2, 2), (0, 30, 2), (1, 10, 8), (1, 1, 8), (1, 2, 8), (1, 30, 8)]
    assert records[0]["text"] == "review aclImdb/train/neg/10_2.txt"


def test_awkward_texts_round_trip(tmp_path):
    quoted = 'He said "wow",\nthen \\ left.\r\n\tEnd\u2028.'  # quotes, backslash, CR LF, tab, LINE SEPARATOR
    unicode = "Café, naïve — 映画 👍"
    reviews = [  # (member, bytes, text expected), in the expected line order
        ("aclImdb/train/neg/1_1.txt", b"caf\xe9 \xff\xfe ok \xe2\x82", "caf\ufffd \ufffd\ufffd ok \ufffd"),
        ("aclImdb/train/neg/2_2.txt", b"", ""),
        ("aclImdb/train/pos/1_9.txt", quoted.encode(), quoted),
        ("aclImdb/train/pos/2_8.txt", unicode.encode(), unicode),
    ]
    members = [(name, data) for name, data, _ in reviews]
    members += [(f"aclImdb/test/{side}/0_5.txt", b"fine") for side in ("pos", "neg")]
    safe_extract_reviews(write_members(tmp_path / "awkward.tar.gz", members), tmp_path / "raw")
    path = tmp_path / "raw" / "aclImdb" / "train.jsonl"
    records = jsonl_records(path)  # one line per review: its newlines are escaped
    assert [r["text"] for r in records] == [text for _, _, text in reviews]
    assert unicode in path.read_text(encoding="utf-8")  # ensure_ascii=False: stored as UTF-8, not \\u escapes


def test_duplicate_member_refuses_the_archive(tmp_path):
    archive = write_tar(tmp_path / "dup.tar.gz", extra=("aclImdb/train/pos/0_7.txt", {}))
    with pytest.raises(UnsafeArchiveError, match="'aclImdb/train/pos/0_7.txt' appears twice"):
        safe_extract_reviews(archive, tmp_path / "raw")
    assert files_under(tmp_path / "raw") == []


UNSAFE_MEMBERS = [
    ("../evil.txt", {}),
    ("aclImdb/train/pos/../../../../evil.txt", {}),
    ("/ABSOLUTE/evil.txt", {}),
    ("aclImdb/train/pos/9_9.txt", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
    ("aclImdb/README", {"type": tarfile.SYMTYPE, "linkname": "../../evil.txt"}),
    ("aclImdb/train/pos/8_8.txt", {"type": tarfile.LNKTYPE, "linkname": "aclImdb/train/pos/0_7.txt"}),
    ("aclImdb/evil-fifo", {"type": tarfile.FIFOTYPE}),
    ("aclImdb/evil-device", {"type": tarfile.CHRTYPE}),
]


@pytest.mark.parametrize("name, fields", UNSAFE_MEMBERS)
def test_unsafe_member_anywhere_refuses_the_archive(name, fields, tmp_path):
    name = name.replace("/ABSOLUTE", str(tmp_path))
    archive = write_tar(tmp_path / "bad.tar.gz", extra=(name, fields))
    with pytest.raises(UnsafeArchiveError) as caught:
        safe_extract_reviews(archive, tmp_path / "raw")
    assert repr(name) in str(caught.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.tar.gz", "raw"]  # nothing extracted anywhere
    assert files_under(tmp_path / "raw") == []


def test_unsafe_archive_gives_no_output(tmp_path, downloads, out):
    archive = write_tar(tmp_path / "bad.tar.gz", extra=("../evil.txt", {}))
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        download(DataParams("aclimdb", str(archive), sha256(archive)), downloads, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz"]


@pytest.mark.parametrize("cap, value", [("MAX_REVIEW_BYTES", 5), ("MAX_TOTAL_BYTES", 50)])
def test_decompression_bomb_is_refused(cap, value, tmp_path, tarball, monkeypatch):
    monkeypatch.setattr(dl, cap, value)
    with pytest.raises(UnsafeArchiveError, match=f"{value} bytes|{value} allowed"):
        safe_extract_reviews(tarball, tmp_path / "raw")
    assert files_under(tmp_path / "raw") == []


@pytest.mark.parametrize("folders, problem", [
    ((), "no reviews found"),
    (("train/pos", "train/neg", "test/pos"), "no reviews in aclImdb/test/neg"),
])
def test_archive_without_reviews(folders, problem, tmp_path):
    archive = write_tar(tmp_path / "empty.tar.gz", folders=folders, extra=("aclImdb/README", {}))
    with pytest.raises(DataError, match=problem):
        safe_extract_reviews(archive, tmp_path / "raw")
    assert files_under(tmp_path / "raw") == []


@pytest.mark.parametrize("damage", ["not_gzip", "cut_short"])
def test_corrupt_archive_is_a_clear_error(damage, tmp_path, tarball, downloads, out):
    data = tarball.read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"<html>not found</html>" if damage == "not_gzip" else data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable .tar.gz"):
        download(DataParams("aclimdb", str(bad), sha256(bad)), downloads, out)
    assert not out.exists()


# --- command line -------------------------------------------------------------------------

def run_cli(tmp_path: Path, params: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.download", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def with_data(params: dict, **data) -> dict:
    params = copy.deepcopy(params)
    params["data"].update(data)
    return params


def test_cli_writes_data_raw(tmp_path, tarball, real_params_dict):
    result = run_cli(tmp_path, with_data(real_params_dict, url=tarball.as_uri(), sha256=sha256(tarball)))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "data/raw/source.json").read_text())["sha256"] == sha256(tarball)
    assert files_under(tmp_path / "data/raw/aclImdb") == ["test.jsonl", "train.jsonl", "unsup.jsonl"]
    lines = {split: (tmp_path / f"data/raw/aclImdb/{split}.jsonl").read_text().count("\n") for split in ("train", "test")}
    assert lines == {"train": 8, "test": 4}


@pytest.mark.parametrize("data, says", [
    ({"url": "file:///nowhere/aclImdb_v1.tar.gz"}, "/nowhere/aclImdb_v1.tar.gz"),
    ({"source": "imdb"}, "data.source"),
])
def test_cli_error_is_one_line(data, says, tmp_path, real_params_dict):
    result = run_cli(tmp_path, with_data(real_params_dict, **data), "--out", "out")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_checks_params_before_heavy_imports():
    code = "import sys, pipeline.download; print(sorted({'numpy', 'requests', 'tqdm'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
