"""The logged MLflow model: a pyfunc from code that segments scans (nothing unpickled) with a pytorch flavor,
in a real sqlite store, loaded back by MLflow and attnunet, and served by a real ``mlflow models serve``
that answers with exactly ``attnunet infer``'s label maps and refuses bad requests with a 400."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import SHARED_DATA, needs_shared
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, DataType
from mlflow_server import free_port
from PIL import Image

from attnunet import load_model
from attnunet.checkpoints import save_checkpoint
from attnunet.pipelines.inference.mlflow_model import log_segmentation_model
from attnunet.pipelines.inference.predict import infer
from attnunet.pipelines.inference.serving import MAX_SCAN_ENV
from attnunet.spec import ModelSpec
from attnunet.transforms.presets import build_transforms

HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus" / "imagesTr"
CLASSES = ["background", "organ", "lesion"]
# An MR model (per-case z-score: any modality goes through it), flips along every axis at test time.
SPEC = ModelSpec(
    "attention_unet",
    {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2},
    labels={str(i): name for i, name in enumerate(CLASSES)},
    preset="mr",
    roi_size=(16, 16, 16),
    sw_batch_size=4,
)
# The served model's scan limit here, so that an oversized request is cheap to send.
LIMIT_MB = 2
# Windows on the CPU, as the reference infer runs them here (a GPU's AMP would flip near-tied argmaxes).
ON_THE_CPU = {"sw_device": "cpu"}
# A checkpoint as attnunet wrote them before the typed spec (format 2): a 2D model with one sigmoid output.
OLD_KWARGS = {"init_features": 4, "depth": 2}
OLD_CONFIG = {
    "preset": "image2d",
    "roi_size": [16, 16],
    "labels": {"0": "background", "1": "vessel"},
    "spatial_dims": 2,
    "in_channels": 2,
    "out_channels": 1,
    "sw_batch_size": 3,
    "overlap": 0.25,
}


def encode(data: bytes | Path) -> str:
    return base64.b64encode(data.read_bytes() if isinstance(data, Path) else data).decode("ascii")


def nifti_bytes(array: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.eye(4) if affine is None else affine).to_bytes())


def dicom_series(write_dicom_series, volume: sitk.Image, folder: Path, uid: str) -> Path:
    """``volume`` as a DICOM series with a frame of reference, which a DICOM SEG references."""
    write_dicom_series(volume, folder, uid, folder.name)
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.FrameOfReferenceUID = f"{uid}.9"
        dataset.save_as(path)
    return folder


def zipped(*folders: Path) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                archive.write(path, path.relative_to(folder.parent))
    return stream.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, demo_dataset: Path) -> Iterator[SimpleNamespace]:
    """A sqlite store in a temp folder (also the working directory) with three logged models: today's
    checkpoint registered as ``tiny-serving@champion``, a format-2 checkpoint logged unregistered, and
    today's again as version 2, whose alias rule kept the alias on version 1."""
    folder = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        torch.manual_seed(0)
        network = SPEC.build().eval()
        # Random weights give one class everywhere; centring each class's logits on a demo scan makes every
        # class win somewhere, so that label maps compare something.
        scan = next((demo_dataset / "imagesTs").glob("*.nii.gz"))
        image = build_transforms("mr", "infer")({"image": str(scan)})["image"].as_tensor()
        with torch.no_grad():
            network.head.conv.bias -= network(image[None])[0].flatten(1).median(dim=1).values
        save_checkpoint(folder / "current.pt", {"spec": SPEC.to_dict(), "model": network.state_dict()})
        old_spec = ModelSpec.from_config(
            {**OLD_CONFIG, "network_spec": {"name": "attention_unet", "kwargs": OLD_KWARGS}}
        )
        old_network = old_spec.build().eval()
        with torch.no_grad():  # logits around 0 on the test's images, so the label map is not constant
            old_network.head.conv.bias -= old_network(torch.rand(1, 2, 16, 16)).median()
        old = {
            "format": "attnunet-checkpoint/2",
            "network": {"name": "attention_unet", "kwargs": OLD_KWARGS},
            "model": old_network.state_dict(),
            "config": OLD_CONFIG,
        }
        torch.save(old, folder / "old.pt")
        with mlflow.start_run():
            registered = log_segmentation_model(
                folder / "current.pt", register="tiny-serving", alias="champion"
            )
        with mlflow.start_run():
            unregistered = log_segmentation_model(folder / "old.pt", register=None, alias="champion")
        asked = []

        def keep_alias(name: str, alias: str, version: str) -> bool:  # a tracker's rule that said no
            asked.append((name, alias, version))
            return False

        with mlflow.start_run():
            kept = log_segmentation_model(
                folder / "current.pt", register="tiny-serving", alias="champion", place_alias=keep_alias
            )
        yield SimpleNamespace(
            folder=folder, registered=registered, old=unregistered, kept=kept, asked=asked, demo=demo_dataset
        )


def _post(url: str, payload: dict | bytes) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"mlflow models serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"mlflow models serve at {url} did not answer /ping in {timeout} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def server(store: SimpleNamespace) -> Iterator[str]:
    """``mlflow models serve -m models:/tiny-serving@champion --env-manager local`` on 127.0.0.1, with a
    scan limit of :data:`LIMIT_MB`; its ``/invocations`` URL."""
    port, log = free_port(), store.folder / "serve.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        store.registered,
        "--env-manager",
        "local",
    ]
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store.folder / 'mlflow.db'}",
        MAX_SCAN_ENV: str(LIMIT_MB),
        "CUDA_VISIBLE_DEVICES": "",  # the windows on the CPU, as the reference infer here
    }
    with open(log, "wb") as stream:
        # Its own process group, so the server and the uvicorn worker it starts are stopped together.
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            cwd=store.folder,
            env=environment,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield f"{url}/invocations"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _assert_infers_label_map(
    answer: dict, scan: Path, store: SimpleNamespace, tmp_path: Path, **options
) -> None:
    """The served label map is ``attnunet infer``'s for the same scan: voxel for voxel, same affine."""
    served = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(answer["label"])))
    (written,) = infer(scan, tmp_path, model=store.folder / "current.pt", progress=False, **options)
    expected = nib.load(written)
    assert served.shape == expected.shape == nib.load(scan).shape[:3]
    np.testing.assert_array_equal(served.affine, expected.affine)
    labels = np.asarray(served.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(expected.dataobj))
    assert len(np.unique(labels)) > 1  # a constant map would compare nothing
    assert answer["classes"] == CLASSES
    voxel_ml = abs(np.linalg.det(served.affine[:3, :3])) / 1000
    volumes = {name: float((labels == index).sum() * voxel_ml) for index, name in enumerate(CLASSES)}
    assert answer["volumes_ml"] == pytest.approx(volumes)


@pytest.mark.long(minutes=2)
def test_served_model_segments_scans_like_infer_and_refuses_bad_requests(
    store, server, tmp_path, write_dicom_series
):
    # A held-out demo scan, sent as a base64 NIfTI: infer's label map on the scan's grid.
    scan = next((store.demo / "imagesTs").glob("*.nii.gz"))
    status, answer = _post(server, {"dataframe_records": [{"image": encode(scan)}]})
    assert status == 200, answer
    (prediction,) = answer["predictions"]
    assert set(prediction) == {"label", "classes", "volumes_ml"}
    _assert_infers_label_map(prediction, scan, store, tmp_path / "demo")

    # A zipped DICOM series: a DICOM SEG of it, the frames of infer's SEG.
    volume = sitk.GetImageFromArray(np.asarray(nib.load(scan).dataobj).T[:10].astype(np.int16))
    volume.SetSpacing((3.0, 3.0, 6.0))
    series = dicom_series(
        write_dicom_series, volume, tmp_path / "series" / "ct", "1.2.826.0.1.3680043.8.498.1"
    )
    status, answer = _post(server, {"dataframe_records": [{"image": encode(zipped(series))}]})
    assert status == 200, answer
    seg = pydicom.dcmread(io.BytesIO(base64.b64decode(answer["predictions"][0]["label"])))
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    (written,) = infer(
        series, tmp_path / "seg", model=store.folder / "current.pt", output_format="dicom-seg", progress=False
    )
    np.testing.assert_array_equal(seg.pixel_array, pydicom.dcmread(written).pixel_array)

    # Bad requests: a 400 with one line naming the problem, and the server answers the next request.
    second = dicom_series(
        write_dicom_series, volume, tmp_path / "series" / "mr", "1.2.826.0.1.3680043.8.498.2"
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no scans here")
    two_channels = nifti_bytes(np.zeros((8, 8, 8, 2), np.float32))
    bad = {
        "not base64": ({"image": "this is not base64!"}, "the image is not valid base64"),
        "not an image": ({"image": encode(b"hello, world" * 50)}, "the image is not a NIfTI (.nii, .nii.gz)"),
        "a single DICOM file": ({"image": encode(next(series.iterdir()))}, "zip"),
        "two series": ({"image": encode(zipped(series, second))}, "the zip holds 2 DICOM series"),
        "no series": ({"image": encode(zipped(tmp_path / "notes"))}, "the zip holds no DICOM series"),
        "channels": ({"image": encode(two_channels)}, "the model takes 1-channel 3D images"),
        "dims": ({"image": encode(nifti_bytes(np.zeros((8, 8), np.float32)))}, "1-channel 3D images"),
        "too large": (
            {"image": encode(os.urandom((LIMIT_MB + 1) * 2**20))},
            "over this server's limit of 2 MB",
        ),
    }
    for name, (record, message) in bad.items():
        status, answer = _post(server, {"dataframe_records": [record]})
        assert status == 400, (name, answer)
        assert message in answer["message"] and answer["message"].startswith("row 0: "), (name, answer)
        assert "\n" not in answer["message"], name
    status, answer = _post(server, {"inputs": np.zeros((1, 1, 4, 4, 4)).tolist()})  # a bare voxel array
    assert status == 400 and "'image': string (required)" in answer["message"], answer
    status, answer = _post(server, b"{not json")
    assert status == 400, answer
    status, answer = _post(server, {"dataframe_records": [{"image": encode(scan), "tta": False}]})
    assert status == 200, answer
    _assert_infers_label_map(answer["predictions"][0], scan, store, tmp_path / "after", tta=False)


@needs_shared("Task04_Hippocampus", "imagesTr")
def test_served_model_segments_a_real_hippocampus_scan_like_infer(store, server, tmp_path):
    scan = HIPPOCAMPUS / "hippocampus_001.nii.gz"
    record = {"image": encode(scan), "tta": False, "largest_component": True}
    status, answer = _post(server, {"dataframe_records": [record]})
    assert status == 200, answer
    options = {"tta": False, "largest_component": True}
    _assert_infers_label_map(answer["predictions"][0], scan, store, tmp_path, **options)


def test_pyfunc_takes_scans_and_loads_without_unpickling(store, monkeypatch, tmp_path):
    assert store.registered == "models:/tiny-serving@champion"
    # MLflow refuses every pickle (cloudpickled pyfunc, pickled torch module) with this setting.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(store.registered, model_config=ON_THE_CPU)
    network, spec = load_model(store.registered)  # attnunet's own loader: the run's checkpoints/best.pt
    assert spec == SPEC
    scan = next((store.demo / "imagesTs").glob("*.nii.gz"))
    (answer,) = model.predict(pd.DataFrame({"image": [encode(scan)]})).to_dict(orient="records")
    _assert_infers_label_map(answer, scan, store, tmp_path)
    with pytest.raises(MlflowException, match="pickle"):
        mlflow.pytorch.load_model(store.registered)

    info = mlflow.models.get_model_info(store.registered)
    assert info.signature.inputs.inputs[:2] == [
        ColSpec(DataType.string, "image"),
        ColSpec(DataType.boolean, "tta", required=False),
    ]
    assert info.signature.outputs.input_names() == ["label", "classes", "volumes_ml"]
    example = model.input_example  # a real scan file, base64-encoded
    assert list(example.columns) == ["image"]
    image = example["image"][0]
    assert nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(image))).shape == (8, 8, 8)


def test_a_bare_array_is_refused_with_what_to_send(store):
    model = mlflow.pyfunc.load_model(store.registered)
    with pytest.raises(MlflowException, match="'image': string"):
        model.predict(np.zeros((1, 1, 16, 16, 16), np.float32))
    python_model = model.unwrap_python_model()  # called directly, the refusal is attnunet's own one line
    with pytest.raises(MlflowException, match=r"^this model segments scans, not voxel arrays: send a table"):
        python_model.predict(np.zeros((1, 1, 16, 16, 16), np.float32))
    with pytest.raises(MlflowException, match=r"column 'tta' must be true or false, got 'yes'"):
        python_model.predict(pd.DataFrame({"image": ["AAAA"], "tta": ["yes"]}))


def test_pytorch_flavor_is_the_network(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # that flavor is pickled
    module = mlflow.pytorch.load_model(store.registered)
    network, _ = load_model(store.folder / "current.pt")
    x = torch.rand(2, 1, 20, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), network(x))


def test_older_checkpoint_format_loads_and_segments_pictures(store, tmp_path):
    assert store.old.startswith("models:/m-")
    model = mlflow.pyfunc.load_model(store.old, model_config=ON_THE_CPU)
    _, spec = load_model(store.old)
    assert (spec.network_kwargs["init_features"], spec.out_channels, spec.roi_size) == (4, 1, (16, 16))
    picture = tmp_path / "picture.png"
    pixels = np.random.default_rng(1).integers(0, 255, (30, 21, 2), dtype=np.uint8)
    Image.fromarray(pixels, mode="LA").save(picture)
    (answer,) = model.predict(pd.DataFrame({"image": [encode(picture)]})).to_dict(orient="records")
    served = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(answer["label"])))
    (written,) = infer(picture, tmp_path / "out", model=store.folder / "old.pt", progress=False)
    np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(nib.load(written).dataobj))
    assert len(np.unique(np.asarray(served.dataobj))) == 2 and answer["classes"] == ["background", "vessel"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_windows_device_is_the_loaders_choice(store):
    with pytest.raises(ValueError, match="'cuda' was asked for, but CUDA is not available here"):
        mlflow.pyfunc.load_model(store.registered, model_config={"sw_device": "cuda"})


def test_alias_moves_only_when_the_rule_says_so(store):
    assert store.kept == "models:/tiny-serving/2"
    assert store.asked == [("tiny-serving", "champion", "2")]
    assert str(mlflow.MlflowClient().get_model_version_by_alias("tiny-serving", "champion").version) == "1"


def test_logging_needs_an_active_run(store):
    with pytest.raises(ValueError, match="no MLflow run is active"):
        log_segmentation_model(store.folder / "current.pt")


def test_a_scan_with_nan_voxels_is_refused_naming_the_row(store, tmp_path):
    """Not an all-background label map (which reads as "no finding"): the served model's 400 says why."""
    python_model = mlflow.pyfunc.load_model(store.registered, model_config=ON_THE_CPU).unwrap_python_model()
    volume = np.asarray(nib.load(next((store.demo / "imagesTs").glob("*.nii.gz"))).dataobj, np.float32)
    volume[10:12, 10:12, 5:7] = np.nan  # 8 voxels
    with pytest.raises(MlflowException, match=r"^row 0: .* has 8 NaN or infinite voxels") as refused:
        python_model.predict(pd.DataFrame({"image": [encode(nifti_bytes(volume))]}))
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"  # served as HTTP 400
