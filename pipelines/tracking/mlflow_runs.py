"""MLflow tracking for attnunet runs: what a run records, and the model registry.

Where runs go (the store, its checks and HTTP limits) is :mod:`attnunet.pipelines.tracking.store`.

MONAI's ``MLFlowHandler`` is not used: it owns the run's lifetime inside one engine, truncates
nothing but also cannot put over-long parameters into an artifact instead, and logs from every
rank. Training needs one run that spans resumes (the run id is kept in the checkpoint), rank-0
only logging, and the model registry; :class:`RunTracker` is that small layer over MLflow's API.

A store that fails mid-run (a server that went away, a full disk under a sqlite store) does not stop
the training: the tracker warns once, naming where the run's records are kept on disk, holds back what
the run logs from then on and sends it, in order, once the store answers again (each call is bounded by
:func:`~attnunet.pipelines.tracking.store.bounded_requests`; while the store is away, it is asked again
at most every :data:`RETRY_SECONDS`). Ending the run waits up to :data:`WAIT_AT_END_SECONDS` for it;
what is still held back then stays on disk for ``attnunet sync``
(:mod:`attnunet.pipelines.engines.sync`).

A registered model's alias (``champion``) moves to a new version only when that version's run has a
better best :data:`KEY_METRIC` than the run of the version holding it, unless ``force_alias``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import mlflow
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from attnunet.pipelines.tracking.store import (
    HTTP_LIMITS,
    OFFLINE_HTTP_LIMITS,
    beside_the_database,
    bounded_requests,
    check_tracking_server,
    resolve_tracking_uri,
    schema_created_once,
    tracking_uri_set_to,
)

__all__ = [
    "CONFIG_ARTIFACT",
    "KEY_METRIC",
    "PARENT_RUN_TAG",
    "ModelLogger",
    "RunTracker",
    "check_tracking_server",
    "experiment_id_for",
    "flatten_params",
    "log_folder_to_run",
    "resolve_tracking_uri",
    "what_failed",
]

logger = logging.getLogger(__name__)

# Where a run keeps its resolved config and its model (attnunet.load_model reads the best checkpoint).
CONFIG_ARTIFACT = "config/config.json"
# The metric whose best value decides whether a registered alias moves (the evaluator's key metric).
KEY_METRIC = "val_mean_dice"
# What a failing store raises: MLflow's own errors (HTTP and SQL ones are wrapped in them), requests' and
# the file system's.
STORE_ERRORS = (MlflowException, requests.RequestException, OSError)
# The tag that makes a run the child of another (what mlflow.start_run(nested=True) sets).
PARENT_RUN_TAG = "mlflow.parentRunId"
# While the store is away, records are held back and it is asked again at most this often (one short try).
RETRY_SECONDS = 10.0
# How long ending a run waits for a store that is away, to send what was held back (a server restart).
WAIT_AT_END_SECONDS = 60.0
_T = TypeVar("_T")


class ModelLogger(Protocol):
    """What :meth:`RunTracker.log_model` logs a model with: log ``checkpoint``'s model in the active MLflow
    run, register it under ``register`` (None: only log it), let ``place_alias(name, alias, version)`` decide
    whether ``alias`` moves to the new version, and return where the model loads from
    (:func:`attnunet.pipelines.inference.mlflow_model.log_segmentation_model`)."""

    def __call__(
        self,
        checkpoint: str | os.PathLike,
        *,
        register: str | None,
        alias: str | None,
        place_alias: Callable[[str, str, str], bool],
    ) -> str: ...


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


def experiment_id_for(
    client: MlflowClient, experiment: str, artifact_location: str | None, tracking_uri: str
) -> str:
    """The id of ``experiment``, created when missing with its artifacts at ``artifact_location`` (default:
    for a sqlite store, ``mlartifacts/`` beside the database file)."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = artifact_location or beside_the_database(tracking_uri)
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except MlflowException as error:  # a run started at the same moment created it first
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(experiment).experiment_id


class RunTracker:
    """One MLflow run of a training job: parameters, metrics, artifacts, model and registry.

    Every call to the store is bounded (:func:`~attnunet.pipelines.tracking.store.bounded_requests`). The
    first one that fails warns once and turns the tracker offline: that call and the later ones are held
    back (they return None) and sent in order when the store answers again, so a training whose store went
    away goes on with its checkpoints and its MLflow run misses nothing once the store is back.

    Args:
        tracking_uri: the store (see :func:`resolve_tracking_uri`); checked with
            :func:`check_tracking_server` before anything is logged.
        experiment: experiment name, created when missing.
        run_name: name shown in the MLflow UI.
        run_id: continue this run (a resumed training) instead of starting a new one.
        artifact_location: artifact root of the experiment when this creates it (default: for a
            sqlite store, ``mlartifacts/`` beside the database file, not MLflow's ``./mlruns`` in
            whatever folder the run started from; else the store's own).
        force_alias: :meth:`log_model` moves the alias to the new version even when its best
            :data:`KEY_METRIC` does not beat the aliased version's.
        kept_on_disk: where the run's records stay when the store fails (named in the warning).
        wait_at_end: seconds :meth:`end` waits for a store that is away (default
            :data:`WAIT_AT_END_SECONDS`).
        parent_run_id: start the run as a child of this run (a cross-validation fold's run).

    Raises:
        ConnectionError: the store cannot be reached, or fails while the run starts.

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
        force_alias: bool = False,
        kept_on_disk: str | None = None,
        wait_at_end: float | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        check_tracking_server(self.tracking_uri)
        self.force_alias, self.kept_on_disk = force_alias, kept_on_disk
        self.wait_at_end = WAIT_AT_END_SECONDS if wait_at_end is None else wait_at_end
        # What the run logged while the store was away, in order: (what it is, the call that sends it).
        self._held: list[tuple[str, Callable[[], Any]]] = []
        self._next_try = 0.0
        # Where the logged model loads from, once it is logged (it may be sent after an outage).
        self.model_uri: str | None = None
        self._restore = contextlib.ExitStack()  # closed in end(): the caller's MLflow URI comes back
        self._restore.enter_context(tracking_uri_set_to(self.tracking_uri))
        try:
            with bounded_requests(), schema_created_once(self.tracking_uri):
                self.client = MlflowClient(self.tracking_uri)  # a new sqlite store gets its tables here
                self.run = self._start(experiment, run_name, run_id, artifact_location, parent_run_id)
        except STORE_ERRORS as error:
            self._restore.close()
            raise ConnectionError(
                f"MLflow tracking store {self.tracking_uri} failed when the run started "
                f"({what_failed(error)}); check the store, or train with --no-track"
            ) from None
        except BaseException:
            self._restore.close()
            raise
        self.run_id: str = self.run.info.run_id

    def _start(
        self,
        experiment: str,
        run_name: str | None,
        run_id: str | None,
        artifact_location: str | None,
        parent_run_id: str | None,
    ) -> mlflow.ActiveRun:
        if run_id is not None:
            return mlflow.start_run(run_id=run_id)
        # Not MLflow's generated name: the training seeds Python's random module before the run starts,
        # which gave every run the same one.
        run_name = run_name or f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
        experiment_id = experiment_id_for(self.client, experiment, artifact_location, self.tracking_uri)
        # A child run by MLflow's tag, not nested=True: its parent may be open in another process (a fold
        # trained by `attnunet train --fold K` beside the others), never MLflow's active run here.
        tags = {PARENT_RUN_TAG: parent_run_id} if parent_run_id else None
        return mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)

    @property
    def offline(self) -> bool:
        """Whether records are held back because the store failed (and has not answered since)."""
        return bool(self._held)

    def _call(self, doing: str, call: Callable[[], _T]) -> _T | None:
        """``call()`` within the HTTP limits once what was held back before it is sent; held back (None)
        while the store is away, and when it fails (then warn, once per outage)."""
        if self._held and not self._send_held():
            self._held.append((doing, call))
            return None
        try:
            with bounded_requests():
                return call()
        except STORE_ERRORS as error:
            self._held.append((doing, call))
            self._next_try = time.monotonic() + RETRY_SECONDS
            kept = f"; {self.kept_on_disk}" if self.kept_on_disk else ""
            logger.warning(
                "MLflow tracking store %s failed while %s (%s); the run goes on and sends its records "
                "when the store answers again%s",
                self.tracking_uri, doing, what_failed(error), kept,
            )  # fmt: skip
            return None

    def _send_held(self) -> bool:
        """Send what was held back, in order, if the store answers (asked at most every
        :data:`RETRY_SECONDS`, first with one short try); whether all of it is sent."""
        if time.monotonic() < self._next_try:
            return False
        held = len(self._held)
        while self._held:
            limits = OFFLINE_HTTP_LIMITS if len(self._held) == held else HTTP_LIMITS
            try:
                with bounded_requests(limits):
                    self._held[0][1]()
            except STORE_ERRORS:
                self._next_try = time.monotonic() + RETRY_SECONDS
                return False
            self._held.pop(0)
        logger.info(
            "MLflow tracking store %s answers again: %d held-back record(s) sent", self.tracking_uri, held
        )
        return True

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Log ``config`` as parameters (flattened) and, whole, as the ``config/config.json`` artifact."""

        def log() -> None:
            params = flatten_params(config)
            existing = self.client.get_run(self.run_id).data.params
            # A resumed run keeps its parameters (MLflow refuses to change a logged value).
            new = {key: value for key, value in params.items() if key not in existing}
            if new:
                mlflow.log_params(new)
            mlflow.log_dict(dict(config), CONFIG_ARTIFACT)

        self._call("logging the config", log)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Log ``dictionary`` as the JSON artifact ``artifact_file`` (``"plan/plan.json"``)."""
        self._call(f"logging {artifact_file}", lambda: mlflow.log_dict(dict(dictionary), artifact_file))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Log scalar metrics at ``step`` (the epoch)."""
        # Stamped now: sent after an outage, they keep the time they were measured.
        stamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), stamp, step) for key, value in metrics.items()]
        self._call(
            f"logging the metrics of step {step}", lambda: self.client.log_batch(self.run_id, metrics=batch)
        )

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a local file into the run's artifacts (under ``artifact_path``)."""
        self._call(f"uploading {path}", lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path))

    def log_model(
        self,
        checkpoint: str | os.PathLike,
        *,
        log_with: ModelLogger,
        register: str | None = None,
        alias: str | None = None,
    ) -> str | None:
        """Log ``checkpoint`` as this run's model with ``log_with`` and register it under ``register``, with
        ``alias`` placed by :meth:`_place_alias` (attnunet's model:
        :func:`~attnunet.pipelines.inference.mlflow_model.log_segmentation_model`, the pyfunc with the weights
        and the typed spec, the pytorch flavor, ``checkpoints/best.pt``).

        Returns:
            where the model loads from (``models:/NAME@ALIAS`` when the alias is on the new version,
            ``models:/NAME/VERSION``, or the logged model's URI when not registered); None when the
            store is away (the model is held back; :attr:`model_uri` has it once it is sent).
        """

        def log() -> str:
            self.model_uri = log_with(
                checkpoint, register=register, alias=alias, place_alias=self._place_alias
            )
            return self.model_uri

        return self._call("logging the model", log)

    def _best(self, run_id: str) -> float | None:
        """The best (largest) :data:`KEY_METRIC` ``run_id`` logged, None when it logged none."""
        return max((m.value for m in self.client.get_metric_history(run_id, KEY_METRIC)), default=None)

    def _place_alias(self, name: str, alias: str, version: str) -> bool:
        """Give ``alias`` to ``version`` when no version holds it, when the version holding it has no
        logged :data:`KEY_METRIC`, when this run's best beats that one's, or when ``force_alias``; log
        which, and return whether the alias is on ``version`` now."""
        held_version = self.client.get_registered_model(name).aliases.get(alias)
        held = self.client.get_model_version(name, held_version) if held_version is not None else None
        new = self._best(self.run_id)
        old = self._best(held.run_id) if held is not None else None
        shown = f"{KEY_METRIC} {_shown(new)}"
        if held is not None and old is not None and not self.force_alias and (new is None or new <= old):
            logger.info(
                "alias %r of %s stays on version %s (best %s %s): version %s reached %s, which does not "
                "beat it; pass --force-alias to move it",
                alias, name, held.version, KEY_METRIC, _shown(old), version, shown,
            )  # fmt: skip
            return False
        if held is None:
            why = "no version held it"
        elif old is None:
            why = f"version {held.version} logged no {KEY_METRIC}"
        elif self.force_alias and (new is None or new <= old):
            why = f"--force-alias, although version {held.version} had {_shown(old)}"
        else:
            why = f"it beats version {held.version}'s {_shown(old)}"
        self.client.set_registered_model_alias(name, alias, version)
        logger.info("alias %r of %s moved to version %s (best %s): %s", alias, name, version, shown, why)
        return True

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``) and give the caller's MLflow
        URI back. Offline, wait up to ``wait_at_end`` seconds for the store to send what was held back;
        if it stays away, warn that it stays on disk, and clear MLflow's active run (one short try)."""
        try:
            self._call(f"ending the run as {status}", lambda: self._terminate(status))
            deadline = time.monotonic() + self.wait_at_end
            while self._held and not self._send_held() and time.monotonic() < deadline:
                time.sleep(max(0.0, min(self._next_try, deadline) - time.monotonic()))
            if self._held:
                kept = f"{self.kept_on_disk}; " if self.kept_on_disk else ""
                logger.warning(
                    "MLflow tracking store %s did not answer within %.0f s: %d record(s) of run %s, from %s "
                    "on, were not sent; %s'attnunet sync OUTPUT' sends them once the store answers",
                    self.tracking_uri, self.wait_at_end, len(self._held), self.run_id, self._held[0][0], kept,
                )  # fmt: skip
        finally:
            if mlflow.active_run() is not None:  # the store stayed away: MLflow still holds the run
                with bounded_requests(OFFLINE_HTTP_LIMITS), contextlib.suppress(*STORE_ERRORS):
                    mlflow.end_run(status=status)
            self._restore.close()

    def _terminate(self, status: str) -> None:
        """Set the run's status in the store, and clear MLflow's active run."""
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)
        else:  # MLflow drops its active run before it calls the store, so a failed end is sent again here
            self.client.set_terminated(self.run_id, status)


# The part of a failed HTTP call's message that says what happened ("[Errno 111] Connection refused",
# "Read timed out. (read timeout=10)"); MLflow's message wraps it in two URLs and urllib3's retry report.
_CAUSE = re.compile(r"\[Errno -?\d+\] [^'\")]+|(?:Read|Connect) timed out\. \(\w+ timeout=[\d.]+\)")


def what_failed(error: BaseException) -> str:
    """What went wrong, in one line: the cause of a failed HTTP call, else the message's first line cut to
    200 characters (MLflow's run over many lines)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    cause = _CAUSE.search(text)
    if cause is not None:
        return cause.group(0).strip()
    return text if len(text) <= 200 else text[:197] + "..."


def _shown(value: float | None) -> str:
    return "none logged" if value is None else f"{value:.4f}"


def log_folder_to_run(
    tracking_uri: str | None, run_id: str, folder: str | os.PathLike, artifact_path: str
) -> bool:
    """Upload ``folder`` into the artifacts of run ``run_id`` (ended or not) under ``artifact_path``; a store
    that fails is warned about (the folder stays on disk). Returns whether it was sent."""
    uri = resolve_tracking_uri(tracking_uri)
    try:
        with bounded_requests(), tracking_uri_set_to(uri):
            MlflowClient(uri).log_artifacts(run_id, str(folder), artifact_path=artifact_path)
    except STORE_ERRORS as error:
        logger.warning(
            "MLflow tracking store %s failed while uploading %s to run %s (%s); it stays on disk",
            uri, folder, run_id, what_failed(error),
        )  # fmt: skip
        return False
    return True
