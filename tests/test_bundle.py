"""The template MONAI bundle run by MONAI's own commands (``python -m monai.bundle ...``) in subprocesses,
from a folder that is not the bundle's (``--bundle_root``), and the command line running the same configs.

One tiny training run (1 epoch, 16^3 patches, ``init_features=4``, tracked in a sqlite MLflow store in
tmp) is shared by the inference, evaluation and export tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigParser

from attnunet import load_model
from attnunet.checkpoints import load_checkpoint
from attnunet.cli import main
from attnunet.pipelines.bundle.paths import bundle_template_dir, default_dataset_dir
from attnunet.pipelines.bundle.runner import run_config, train_to
from attnunet.pipelines.commands import evaluate as evaluate_command
from attnunet.pipelines.commands import infer as infer_command
from attnunet.pipelines.commands import train as train_command
from attnunet.pipelines.engines.config import TrainConfig

# Small enough for a CPU: the demo fixture's 32 x 32 x 16 volumes, 16^3 patches, a 4-feature network.
TINY = {
    "plan": "none",
    "epochs": "1",
    "roi_size": "[16,16,16]",
    "network_kwargs#init_features": "4",
    "num_samples": "1",
    "batch_size": "2",
    "progress": "False",
}
EXPERIMENT = "bundle-test"
# Keys of the configs that are not a flag: where the bundle is, the model copy, the components.
BUNDLE_KEYS = {"bundle_root", "model_path", "config", "training", "network_def", "inference", "evaluation"}
BUNDLE_KEYS.add("run")


def _env() -> dict[str, str]:
    """The subprocesses' environment: no MLFLOW_TRACKING_URI (each test names its store), one OpenMP
    thread per process (tiny tensors; several threads per process oversubscribe a small CI machine)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _flags(options: dict[str, str]) -> list[str]:
    return [part for key, value in options.items() for part in (f"--{key}", value)]


def monai_bundle(cwd: Path, command: str, *args: str, torchrun: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle COMMAND ...`` in ``cwd``; fail the test with its output if it fails."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    result = subprocess.run(
        [sys.executable, *launcher, "-m", "monai.bundle", command, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"monai.bundle {command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory, demo_dataset) -> tuple[Path, str]:
    """A copy of the template trained for one epoch on the demo fixture, from another folder."""
    root = tmp_path_factory.mktemp("bundle") / "attention_unet"
    shutil.copytree(bundle_template_dir(), root)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    tracking_uri = f"sqlite:///{root.parent / 'mlflow.db'}"
    monai_bundle(
        elsewhere, "run", "--config_file", str(root / "configs" / "train.json"), "--bundle_root", str(root),
        "--data", str(demo_dataset), *_flags(TINY),
        "--tracking_uri", tracking_uri, "--experiment", EXPERIMENT, "--register", "bundle-model",
    )  # fmt: skip
    assert not list(elsewhere.iterdir()), (
        f"the bundle wrote {list(elsewhere.iterdir())} into the working folder"
    )
    return root, tracking_uri


def test_train_saves_the_model_and_tracks_in_mlflow(trained_bundle):
    root, tracking_uri = trained_bundle
    checkpoint = load_checkpoint(root / "models" / "model.pt")  # an attnunet checkpoint, weights only
    assert checkpoint["spec"]["network_kwargs"]["init_features"] == 4
    assert (root / "models" / "run" / "checkpoints" / "last.pt").is_file()
    model, spec = load_model(root)  # the bundle folder loads by its model.pt's own spec
    assert spec.roi_size == (16, 16, 16) and spec.labels == {"0": "background", "1": "organ", "2": "lesion"}
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED" and 0.0 <= run.data.metrics["val_mean_dice"] <= 1.0
    assert np.isfinite(run.data.metrics["train_loss"])
    assert client.get_model_version_by_alias("bundle-model", "champion").run_id == run.info.run_id


def test_the_command_line_runs_the_same_pipeline(trained_bundle, demo_dataset, tmp_path, monkeypatch):
    """attnunet train with the same settings gives the bundle's weights: one pipeline, two front ends."""
    root, _ = trained_bundle
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    code = main(
        ["train", "--data", str(demo_dataset), "--output", str(tmp_path / "cli"), "--plan", "none",
         "--epochs", "1", "--roi-size", "16", "16", "16", "--network-option", "init_features=4",
         "--num-samples", "1", "--batch-size", "2", "--no-progress", "--no-track"]
    )  # fmt: skip
    assert code == 0
    cli = load_checkpoint(tmp_path / "cli" / "checkpoints" / "best.pt")
    bundle = load_checkpoint(root / "models" / "model.pt")
    assert cli["spec"] == bundle["spec"]
    for name, value in bundle["model"].items():
        torch.testing.assert_close(cli["model"][name], value, msg=name)


def test_inference_and_evaluation_from_another_folder(trained_bundle, demo_dataset, tmp_path):
    root, _ = trained_bundle
    output = tmp_path / "pred"
    monai_bundle(
        tmp_path, "run", "--config_file", str(root / "configs" / "inference.json"),
        "--bundle_root", str(root), "--input", str(demo_dataset / "imagesTs"), "--output", str(output),
        "--progress", "False",
    )  # fmt: skip
    inputs = sorted((demo_dataset / "imagesTs").glob("*.nii.gz"))
    written = sorted(output.glob("*.nii.gz"))
    assert [p.name for p in written] == [p.name for p in inputs]
    for image_path, pred_path in zip(inputs, written, strict=True):
        image, pred = nib.load(image_path), nib.load(pred_path)
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    monai_bundle(
        tmp_path, "run", "--config_file", str(root / "configs" / "evaluate.json"), "--bundle_root", str(root),
        "--predictions", str(output), "--labels", str(demo_dataset / "labelsTs"),
        "--output", str(tmp_path / "metrics"), "--progress", "False",
    )  # fmt: skip
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["num_evaluated"] == len(inputs) and set(summary["classes"]) == {"organ", "lesion"}


def test_verify_net_in_out(tmp_path):
    root = bundle_template_dir()
    result = monai_bundle(
        tmp_path, "verify_net_in_out", "network_def", "--meta_file", str(root / "configs" / "metadata.json"),
        "--config_file", str(root / "configs" / "inference.json"), "--device", "cpu",
    )  # fmt: skip
    assert "verified with no error" in result.stdout + result.stderr


def test_multi_gpu_train_under_torchrun(tmp_path, demo_dataset):
    """multi_gpu_train.json with two processes (Gloo on CPU): DDP, sharded data, rank 0 saves the model."""
    root = tmp_path / "attention_unet"
    shutil.copytree(bundle_template_dir(), root)
    configs = f"['{root}/configs/train.json','{root}/configs/multi_gpu_train.json']"
    monai_bundle(
        tmp_path, "run", "--config_file", configs, "--bundle_root", str(root), "--data", str(demo_dataset),
        *_flags({**TINY, "val_fraction": "0.5", "num_workers": "0", "track": "False"}), torchrun=True,
    )  # fmt: skip
    state = load_checkpoint(root / "models" / "model.pt")["model"]
    assert not any(key.startswith("module.") for key in state), "the DDP wrapper is not saved"


def test_multi_gpu_evaluate_under_torchrun(trained_bundle, demo_dataset, tmp_path):
    """inference.json + evaluate.json + multi_gpu_evaluate.json with two processes (Gloo on CPU): the
    ranks share the cases, the predictions land where evaluation reads them, rank 0 scores them all."""
    root, _ = trained_bundle
    names = ("inference.json", "evaluate.json", "multi_gpu_evaluate.json")
    configs = "[" + ",".join(f"'{root / 'configs' / name}'" for name in names) + "]"
    monai_bundle(
        tmp_path, "run", "--config_file", configs, "--bundle_root", str(root),
        "--input", str(demo_dataset / "imagesTs"), "--labels", str(demo_dataset / "labelsTs"),
        "--predictions", str(tmp_path / "pred"), "--output", str(tmp_path / "metrics"),
        "--device", "cpu", "--progress", "False", torchrun=True,
    )  # fmt: skip
    inputs = sorted(path.name for path in (demo_dataset / "imagesTs").glob("*.nii.gz"))
    assert sorted(path.name for path in (tmp_path / "pred").iterdir()) == inputs
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["num_evaluated"] == len(inputs) and not summary["missing"] and not summary["mismatched"]
    rows = (tmp_path / "metrics" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + len(inputs), "one report row per case: rank 0 alone wrote the report"


def test_default_data_is_the_demo_written_once(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(bundle_template_dir() / "configs" / "train.json"))
    parser["bundle_root"] = str(tmp_path)
    first = Path(parser.get_parsed_content("data"))
    assert first == tmp_path / "data" / "demo" and (first / "dataset.json").is_file()
    stamp = (first / "dataset.json").stat().st_mtime_ns
    assert Path(default_dataset_dir(tmp_path)) == first
    assert (first / "dataset.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert parser.get_parsed_content("output") == f"{tmp_path}/models/run"


@pytest.mark.parametrize(
    ("config", "command", "flag_keys"),
    [
        ("train.json", train_command, train_command.TRAIN_KEYS),
        ("inference.json", infer_command, infer_command.INFERENCE_KEYS),
        ("evaluate.json", evaluate_command, evaluate_command.EVALUATE_KEYS),
    ],
)
def test_every_flag_is_a_config_key_of_the_same_name(config, command, flag_keys):
    keys = set(json.loads((bundle_template_dir() / "configs" / config).read_text())) - BUNDLE_KEYS
    assert keys == set(flag_keys)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert {action.dest for action in parser._actions} - {"help"} == set(flag_keys)


def test_the_runner_refuses_config_syntax_in_a_flag(tmp_path):
    marker = tmp_path / "MARKER"
    with pytest.raises(ValueError, match=r"--run-name .*may not start with \$, @ or %"):
        run_config("train.json", "training", {"run_name": f"$open({str(marker)!r}, 'w')"})
    assert not marker.exists()


@pytest.mark.parametrize(
    "place",
    [
        lambda code: {"input": ["case.nii.gz", code]},  # a file name among infer's inputs
        lambda code: {"network_kwargs": {"act": code}},  # a --network-option value
        lambda code: {"preset_kwargs": {code: 1}},  # a --preset-option key
    ],
)
def test_the_runner_refuses_config_syntax_inside_lists_and_dicts(tmp_path, place):
    marker = tmp_path / "MARKER"
    with pytest.raises(ValueError, match=r"may not start with \$, @ or %"):
        run_config("inference.json", "inference", place(f"$open({str(marker)!r}, 'w')"))
    assert not marker.exists()


@pytest.mark.parametrize("folds", [{"folds": 2}, {"fold": 0}])
def test_a_bundle_model_is_one_model_not_a_cross_validation(tmp_path, folds):
    config = TrainConfig(data=str(tmp_path / "data"), output=str(tmp_path / "run"), **folds)
    with pytest.raises(ValueError, match="holds one model, and cross-validation trains one per fold"):
        train_to(config, tmp_path / "models" / "model.pt")
    assert not (tmp_path / "run").exists() and not (tmp_path / "models").exists()
