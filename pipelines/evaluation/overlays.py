"""PNG overlays of image, label and prediction for a quick look at a segmentation.

Drawn on a bare ``matplotlib.figure.Figure`` (no pyplot), so no display is needed and the caller's
backend (Jupyter's inline one, say) is left alone. Hand-written because MONAI's
``plot_2d_or_3d_image`` writes TensorBoard summaries, not a side-by-side PNG file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from attnunet.pipelines.evaluation.report import CLASS_COLOURS

__all__ = ["choose_slice", "save_overlay"]

# The colours the results pages give the classes, so a PNG and a page colour a class alike.
_COLOURS = list(CLASS_COLOURS)


def _as_array(volume: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A (spatial...) numpy array from a channel-first or plain tensor/array."""
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim in (3, 4) and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a 2D or 3D volume (optionally with one channel), got shape {array.shape}"
        )
    return array


def choose_slice(label: np.ndarray | torch.Tensor, axis: int = -1) -> int:
    """Index of the slice along ``axis`` with the most labelled (non-zero) voxels; the middle one if none.

    Example:
        >>> label = np.zeros((8, 8, 5)); label[2:4, 2:4, 3] = 1
        >>> choose_slice(label)
        3
    """
    array = _as_array(label, "label")
    counts = np.count_nonzero(np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1), axis=1)
    return int(np.argmax(counts)) if counts.any() else array.shape[axis] // 2


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor | None,
    prediction: np.ndarray | torch.Tensor,
    *,
    class_names: Mapping[str, str] | Sequence[str] | None = None,
    slice_index: int | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG with the image, the label over it and the prediction over it, side by side.

    3D volumes are shown at one axial slice (last axis): ``slice_index``, or the one where the label
    (else the prediction) has the most foreground.

    Args:
        path: the PNG file to write (its folder is created).
        image: the image, (H, W[, D]) or (1, H, W[, D]).
        label: the reference segmentation (class indices) of the same shape, or None to leave it out.
        prediction: the predicted class indices, same shape as ``image``.
        class_names: names of the classes for the legend, index -> name (``{"1": "organ"}``) or a list.
        slice_index: the slice of a 3D volume to show.
        title: a title over the panels.

    Returns:
        the written path.

    Raises:
        ValueError: shapes differ or are not 2D/3D.

    Example:
        >>> image = np.random.rand(32, 32, 8); label = (image > 0.7).astype(int)
        >>> save_overlay("/tmp/overlay.png", image, label, label).name
        'overlay.png'
    """
    image_arr = _as_array(image, "image").astype(np.float32)
    pred_arr = _as_array(prediction, "prediction").astype(np.int64)
    label_arr = None if label is None else _as_array(label, "label").astype(np.int64)
    for name, array in (("prediction", pred_arr), ("label", label_arr)):
        if array is not None and array.shape != image_arr.shape:
            raise ValueError(f"{name} shape {array.shape} differs from the image shape {image_arr.shape}")
    if image_arr.ndim == 3:
        index = (
            slice_index
            if slice_index is not None
            else choose_slice(label_arr if label_arr is not None else pred_arr)
        )
        if not 0 <= index < image_arr.shape[-1]:
            raise ValueError(f"slice_index {index} is outside 0..{image_arr.shape[-1] - 1}")
        image_arr, pred_arr = image_arr[..., index], pred_arr[..., index]
        label_arr = None if label_arr is None else label_arr[..., index]
    figure = _figure(image_arr, label_arr, pred_arr, class_names)
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _figure(
    image: np.ndarray,
    label: np.ndarray | None,
    prediction: np.ndarray,
    class_names: Mapping[str, str] | Sequence[str] | None,
) -> Figure:
    """Side-by-side panels of a 2D slice: the image, the label over it (if any), the prediction over it."""
    num_classes = int(max(prediction.max(), 0 if label is None else label.max(), 1))
    if isinstance(class_names, Mapping):
        names = {int(k): v for k, v in class_names.items()}
    else:
        names = dict(enumerate(class_names or []))
    cmap = ListedColormap([_COLOURS[i % len(_COLOURS)] for i in range(num_classes)])
    panels = [("image", None), *([("label", label)] if label is not None else []), ("prediction", prediction)]
    figure = Figure(figsize=(4 * len(panels), 4.4))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, (name, mask) in zip(axes[0], panels, strict=True):
        # Rows of a (x, y) slice are x: transpose so the picture is shown with x across.
        axis.imshow(image.T, cmap="gray", origin="lower")
        if mask is not None:
            shown = np.ma.masked_where(mask.T == 0, mask.T - 1)
            axis.imshow(shown, cmap=cmap, vmin=0, vmax=num_classes - 1, alpha=0.45, origin="lower")
        axis.set_title(name)
        axis.axis("off")
    handles = [
        Patch(color=_COLOURS[(i - 1) % len(_COLOURS)], label=names.get(i, str(i)))
        for i in range(1, num_classes + 1)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    return figure
