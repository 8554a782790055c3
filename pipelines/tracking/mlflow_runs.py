"""MLflow tracking for attnunet runs: where runs go, what a run records, and the model registry.

The tracking store is MLflow's own default (``sqlite:///mlflow.db`` in the working directory for
MLflow 3) unless ``MLFLOW_TRACKING_URI`` or an explicit ``tracking_uri`` names another one (an
``mlflow server`` URL, a sqlite file, a PostgreSQL database). :func:`check_tracking_server` fails
fast, before any training, when that store cannot be reached.

MONAI's ``MLFlowHandler`` is not used: it owns the run's lifetime inside one engine, truncates
nothing but also cannot put over-long parameters into an artifact instead, and logs from every
rank. Training needs one run that spans resumes (the run id is kept in the checkpoint), rank-0
only logging, and the model registry; :class:`RunTracker` is that small layer over MLflow's API.

Models are logged with ``serialization_format="pickle"``: MLflow 3's default ``pt2`` format runs
``torch.export`` on the input example and specialises the graph to its shape (a batch-1 example
rejects ``sw_batch_size=4``; a 64^3 example rejects another window size). The pickled eager model
accepts any batch and spatial size, like the checkpoint it came from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

__all__ = [
    "CONFIG_ARTIFACT",
    "MODEL_ARTIFACT",
    "RunTracker",
    "check_tracking_server",
    "flatten_params",
    "resolve_tracking_uri",
]

logger = logging.getLogger(__name__)

# Where a run keeps its resolved config and its model (attnunet.load_model reads the best checkpoint).
CONFIG_ARTIFACT = "config/config.json"
MODEL_ARTIFACT = "model"


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


def check_tracking_server(tracking_uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast when the tracking store behind ``tracking_uri`` cannot be reached.

    An ``http(s)`` URI must answer ``GET /health``; a ``sqlite`` URI needs an existing, writable
    folder for its database file; any other store is asked for one experiment.

    Raises:
        ConnectionError: the store cannot be reached; the message names the URI and how to change it.
    """
    hint = "start the server, or set --tracking-uri / MLFLOW_TRACKING_URI to a reachable store"
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise ConnectionError(
                        f"MLflow tracking server {tracking_uri} answered {url} with HTTP "
                        f"{response.status}; {hint}"
                    )
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ConnectionError(
                f"MLflow tracking server {tracking_uri} is not reachable ({reason}); {hint}"
            ) from None
        return
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConnectionError(
                f"MLflow tracking store {tracking_uri}: folder {folder} does not exist or is not writable; "
                f"{hint}"
            )
        return
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as error:  # any backend error means "not usable"; report it as one line
        raise ConnectionError(
            f"MLflow tracking store {tracking_uri} is not usable ({error}); {hint}"
        ) from None


@contextlib.contextmanager
def _tracking_uri_set_to(uri: str) -> Iterator[None]:
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


def _beside_the_database(tracking_uri: str) -> str | None:
    """``<database folder>/mlartifacts`` for a ``sqlite:///`` store, None (MLflow's choice) otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow parameters (``a.b.c -> value`` as strings).

    Lists are written as JSON; None as ``"None"``. Values longer than MLflow's parameter limit
    are left out (they are in the run's config artifact, whole).

    Example:
        >>> flatten_params({"roi_size": [64, 64, 32], "network": {"name": "x"}})
        {'roi_size': '[64, 64, 32]', 'network.name': 'x'}
    """
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            params.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            logger.info("parameter %s (%d characters) is only in the config artifact", name, len(text))
            continue
        params[name] = text
    return params


def _tensor_signature(in_channels: int, out_channels: int, spatial_dims: int) -> ModelSignature:
    """A signature with free batch and spatial sizes: (-1, C, -1, ...) float32 in and out."""
    free = (-1,) * spatial_dims
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, *free))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out_channels, *free))]),
    )


class RunTracker:
    """One MLflow run of a training job: parameters, metrics, artifacts, model and registry.

    Args:
        tracking_uri: the store (see :func:`resolve_tracking_uri`); checked with
            :func:`check_tracking_server` before anything is logged.
        experiment: experiment name, created when missing.
        run_name: name shown in the MLflow UI.
        run_id: continue this run (a resumed training) instead of starting a new one.
        artifact_location: artifact root of the experiment when this creates it (default: for a
            sqlite store, ``mlartifacts/`` beside the database file, not MLflow's ``./mlruns`` in
            whatever folder the run started from; else the store's own).

    Example:
        >>> tracker = RunTracker("sqlite:///mlflow.db", experiment="attnunet")  # doctest: +SKIP
        >>> tracker.log_config({"lr": 1e-3, "roi_size": [64, 64, 32]})  # doctest: +SKIP
        >>> tracker.log_metrics({"train_loss": 0.4}, step=1)  # doctest: +SKIP
        >>> tracker.end()  # doctest: +SKIP
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str = "attnunet",
        run_name: str | None = None,
        run_id: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        check_tracking_server(self.tracking_uri)
        self._restore = contextlib.ExitStack()  # closed in end(): the caller's MLflow URI comes back
        self._restore.enter_context(_tracking_uri_set_to(self.tracking_uri))
        try:
            self.client = MlflowClient(self.tracking_uri)
            if run_id is None:
                found = self.client.get_experiment_by_name(experiment)
                experiment_id = (
                    found.experiment_id
                    if found is not None
                    else self.client.create_experiment(
                        experiment,
                        artifact_location=artifact_location or _beside_the_database(self.tracking_uri),
                    )
                )
                self.run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
            else:
                self.run = mlflow.start_run(run_id=run_id)
        except BaseException:
            self._restore.close()
            raise
        self.run_id: str = self.run.info.run_id

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Log ``config`` as parameters (flattened) and, whole, as the ``config/config.json`` artifact."""
        params = flatten_params(config)
        existing = self.client.get_run(self.run_id).data.params
        # A resumed run keeps its parameters (MLflow refuses to change a logged value).
        new = {key: value for key, value in params.items() if key not in existing}
        if new:
            mlflow.log_params(new)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(CONFIG_ARTIFACT).name
            path.write_text(json.dumps(dict(config), indent=2, sort_keys=True))
            mlflow.log_artifact(str(path), artifact_path=str(Path(CONFIG_ARTIFACT).parent))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Log scalar metrics at ``step`` (the epoch)."""
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a local file into the run's artifacts (under ``artifact_path``)."""
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_model(
        self,
        model: torch.nn.Module,
        *,
        in_channels: int,
        out_channels: int,
        spatial_dims: int,
        example_size: tuple[int, ...],
        register: str | None = None,
        alias: str | None = None,
    ) -> str:
        """Log ``model`` with a free-shape signature and an input example; optionally register it.

        Args:
            model: the trained network (moved to CPU and eval mode for logging).
            in_channels, out_channels, spatial_dims: the network's interface, for the signature.
            example_size: spatial size of the stored input example (keep it small).
            register: registered model name; None logs without registering.
            alias: alias given to the new version (e.g. ``"champion"``); needs ``register``.

        Returns:
            the URI to load the model from: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, or the
            logged model's URI when not registered.
        """
        model = model.to("cpu").eval()
        example = np.zeros((1, in_channels, *example_size), dtype=np.float32)
        info = mlflow.pytorch.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=_tensor_signature(in_channels, out_channels, spatial_dims),
            input_example=example,
            serialization_format="pickle",
            pip_requirements=[f"torch>={torch.__version__.split('+')[0]}", "monai", "attnunet"],
        )
        if register is None:
            return info.model_uri
        version = mlflow.register_model(info.model_uri, register)
        if alias:
            self.client.set_registered_model_alias(register, alias, version.version)
            return f"models:/{register}@{alias}"
        return f"models:/{register}/{version.version}"

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        mlflow.end_run(status=status)
        self._restore.close()
