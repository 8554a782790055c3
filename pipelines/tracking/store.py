"""The MLflow tracking store a run talks to: which one, whether it answers, how long a call may wait for
it, and a sqlite store's one-time schema creation.

The store is MLflow's own default (``sqlite:///mlflow.db`` in the working directory for MLflow 3) unless
``MLFLOW_TRACKING_URI`` or an explicit ``tracking_uri`` names another one (an ``mlflow server`` URL, a
sqlite file, a PostgreSQL database). :func:`check_tracking_server` fails fast, before any training, when
that store cannot be reached. :func:`resolve_tracking_uri` and :func:`check_store_exists` are
:mod:`attnunet.mlflow_store`'s, which reading a registered model needs without the tracking.

HTTP limits: MLflow retries a failed HTTP call 7 times with exponential backoff and waits up to 120 s for
each answer (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``,
``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``), so a server that goes away
mid-run held training up for about 8.5 minutes per call. :func:`bounded_requests` puts
:data:`HTTP_LIMITS` (2 retries, a 1 s backoff factor, 10 s per answer: at most about 35 s per call) into
the environment, where MLflow reads them at every call, for the duration of one call only. A variable the
caller has set itself wins, and the environment is left as it was afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

import mlflow
from filelock import FileLock, Timeout
from mlflow.tracking import MlflowClient

from attnunet.mlflow_store import check_store_exists, resolve_tracking_uri, sqlite_database

__all__ = [
    "HTTP_LIMITS",
    "OFFLINE_HTTP_LIMITS",
    "beside_the_database",
    "bounded_requests",
    "check_store_exists",
    "check_tracking_server",
    "resolve_tracking_uri",
    "schema_created_once",
    "tracking_uri_set_to",
]

# What one MLflow HTTP call of a run may cost: 3 tries of up to 10 s, 0 + 2 s backoff (+ up to 1 s jitter).
HTTP_LIMITS: Mapping[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# Once the store has failed: one try of up to 5 s (ending the run still has to clear MLflow's active run).
OFFLINE_HTTP_LIMITS: Mapping[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
# Seconds a run waits for another one that is creating the same new sqlite store's tables.
SCHEMA_LOCK_SECONDS = 120.0
_HINT = "start the server, or set --tracking-uri / MLFLOW_TRACKING_URI to a reachable store"


def check_tracking_server(tracking_uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast when the tracking store behind ``tracking_uri`` cannot be reached.

    An ``http(s)`` URI must answer ``GET /health``; a ``sqlite`` URI needs an existing, writable
    folder for its database file; any other store is asked for one experiment.

    Raises:
        ConnectionError: the store cannot be reached; the message names the URI and how to change it.
    """
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise ConnectionError(
                        f"MLflow tracking server {tracking_uri} answered {url} with HTTP "
                        f"{response.status}; {_HINT}"
                    )
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ConnectionError(
                f"MLflow tracking server {tracking_uri} is not reachable ({reason}); {_HINT}"
            ) from None
        return
    if tracking_uri.startswith("sqlite:///"):
        folder = sqlite_database(tracking_uri).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConnectionError(
                f"MLflow tracking store {tracking_uri}: folder {folder} does not exist or is not writable; "
                f"{_HINT}"
            )
        return
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as error:  # any backend error means "not usable"; report it as one line
        raise ConnectionError(
            f"MLflow tracking store {tracking_uri} is not usable ({error}); {_HINT}"
        ) from None


@contextlib.contextmanager
def tracking_uri_set_to(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a while, then put back what was there.

    ``mlflow.set_tracking_uri`` is process-global (it also sets ``MLFLOW_TRACKING_URI`` in the
    environment); a library call must not leave it changed for the caller's later runs.
    """
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def bounded_requests(limits: Mapping[str, str] = HTTP_LIMITS) -> Iterator[None]:
    """Cap the retries and waits of MLflow's HTTP calls made inside this block (see the module's notes).

    Each of ``limits`` the environment does not already set is set for the block and removed after it.
    urllib3's "Retrying ..." warnings are held back for the block too: the tracker reports a failed call
    itself, once.
    """
    added = {name: value for name, value in limits.items() if name not in os.environ}
    retries_logger = logging.getLogger("urllib3.connectionpool")
    level = retries_logger.level
    os.environ.update(added)
    retries_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries_logger.setLevel(level)
        for name in added:
            os.environ.pop(name, None)


def beside_the_database(tracking_uri: str) -> str | None:
    """``<database folder>/mlartifacts`` for a ``sqlite:///`` store, None (MLflow's choice) otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (sqlite_database(tracking_uri).parent / "mlartifacts").as_uri()


@contextlib.contextmanager
def schema_created_once(tracking_uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` while a block opens a ``sqlite:///`` store; other stores need no lock.

    MLflow creates a new sqlite store's tables on first use, in dozens of migration steps that are not one
    transaction: two runs started at once on a new file both run them, and the second dies
    (``duplicate column name: step``). Under the lock the first run creates the tables and the others
    find them. The lock file stays beside the database.

    Raises:
        ConnectionError: another process held the lock for :data:`SCHEMA_LOCK_SECONDS`.
    """
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    lock = sqlite_database(tracking_uri).with_name(sqlite_database(tracking_uri).name + ".lock")
    try:
        with FileLock(str(lock), timeout=SCHEMA_LOCK_SECONDS):
            yield
    except Timeout:
        raise ConnectionError(
            f"MLflow tracking store {tracking_uri}: {lock} was held by another process for "
            f"{SCHEMA_LOCK_SECONDS:.0f} s; end that process or delete {lock} if none runs"
        ) from None
