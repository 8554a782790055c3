"""The parent MLflow run of a cross-validation: its folds' runs are its children, it holds their summary.

The parent is made once per output folder and its id kept in ``OUTPUT/cv_run.json``, so folds trained
in separate processes (``attnunet train --fold K`` on several machines) and a later ``attnunet cv``
find the same run. It is made with :class:`~mlflow.tracking.MlflowClient`, never as MLflow's active run:
each fold's :class:`~attnunet.pipelines.tracking.mlflow_runs.RunTracker` is then the active run of its
process, tagged as the parent's child.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from attnunet.pipelines.tracking.mlflow_runs import STORE_ERRORS, experiment_id_for, what_failed
from attnunet.pipelines.tracking.store import (
    bounded_requests,
    check_tracking_server,
    resolve_tracking_uri,
    schema_created_once,
    tracking_uri_set_to,
)

__all__ = ["CV_RUN_FILE", "mark_run", "open_parent_run", "recorded_parent", "report_to_parent"]

logger = logging.getLogger(__name__)

CV_RUN_FILE = "cv_run.json"  # {"run_id": ..., "tracking_uri": ...} of the parent run, in the output folder


def recorded_parent(output: str | os.PathLike) -> dict[str, str] | None:
    """The parent run recorded in ``output`` (``run_id``, ``tracking_uri``), None when there is none."""
    try:
        record = json.loads((Path(output) / CV_RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "run_id" in record else None


def open_parent_run(
    output: str | os.PathLike,
    tracking_uri: str | None,
    *,
    experiment: str,
    run_name: str | None = None,
    artifact_location: str | None = None,
    params: Mapping[str, object] | None = None,
) -> str:
    """The id of ``output``'s parent run: the recorded one, or a new RUNNING run in ``experiment``, recorded.

    Two processes starting at once each make a run; the first to record it wins and the other deletes its
    own, so every fold joins one parent.

    Raises:
        ConnectionError: the store cannot be reached or fails.
    """
    found = recorded_parent(output)
    if found is not None:
        return found["run_id"]
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    name = run_name or f"{experiment}-cv-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    try:
        with bounded_requests(), schema_created_once(uri), tracking_uri_set_to(uri):
            client = MlflowClient(uri)
            experiment_id = experiment_id_for(client, experiment, artifact_location, uri)
            run = client.create_run(experiment_id, run_name=name, tags={"attnunet.cv_output": str(output)})
            if params:
                client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    except STORE_ERRORS as error:
        raise ConnectionError(
            f"MLflow tracking store {uri} failed when the cross-validation run started "
            f"({what_failed(error)}); check the store, or train with --no-track"
        ) from None
    run_id = run.info.run_id
    Path(output).mkdir(parents=True, exist_ok=True)
    written = Path(output) / f".{CV_RUN_FILE}.{os.getpid()}"
    written.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
    try:
        os.link(written, Path(output) / CV_RUN_FILE)  # fails when another process recorded its run first
    except FileExistsError:
        with contextlib.suppress(*STORE_ERRORS), bounded_requests():
            client.delete_run(run_id)
        run_id = recorded_parent(output)["run_id"]
    finally:
        written.unlink()
    logger.info("cross-validation run %s in %s", run_id, uri)
    return run_id


def report_to_parent(
    output: str | os.PathLike,
    *,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    files: Sequence[Path],
    folders: Sequence[tuple[str, Path]],
    status: str,
) -> str | None:
    """Log ``metrics``, ``tags``, ``files`` (at the artifacts' root) and ``folders`` (``(artifact path,
    folder)`` pairs) to ``output``'s parent run and set its ``status``; the run id, None without a parent.
    A store that fails is warned about: the summary stays on disk, and ``attnunet cv`` sends it again."""
    found = recorded_parent(output)
    if found is None:
        return None
    run_id, uri = found["run_id"], found["tracking_uri"]
    stamp = int(time.time() * 1000)
    try:
        with bounded_requests(), tracking_uri_set_to(uri):
            client = MlflowClient(uri)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
            for path in files:
                client.log_artifact(run_id, str(path))
            for artifact_path, folder in folders:
                client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
            client.set_terminated(run_id, status)
    except STORE_ERRORS as error:
        logger.warning(
            "MLflow tracking store %s failed while sending the cross-validation summary to run %s (%s); "
            "the summary is in %s, and 'attnunet cv %s' sends it again",
            uri, run_id, what_failed(error), output, output,
        )  # fmt: skip
    return run_id


def mark_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Set run ``run_id``'s status (a fold's run FAILED when its validation predictions failed after its
    training had ended it); a store that fails is warned about."""
    try:
        with bounded_requests(), tracking_uri_set_to(tracking_uri):
            MlflowClient(tracking_uri).set_terminated(run_id, status)
    except STORE_ERRORS as error:
        logger.warning(
            "MLflow tracking store %s: run %s not marked %s (%s)",
            tracking_uri,
            run_id,
            status,
            what_failed(error),
        )
