"""The MLflow model of a training run: label maps from the pyfunc, the network from the pytorch flavor.

:func:`log_segmentation_model` logs one MLflow model from a checkpoint, with two flavors:

- ``python_function``, written as MLflow "models from code": MLflow runs ``serving_model.py``, which only
  sets :class:`SegmentationModel`. The model keeps the checkpoint (weights and the typed
  :class:`~attnunet.spec.ModelSpec`) as its artifact ``checkpoint`` and reads it with
  :func:`attnunet.load_model` (``torch.load(weights_only=True)``), so loading it unpickles nothing and a
  newer attnunet upgrades an older checkpoint. ``predict`` takes ``(B, C, *spatial)`` float32 arrays and
  returns ``(B, *spatial)`` int64 label maps from the model's own sliding windows (:func:`label_maps`).
- ``pytorch``: the network itself, pickled, for users who want the torch module. Unpickling runs code and
  rebuilds attnunet's classes as they were when it was logged, so prefer :func:`attnunet.load_model`
  across attnunet versions. Not MLflow's ``pt2`` export: ``torch.export`` specialises the network's
  shape-dependent padding to the example (``attention_unet_3d_small`` exported on 32^3 refuses 48^3).

The model's metadata holds the spec too (``attnunet_spec``), to read without downloading the weights.

Which call gives what, for ``URI = "models:/NAME@ALIAS"`` (or the ``models:/m-...`` URI of an unregistered
model):

- ``mlflow.pyfunc.load_model(URI).predict(x)`` and ``mlflow models serve -m URI --env-manager local``
  (``POST /invocations`` with ``{"inputs": x as nested lists}``): label maps.
- ``mlflow.pytorch.load_model(URI)``: the network in eval mode (logits, any batch and spatial size).
- ``attnunet.load_model(URI)``: ``(network, spec)`` rebuilt from the run's ``checkpoints/best.pt``, which
  :func:`log_segmentation_model` logs too (fine-tuning, ``attnunet infer --model URI``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import Schema, TensorSpec
from monai.inferers import sliding_window_inference
from torch import nn

from attnunet.checkpoints import model_from_checkpoint
from attnunet.models import CHECKPOINT_ARTIFACT, load_model
from attnunet.pipelines.inference.devices import choose_devices
from attnunet.spec import ModelSpec

__all__ = ["CHECKPOINT_KEY", "MODEL_NAME", "SegmentationModel", "label_maps", "log_segmentation_model"]

# The logged model's name in its run, and its artifact holding the checkpoint.
MODEL_NAME = "model"
CHECKPOINT_KEY = "checkpoint"
# MLflow copies this file into the model and runs it on load (it only sets SegmentationModel).
_CODE_FILE = Path(__file__).with_name("serving_model.py")
# Folder of the pickled network inside the model, read by mlflow.pytorch.load_model.
_TORCH_DATA = "torch"
# Spatial size of the stored input example, which shows the payload format (serving_input_example.json,
# pretty-printed) and is run once to check serving: any size works, the windows pad it to roi_size.
_EXAMPLE_SIZE = 8


def label_maps(
    network: nn.Module, spec: ModelSpec, images: torch.Tensor, *, sw_device: str = "auto"
) -> torch.Tensor:
    """``(B, *spatial)`` int64 label maps (on the CPU) of ``(B, C, *spatial)`` float images.

    Each image goes through MONAI's ``sliding_window_inference`` with the spec's ``roi_size``,
    ``overlap`` and ``sw_batch_size`` and Gaussian blending of the class probabilities (as
    ``attnunet infer`` stitches them), then argmax, or ``>= 0.5`` for a model with one sigmoid output.
    One image at a time, so a batch costs no more memory than its largest image.

    Args:
        sw_device: where the windows run: ``"auto"`` (CUDA when available, with AMP), ``"cpu"`` or
            ``"cuda[:N]"``; the image is stitched where
            :func:`~attnunet.pipelines.inference.devices.choose_devices` finds room.

    Raises:
        ValueError: ``images`` is not ``(batch, spec.in_channels, *spatial)``, ``spec.spatial_dims`` sizes;
            an unknown ``sw_device``, or CUDA asked for without one.
    """
    if images.ndim != spec.spatial_dims + 2 or images.shape[1] != spec.in_channels:
        expected = ", ".join(["batch", str(spec.in_channels), *"xyz"[: spec.spatial_dims]])
        raise ValueError(
            f"model input has shape {tuple(images.shape)}, but this {spec.spatial_dims}D model takes "
            f"({expected}) arrays ({spec.in_channels} channels first); reshape the array"
        )
    plan = choose_devices(
        images.shape[2:], in_channels=spec.in_channels, out_channels=spec.out_channels, sw_device=sw_device
    )
    sigmoid = spec.out_channels == 1
    predictor = _probabilities(network.to(plan.sw_device), sigmoid, amp=plan.sw_device.type == "cuda")
    labels = torch.empty((images.shape[0], *images.shape[2:]), dtype=torch.int64)
    with torch.inference_mode():
        for index, image in enumerate(images):
            scores = sliding_window_inference(
                image[None].float().to(plan.device),
                spec.roi_size,
                spec.sw_batch_size,
                predictor,
                overlap=spec.overlap,
                mode="gaussian",
                sw_device=plan.sw_device,
                device=plan.device,
            )[0]
            labels[index] = scores[0] >= 0.5 if sigmoid else scores.argmax(dim=0)
    return labels


def _probabilities(network: nn.Module, sigmoid: bool, amp: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Class probabilities of a batch of windows: blending probabilities, not logits, keeps one
    window's overconfident logits from outweighing its neighbours' at the seams."""

    def predict(windows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(windows.device.type, enabled=amp):
            logits = network(windows)
        logits = logits.float()
        return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)

    return predict


class SegmentationModel(PythonModel):
    """The pyfunc of an attnunet model: checkpoint in, label maps out (see :func:`label_maps`).

    MLflow builds it from ``serving_model.py`` and calls :meth:`load_context` with the model's
    ``checkpoint`` artifact before any :meth:`predict`. ``model_config={"sw_device": "cpu"}`` (or
    ``"cuda:1"``) in ``mlflow.pyfunc.load_model`` picks where the windows run; default ``"auto"``.
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild network and spec from the checkpoint (``weights_only=True``; older formats upgrade)."""
        self.network, self.spec = load_model(context.artifacts[CHECKPOINT_KEY])
        self.sw_device = str((context.model_config or {}).get("sw_device", "auto"))

    def predict(self, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Label maps ``(B, *spatial)`` (int64) of ``model_input``, a ``(B, C, *spatial)`` float array."""
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return label_maps(self.network, self.spec, images, sw_device=self.sw_device).numpy()


def log_segmentation_model(
    checkpoint: str | os.PathLike,
    *,
    register: str | None = None,
    alias: str | None = None,
    place_alias: Callable[[str, str, str], bool] | None = None,
) -> str:
    """Log the checkpoint's model (pyfunc and pytorch flavors) in the active MLflow run; register it.

    The run also gets the checkpoint as ``checkpoints/best.pt``, which :func:`attnunet.load_model`
    rebuilds a registered model from.

    Args:
        checkpoint: an attnunet checkpoint (any format :func:`attnunet.checkpoints.load_checkpoint` reads).
        register: registered model name; None logs the model without registering it.
        alias: alias for the new version (e.g. ``"champion"``); ignored without ``register``.
        place_alias: ``place_alias(name, alias, version)`` decides whether the alias moves to the new
            version, moves it if so and returns whether it did (a tracker's rule, e.g. only to a better
            run); None always moves it.

    Returns:
        where the model loads from: ``models:/NAME@ALIAS`` when the alias is on the new version, else
        ``models:/NAME/VERSION``, or the logged model's own ``models:/m-...`` when not registered.

    Raises:
        ValueError: no MLflow run is active, or ``checkpoint`` is not an attnunet checkpoint.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    if mlflow.active_run() is None:
        raise ValueError(
            "log_segmentation_model: no MLflow run is active; call it inside a RunTracker's run or "
            "mlflow.start_run()"
        )
    network, spec = model_from_checkpoint(checkpoint)
    example = np.zeros((1, spec.in_channels, *(_EXAMPLE_SIZE,) * spec.spatial_dims), np.float32)
    # Model.log takes a flavor module: anything with save_model (its __name__ is recorded as the flavor).
    flavors = SimpleNamespace(__name__="mlflow.pyfunc", save_model=functools.partial(_save, network=network))
    with tempfile.TemporaryDirectory() as folder:
        # Under the name attnunet.load_model reads, whatever the file is called here.
        best = Path(shutil.copyfile(checkpoint, Path(folder) / Path(CHECKPOINT_ARTIFACT).name))
        mlflow.log_artifact(str(best), artifact_path=str(Path(CHECKPOINT_ARTIFACT).parent))
        info = Model.log(
            artifact_path=None,  # MLflow 3 names a model instead
            name=MODEL_NAME,
            flavor=flavors,
            python_model=str(_CODE_FILE),
            artifacts={CHECKPOINT_KEY: str(best)},
            signature=_signature(spec),
            input_example=example,
            # attnunet's own dependencies (torch, MONAI, MLflow) come with it.
            pip_requirements=[f"attnunet>={importlib.metadata.version('attnunet')}"],
            metadata={"attnunet_spec": spec.to_dict()},
            # Declared so that a loader may override it (MLflow ignores undeclared keys); MLflow also
            # logs it as the run's parameter sw_device.
            model_config={"sw_device": "auto"},
            registered_model_name=register,
        )
    if register is None:
        return info.model_uri
    version = str(info.registered_model_version)
    if alias and (place_alias or _move_alias)(register, alias, version):
        return f"models:/{register}@{alias}"
    return f"models:/{register}/{version}"


def _move_alias(name: str, alias: str, version: str) -> bool:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return True


def _save(path: str, mlflow_model: Model, *, network: nn.Module, **pyfunc_options: Any) -> None:
    """Save the pyfunc from code at ``path``, then add the pickled network as its pytorch flavor.

    ``Model.log`` calls this as a flavor's ``save_model``; MLflow has no call that writes two flavors
    of one model, and one model keeps ``models:/NAME@ALIAS`` loadable by both loaders.
    """
    mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **pyfunc_options)
    torch_model = Model()
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "model"
        mlflow.pytorch.save_model(
            network,
            saved,
            mlflow_model=torch_model,
            serialization_format="pickle",
            pip_requirements=pyfunc_options["pip_requirements"],
        )
        flavor = dict(torch_model.flavors[mlflow.pytorch.FLAVOR_NAME])
        shutil.move(saved / flavor["model_data"], Path(path) / _TORCH_DATA)
    mlflow_model.add_flavor(mlflow.pytorch.FLAVOR_NAME, **{**flavor, "model_data": _TORCH_DATA})
    mlflow_model.save(Path(path) / MLMODEL_FILE_NAME)


def _signature(spec: ModelSpec) -> ModelSignature:
    """Free batch and spatial sizes: ``(-1, C, -1, ...)`` float32 in, ``(-1, -1, ...)`` int64 labels out."""
    free = (-1,) * spec.spatial_dims
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.in_channels, *free))]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, *free))]),
    )
