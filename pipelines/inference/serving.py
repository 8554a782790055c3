"""The pyfunc of attnunet's MLflow model: scans in, label maps out (:class:`SegmentationModel`).

MLflow builds it from ``serving_model.py`` ("models from code", logged by
:func:`~attnunet.pipelines.inference.mlflow_model.log_segmentation_model`) and reads the checkpoint it
keeps as its artifact ``checkpoint`` with :func:`attnunet.load_model` (``torch.load(weights_only=True)``),
so loading it unpickles nothing and a newer attnunet upgrades an older checkpoint. ``predict`` takes a
DataFrame of scans (column ``image``: a base64 NIfTI, NRRD or MetaImage file or a zip of one DICOM series;
optional ``tta`` and ``largest_component``) and returns, per scan, the label map on the scan's own grid
(base64 ``.nii.gz``, or a DICOM SEG for a series), the class names and each class's volume. Each scan goes
through :func:`~attnunet.pipelines.inference.apply.apply_model`, exactly as ``attnunet infer`` segments
it; a bare voxel array is refused (the model's preset needs the scan's spacing and orientation).

An ensemble's model (:func:`~attnunet.pipelines.inference.mlflow_model.log_ensemble_model`) keeps each
member's checkpoint as an artifact and, as ``ensemble``, a JSON file naming them with the classes whose
largest component the ensemble keeps; it is applied as ``attnunet infer --model A B ...`` applies it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from torch import nn

from attnunet.models import load_model
from attnunet.pipelines.inference.apply import Windows, apply_model, class_names, volumes_ml, write_nifti
from attnunet.pipelines.inference.devices import choose_devices
from attnunet.pipelines.inference.ensemble import Ensemble, logged_members
from attnunet.pipelines.inference.payload import DEFAULT_MAX_SCAN_MB, decode_scan, encode_file
from attnunet.spec import ModelSpec
from attnunet.transforms.dicom_seg import write_dicom_seg

__all__ = [
    "CHECKPOINT_KEY",
    "ENSEMBLE_KEY",
    "IMAGE_COLUMN",
    "MAX_SCAN_ENV",
    "OUTPUT_COLUMNS",
    "ScanRequestError",
    "SegmentationModel",
]

# The model's artifact holding the checkpoint.
CHECKPOINT_KEY = "checkpoint"
# An ensemble's artifact: {"members": [artifact keys], "names": [...], "largest_component": [...]}.
ENSEMBLE_KEY = "ensemble"
# The request's column of base64 scans, and the answer's columns.
IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("label", "classes", "volumes_ml")
# The environment variable of a server's largest scan, in MB (model_config's max_scan_mb wins).
MAX_SCAN_ENV = "ATTNUNET_MAX_SCAN_MB"
_WHAT_TO_SEND = (
    'a table with an "image" column of base64-encoded scan files (NIfTI, NRRD, MetaImage .mha, or a zip '
    'of one DICOM series), e.g. {"dataframe_records": [{"image": "<base64>"}]}'
)


class ScanRequestError(MlflowException):
    """A bad request: HTTP 400 from ``mlflow models serve`` (``INVALID_PARAMETER_VALUE``), message kept.

    MLflow's scoring server rewrites the message of a prediction's ``MlflowException`` to start with the
    request's DataFrame (several lines, a slice of the base64 text); the caller should get the one line
    that names the problem, so this exception's message is set once and kept.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()), error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


def _refuse(model_input: object) -> None:
    """Refuse anything but a DataFrame with an ``image`` column, saying what to send."""
    if isinstance(model_input, pd.DataFrame) and IMAGE_COLUMN in model_input.columns:
        return
    got = (
        f"a table with the columns {list(model_input.columns)}"
        if isinstance(model_input, pd.DataFrame)
        else f"a bare {type(model_input).__name__}"
    )
    older = (
        " (a model whose signature still takes arrays was logged by an older attnunet: log its checkpoint "
        "again with log_segmentation_model to serve scans)"
        if isinstance(model_input, np.ndarray)
        else ""
    )
    raise ScanRequestError(
        f"this model segments scans, not voxel arrays: send {_WHAT_TO_SEND}; got {got}. Voxels without "
        f"their spacing and orientation cannot go through the model's preset{older}"
    )


def _option(row: pd.Series, name: str, default: bool, where: str) -> bool:
    value = row.get(name)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return default
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ScanRequestError(f"{where}: column {name!r} must be true or false, got {value!r}")


def load_artifacts(artifacts: dict[str, str]) -> tuple[nn.Module | Ensemble, ModelSpec]:
    """The model a pyfunc's artifacts hold: one checkpoint, or an ensemble's member checkpoints."""
    if CHECKPOINT_KEY in artifacts:
        return load_model(artifacts[CHECKPOINT_KEY])
    described = json.loads(Path(artifacts[ENSEMBLE_KEY]).read_text())
    paths, names = logged_members(described, artifacts)
    loaded = [load_model(path) for path in paths]
    ensemble = Ensemble(
        networks=tuple(network for network, _ in loaded),
        specs=tuple(spec for _, spec in loaded),
        names=tuple(names),
        largest_component=tuple(described["largest_component"]),
    )
    return ensemble, ensemble.spec


class SegmentationModel(PythonModel):
    """The pyfunc of an attnunet model: scans in, label maps on each scan's grid out.

    MLflow builds it from ``serving_model.py`` and calls :meth:`load_context` with the model's
    ``checkpoint`` artifact (an ensemble's: its members' and ``ensemble``) before any :meth:`predict`.
    ``model_config`` in ``mlflow.pyfunc.load_model`` may set ``sw_device`` (where the windows run:
    ``"auto"``, ``"cpu"``, ``"cuda:1"``), ``device`` (where the volume is stitched) and ``max_scan_mb``
    (default: the ``ATTNUNET_MAX_SCAN_MB`` environment variable, else 1024).
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild network and spec from the checkpoint (``weights_only=True``; older formats upgrade)."""
        self.network, self.spec = load_artifacts(context.artifacts)
        config = context.model_config or {}
        self.sw_device = str(config.get("sw_device", "auto"))
        self.device = str(config.get("device", "auto"))
        # A device this machine lacks stops the model from loading, not every request.
        spec = self.spec
        choose_devices((1,) * spec.spatial_dims, in_channels=spec.in_channels, out_channels=spec.out_channels,
                       sw_device=self.sw_device, device=self.device)  # fmt: skip
        max_mb = config.get("max_scan_mb") or os.environ.get(MAX_SCAN_ENV) or DEFAULT_MAX_SCAN_MB
        self.max_bytes = int(float(max_mb) * 2**20)

    # ``model_input`` has no type hint: MLflow would read one as the model's signature.
    def predict(self, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per scan: ``label`` (base64 ``.nii.gz``, or a DICOM SEG for a DICOM series),
        ``classes`` (names in index order) and ``volumes_ml`` (class name -> millilitres).

        Raises:
            ScanRequestError: the input is not a table of scans, or a scan cannot be segmented (the
                message names the row and the problem).
        """
        _refuse(model_input)
        rows = [self._segment(row, number) for number, (_, row) in enumerate(model_input.iterrows())]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))

    def _segment(self, row: pd.Series, number: int) -> dict[str, Any]:
        where = f"row {number}"
        windows = Windows.for_model(
            self.spec,
            tta=_option(row, "tta", True, where),
            largest_component=_option(row, "largest_component", False, where),
            sw_device=self.sw_device,
            device=self.device,
        )
        with tempfile.TemporaryDirectory(prefix="attnunet-request-") as folder:
            try:
                scan = decode_scan(row[IMAGE_COLUMN], Path(folder), max_bytes=self.max_bytes)
                result = apply_model(
                    self.network, self.spec, str(scan.path), windows, series_uid=scan.series_uid,
                    name=f"{where} ({scan.format})",
                )  # fmt: skip
                output = Path(folder) / ("label.dcm" if scan.series_uid else "label.nii.gz")
                if scan.series_uid:  # a SEG referencing the sent series (refused without its UIDs)
                    labels, uid = result.labels, scan.series_uid
                    write_dicom_seg(labels, scan.path, output, self.spec.labels, series_uid=uid)
                else:
                    write_nifti(result.labels, output, np.uint8)  # as attnunet infer writes it
            except (ValueError, FileNotFoundError) as error:  # the sent scan, not the server
                raise ScanRequestError(f"{where}: {str(error).replace(folder + '/', '')}") from None
            label = encode_file(output)
        return {
            "label": label,
            "classes": class_names(self.spec),
            "volumes_ml": volumes_ml(result.labels, self.spec),
        }
