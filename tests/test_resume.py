"""Fault tolerance: a training process killed with SIGKILL mid-epoch resumes and loses at most that epoch;
metrics.jsonl holds each epoch once."""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time

from mlflow.tracking import MlflowClient

from attnunet.checkpoints import load_checkpoint
from attnunet.cli import main

EPOCHS = 4


def _command(data, output, tracking_uri, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "attnunet", "train", "--data", str(data), "--output", str(output),
        "--epochs", str(EPOCHS), "--roi-size", "32", "32", "16", "--batch-size", "1", "--num-samples", "1",
        "--val-fraction", "0.5", "--network-option", "init_features=4", "--network-option", "depth=3",
        "--device", "cpu", "--no-progress", "--tracking-uri", tracking_uri, "--experiment", "resume", *extra,
    ]  # fmt: skip


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


def test_sigkill_mid_epoch_then_resume(demo_dataset, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns
    output, tracking_uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = subprocess.Popen(
        _command(demo_dataset, output, tracking_uri),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stderr, lines), daemon=True).start()
    seen = []
    deadline = time.monotonic() + 240
    try:
        # Epoch 2 starts only after epoch 1's last.pt is written; kill as soon as it has started.
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert process.poll() is None, "training exited early:\n" + "".join(seen)
                continue
            seen.append(line)
            if f"epoch 2/{EPOCHS} started" in line:
                process.send_signal(signal.SIGKILL)
                break
        else:
            raise AssertionError("epoch 2 never started:\n" + "".join(seen))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL

    last = load_checkpoint(output / "checkpoints" / "last.pt")  # intact: written atomically
    assert last["epoch"] == 1  # epoch 1 survived; only the interrupted epoch 2 is lost

    # As if the process had died after writing epoch 2's record and before its checkpoint: the resume
    # drops that record and writes epoch 2's again.
    with (output / "metrics.jsonl").open("a") as stream:
        stream.write(json.dumps({"epoch": 2, "train_loss": -1.0}) + "\n")
    with caplog.at_level(logging.INFO, logger="attnunet.pipelines.engines.training"):
        assert main(_command(demo_dataset, output, tracking_uri, "--resume")[3:]) == 0
    assert "after epoch 1" in caplog.text
    assert f"epoch 1/{EPOCHS} started" not in caplog.text and f"epoch 2/{EPOCHS} started" in caplog.text
    final = load_checkpoint(output / "checkpoints" / "last.pt")
    assert final["epoch"] == EPOCHS and final["mlflow_run_id"] == last["mlflow_run_id"]
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))  # each epoch once, across the kill
    assert all(r["train_loss"] > 0 for r in records)

    # One MLflow run, continued: every epoch's metrics logged once, the schedule resumed where it was.
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert run.info.run_id == last["mlflow_run_id"] and run.info.status == "FINISHED"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in losses) == list(range(1, EPOCHS + 1))
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    for epoch in range(1, EPOCHS + 1):  # cosine annealing over EPOCHS, restored from the checkpoint
        expected = 1e-3 * (1 + math.cos(math.pi * (epoch - 1) / EPOCHS)) / 2
        assert math.isclose(lr[epoch], expected, rel_tol=1e-6), (epoch, lr[epoch], expected)

    # Nothing left to resume: a clear error, the checkpoint untouched.
    assert main(_command(demo_dataset, output, tracking_uri, "--resume")[3:]) == 2
    assert "already finished epoch 4" in capsys.readouterr().err
    assert load_checkpoint(output / "checkpoints" / "last.pt")["epoch"] == EPOCHS
