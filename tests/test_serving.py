"""The logged MLflow model: a pyfunc from code (label maps, nothing unpickled) with a pytorch flavor, in a
real sqlite store, loaded back by MLflow and attnunet and served by a real ``mlflow models serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.types import TensorSpec
from mlflow_server import free_port
from monai.inferers import sliding_window_inference

from attnunet import load_model
from attnunet.checkpoints import save_checkpoint
from attnunet.pipelines.tracking.serving import label_maps, log_segmentation_model
from attnunet.spec import ModelSpec

SPEC = ModelSpec(
    "attention_unet",
    {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2},
    labels={"0": "background", "1": "organ", "2": "lesion"},
    preset="ct",
    roi_size=(16, 16, 16),
    sw_batch_size=2,
    overlap=0.5,
)
# Windows on the CPU, like the reference here (a GPU's AMP would flip some near-tied argmaxes).
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


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A sqlite store in a temp folder (also the working directory) with three logged models: today's
    checkpoint registered as ``tiny-serving@champion``, a format-2 checkpoint logged unregistered, and
    today's again as version 2, whose alias rule kept the alias on version 1."""
    folder = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        torch.manual_seed(0)
        save_checkpoint(folder / "current.pt", {"spec": SPEC.to_dict(), "model": SPEC.build().state_dict()})
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
        yield SimpleNamespace(folder=folder, registered=registered, old=unregistered, kept=kept, asked=asked)


def reference(network: torch.nn.Module, spec: ModelSpec, images: np.ndarray) -> np.ndarray:
    """What the pyfunc must return: the spec's Gaussian sliding windows over class probabilities, then
    argmax (softmax) or >= 0.5 (one sigmoid output), one image at a time."""
    sigmoid = spec.out_channels == 1

    def probabilities(windows: torch.Tensor) -> torch.Tensor:
        logits = network(windows)
        return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)

    maps = []
    with torch.inference_mode():
        for image in torch.from_numpy(images):
            scores = sliding_window_inference(
                image[None],
                spec.roi_size,
                spec.sw_batch_size,
                probabilities,
                overlap=spec.overlap,
                mode="gaussian",
            )[0]
            maps.append((scores[0] >= 0.5).long() if sigmoid else scores.argmax(dim=0))
    return torch.stack(maps).numpy()


def test_registered_pyfunc_gives_the_checkpoint_label_maps_without_unpickling(store, monkeypatch):
    assert store.registered == "models:/tiny-serving@champion"
    # MLflow refuses every pickle (cloudpickled pyfunc, pickled torch module) with this setting.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(store.registered, model_config=ON_THE_CPU)
    network, spec = load_model(store.registered)  # attnunet's own loader: the run's checkpoints/best.pt
    assert spec == SPEC
    rng = np.random.default_rng(0)
    for shape in ((1, 1, 16, 16, 16), (2, 1, 24, 20, 12)):  # the window size, then larger and smaller
        images = rng.random(shape, dtype=np.float32)
        labels = model.predict(images)
        assert labels.shape == (shape[0], *shape[2:]) and labels.dtype == np.int64
        expected = reference(network, spec, images)
        assert len(np.unique(expected)) > 1  # a constant map would compare nothing
        np.testing.assert_array_equal(labels, expected)
    with pytest.raises(MlflowException, match="pickle"):
        mlflow.pytorch.load_model(store.registered)

    signature = mlflow.models.get_model_info(store.registered).signature
    assert signature.inputs.inputs == [TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1, -1))]
    assert signature.outputs.inputs == [TensorSpec(np.dtype(np.int64), (-1, -1, -1, -1))]


def test_pytorch_flavor_is_the_network(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # that flavor is pickled
    module = mlflow.pytorch.load_model(store.registered)
    network, _ = load_model(store.folder / "current.pt")
    x = torch.rand(2, 1, 20, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), network(x))


def test_older_checkpoint_format_loads_and_predicts(store):
    assert store.old.startswith("models:/m-")
    model = mlflow.pyfunc.load_model(store.old, model_config=ON_THE_CPU)
    network, spec = load_model(store.old)
    assert (spec.network_kwargs["init_features"], spec.out_channels, spec.roi_size) == (4, 1, (16, 16))
    images = np.random.default_rng(1).random((2, 2, 30, 21), dtype=np.float32)
    labels, expected = model.predict(images), reference(network, spec, images)
    assert labels.shape == (2, 30, 21) and len(np.unique(expected)) == 2
    np.testing.assert_array_equal(labels, expected)
    assert mlflow.models.get_model_info(store.old).signature.inputs.inputs[0].shape == (-1, 2, -1, -1)


def test_bad_input_gives_one_error(store):
    model = mlflow.pyfunc.load_model(store.registered)
    with pytest.raises(
        MlflowException,
        match=r"Shape of input \(1, 2, 16, 16, 16\) does not match expected shape \(-1, 1, -1, -1, -1\)",
    ):
        model.predict(np.zeros((1, 2, 16, 16, 16), np.float32))
    with pytest.raises(MlflowException, match=r"Shape of input \(1, 16, 16\) does not match"):
        model.predict(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(MlflowException, match="dtype of input float64 does not match expected dtype float32"):
        model.predict(np.zeros((1, 1, 16, 16, 16)))  # MLflow casts no tensor input to a narrower type
    # Called directly (the overlay of a finished run does), the shape check is attnunet's own one line.
    network, spec = load_model(store.folder / "current.pt")
    with pytest.raises(
        ValueError,
        match=r"^model input has shape \(1, 2, 16, 16, 16\), but this 3D model takes \(batch, 1, x, y, z\)",
    ):
        label_maps(network, spec, torch.zeros(1, 2, 16, 16, 16))


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_windows_device_is_the_loaders_choice(store):
    model = mlflow.pyfunc.load_model(store.registered, model_config={"sw_device": "cuda"})
    with pytest.raises(ValueError, match="'cuda' was asked for, but CUDA is not available here"):
        model.predict(np.zeros((1, 1, 16, 16, 16), np.float32))


def test_alias_moves_only_when_the_rule_says_so(store):
    assert store.kept == "models:/tiny-serving/2"
    assert store.asked == [("tiny-serving", "champion", "2")]
    assert str(mlflow.MlflowClient().get_model_version_by_alias("tiny-serving", "champion").version) == "1"


def test_logging_needs_an_active_run(store):
    with pytest.raises(ValueError, match="no MLflow run is active"):
        log_segmentation_model(store.folder / "current.pt")


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
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


def test_mlflow_models_serve_answers_with_label_maps(store):
    port = free_port()
    log = store.folder / "serve.log"
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
    with open(log, "wb") as stream:
        # Its own process group, so the server and the uvicorn worker it starts are stopped together.
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            cwd=store.folder,  # MLFLOW_TRACKING_URI (the store's sqlite file) comes with the environment
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        images = np.random.default_rng(2).random((2, 1, 20, 16, 12), dtype=np.float32)
        status, answer = _post(f"{url}/invocations", {"inputs": images.tolist()})
        assert status == 200, answer
        expected = mlflow.pyfunc.load_model(store.registered).predict(images)
        np.testing.assert_array_equal(np.asarray(answer["predictions"]), expected)
        status, answer = _post(f"{url}/invocations", {"inputs": np.zeros((1, 3, 8, 8, 8)).tolist()})
        assert status == 400 and "does not match expected shape" in answer["message"]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
