"""The MLflow model of a training run: scans in, label maps out (pyfunc); the network (pytorch flavor).

:func:`log_segmentation_model` logs one MLflow model from a checkpoint, with two flavors:

- ``python_function``, written as MLflow "models from code": MLflow runs ``serving_model.py``, which only
  sets :class:`~attnunet.pipelines.inference.serving.SegmentationModel` (scans in, label maps out; see
  there). The model keeps the checkpoint (weights and the typed :class:`~attnunet.spec.ModelSpec`) as its
  artifact ``checkpoint``, which the pyfunc reads with :func:`attnunet.load_model`
  (``torch.load(weights_only=True)``), so loading it unpickles nothing and a newer attnunet upgrades an
  older checkpoint.
- ``pytorch``: the network itself, pickled, for users who want the torch module. Unpickling runs code and
  rebuilds attnunet's classes as they were when it was logged, so prefer :func:`attnunet.load_model`
  across attnunet versions. Not MLflow's ``pt2`` export: ``torch.export`` specialises the network's
  shape-dependent padding to the example (``attention_unet_3d_small`` exported on 32^3 refuses 48^3).

The model's metadata holds the spec too (``attnunet_spec``), to read without downloading the weights.

:func:`log_ensemble_model` logs an ensemble of models (several checkpoints, a cross-validation folder's
folds) as one such model, pyfunc only (there is no one network to pickle): it keeps each member's
checkpoint and the ensemble's post-processing, and segments as ``attnunet infer --model A B ...`` does.

Which call gives what, for ``URI = "models:/NAME@ALIAS"`` (or the ``models:/m-...`` URI of an unregistered
model):

- ``mlflow.pyfunc.load_model(URI).predict(pd.DataFrame({"image": [base64_text]}))`` and
  ``mlflow models serve -m URI --env-manager local`` (``POST /invocations`` with
  ``{"dataframe_records": [{"image": "<base64>"}]}``): label maps, class names, volumes.
- ``mlflow.pytorch.load_model(URI)``: the network in eval mode (logits, any batch and spatial size).
- ``attnunet.load_model(URI)``: ``(network, spec)`` rebuilt from the run's ``checkpoints/best.pt``, which
  :func:`log_segmentation_model` logs too (fine-tuning, ``attnunet infer --model URI``).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import importlib.metadata
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array, Object, Property
from PIL import Image
from torch import nn

from attnunet.checkpoints import model_from_checkpoint, save_checkpoint
from attnunet.models import CHECKPOINT_ARTIFACT
from attnunet.pipelines.inference.apply import class_names
from attnunet.pipelines.inference.ensemble import ENSEMBLE_METADATA, ModelSource, build_ensemble
from attnunet.pipelines.inference.serving import CHECKPOINT_KEY, ENSEMBLE_KEY, IMAGE_COLUMN
from attnunet.spec import ModelSpec

__all__ = ["MODEL_NAME", "log_ensemble_model", "log_segmentation_model"]

# The logged model's name in its run.
MODEL_NAME = "model"
# MLflow copies this file into the model and runs it on load (it only sets SegmentationModel).
_CODE_FILE = Path(__file__).with_name("serving_model.py")
# Folder of the pickled network inside the model, read by mlflow.pytorch.load_model.
_TORCH_DATA = "torch"
# Spatial size of the input example: a real scan file, small enough to store in the model and to run once
# when the model is logged (MLflow checks that its serving input works).
_EXAMPLE_SIZE = 8


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
    _need_run("log_segmentation_model")
    network, spec = model_from_checkpoint(checkpoint)
    # Model.log takes a flavor module: anything with save_model (its __name__ is recorded as the flavor).
    flavors = SimpleNamespace(__name__="mlflow.pyfunc", save_model=functools.partial(_save, network=network))
    with tempfile.TemporaryDirectory() as folder:
        # Under the name attnunet.load_model reads, whatever the file is called here.
        best = Path(shutil.copyfile(checkpoint, Path(folder) / Path(CHECKPOINT_ARTIFACT).name))
        mlflow.log_artifact(str(best), artifact_path=str(Path(CHECKPOINT_ARTIFACT).parent))
        return _log(flavors, spec, {CHECKPOINT_KEY: str(best)}, {}, register, alias, place_alias)


def log_ensemble_model(
    models: ModelSource | Sequence[ModelSource],
    *,
    largest_component: Sequence[int] | None = None,
    tracking_uri: str | None = None,
    register: str | None = None,
    alias: str | None = None,
    place_alias: Callable[[str, str, str], bool] | None = None,
) -> str:
    """Log the ensemble of ``models`` as one MLflow model (pyfunc) in the active MLflow run; register it.

    The model keeps each member's checkpoint (rewritten from the loaded weights and spec, whatever the
    source was) and serves as ``attnunet infer --model MODELS...`` segments: probabilities averaged, then
    the ensemble's post-processing.

    Args:
        models: checkpoints, bundle folders, ``models:/`` URIs or cross-validation folders (all folds), as
            :func:`~attnunet.pipelines.inference.ensemble.build_ensemble` takes them.
        largest_component: the classes whose largest component alone is kept; None: what the
            cross-validation folders' ``postprocessing.json`` chose (none without one).
        tracking_uri: the store of ``models:/`` members (default: the active one's).
        register, alias, place_alias: as :func:`log_segmentation_model`.

    Returns:
        where the model loads from, as :func:`log_segmentation_model` returns it.

    Raises:
        ValueError: no MLflow run is active, or the models cannot be ensembled.
        FileNotFoundError: a model does not exist.
    """
    _need_run("log_ensemble_model")
    ensemble = build_ensemble(models, tracking_uri=tracking_uri or mlflow.get_tracking_uri())
    if largest_component is not None:  # checked against the classes as the ensemble checks its own
        ensemble = dataclasses.replace(ensemble, largest_component=tuple(largest_component))
    keys = [f"member_{index}" for index in range(len(ensemble.networks))]
    described = {
        "members": keys,
        "names": list(ensemble.names),
        "largest_component": list(ensemble.largest_component),
    }
    with tempfile.TemporaryDirectory() as folder:
        artifacts = {ENSEMBLE_KEY: str(Path(folder) / "ensemble.json")}
        Path(artifacts[ENSEMBLE_KEY]).write_text(json.dumps(described, indent=2))
        for key, network, spec in zip(keys, ensemble.networks, ensemble.specs, strict=True):
            state = {"spec": spec.to_dict(), "model": network.state_dict()}
            artifacts[key] = str(save_checkpoint(Path(folder) / f"{key}.pt", state))
        metadata = {ENSEMBLE_METADATA: described}
        return _log(mlflow.pyfunc, ensemble.spec, artifacts, metadata, register, alias, place_alias)


def _need_run(caller: str) -> None:
    if mlflow.active_run() is None:
        raise ValueError(
            f"{caller}: no MLflow run is active; call it inside a RunTracker's run or mlflow.start_run()"
        )


def _log(
    flavor: Any,
    spec: ModelSpec,
    artifacts: dict[str, str],
    metadata: dict[str, Any],
    register: str | None,
    alias: str | None,
    place_alias: Callable[[str, str, str], bool] | None,
) -> str:
    """Log the pyfunc from code with ``artifacts`` under :data:`MODEL_NAME`, register it, place the alias."""
    info = Model.log(
        artifact_path=None,  # MLflow 3 names a model instead
        name=MODEL_NAME,
        flavor=flavor,
        python_model=str(_CODE_FILE),
        artifacts=artifacts,
        signature=_signature(spec),
        input_example=pd.DataFrame({IMAGE_COLUMN: [_example_scan(spec)]}),
        # attnunet's own dependencies (torch, MONAI, MLflow) come with it.
        pip_requirements=[f"attnunet>={importlib.metadata.version('attnunet')}"],
        metadata={"attnunet_spec": spec.to_dict(), **metadata},
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


def _example_scan(spec: ModelSpec) -> str:
    """A tiny scan the model takes, base64-encoded: a bright ball in an 8^3 NIfTI (one channel per
    input channel, last axis) at the model's spacing, or an 8 x 8 picture for a 2D model."""
    grid = np.indices((_EXAMPLE_SIZE,) * spec.spatial_dims) - (_EXAMPLE_SIZE - 1) / 2
    ball = np.where((grid**2).sum(axis=0) < (_EXAMPLE_SIZE / 3) ** 2, 200, 10).astype(np.uint8)
    stream = io.BytesIO()
    if spec.spatial_dims == 2:
        modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
        channels = ball if spec.in_channels == 1 else np.stack([ball] * spec.in_channels, axis=-1)
        Image.fromarray(channels, mode=modes.get(spec.in_channels)).save(stream, format="PNG")
    else:
        data = np.stack([ball] * spec.in_channels, axis=-1) if spec.in_channels > 1 else ball
        image = nib.Nifti1Image(data.astype(np.int16), np.diag([*(spec.pixdim or (1.0, 1.0, 1.0)), 1.0]))
        stream.write(gzip.compress(image.to_bytes(), mtime=0))
    return base64.b64encode(stream.getvalue()).decode("ascii")


def _signature(spec: ModelSpec) -> ModelSignature:
    """Scans in (``image``, optional ``tta`` and ``largest_component``); label map, class names and
    volumes (millilitres per class name) out."""
    names = class_names(spec)
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(DataType.string, IMAGE_COLUMN),
                ColSpec(DataType.boolean, "tta", required=False),
                ColSpec(DataType.boolean, "largest_component", required=False),
            ]
        ),
        outputs=Schema(
            [
                ColSpec(DataType.string, "label"),
                ColSpec(Array(DataType.string), "classes"),
                ColSpec(Object([Property(name, DataType.double) for name in names]), "volumes_ml"),
            ]
        ),
    )
