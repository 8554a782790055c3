"""The template MONAI bundle run by MONAI's own commands (``python -m monai.bundle ...``) in subprocesses.

One tiny training run (1 epoch, 16^3 patches, ``init_features=4``, tracked in a sqlite MLflow store in
tmp) is shared by the inference, evaluation and export tests. The commands run from the bundle's
folder, as MONAI documents (``inference.json`` takes shared settings from ``configs/train.json``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigParser

from attnunet.pipelines.bundle import (
    bundle_datalist,
    bundle_template_dir,
    default_dataset_dir,
    image_datalist,
    init_distributed,
)
from attnunet.pipelines.tracking import resolve_tracking_uri

# Small enough for a CPU: the demo fixture's 32 x 32 x 16 volumes, 16^3 patches, a 4-feature network.
TINY = [
    "--epochs",
    "1",
    "--roi_size",
    "[16,16,16]",
    "--init_features",
    "4",
    "--num_samples",
    "1",
    "--batch_size",
    "2",
]
EXPERIMENT = "bundle-test"


def _env() -> dict[str, str]:
    """The subprocesses' environment: no MLFLOW_TRACKING_URI (each test names its store), one OpenMP
    thread per process (tiny tensors; several threads per process oversubscribe a small CI machine)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def monai_bundle(bundle: Path, command: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle COMMAND ...`` in ``bundle``; fail the test with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", command, *args],
        cwd=bundle,
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
    """A copy of the template trained for one epoch on the demo fixture, tracked in MLflow."""
    root = tmp_path_factory.mktemp("bundle") / "attention_unet"
    shutil.copytree(bundle_template_dir(), root)
    tracking_uri = f"sqlite:///{root.parent / 'mlflow.db'}"
    monai_bundle(
        root, "run", "--config_file", "configs/train.json", "--bundle_root", str(root),
        "--dataset_dir", str(demo_dataset), *TINY,
        "--tracking", "mlflow", "--tracking_uri", tracking_uri, "--experiment_name", EXPERIMENT,
    )  # fmt: skip
    return root, tracking_uri


def test_train_saves_checkpoint_and_tracks_in_mlflow(trained_bundle):
    root, tracking_uri = trained_bundle
    # MONAI's CheckpointSaver wrote the state dict of exactly the config's network (strict load)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["init_features"] = 4
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert {"train_loss", "val_mean_dice"} <= set(metrics)
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    assert np.isfinite(metrics["train_loss"])
    # the executed config is logged as an artifact of the run
    assert client.list_artifacts(runs[0].info.run_id)


def test_inference_segments_a_folder(trained_bundle, demo_dataset, tmp_path):
    root, _ = trained_bundle
    output = tmp_path / "pred"
    monai_bundle(
        root, "run", "--config_file", "configs/inference.json", "--bundle_root", str(root),
        "--input_dir", str(demo_dataset / "imagesTs"), "--output_dir", str(output), "--init_features", "4",
    )  # fmt: skip
    inputs = sorted((demo_dataset / "imagesTs").glob("*.nii.gz"))
    written = sorted(output.glob("*.nii.gz"))
    assert [p.name.replace("_seg", "") for p in written] == [p.name for p in inputs]
    for image_path, pred_path in zip(inputs, written, strict=True):
        image, pred = nib.load(image_path), nib.load(pred_path)
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_evaluate_writes_metrics(trained_bundle, demo_dataset):
    root, _ = trained_bundle
    monai_bundle(
        root, "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
        "--bundle_root", str(root), "--dataset_dir", str(demo_dataset), *TINY,
        "--output_dir", str(root / "eval"),
    )  # fmt: skip
    summary = (root / "eval" / "val_mean_dice_summary.csv").read_text()
    assert "mean" in summary
    raw = (root / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    val_cases = bundle_datalist(demo_dataset, "val")
    assert len(raw) == 1 + len(val_cases)  # a header, then one row per validation case
    assert Path(val_cases[0]["image"]).name in raw[1]


def test_verify_net_in_out(tmp_path):
    root = tmp_path / "attention_unet"
    shutil.copytree(bundle_template_dir(), root)
    result = monai_bundle(
        root, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.json", "--device", "cpu",
    )  # fmt: skip
    assert "verified with no error" in result.stdout + result.stderr


def test_ckpt_export_predicts_like_the_checkpoint(trained_bundle):
    root, _ = trained_bundle
    exported = root / "models" / "model.ts"
    monai_bundle(
        root, "ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file", "models/model.pt",
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
        "--bundle_root", str(root), "--init_features", "4",
    )  # fmt: skip
    scripted = torch.jit.load(str(exported), map_location="cpu").eval()
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["init_features"] = 4
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    network.eval()
    image = torch.rand(1, 1, 24, 20, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = network(image), scripted(image)
    assert got.shape == (1, 3, 24, 20, 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bundle_datalist_splits_like_training(demo_dataset):
    train = bundle_datalist(demo_dataset, "train", val_fraction=0.25, seed=3)
    val = bundle_datalist(demo_dataset, "val", val_fraction=0.25, seed=3)
    names = sorted(Path(i["image"]).name for i in train + val)
    assert names == sorted(p.name for p in (demo_dataset / "imagesTr").iterdir())
    assert not {i["image"] for i in train} & {i["image"] for i in val}
    assert len(val) == 1
    assert bundle_datalist(demo_dataset, "val", val_fraction=0.25, seed=3) == val
    assert all(set(item) == {"image", "label"} for item in train)


def test_bundle_datalist_bad_input(demo_dataset, tmp_path):
    with pytest.raises(ValueError, match="labels up to 2.*out_channels is 2"):
        bundle_datalist(demo_dataset, "train", out_channels=2)
    with pytest.raises(ValueError, match="test"):
        bundle_datalist(demo_dataset, "test")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        bundle_datalist(tmp_path / "nowhere", "train")


def test_image_datalist(demo_dataset, tmp_path):
    items = image_datalist(demo_dataset / "imagesTs")
    assert [Path(i["image"]).name for i in items] == sorted(
        p.name for p in (demo_dataset / "imagesTs").iterdir()
    )
    (tmp_path / "notes.txt").write_text("not a scan")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        image_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        image_datalist(tmp_path / "missing")
    (tmp_path / "photo.PNG").write_bytes(b"")
    assert image_datalist(tmp_path, suffixes=[".png"]) == [{"image": str(tmp_path / "photo.PNG")}]


def test_multi_gpu_train_under_torchrun(tmp_path, demo_dataset):
    """multi_gpu_train.json with two processes (Gloo on CPU): DDP, sharded data, rank 0 saves the model."""
    root = tmp_path / "attention_unet"
    shutil.copytree(bundle_template_dir(), root)
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "monai.bundle", "run",
            "--config_file", "['configs/train.json','configs/multi_gpu_train.json']",
            "--bundle_root", str(root), "--dataset_dir", str(demo_dataset), *TINY, "--val_fraction", "0.5",
        ],
        cwd=root, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in state), "the DDP wrapper is not saved"


def test_config_defaults_use_demo_data_and_attnunet_store(tmp_path, monkeypatch):
    """Without --dataset_dir the bundle writes the demo data once into its folder; MLflow goes to the store
    ``attnunet train`` uses (MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db)."""
    root = tmp_path / "attention_unet"
    shutil.copytree(bundle_template_dir(), root)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    assert parser.get_parsed_content("tracking_uri") == resolve_tracking_uri() == mlflow.get_tracking_uri()
    assert parser.get_parsed_content("tracking_uri").endswith("mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    parser.parse(reset=True)
    assert parser.get_parsed_content("tracking_uri") == "sqlite:///elsewhere.db"

    first = Path(parser.get_parsed_content("dataset_dir"))
    assert first == root / "data" / "demo"
    assert len(bundle_datalist(first, "train")) + len(bundle_datalist(first, "val")) == 12
    stamp = (first / "dataset.json").stat().st_mtime_ns
    assert Path(default_dataset_dir(root)) == first
    assert (first / "dataset.json").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_init_distributed_needs_torchrun(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        init_distributed()
