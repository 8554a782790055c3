"""Which MLflow store a tracking URI names, and whether a local one exists: what reading a model from the
registry (:func:`attnunet.load_model`) and a training run's tracking
(:mod:`attnunet.pipelines.tracking.store`) both need.

The store is MLflow's own default (``sqlite:///mlflow.db`` in the working directory for MLflow 3) unless
``MLFLOW_TRACKING_URI`` or an explicit ``tracking_uri`` names another one (an ``mlflow server`` URL, a
sqlite file, a PostgreSQL database).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import mlflow

__all__ = ["check_store_exists", "resolve_tracking_uri", "sqlite_database"]


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """Return the tracking URI a run will use.

    Args:
        tracking_uri: an explicit URI (``http://host:5000``, ``sqlite:///path/mlflow.db``, ...); when
            None, ``MLFLOW_TRACKING_URI`` if set, else MLflow's own default (``sqlite:///mlflow.db``
            in the working directory).

    Example:
        >>> resolve_tracking_uri("sqlite:///runs.db")
        'sqlite:///runs.db'
    """
    if tracking_uri:
        return str(tracking_uri)
    return mlflow.get_tracking_uri()


def check_store_exists(tracking_uri: str, wanted: str) -> None:
    """Refuse a local store that does not exist, before reading ``wanted`` from it: MLflow would create an
    empty one (a new ``mlflow.db`` in the working folder) and then report the model missing.

    A ``sqlite:///`` store needs its database file, a ``file:`` store (or a bare path) its folder; other
    stores (a server, a database server) exist or fail on their own.

    Raises:
        FileNotFoundError: no store where ``tracking_uri`` points; the message says how to point at one.
    """
    if tracking_uri.startswith("sqlite:///"):
        where = sqlite_database(tracking_uri)
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        where = Path(urllib.request.url2pathname(tracking_uri.removeprefix("file://").removeprefix("file:")))
    else:
        return
    if not where.exists():
        raise FileNotFoundError(
            f"{wanted}: no MLflow store at {where.resolve()} (tracking URI {tracking_uri}); point at the "
            "store that holds it with --tracking-uri or MLFLOW_TRACKING_URI"
        )


def sqlite_database(tracking_uri: str) -> Path:
    """The database file of a ``sqlite:///`` tracking URI, as an absolute path."""
    return Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()
