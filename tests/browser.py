"""Headless Chromium driven from its command line, and a local server that records what it is asked for.

No browser-automation package: ``chromium --headless=new`` prints the page's DOM after a virtual time budget
(``--dump-dom``) or saves a screenshot, and ``--log-net-log`` records every request the browser makes. WebGL2
in a headless browser without a GPU is SwiftShader's, on the CPU (``--use-angle=swiftshader``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Debian's package is chromium; other systems name it otherwise.
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1400, 900)


def find_chromium() -> str | None:
    """The Chromium (or Chrome) on PATH, or None."""
    return next((path for name in _NAMES if (path := shutil.which(name))), None)


class RecordingServer(ThreadingHTTPServer):
    """Serves a folder on 127.0.0.1 (a free port) and keeps the path of every request."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                server.requests.append(self.path)

        super().__init__(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, page: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{page}"


@dataclass
class BrowserRun:
    """What one headless run gave: the DOM (``--dump-dom``), the screenshot, and the URL of every request
    the browser started, with the site it was made for (``http://127.0.0.1`` for the page's own requests;
    the browser's own services, such as its update check, have none or their own)."""

    dom: str
    screenshot: Path | None
    requests: list[tuple[str, str]] = field(default_factory=list)

    @property
    def page_requests(self) -> list[str]:
        """The URLs requested on behalf of the page (its top frame's site is 127.0.0.1)."""
        return [url for url, site in self.requests if site.startswith("http://127.0.0.1 ")]

    def body(self, attribute: str) -> str | None:
        """The value of ``data-<attribute>`` on the page's ``<body>``."""
        tag = re.search(r"<body[^>]*>", self.dom)
        found = re.search(rf'data-{attribute}="([^"]*)"', tag.group(0)) if tag else None
        return found.group(1) if found else None


def run_chromium(url: str, workdir: Path, *, screenshot: bool = False, budget_ms: int = 20000) -> BrowserRun:
    """Open ``url`` in headless Chromium: its DOM after ``budget_ms`` of virtual time (or a screenshot), and
    the URLs of every request from the network log. Names other than 127.0.0.1 do not resolve
    (``--host-resolver-rules``), so nothing can leave the machine even where a page would ask for it."""
    chromium = find_chromium()
    assert chromium is not None
    workdir.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(dir=workdir, prefix="profile-"))
    netlog, picture = workdir / f"netlog-{profile.name}.json", workdir / f"screen-{profile.name}.png"
    command: Sequence[str] = [
        chromium,
        "--headless=new",
        "--disable-gpu",
        "--use-gl=angle",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--ignore-gpu-blocklist",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-client-side-phishing-detection",
        "--disable-domain-reliability",
        "--no-pings",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={netlog}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={budget_ms}",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),  # Chromium's sandbox refuses to run as root
        f"--screenshot={picture}" if screenshot else "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    run = BrowserRun(done.stdout, picture if screenshot else None, _started_requests(netlog))
    if not screenshot and run.body("state") == "loading" and budget_ms < 80000:
        # Virtual time runs on while the page parses its volumes in real time: on a loaded machine the
        # budget can end first. Looking again, longer, tells slow from stuck (which stays "loading").
        return run_chromium(url, workdir, budget_ms=budget_ms * 2)
    return run


def _started_requests(netlog: Path) -> list[tuple[str, str]]:
    """``(url, network isolation key)`` of each URL_REQUEST_START_JOB event of a Chromium network log."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        (event["params"]["url"], str(event["params"].get("network_isolation_key")))
        for event in log["events"]
        if event["type"] == start and "url" in event.get("params", {})
    ]
