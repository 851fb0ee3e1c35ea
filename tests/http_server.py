"""A loopback HTTP server for tests: serves bytes by path, with programmable failures.

    with FileServer({"/data.tar.gz": payload}) as server:
        server.program("/data.tar.gz", "500", times=2)  # two 500s, then the file
        fetch(server.url("/data.tar.gz"), ...)
        assert server.hits["/data.tar.gz"] == 3

Faults: "404" (not found), "500" (server error), "stall" (headers, then silence until the
server stops), "truncate" (a Content-Length larger than the bytes sent, then close).
``FileServer(files, credentials=("user", "password"))`` answers 401 to a request without them
(HTTP basic authentication).
"""

import base64
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULTS = ("404", "500", "stall", "truncate")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?")[0]
        fault = owner.take_fault(path)
        body = owner.files.get(path)
        if owner.authorization is not None and self.headers.get("Authorization") != owner.authorization:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="files"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fault == "404" or body is None:
            self.send_error(404)
        elif fault == "500":
            self.send_error(500)
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "stall":
                self.wfile.flush()
                owner.stopping.wait()  # until the server stops
                self.close_connection = True
            elif fault == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            else:
                self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FileServer"


class FileServer:
    """Serve ``files`` (URL path -> bytes) and the files of ``folder`` on 127.0.0.1, on a free port."""

    def __init__(self, files: dict[str, bytes] | None = None, folder: Path | None = None,
                 credentials: tuple[str, str] | None = None):
        self.files = dict(files or {})
        self.authorization = None if credentials is None else \
            "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        if folder is not None:
            self.add_folder(folder)
        self.hits: Counter[str] = Counter()  # requests received, per path
        self.stopping = threading.Event()
        self._faults: dict[str, tuple[str, int | None]] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def add_folder(self, folder: Path) -> None:
        """Serve every file under ``folder`` at /<its relative path>."""
        for path in Path(folder).rglob("*"):
            if path.is_file():
                self.files["/" + path.relative_to(folder).as_posix()] = path.read_bytes()

    def url(self, path: str, userinfo: str = "") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{userinfo + '@' if userinfo else ''}{host}:{port}{path}"

    def program(self, path: str, fault: str, times: int | None = None) -> None:
        """Answer requests for ``path`` with ``fault``: ``times`` times, or always if None."""
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        self._faults[path] = (fault, times)

    def take_fault(self, path: str) -> str | None:
        """Count a request for ``path`` and return the fault it gets, if any."""
        with self._lock:
            self.hits[path] += 1
            fault, times = self._faults.get(path, (None, None))
            if fault is not None and times is not None:
                if times <= 0:
                    return None
                self._faults[path] = (fault, times - 1)
            return fault

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()  # releases stalled handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
