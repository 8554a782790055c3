"""Send what a training run kept on disk to an MLflow store: :func:`sync_run` (``attnunet sync OUTPUT``).

A training run keeps everything MLflow would hold in its output folder: every epoch's record in
``metrics.jsonl``, the resolved config in ``config.json``, the plan in ``plan.json``, the overlay in
``overlays/``, and ``checkpoints/`` (``last.pt`` names the run's MLflow run, ``best.pt`` is the model).
When the store was away at the end of a run (or the run was trained with ``--no-track``), :func:`sync_run`
sends what the store lacks into the run ``last.pt`` names when the store has it, else into a new run. Only
what the run does not hold yet is sent, so syncing twice sends nothing twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from attnunet.checkpoints import load_checkpoint
from attnunet.pipelines.engines.checks import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE
from attnunet.pipelines.inference.mlflow_model import log_segmentation_model
from attnunet.pipelines.tracking.mlflow_runs import STORE_ERRORS, RunTracker, what_failed
from attnunet.pipelines.tracking.store import bounded_requests, check_tracking_server, resolve_tracking_uri

__all__ = ["SyncResult", "sync_run"]

OVERLAY = Path("overlays") / "validation.png"


@dataclass
class SyncResult:
    """What :func:`sync_run` sent: the run, the epochs whose metrics it sent, the model it logged (None when
    the run had one already) and the status it gave the run."""

    run_id: str
    tracking_uri: str
    epochs_sent: list[int]
    model_uri: str | None
    status: str


def sync_run(
    output: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    register: str | None = None,
    alias: str | None = None,
    force_alias: bool = False,
) -> SyncResult:
    """Send the records of the training run in ``output`` that the store lacks, and end the run.

    Args:
        output: the ``--output`` folder of an ``attnunet train`` run.
        tracking_uri: the store; default: the one the run was trained with, else ``MLFLOW_TRACKING_URI``
            or MLflow's default.
        register, alias: register the model (when it is sent now) under ``register`` with ``alias``;
            default: the run's own ``--register`` and ``--alias``.
        force_alias: move ``alias`` even to a worse model.

    Returns:
        the run and what was sent; the run ends FINISHED when its training reached its last epoch, else
        KILLED (``attnunet train --resume`` continues it).

    Raises:
        FileNotFoundError: ``output`` holds no training run.
        ConnectionError: the store cannot be reached, or failed while the records were sent (sync again).

    Example:
        >>> sync_run("runs/spleen", tracking_uri="http://mlflow:5000")  # doctest: +SKIP
    """
    output = Path(output)
    last = output / CHECKPOINT_DIR / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(
            f"{output} holds no training run ({last} does not exist); give the --output folder of "
            "'attnunet train'"
        )
    checkpoint = load_checkpoint(last)
    config = _read_json(output / CONFIG_FILE) or checkpoint["config"]
    uri = resolve_tracking_uri(tracking_uri or config.get("tracking_uri"))
    check_tracking_server(uri)
    tracker = RunTracker(
        uri,
        experiment=config.get("experiment", "attnunet"),
        run_id=_existing_run(uri, checkpoint.get("mlflow_run_id")),
        force_alias=force_alias,
        kept_on_disk=f"the records stay in {output}",
        wait_at_end=0.0,
    )
    status = "FINISHED" if int(checkpoint["epoch"]) >= int(config["epochs"]) else "KILLED"
    try:
        with bounded_requests():
            sent = _send(output, config, tracker, register, alias)
    except STORE_ERRORS as error:
        tracker.end(status)
        raise ConnectionError(
            f"MLflow tracking store {uri} failed while {output} was sent ({what_failed(error)}); nothing "
            "is lost, run 'attnunet sync' again when the store answers"
        ) from None
    tracker.end(status)
    if tracker.offline:
        raise ConnectionError(
            f"MLflow tracking store {uri} failed while {output} was sent (see the warning above); nothing "
            "is lost, run 'attnunet sync' again when the store answers"
        )
    return SyncResult(tracker.run_id, uri, sent, tracker.model_uri, status)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _existing_run(uri: str, run_id: str | None) -> str | None:
    """``run_id`` when the store holds that run, else None (a new run is started)."""
    if run_id is None:
        return None
    try:
        with bounded_requests():
            MlflowClient(uri).get_run(run_id)
    except STORE_ERRORS as error:
        if isinstance(error, MlflowException) and error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise ConnectionError(f"MLflow tracking store {uri} failed ({what_failed(error)})") from None
    return run_id


def _send(
    output: Path, config: dict[str, Any], tracker: RunTracker, register: str | None, alias: str | None
) -> list[int]:
    """Send the config, plan, metrics, overlay and model the run lacks; the epochs whose metrics went."""
    client, run_id = tracker.client, tracker.run_id
    tracker.log_config(config)  # only the parameters the run lacks; the config artifact is rewritten
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    plan = _read_json(output / "plan.json")
    if plan is not None and "plan" not in artifacts:
        tracker.log_dict(plan, "plan/plan.json")
    metrics_file = output / METRICS_FILE
    records = (
        [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.is_file() else []
    )
    keys = {key for record in records for key in record if key != "epoch"}
    logged = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in keys}
    sent = []
    for record in records:
        step = int(record["epoch"])
        missing = {k: v for k, v in record.items() if k != "epoch" and step not in logged[k]}
        if missing:
            tracker.log_metrics(missing, step=step)
            sent.append(step)
    if (output / OVERLAY).is_file() and "overlays" not in artifacts:
        tracker.log_artifact(output / OVERLAY, artifact_path=str(OVERLAY.parent))
    best = output / CHECKPOINT_DIR / "best.pt"
    if best.is_file() and "checkpoints" not in artifacts:  # the model logs its checkpoint first
        tracker.log_model(
            best,
            log_with=log_segmentation_model,
            register=register or config.get("register"),
            alias=alias or config.get("alias"),
        )
    return sent
