"""``attnunet demo`` end to end on tiny settings: files, MLflow run, registered model (not the Dice)."""

from __future__ import annotations

import json
import re

import nibabel as nib
import pytest
from mlflow.tracking import MlflowClient

from attnunet.cli import main
from attnunet.pipelines.demo import run as demo_run
from attnunet.pipelines.demo.run import DEMO_ALIAS, DEMO_MODEL_NAME, run_demo
from attnunet.pipelines.planning.plan import plan_dataset


def test_demo_command_end_to_end(demo_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "demo"
    # The small session dataset, planned as attnunet train would.
    args = ["demo", "--output", str(output), "--data", str(demo_dataset), "--epochs", "1", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("attnunet demo trains as `attnunet train --data DATA` does")
    for text in (
        "Dice organ",
        "Dice lesion",
        "Dice mean",
        "predictions:",
        "overlay:",
        f"report:       {output / 'evaluation' / 'report.html'}  (open it with: attnunet view",
        "models:/attnunet-demo@",
    ):
        assert text in printed

    predictions = sorted((output / "predictions").glob("*.nii.gz"))
    assert [p.name for p in predictions] == sorted(
        p.name for p in (demo_dataset / "imagesTs").glob("*.nii.gz")
    )
    for prediction in predictions:  # in the input's own geometry
        source = nib.load(demo_dataset / "imagesTs" / prediction.name)
        assert nib.load(prediction).shape[:3] == source.shape
    assert (output / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((output / "evaluation" / "summary.json").read_text())
    assert set(summary["classes"]) == {"organ", "lesion"} and summary["num_evaluated"] == 2
    assert (output / "evaluation" / "report_files" / "niivue" / "niivue.js").is_file()  # the results page
    assert (output / "train" / "checkpoints" / "best.pt").is_file()
    assert not (tmp_path / "mlflow.db").exists()  # the demo keeps its store in its own folder

    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    version = client.get_model_version_by_alias(DEMO_MODEL_NAME, DEMO_ALIAS)
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    assert (output / "mlartifacts").is_dir()
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/metrics.csv", "evaluation/report_files"} <= logged

    # A second demo into the same folder refuses, and leaves the first one as it was.
    assert main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted((output / "predictions").glob("*.nii.gz")) == predictions


def test_demo_rejects_bad_data_before_writing(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        run_demo(tmp_path / "out", data=tmp_path / "missing")
    (tmp_path / "no-test-cases").mkdir()
    with pytest.raises(FileNotFoundError, match="has no imagesTs"):
        run_demo(tmp_path / "out", data=tmp_path / "no-test-cases")
    assert not (tmp_path / "out").exists()


def test_demo_prints_its_planned_settings_before_it_trains(demo_dataset, tmp_path, monkeypatch, capsys):
    def refuse(config):
        raise FileExistsError("stopped before training")  # a user error: exit status 2

    monkeypatch.setattr(demo_run, "train", refuse)
    args = [
        "demo",
        "--output",
        str(tmp_path / "d"),
        "--data",
        str(demo_dataset),
        "--epochs",
        "3",
        "--device",
        "cpu",
    ]
    assert main(args) == 2
    settings = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines()[1:])
    plan = plan_dataset(demo_dataset, device="cpu")  # what attnunet train --data would use
    assert settings["network"] == "attention_unet_3d_small"
    assert settings["network_kwargs"] == ", ".join(f"{k}={v}" for k, v in plan["network_kwargs"].items())
    assert settings["roi_size"] == " x ".join(str(size) for size in plan["roi_size"])
    assert settings["pixdim"] == " x ".join(str(float(mm)) for mm in plan["pixdim"])
    assert (settings["epochs"], settings["val_every"], settings["device"]) == ("3", "1", "cpu")


def test_help_shows_the_default_of_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    blocks = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:")[1])[1:]
    options = [" ".join(block.split()) for block in blocks if not block.startswith("-h")]
    assert len(options) == 7 and all("(default: " in text for text in options)
    assert any("(default: 50, as attnunet train)" in text for text in options)
