"""A local web server for a results page: browsers load its ES module and its volumes over HTTP only.

Python's own ``http.server``, bound to 127.0.0.1 so the page and the scans stay on this machine; what it
serves is exactly what ``python -m http.server --bind 127.0.0.1`` in the folder serves.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["HOST", "REPORT_FILE", "VIEW_FILE", "find_page", "page_address", "serve", "serve_in_background"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
# The pages a results folder holds (named here, in a module that imports nothing heavy, so that serving a
# folder loads neither MONAI nor nibabel).
REPORT_FILE = "report.html"  # attnunet evaluate --images, beside metrics.csv
VIEW_FILE = "view.html"  # the page of one case of attnunet view


class _Handler(SimpleHTTPRequestHandler):
    """Files of one folder; requests logged at DEBUG (``attnunet -v view``), not on every line of stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        logger.debug("%s %s", self.address_string(), format % args)


def serve(folder: str | os.PathLike, port: int = 8000) -> ThreadingHTTPServer:
    """A server of ``folder`` on 127.0.0.1 (not started: call ``serve_forever``). A busy ``port`` is
    replaced by a free one, which the server's ``server_port`` gives; port 0 asks for a free one.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    handler = functools.partial(_Handler, directory=str(folder))
    try:
        return ThreadingHTTPServer((HOST, port), handler)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        logger.info("port %d is in use; serving on a free port", port)
        return ThreadingHTTPServer((HOST, 0), handler)


def serve_in_background(folder: str | os.PathLike, port: int = 0) -> ThreadingHTTPServer:
    """:func:`serve` in a daemon thread (for tests and notebooks); ``shutdown()`` stops it."""
    server = serve(folder, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def find_page(folder: str | os.PathLike) -> Path | None:
    """The results page in ``folder``: evaluate's report first, then view's own page; None for neither."""
    pages = [Path(folder) / name for name in (REPORT_FILE, VIEW_FILE)]
    return next((page for page in pages if page.is_file()), None)


def page_address(server: ThreadingHTTPServer, page: str = "") -> str:
    """The address of ``page`` (a path in the served folder) on ``server``."""
    return f"http://{HOST}:{server.server_port}/{page}"
