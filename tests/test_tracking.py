"""MLflow tracking against a real ``mlflow server`` (sqlite backend, local artifact root) on 127.0.0.1, and
real sqlite stores: what a run records, the registry's alias, a store that goes away mid-run, runs that
start together on a new store, and a refused resume."""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from mlflow_server import MlflowServer, free_port, mlflow_server  # noqa: F401  (session-scoped server)

from attnunet.checkpoints import load_checkpoint, model_from_checkpoint
from attnunet.cli import main
from attnunet.models import load_model
from attnunet.pipelines.engines import train
from attnunet.pipelines.inference.mlflow_model import log_segmentation_model
from attnunet.pipelines.tracking import mlflow_runs
from attnunet.pipelines.tracking.mlflow_runs import (
    CONFIG_ARTIFACT,
    RunTracker,
    check_tracking_server,
    flatten_params,
    resolve_tracking_uri,
)
from attnunet.pipelines.tracking.store import HTTP_LIMITS, bounded_requests

TRACKER_LOGGER = "attnunet.pipelines.tracking.mlflow_runs"


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


def test_training_is_tracked_and_registered(
    mlflow_server,  # noqa: F811
    demo_dataset,
    tmp_path,
    monkeypatch,
    tiny_config,
    caplog,
    capsys,
):
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

    # attnunet train --force-alias: the alias moves to the new version whatever its Dice, and says so
    with caplog.at_level(logging.INFO, logger=TRACKER_LOGGER):
        args = [*_tiny_cli(demo_dataset, tmp_path / "forced"), "--tracking-uri", mlflow_server]
        assert main([*args, "--experiment", "tracked", "--register", "tiny-attnunet", "--force-alias"]) == 0
    assert "alias 'champion' of tiny-attnunet moved to version 2" in caplog.text
    assert "model: models:/tiny-attnunet@champion" in capsys.readouterr().out
    assert client.get_model_version_by_alias("tiny-attnunet", "champion").version == "2"


def test_load_model_bad_registry_uri(mlflow_server):  # noqa: F811
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_model("models:/no-such-model@champion", tracking_uri=mlflow_server)


def _tiny_cli(data: Path, output: Path, epochs: int = 1) -> list[str]:
    """``attnunet train`` arguments of conftest's tiny run."""
    return [
        "train", "--data", str(data), "--output", str(output), "--plan", "none", "--preset", "ct",
        "--roi-size", "32", "32", "16", "--epochs", str(epochs), "--batch-size", "2", "--num-samples", "1",
        "--val-fraction", "0.5", "--sw-batch-size", "2", "--network-option", "init_features=4",
        "--network-option", "depth=3", "--device", "cpu", "--no-progress",
    ]  # fmt: skip


def test_runs_of_a_seeded_training_get_distinct_names(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    names = set()
    for _ in range(2):
        random.seed(0)  # as the training's set_determinism does before its run starts
        tracker = RunTracker(uri, experiment="names")
        tracker.end()
        names.add(MlflowClient(uri).get_run(tracker.run_id).info.run_name)
    assert len(names) == 2 and all(name.startswith("names-") for name in names)


def test_reading_a_model_never_creates_a_store(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    args = ["infer", "scan.nii.gz", "--model", "models:/spleen@champion", "--output", "out"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"attnunet infer: error: models:/spleen@champion: no MLflow store at {tmp_path}/mlflow.db"
    )
    assert line.endswith("point at the store that holds it with --tracking-uri or MLFLOW_TRACKING_URI")
    assert list(tmp_path.iterdir()) == []


def test_bounded_requests_sets_the_limits_for_the_call_only(monkeypatch):
    for name in HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # the caller's own setting wins
    with bounded_requests():
        assert (MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_TIMEOUT.get()) == (2, 30)
        assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


@pytest.mark.long
@pytest.mark.parametrize("outage", ["stop", "pause"])  # a crashed server; a hung one (port open, no answer)
def test_a_tracker_whose_server_stays_away_holds_its_records_and_says_so(
    tmp_path, caplog, outage, tiny_checkpoint
):
    with MlflowServer(tmp_path / "server") as server:
        tracker = RunTracker(
            server.url, experiment="outage", kept_on_disk="the records are in run/", wait_at_end=2
        )
        tracker.log_metrics({"val_mean_dice": 0.5}, step=1)
        getattr(server, outage)()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            tracker.log_metrics({"val_mean_dice": 0.6}, step=2)
            tracker.log_metrics({"val_mean_dice": 0.7}, step=3)
            tracker.log_artifact(tmp_path / "server" / "server.log", artifact_path="logs")
            model_uri = tracker.log_model(tiny_checkpoint, log_with=log_segmentation_model, register="outage")
            tracker.end("FINISHED")
        waited = time.monotonic() - started  # MLflow's defaults: ~8.5 min refused, 7 x 120 s hung
        assert waited < 60, waited
    assert model_uri is None and tracker.model_uri is None and tracker.offline
    failed, gave_up = caplog.records  # two lines, nothing from urllib3's retries
    cause = {"stop": "[Errno 111] Connection refused", "pause": "Read timed out. (read timeout=10)"}[outage]
    assert failed.getMessage() == (
        f"MLflow tracking store {server.url} failed while logging the metrics of step 2 ({cause}); the run "
        "goes on and sends its records when the store answers again; the records are in run/"
    )
    assert gave_up.getMessage() == (
        f"MLflow tracking store {server.url} did not answer within 2 s: 5 record(s) of run {tracker.run_id}, "
        "from logging the metrics of step 2 on, were not sent; the records are in run/; 'attnunet sync "
        "OUTPUT' sends them once the store answers"
    )
    assert mlflow.active_run() is None and not mlflow.is_tracking_uri_set()
    # The store kept what it got before it went away (read from the server's own sqlite database): step 1,
    # the run still RUNNING.
    client = MlflowClient(f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(tracker.run_id, "val_mean_dice")] == [1]
    assert client.get_run(tracker.run_id).info.status == "RUNNING"


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


def _wait_for(lines: queue.Queue, seen: list[str], text: str) -> None:
    while text not in "".join(seen[-1:]):
        seen.append(lines.get(timeout=240))


@pytest.mark.long
def test_a_run_logs_again_when_its_tracking_server_comes_back(demo_dataset, tmp_path):
    output, stdout = tmp_path / "run", tmp_path / "stdout.txt"
    server = MlflowServer(tmp_path / "server")
    with server, stdout.open("w") as printed:
        command = [sys.executable, "-m", "attnunet", *_tiny_cli(demo_dataset, output, epochs=4)]
        process = subprocess.Popen(
            [*command, "--tracking-uri", server.url, "--experiment", "outage", "--register", "comeback"],
            stdout=printed,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(process.stderr, lines), daemon=True)
        reader.start()
        seen: list[str] = []
        try:
            _wait_for(lines, seen, "epoch 2/4 started")  # epoch 1 is logged to MLflow by then
            server.stop()
            _wait_for(lines, seen, "epoch 3/4 started")  # epoch 2's record is held back by then
            with server:  # the same port and store, back after an outage of a few seconds
                process.wait(timeout=300)
        finally:
            process.kill()
    reader.join(timeout=10)  # the rest of stderr, up to its end
    while not lines.empty():
        seen.append(lines.get())
    stderr = "".join(seen)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    (failed,) = [line for line in seen if "failed while" in line]
    assert (
        f"{server.url} failed while logging the metrics of step 2 ([Errno 111] Connection refused)" in failed
    )
    assert len([line for line in seen if "answers again:" in line]) == 1, stderr
    assert "model: models:/comeback@champion" in stdout.read_text()
    # Everything reached the store: every epoch, the model, the registration; the run ended FINISHED.
    client = MlflowClient(f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}")
    run_id = load_checkpoint(output / "checkpoints" / "last.pt")["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for name in ("train_loss", "val_mean_dice", "lr"):
        assert sorted(m.step for m in client.get_metric_history(run_id, name)) == [1, 2, 3, 4], name
    assert client.get_model_version_by_alias("comeback", "champion").run_id == run_id
    # the run's artifacts, in the stopped server's artifact folder
    artifacts = tmp_path / "server" / "artifacts"
    assert [p.parent.name for p in artifacts.rglob("best.pt") if run_id in p.parts] == ["checkpoints"]


@pytest.mark.long
def test_attnunet_sync_sends_what_a_run_kept_on_disk(
    demo_dataset, tmp_path, tiny_config, monkeypatch, capsys
):
    monkeypatch.setattr(mlflow_runs, "WAIT_AT_END_SECONDS", 1.0)  # the store stays away to the end
    output = tmp_path / "run"
    server = MlflowServer(tmp_path / "server")
    with server:

        def stop_after_epoch_1() -> None:  # as a crash of the server would, while the run trains on
            while not (output / "metrics.jsonl").is_file():
                time.sleep(0.1)
            server.stop()

        stopper = threading.Thread(target=stop_after_epoch_1, daemon=True)
        stopper.start()
        config = tiny_config(
            demo_dataset, output, epochs=3, track=True, tracking_uri=server.url, experiment="sync",
            register="synced",
        )  # fmt: skip
        result = train(config)
        stopper.join(timeout=10)
    assert result.model_uri is None
    run_id = load_checkpoint(output / "checkpoints" / "last.pt")["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "RUNNING"
    assert len(client.get_metric_history(run_id, "val_mean_dice")) < 3

    with server:  # back: sync sends the rest into the same run
        assert main(["sync", str(output), "--tracking-uri", server.url]) == 0
        out = capsys.readouterr().out
        assert f"MLflow run {run_id} in {server.url} (FINISHED)" in out
        assert "model: models:/synced@champion" in out
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.001"
        for name in ("train_loss", "val_mean_dice", "lr"):
            assert sorted(m.step for m in client.get_metric_history(run_id, name)) == [1, 2, 3], name
        assert client.get_model_version_by_alias("synced", "champion").run_id == run_id
        overlays = [a.path for a in MlflowClient(server.url).list_artifacts(run_id, "overlays")]
        assert overlays == ["overlays/validation.png"]
        # Syncing again sends nothing twice.
        assert main(["sync", str(output), "--tracking-uri", server.url]) == 0
        assert "metrics of epochs none sent" in capsys.readouterr().out
        assert len(client.search_model_versions("name='synced'")) == 1


def test_sync_of_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["sync", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert capsys.readouterr().err == (
        f"attnunet sync: error: {tmp_path} holds no training run ({tmp_path}/checkpoints/last.pt does not "
        "exist); give the --output folder of 'attnunet train'\n"
    )


def test_runs_started_together_on_a_new_sqlite_store_all_start(tmp_path):
    # Without the lock, 2 of 3 such processes died creating the tables ("duplicate column name: step").
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    start_at = time.time() + 15  # after the three have imported MLflow
    script = (
        "import sys, time\n"
        "from attnunet.pipelines.tracking.mlflow_runs import RunTracker\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "tracker = RunTracker(sys.argv[1], experiment='together')\n"
        "tracker.end()\n"
        "print(tracker.run_id)\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(3)
    ]
    results = [process.communicate(timeout=180) for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-2000:] for _, err in results]
    run_ids = {out.strip() for out, _ in results}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert {r.info.run_id for r in runs} == run_ids and len(run_ids) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}


def _tracked_model(
    uri: str, experiment: str, dice: list[float], checkpoint: Path, **options
) -> tuple[RunTracker, str]:
    """A run that logged ``dice`` as its val_mean_dice history and registered a model as alias-test."""
    tracker = RunTracker(uri, experiment=experiment, **options)
    for step, value in enumerate(dice, start=1):
        tracker.log_metrics({"val_mean_dice": value}, step=step)
    model_uri = tracker.log_model(
        checkpoint, log_with=log_segmentation_model, register="alias-test", alias="champion"
    )
    tracker.end()
    return tracker, model_uri


def test_alias_moves_only_to_a_better_version_unless_forced(mlflow_server, caplog, tiny_checkpoint):  # noqa: F811
    client = MlflowClient(mlflow_server)
    steps = [  # (val_mean_dice history, force_alias, version holding the alias after, what the log says)
        ([0.5, 0.7], False, "1", "moved to version 1 (best val_mean_dice 0.7000): no version held it"),
        ([0.6], False, "1", "stays on version 1 (best val_mean_dice 0.7000): version 2 reached "
         "val_mean_dice 0.6000, which does not beat it; pass --force-alias to move it"),
        ([0.7], False, "1", "stays on version 1 (best val_mean_dice 0.7000): version 3 reached "
         "val_mean_dice 0.7000, which does not beat it"),
        ([0.65, 0.8], False, "4", "moved to version 4 (best val_mean_dice 0.8000): it beats version 1's "
         "0.7000"),
        ([0.1], True, "5", "moved to version 5 (best val_mean_dice 0.1000): --force-alias, although "
         "version 4 had 0.8000"),
    ]  # fmt: skip
    for version, (dice, force, holder, said) in enumerate(steps, start=1):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=TRACKER_LOGGER):
            _, model_uri = _tracked_model(mlflow_server, "alias", dice, tiny_checkpoint, force_alias=force)
        assert f"alias 'champion' of alias-test {said}" in caplog.text
        assert model_uri == (
            "models:/alias-test@champion" if holder == str(version) else f"models:/alias-test/{version}"
        )
        assert client.get_model_version_by_alias("alias-test", "champion").version == holder


def test_a_refused_resume_leaves_the_finished_run_as_it_was(
    demo_dataset, tmp_path, tiny_config, monkeypatch, capsys
):
    uri, output = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run"
    seen = []
    log_metrics = RunTracker.log_metrics

    def checkpoint_first(tracker, metrics, *, step):  # the real call, after looking at what is on disk
        records = (output / "metrics.jsonl").read_text().splitlines()
        seen.append((step, load_checkpoint(output / "checkpoints" / "last.pt")["epoch"], len(records)))
        log_metrics(tracker, metrics, step=step)

    monkeypatch.setattr(RunTracker, "log_metrics", checkpoint_first)
    result = train(tiny_config(demo_dataset, output, track=True, tracking_uri=uri, experiment="refused"))
    assert seen == [(1, 1, 1)]  # MLflow heard of epoch 1 only once its record and last.pt were on disk
    client = MlflowClient(uri)
    before = client.get_run(result.run_id).info
    assert before.status == "FINISHED"

    args = [*_tiny_cli(demo_dataset, output, epochs=2), "--tracking-uri", uri, "--experiment", "refused"]
    args[args.index("init_features=4")] = "init_features=8"
    assert main([*args, "--resume"]) == 2
    assert "was trained with network attention_unet_3d_small" in capsys.readouterr().err
    after = client.get_run(result.run_id).info
    assert (after.status, after.end_time) == ("FINISHED", before.end_time)
    assert len(client.search_runs([client.get_experiment_by_name("refused").experiment_id])) == 1
