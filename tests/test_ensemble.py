"""Ensembles through the one model-apply path: probabilities averaged, a cross-validation folder standing
for its folds and bringing its post-processing, members that cannot be averaged refused in one line, and the
logged ensemble served as ``attnunet infer`` segments."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.blocks import Convolution
from scipy import ndimage

from attnunet import networks
from attnunet.checkpoints import save_checkpoint
from attnunet.cli import main
from attnunet.models import load_model
from attnunet.pipelines.inference.apply import Windows, apply_model, to_labels
from attnunet.pipelines.inference.ensemble import Ensemble, load_ensemble
from attnunet.pipelines.inference.mlflow_model import log_ensemble_model
from attnunet.pipelines.inference.predict import infer
from attnunet.spec import ModelSpec
from attnunet.transforms.presets import build_transforms

TINY = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2}
CLASSES = {"0": "background", "1": "organ", "2": "lesion"}
CT = {"a_min": 0.0, "a_max": 1000.0}
# A 1x1x1 convolution classifies each voxel by its windowed intensity x = HU / 1000: logits
# (0, 10 (x - 0.3), 20 (x - 0.5)), so class 0 below 300 HU, 1 up to 700 HU, 2 above.
THRESHOLD = "threshold_for_ensemble_tests"
THRESHOLD_NET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3}
# The windows on the CPU everywhere, so that every path computes the same numbers.
ON_THE_CPU = {"sw_device": "cpu", "device": "cpu"}


def _spec(network: str = "attention_unet", kwargs: dict | None = None, **changes) -> ModelSpec:
    fields = {"labels": CLASSES, "preset": "ct", "preset_kwargs": CT, "roi_size": (16, 16, 16)}
    return ModelSpec(network, kwargs or TINY, **{**fields, "pixdim": (1.5, 1.5, 2.0), **changes})


def _checkpoint(path: Path, spec: ModelSpec, network: torch.nn.Module) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, {"spec": spec.to_dict(), "model": network.state_dict()})


def _scan(path: Path, volume: np.ndarray) -> Path:
    affine = np.array([[-0.9, 0.1, 0, 10], [0.1, 1.1, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(path))
    return path


def _random_volume(seed: int, shape: tuple[int, ...] = (23, 19, 13)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice([100.0, 500.0, 900.0], size=shape) + rng.uniform(-150, 150, size=shape)


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Two tiny AttentionUNets of one spec (different weights, each class winning somewhere on the scan)
    as the folds of a cross-validation folder; their checkpoints and a scan."""
    folder = tmp_path_factory.mktemp("ensemble")
    scan = _scan(folder / "scan.nii.gz", _random_volume(seed=0))
    image = build_transforms("ct", "infer", pixdim=(1.5, 1.5, 2.0), **CT)({"image": str(scan)})["image"]
    paths = []
    for fold in range(2):
        torch.manual_seed(fold)
        network = _spec().build().eval()
        with torch.no_grad():  # centre each class's logits on the scan: random weights give one class
            network.head.conv.bias -= network(image.as_tensor()[None])[0].flatten(1).median(dim=1).values
        path = folder / "cv" / f"fold_{fold}" / "checkpoints" / "best.pt"
        paths.append(_checkpoint(path, _spec(), network))
    (folder / "cv" / "splits.json").write_text(json.dumps([{"train": [], "val": []}] * 2))
    return paths, scan


def test_the_ensemble_is_the_mean_of_its_members_probabilities(folds):
    (first, second), scan = folds
    windows = Windows.for_model(_spec(), **ON_THE_CPU)
    members = [apply_model(*load_model(path), scan, windows).probabilities for path in (first, second)]
    ensemble, spec = load_ensemble([first, second])
    assert isinstance(ensemble, Ensemble) and ensemble.names == (str(first), str(second))
    result = apply_model(ensemble, spec, scan, windows)
    mean = (members[0] + members[1]) / 2
    torch.testing.assert_close(result.probabilities.as_tensor(), mean.as_tensor(), atol=1e-5, rtol=0)
    assert not torch.allclose(members[0], members[1], atol=1e-2)  # two models, not one twice
    top = mean.as_tensor().topk(2, dim=0).values
    clear = (top[0] - top[1] > 1e-4).numpy()  # the labels of near ties depend on rounding
    np.testing.assert_array_equal(result.labels[0].numpy()[clear], to_labels(mean, spec)[0].numpy()[clear])
    assert len(np.unique(result.labels.numpy())) > 1  # a constant label map would compare nothing
    np.testing.assert_allclose(result.labels.affine.numpy(), nib.load(str(scan)).affine, atol=1e-5)


def test_a_cross_validation_folder_is_all_its_folds(folds, tmp_path, capsys, caplog):
    (first, second), scan = folds
    cv = first.parents[2]
    ensemble, _ = load_ensemble(cv)
    assert ensemble.names == (str(first), str(second)) and ensemble.largest_component == ()
    # the command line, beside the two checkpoints named one by one: the same label maps
    assert (
        main(["infer", str(scan), "--model", str(cv), "--output", str(tmp_path / "cv"), "--no-progress"]) == 0
    )
    assert "1 prediction(s) written" in capsys.readouterr().out
    named = infer(scan, tmp_path / "named", model=[first, second], progress=False)[0]
    np.testing.assert_array_equal(_read(tmp_path / "cv" / "scan.nii.gz"), _read(named))

    with pytest.raises(ValueError, match="is a cross-validation folder of 2 fold models"):
        load_model(cv)  # one model's loader says what the folder is
    unfinished = tmp_path / "unfinished"
    shutil.copytree(cv, unfinished)
    (unfinished / "splits.json").write_text(json.dumps([{"train": [], "val": []}] * 3))
    assert len(load_ensemble(unfinished)[0].names) == 2  # folds trained one by one: said, not refused
    assert "folds [2] of its 3 are not trained" in caplog.text
    (unfinished / "fold_1" / "checkpoints" / "best.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"fold_1/checkpoints/best.pt missing"):
        load_ensemble(unfinished)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"labels": {"0": "background", "1": "liver", "2": "tumour"}}, "classes"),
        ({"network_kwargs": {**TINY, "in_channels": 2}}, "input channels"),
        ({"preset": "mr", "preset_kwargs": {}}, "preset"),
        ({"pixdim": (1.0, 1.0, 1.0)}, "spacing"),
    ],
)
def test_members_that_cannot_be_averaged_are_refused_in_one_line(folds, tmp_path, capsys, change, what):
    (first, _), scan = folds
    other = ModelSpec.from_dict({**_spec().to_dict(), **change})
    odd = _checkpoint(tmp_path / "odd.pt", other, other.build())
    message = (
        f"^models {re.escape(str(first))} and {re.escape(str(odd))} cannot be ensembled: their {what} differ"
    )
    with pytest.raises(ValueError, match=message):
        load_ensemble([first, odd])
    args = ["infer", str(scan), "--model", str(first), str(odd), "--output", str(tmp_path / "out")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"their {what} differ" in error
    assert not (tmp_path / "out" / "scan.nii.gz").exists()


@pytest.fixture
def threshold_network(monkeypatch: pytest.MonkeyPatch) -> str:
    """:data:`THRESHOLD` registered (for this test only) as a network checkpoints can name."""
    monkeypatch.setattr(networks, "_REGISTRY", dict(networks._REGISTRY))
    networks.register_network(THRESHOLD)(
        lambda **kwargs: Convolution(**kwargs, kernel_size=1, conv_only=True)
    )
    return THRESHOLD


def _threshold_fold(path: Path, slope: float) -> Path:
    """A fold of the threshold classifier; ``slope`` makes the folds' probabilities (not labels) differ."""
    spec = _spec(THRESHOLD, THRESHOLD_NET, pixdim=None)
    network = spec.build()
    with torch.no_grad():
        network.conv.weight.copy_(torch.tensor([0.0, 10.0, 20.0]).mul(slope).view(3, 1, 1, 1, 1))
        network.conv.bias.copy_(torch.tensor([0.0, -3.0, -10.0]).mul(slope))
    return _checkpoint(path, spec, network)


def test_postprocessing_keeps_the_largest_component_of_its_classes_only(threshold_network, tmp_path):
    """A stray island of a class postprocessing.json lists is removed; one of a class it does not list
    stays; ``--largest-component`` still means every foreground class."""
    cv = tmp_path / "cv"
    for fold, slope in enumerate((1.0, 1.5)):
        _threshold_fold(cv / f"fold_{fold}" / "checkpoints" / "best.pt", slope)
    (cv / "splits.json").write_text("[]")
    (cv / "postprocessing.json").write_text(json.dumps({"largest_component": [1]}))
    volume = np.full((30, 24, 12), 100.0)
    volume[2:10, 2:10, 2:8] = 500.0  # organ
    volume[20:23, 18:21, 8:11] = 500.0  # a stray organ island
    volume[2:10, 14:22, 2:8] = 900.0  # lesion
    volume[20:23, 2:5, 8:11] = 900.0  # a second lesion
    scan = _scan(tmp_path / "scan.nii.gz", volume)
    labels = _read(infer(scan, tmp_path / "pp", model=cv, progress=False)[0])
    assert ndimage.label(labels == 1)[1] == 1 and (labels == 1).sum() == 8 * 8 * 6
    assert ndimage.label(labels == 2)[1] == 2
    every = _read(infer(scan, tmp_path / "all", model=cv, largest_component=True, progress=False)[0])
    assert ndimage.label(every == 1)[1] == ndimage.label(every == 2)[1] == 1
    plain = _read(
        infer(scan, tmp_path / "plain", model=sorted(cv.glob("fold_*/*/best.pt")), progress=False)[0]
    )
    assert ndimage.label(plain == 1)[1] == 2  # the two folds named one by one: no post-processing

    (cv / "postprocessing.json").write_text(json.dumps({"largest_component": [5]}))
    with pytest.raises(ValueError, match=r"largest_component \[5\] names classes these models lack"):
        load_ensemble(cv)
    (cv / "postprocessing.json").write_text(json.dumps({"largest_component": "organ"}))
    with pytest.raises(ValueError, match="postprocessing.json is not"):
        load_ensemble(cv)


def test_the_logged_ensemble_predicts_as_infer(folds, tmp_path, monkeypatch):
    """One MLflow model (pyfunc) holding both folds and the post-processing: ``predict`` on a scan gives
    ``attnunet infer``'s label map of the cross-validation folder."""
    (first, _), scan = folds
    cv = tmp_path / "cv"
    shutil.copytree(first.parents[2], cv)
    (cv / "postprocessing.json").write_text(json.dumps({"largest_component": [1]}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # the pyfunc loads from code
    with mlflow.start_run():
        uri = log_ensemble_model([cv], register="tiny-ensemble", alias="champion")
    assert uri == "models:/tiny-ensemble@champion"
    model = mlflow.pyfunc.load_model(uri, model_config={"sw_device": "cpu"})
    assert mlflow.models.get_model_info(uri).metadata["attnunet_ensemble"]["largest_component"] == [1]
    encoded = base64.b64encode(scan.read_bytes()).decode("ascii")
    (answer,) = model.predict(pd.DataFrame({"image": [encoded]})).to_dict(orient="records")
    served = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(answer["label"])))
    expected = nib.load(infer(scan, tmp_path / "out", model=cv, progress=False, **ON_THE_CPU)[0])
    np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(expected.dataobj))
    np.testing.assert_array_equal(served.affine, expected.affine)
    assert answer["classes"] == list(CLASSES.values())
    # the post-processing came with it (components as MONAI counts them: touching at a corner)
    plain = _read(
        infer(scan, tmp_path / "plain", model=sorted(cv.glob("fold_*/*/best.pt")), progress=False)[0]
    )
    assert ndimage.label(np.asarray(served.dataobj) == 1, np.ones((3, 3, 3)))[1] == 1
    assert ndimage.label(plain == 1, np.ones((3, 3, 3)))[1] > 1
    # attnunet infer takes the registered ensemble as it takes the folder: members and post-processing
    assert main(["infer", str(scan), "--model", uri, "--output", str(tmp_path / "reg"), "--no-progress",
                 "--sw-device", "cpu", "--device", "cpu"]) == 0  # fmt: skip
    registered = nib.load(next((tmp_path / "reg").glob("*.nii.gz")))
    np.testing.assert_array_equal(np.asarray(registered.dataobj), np.asarray(expected.dataobj))
    ensemble, _ = load_ensemble(uri)
    assert len(ensemble.names) == 2 and ensemble.names[0].startswith(uri)
    assert ensemble.largest_component == (1,)
