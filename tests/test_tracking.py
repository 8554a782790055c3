"""MLflow tracking against a real ``mlflow server`` (sqlite backend, local artifact root) on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from mlflow_server import free_port, mlflow_server  # noqa: F401  (the session-scoped server fixture)
from test_training import tiny_config

from attnunet.checkpoints import model_from_checkpoint
from attnunet.models import load_model
from attnunet.pipelines.engines import train
from attnunet.pipelines.tracking.mlflow_runs import (
    CONFIG_ARTIFACT,
    RunTracker,
    check_tracking_server,
    flatten_params,
    resolve_tracking_uri,
)


def test_flatten_params_nests_and_leaves_out_overlong_values():
    params = flatten_params(
        {
            "lr": 0.001,
            "roi_size": [64, 64, 32],
            "labels": {"0": "bg", "1": "organ"},
            "pixdim": None,
            "long": "x" * 7000,
        }
    )
    assert params == {
        "lr": "0.001",
        "roi_size": "[64, 64, 32]",
        "labels.0": "bg",
        "labels.1": "organ",
        "pixdim": "None",
    }


def test_resolve_tracking_uri_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert resolve_tracking_uri("sqlite:///given.db") == "sqlite:///given.db"
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert (
        resolve_tracking_uri() == mlflow.get_tracking_uri()
    )  # MLflow's own default (sqlite:///mlflow.db in 3.x)
    assert resolve_tracking_uri().startswith("sqlite:")


def test_check_tracking_server(mlflow_server, tmp_path):  # noqa: F811
    check_tracking_server(mlflow_server)
    check_tracking_server(f"sqlite:///{tmp_path}/ok.db")
    with pytest.raises(ConnectionError, match="not reachable"):
        check_tracking_server(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ConnectionError, match="does not exist"):
        check_tracking_server(f"sqlite:///{tmp_path}/missing/folder/x.db")


def test_overlong_parameters_go_to_the_config_artifact(mlflow_server):  # noqa: F811
    tracker = RunTracker(mlflow_server, experiment="params")
    config = {"lr": 0.001, "notes": "n" * (MAX_PARAM_VAL_LENGTH + 1)}
    tracker.log_config(config)
    tracker.end()
    client = MlflowClient(mlflow_server)
    assert client.get_run(tracker.run_id).data.params == {"lr": "0.001"}
    path = mlflow.artifacts.download_artifacts(
        run_id=tracker.run_id, artifact_path=CONFIG_ARTIFACT, tracking_uri=mlflow_server
    )
    assert json.loads(Path(path).read_text())["notes"] == config["notes"]  # whole, not truncated


def test_training_is_tracked_and_registered(mlflow_server, demo_dataset, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tiny_config(
        demo_dataset,
        tmp_path / "run",
        epochs=2,
        track=True,
        tracking_uri=mlflow_server,
        experiment="tracked",
        register="tiny-attnunet",
        alias="champion",
    )
    result = train(config)
    assert result.model_uri == "models:/tiny-attnunet@champion"
    assert not mlflow.is_tracking_uri_set()  # the process-wide MLflow URI is left as it was
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"

    params = run.data.params
    assert params["lr"] == "0.001" and params["roi_size"] == "[32, 32, 16]" and params["labels.2"] == "lesion"
    assert params["network_spec.kwargs.init_features"] == "4"
    for name in ("train_loss", "val_loss", "val_mean_dice", "val_dice_organ", "val_dice_lesion", "lr"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name
    assert client.get_metric_history(run.info.run_id, "throughput_samples_per_s")[0].value > 0

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "checkpoints", "overlays"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "overlays")] == ["overlays/validation.png"]

    version = client.get_model_version_by_alias("tiny-attnunet", "champion")
    assert version.run_id == run.info.run_id

    # The registered model predicts what the checkpoint does, for any batch and spatial size.
    checkpoint_model, checkpoint_spec = model_from_checkpoint(result.best_checkpoint)
    model, spec_back = load_model("models:/tiny-attnunet@champion", tracking_uri=mlflow_server)
    assert not mlflow.is_tracking_uri_set()
    mlflow.set_tracking_uri(mlflow_server)
    try:
        registered = mlflow.pytorch.load_model("models:/tiny-attnunet@champion").eval()
    finally:
        mlflow.set_tracking_uri(None)
    assert spec_back == checkpoint_spec
    torch.manual_seed(0)
    with torch.no_grad():
        for shape in ((1, 1, 32, 32, 16), (4, 1, 32, 32, 16), (2, 1, 40, 24, 20)):
            x = torch.rand(shape)
            expected = checkpoint_model(x)
            torch.testing.assert_close(registered(x), expected)
            torch.testing.assert_close(model(x), expected)


def test_load_model_bad_registry_uri(mlflow_server):  # noqa: F811
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_model("models:/no-such-model@champion", tracking_uri=mlflow_server)
