"""A real ``mlflow server`` for the tests: sqlite backend and a local artifact root, on 127.0.0.1.

Import the fixture into a test module (``from mlflow_server import mlflow_server  # noqa: F401``);
it is session-scoped, so the server (5-10 s to start) starts once and is stopped at the end. A test that
stops a server itself (a store going away mid-run) starts its own with :class:`MlflowServer`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["MlflowServer", "free_port", "mlflow_server"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """An ``mlflow server`` process on a free port with its store under ``root``; a context manager.

    ``stop()`` kills it (and the workers it started) at once, as a crash would; ``pause()`` stops it
    answering while its port stays open, as a hung server or a lost network would.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> MlflowServer:
        root, log = self.root, self.root / "server.log"
        root.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", self.url.rsplit(":", 1)[1], "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
        ]  # fmt: skip
        with open(log, "ab") as stream:
            # Its own process group, so stopping it stops the workers it starts too.
            self.process = subprocess.Popen(
                command, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_healthy(log)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, log: Path, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.process.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(
            f"mlflow server at {self.url} did not answer /health in {timeout} s:\n{log.read_text()[-3000:]}"
        )

    def pause(self) -> None:
        """Freeze the server's process group (SIGSTOP): connections are accepted, nothing is answered."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def stop(self) -> None:
        """Kill the server's process group (paused or not) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a running ``mlflow server`` (sqlite backend, artifacts proxied into a temp folder)."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server.url
