"""One model loader: a checkpoint, a MONAI bundle folder or an MLflow model URI -> (network, spec).

Loading never runs code from the model's files: checkpoints are read with ``weights_only=True``, a
bundle's config is read as JSON (no ``$`` expression is evaluated, and ``_target_`` may only name
attnunet or ``monai.networks`` classes), and a registered MLflow model is rebuilt from the weights
and spec its run logged.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from attnunet.checkpoints import (
    NotAnAttnunetCheckpointError,
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
)
from attnunet.cv_layout import FOLD_CHECKPOINT, SPLITS_FILE, fold_number
from attnunet.spec import ModelSpec

__all__ = [
    "CHECKPOINT_ARTIFACT",
    "REGISTRY_SCHEMES",
    "SAFE_TARGETS",
    "download_model_files",
    "fold_checkpoints",
    "is_cv_folder",
    "load_model",
]

logger = logging.getLogger(__name__)

REGISTRY_SCHEMES = ("models:/", "runs:/")
# Module prefixes a bundle's network_def may instantiate; anything else is code we do not run.
SAFE_TARGETS = ("attnunet.", "monai.networks.")
# Keys of a bundle's inference config that describe how to apply the network.
_BUNDLE_KEYS = ("preset", "preset_kwargs", "pixdim", "roi_size")
# Where a training run logs its best checkpoint (weights and spec), read back for registry models.
CHECKPOINT_ARTIFACT = "checkpoints/best.pt"
_BUNDLE_RUN_HINT = "run such a bundle with 'python -m monai.bundle run --config_file ...' instead"
# A cross-validation output folder: this file beside one fold_N/ folder per fold, each trained as a run.


def load_model(
    source: str | os.PathLike, *, device: str | torch.device = "cpu", tracking_uri: str | None = None
) -> tuple[torch.nn.Module, ModelSpec]:
    """Load a model and its spec from a checkpoint, a MONAI bundle folder or the MLflow registry.

    Args:
        source: a checkpoint file written by ``attnunet train``; a bundle folder (``models/model.pt``,
            an attnunet checkpoint or a bare state dict with ``configs/inference.json``'s
            ``network_def``); or an MLflow model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
            ``runs:/RUN_ID/model``).
        device: where to put the model.
        tracking_uri: the MLflow store for a model URI (default: ``MLFLOW_TRACKING_URI`` or MLflow's
            default store).

    Returns:
        ``(model, spec)``: the model in eval mode and its :class:`~attnunet.spec.ModelSpec`.

    Raises:
        FileNotFoundError: the file or folder does not exist, or a bundle lacks its weights.
        ValueError: not a model; a bundle whose network needs code to build; a URI naming no model.

    Example:
        >>> model, spec = load_model("runs/demo/checkpoints/best.pt")  # doctest: +SKIP
        >>> model, spec = load_model("models:/attnunet-demo@champion", device="cuda")  # doctest: +SKIP
    """
    if str(source).startswith(REGISTRY_SCHEMES):
        return _load_registered(str(source), tracking_uri, device)
    path = Path(source)
    if is_cv_folder(path):
        raise ValueError(
            f"model {source} is a cross-validation folder of {len(fold_checkpoints(path))} fold models; "
            "apply them together as an ensemble (attnunet infer --model FOLDER, or load_ensemble)"
        )
    if path.is_dir():
        return _load_bundle(path, device)
    if not path.exists():
        raise FileNotFoundError(
            f"model {source} does not exist (give a checkpoint file, a bundle folder or models:/NAME@ALIAS)"
        )
    return model_from_checkpoint(path, device)


def is_cv_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a cross-validation output folder (it holds :data:`SPLITS_FILE`)."""
    return not str(path).startswith(REGISTRY_SCHEMES) and (Path(path) / SPLITS_FILE).is_file()


def fold_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Each ``fold_N/checkpoints/best.pt`` of a cross-validation folder, in fold order.

    Raises:
        FileNotFoundError: no fold folder, or a fold without its best checkpoint (still training, or
            stopped): an ensemble silently short of a fold would not be the cross-validation's model.
    """
    folds = [fold for fold in Path(folder).iterdir() if fold.is_dir() and fold_number(fold) is not None]
    if not folds:
        raise FileNotFoundError(f"cross-validation folder {folder} has {SPLITS_FILE} but no fold_N folders")
    folds.sort(key=fold_number)
    _warn_untrained_folds(Path(folder), [fold_number(fold) for fold in folds])
    missing = [str(fold / FOLD_CHECKPOINT) for fold in folds if not (fold / FOLD_CHECKPOINT).is_file()]
    if missing:
        raise FileNotFoundError(
            f"cross-validation folder {folder}: {', '.join(missing)} missing (a fold still training, or "
            "stopped)"
        )
    return [fold / FOLD_CHECKPOINT for fold in folds]


def _warn_untrained_folds(folder: Path, trained: list[int]) -> None:
    """Say so when the splits hold folds that have no folder yet: a smaller ensemble is a choice (folds
    trained one by one), but not one to make unnoticed."""
    try:
        splits = json.loads((folder / SPLITS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return
    untrained = sorted(set(range(len(splits))) - set(trained)) if isinstance(splits, list) else []
    if untrained:
        logger.warning(
            "cross-validation folder %s: folds %s of its %d are not trained; the ensemble is of folds %s",
            folder, untrained, len(splits), trained,
        )  # fmt: skip


def _load_bundle(folder: Path, device: str | torch.device) -> tuple[torch.nn.Module, ModelSpec]:
    """A bundle's ``models/model.pt``: an attnunet checkpoint carries its spec; a bare state dict gets
    one from ``configs/inference.json`` read as plain data."""
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"bundle {folder} has no models/model.pt (train the bundle first)")
    try:
        return model_from_checkpoint(load_checkpoint(weights), device)
    except NotAnAttnunetCheckpointError:
        pass  # a bare state dict: its network is described by the bundle's inference.json
    config = _read_json(folder / "configs" / "inference.json")
    definition = _resolve(config, "network_def", folder)
    builder = _safe_builder(definition)
    spec = _bundle_spec(folder, config, definition)
    try:  # MONAI's CheckpointSaver writes a bare state dict for one object, {"model": ...} otherwise
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(f"bundle {folder}: models/model.pt cannot be read: {error}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    network = builder(**{k: v for k, v in definition.items() if not k.startswith("_")})
    return load_weights(network, state, f"bundle {folder}").to(device).eval(), spec


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; a bundle folder needs it to describe its network")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _resolve(config: Mapping[str, Any], key: str, folder: Path) -> Any:
    """``config[key]`` with ``@key`` references followed, refusing every ``$`` or ``%`` expression.

    Written by hand because MONAI's ``ConfigParser`` evaluates expressions as it resolves them.
    """

    def value_of(value: Any, where: str) -> Any:
        if isinstance(value, str) and value.startswith(("$", "%")):
            raise ValueError(
                f"bundle {folder}: configs/inference.json '{where}' is an expression ({value[:60]!r}); "
                f"attnunet loads models without running code from their files: {_BUNDLE_RUN_HINT}"
            )
        if isinstance(value, str) and value.startswith("@"):
            return value_of(_lookup(config, value[1:], folder), value[1:])
        if isinstance(value, Mapping):
            return {k: value_of(v, f"{where}#{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [value_of(v, f"{where}#{i}") for i, v in enumerate(value)]
        return value

    return value_of(_lookup(config, key, folder), key)


def _lookup(config: Mapping[str, Any], reference: str, folder: Path) -> Any:
    node: Any = config
    for part in reference.split("#"):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            raise ValueError(f"bundle {folder}: configs/inference.json has no key '{reference}'")
    return node


def _safe_builder(definition: Any) -> Callable[..., torch.nn.Module]:
    """The network class a resolved ``network_def`` names: an ``nn.Module`` subclass defined in attnunet
    or ``monai.networks``, or :func:`attnunet.networks.create_network`.

    The name is split into a module and one attribute of it, and the object must be defined there:
    a dotted path that walks through a module's attributes into another module (``monai.networks.utils.
    torch.hub.load``) names no module under the allowed packages and is refused, as is any function.
    """
    from attnunet.networks import create_network

    target = definition.get("_target_", "") if isinstance(definition, Mapping) else ""
    refused = ValueError(
        f"network_def's _target_ {target!r} is not a network class of attnunet or monai.networks; "
        f"attnunet loads models without running code from their files: {_BUNDLE_RUN_HINT}"
    )
    module_name, _, attribute = str(target).rpartition(".")
    if not str(target).startswith(SAFE_TARGETS) or not attribute:
        raise refused
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        raise refused from None
    if builder is create_network:
        return builder
    defined_in = getattr(builder, "__module__", "") or ""
    is_network = isinstance(builder, type) and issubclass(builder, torch.nn.Module)
    if not is_network or not (defined_in + ".").startswith(SAFE_TARGETS):
        raise refused
    return builder


def _bundle_spec(folder: Path, config: Mapping[str, Any], definition: Mapping[str, Any]) -> ModelSpec:
    """The spec of a bundle whose weights are a bare state dict: network and data keys, labels from
    ``metadata.json``'s ``channel_def``."""
    metadata = folder / "configs" / "metadata.json"
    outputs = _read_json(metadata).get("network_data_format", {}).get("outputs", {})
    channels = outputs.get("pred", {}).get("channel_def", {})
    settings = {key: _resolve(config, key, folder) for key in _BUNDLE_KEYS if key in config}
    kwargs = {k: v for k, v in definition.items() if not k.startswith("_")}
    return ModelSpec.from_config(
        {
            **settings,
            "network_spec": {"name": definition.get("_target_"), "kwargs": kwargs},
            "labels": {str(index): str(name) for index, name in channels.items()},
            **{k: kwargs.get(k) for k in ("spatial_dims", "in_channels", "out_channels")},
        },
        source=f"bundle {folder}",
    )


def download_model_files(
    model_uri: str, artifact_path: str, dst_path: str | os.PathLike, tracking_uri: str | None = None
) -> Path:
    """Download a file or folder of a logged or registered MLflow model's own files (``MLmodel``,
    ``artifacts``) from the given store; the path it was written to.

    MLflow's ``models:/`` download resolves the name against the process-wide registry, so the model's
    location is looked up here with a client of this store, as :func:`load_model` looks up its run.

    Raises:
        ValueError: the URI names no model in the store (one line naming both).
    """
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from attnunet.mlflow_store import check_store_exists, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(tracking_uri)
    check_store_exists(tracking_uri, model_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        found = get_model_name_and_version(client, model_uri)
        location = (
            client.get_logged_model(found[0]).artifact_location
            if len(found) == 1
            else client.get_model_version_download_uri(*found)
        )
        local = download_artifacts(
            f"{location.rstrip('/')}/{artifact_path}", dst_path=str(dst_path), tracking_uri=tracking_uri
        )
    except MlflowException as error:
        raise ValueError(f"model {model_uri} cannot be read from {tracking_uri}: {error.message}") from None
    return Path(local)


def _load_registered(
    model_uri: str, tracking_uri: str | None, device: str | torch.device
) -> tuple[torch.nn.Module, ModelSpec]:
    """A logged or registered model, rebuilt from the checkpoint its run logged (weights and spec,
    read with ``weights_only=True``) rather than from the pickled module."""
    # MLflow only when a registry model is asked for; its own URI parsing, no process-global state
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from attnunet.mlflow_store import check_store_exists, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(tracking_uri)
    check_store_exists(tracking_uri, model_uri)  # a read never creates a store
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if model_uri.startswith("runs:/"):
            run_id = RunsArtifactRepository.parse_runs_uri(model_uri)[0]
        else:
            found = get_model_name_and_version(client, model_uri)
            run_id = (
                client.get_logged_model(found[0]).source_run_id
                if len(found) == 1  # a logged model's own id (models:/m-...)
                else client.get_model_version(*found).run_id
            )
        with tempfile.TemporaryDirectory() as folder:
            local = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, dst_path=folder)
            checkpoint = load_checkpoint(local)
    except MlflowException as error:
        raise ValueError(
            f"model {model_uri} cannot be loaded from {client.tracking_uri} (it needs its run's "
            f"{CHECKPOINT_ARTIFACT}, which 'attnunet train' logs; a logged ensemble runs through "
            f"mlflow.pyfunc.load_model or mlflow models serve): {error.message}"
        ) from None
    return model_from_checkpoint(checkpoint, device)
