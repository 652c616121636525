"""A local HTTP git server (git's "dumb" protocol) that records every path it is asked for.

``git update-server-info`` writes the files a dumb-protocol client reads (``info/refs``,
``objects/info/packs``), so Python's :mod:`http.server` can serve bare repositories to
``git clone``/``fetch``/``ls-remote`` over ``http://127.0.0.1:<port>/``. Tests use
:attr:`GitHttpServer.requests` to prove which repositories were (never) fetched.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .gitrepos import LocalRepo, git


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean; paths are recorded in do_GET

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()


class GitHttpServer:
    """Serves the bare repositories under :attr:`root` on 127.0.0.1."""

    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_Handler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.requests = []  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        """Every path requested so far, in order."""
        return list(self._server.requests)  # type: ignore[attr-defined]

    def publish(self, repo: LocalRepo, name: str) -> str:
        """Serve a bare copy of ``repo`` as ``<url>/<name>``; return its URL."""
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        git(self.root, "clone", "-q", "--bare", str(repo.path), str(target))
        git(target, "update-server-info")
        return f"{self.url}/{name}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def git_http_server(root: Path) -> Iterator[GitHttpServer]:
    """A started :class:`GitHttpServer` serving ``root``, stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    server = GitHttpServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
