"""Check a dataset's files before any training starts; each problem names the file and what to do.

Two passes. The first reads headers only (fast): missing or unreadable files, a missing label, an image
of another dimension or channel count than the others (or than ``roi_size`` and the declared modalities
say), image/label shape or geometry mismatches. The second decodes the data with the
readers the presets use (``monai.transforms.LoadImage``): truncated files, NaN or infinite values, and
label values that are not among the declared classes. All problems of a pass are reported together
in one :class:`DataValidationError`.

:func:`check_class_values` and :func:`declared_channels` are the dataset-level checks; ``attnunet plan``
and ``attnunet train`` both run them, so a dataset one accepts the other does not refuse.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from attnunet.transforms import readers  # noqa: F401  (registers SimpleITKReader: DICOM folders, NRRD, MHA)
from attnunet.transforms.formats import IMAGE2D_SUFFIXES, NIFTI_SUFFIXES
from attnunet.transforms.headers import ImageHeader, loader_for, read_header

if TYPE_CHECKING:  # datasets imports this module's error
    from attnunet.pipelines.data.datasets import DatasetIndex

__all__ = ["DataValidationError", "check_class_values", "declared_channels", "validate_items"]

MAX_LISTED = 20


class DataValidationError(ValueError):
    """The dataset has problems; ``problems`` lists them, one string each, each naming its file."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            listed = "\n  - ".join(self.problems[:MAX_LISTED])
            more = (
                f"\n  ... and {len(self.problems) - MAX_LISTED} more"
                if len(self.problems) > MAX_LISTED
                else ""
            )
            message = (
                f"{len(self.problems)} problems in the data (fix them and run again):\n  - {listed}{more}"
            )
        super().__init__(message)


def check_class_values(data: str, labels: Mapping[str, str]) -> None:
    """The classes of the dataset at ``data`` must be 0..K-1 with K >= 2: one network output per class
    index (a label map {0, 1, 4} would index an output the network does not have)."""
    if len(labels) < 2:
        raise DataValidationError(
            f"{data}: a segmentation needs at least 2 classes (background + one), got {dict(labels)}"
        )
    values = sorted(int(v) for v in labels)
    if values != list(range(len(values))):
        renumbered = ", ".join(f"{v} -> {i}" for i, v in enumerate(values) if v != i)
        raise DataValidationError(
            f"{data}: the label values are {values}, not 0..{len(values) - 1}; the network has one "
            f"output per class index, so renumber the labels ({renumbered}) and name the classes in a "
            "dataset.json"
        )


def declared_channels(index: DatasetIndex) -> dict[str, Any]:
    """:func:`validate_items`' expected channels when an MSD ``dataset.json`` declares its modalities."""
    if index.layout != "msd":
        return {}
    description = index.root / "dataset.json"
    declared = json.loads(description.read_text())
    modalities = declared.get("modality") or declared.get("channel_names") or {}
    if not modalities:
        return {}
    names = ", ".join(str(modalities[k]) for k in sorted(modalities, key=int))
    return {
        "in_channels": len(modalities),
        "channels_from": f"{description} 'modality' lists {len(modalities)}: {names}",
    }


def _rounded(values) -> list[float]:
    return np.round(np.asarray(values, dtype=float), 3).tolist()


def _is_2d(path: str) -> bool:
    return path.lower().endswith(IMAGE2D_SUFFIXES)


def _header(path: str | list[str], role: str, problems: list[str]) -> ImageHeader | None:
    try:
        return read_header(path)
    except FileNotFoundError:
        problems.append(f"{role} {path} does not exist; fix the path or add the file")
    except ValueError as error:
        problems.append(f"{role} {error}; replace the file")
    return None


def _check_headers(item: Mapping, require_label: bool, problems: list[str]) -> ImageHeader | None:
    """The image's header after the checks of one case; None when the image cannot be read."""
    image_path = item.get("image")
    if not image_path:
        problems.append(f"case {dict(item)} has no 'image'; every case needs an image path")
        return None
    label_path = item.get("label")
    if not label_path and require_label:
        problems.append(f"image {image_path} has no label; add its label file or remove the image")
    image = _header(image_path if isinstance(image_path, list) else str(image_path), "image", problems)
    label = _header(str(label_path), "label", problems) if label_path else None
    if image is None or label is None:
        return image
    if label.channels != 1 and not _is_2d(str(label_path)):  # 2D masks are read as grayscale by the preset
        problems.append(f"label {label_path} has {label.channels} channels; a label map must have one")
    if image.spatial_shape != label.spatial_shape:
        problems.append(
            f"label {label_path} has shape {label.spatial_shape} but its image {image_path} has "
            f"{image.spatial_shape}; they must be on the same grid"
        )
    elif not np.allclose(image.affine, label.affine, rtol=1e-4, atol=1e-3):
        problems.append(
            f"label {label_path} has another geometry than its image {image_path} (spacing "
            f"{_rounded(label.spacing)} vs {_rounded(image.spacing)}, origin "
            f"{_rounded(label.affine[:-1, -1])} vs {_rounded(image.affine[:-1, -1])}); "
            "resample the label onto the image grid"
        )
    return image


def _stored_shape(header: ImageHeader) -> tuple[int, ...]:
    """The array shape the file stores: a NIfTI's whole header shape (a 5th axis included), else the
    spatial shape with the channels last."""
    if str(header.path).lower().endswith(NIFTI_SUFFIXES):
        return tuple(int(n) for n in nib.load(header.path).shape)
    return (*header.spatial_shape, *((header.channels,) if header.channels > 1 else ()))


def _usual(values: list[int], given: int | None, given_from: str) -> tuple[int, str]:
    """The expected value and why: ``given`` (with ``given_from``), else the most common of ``values``."""
    if given is not None:
        return given, given_from
    value, count = Counter(values).most_common(1)[0]
    return value, f"as {count} of the {len(values)} images have"


def _check_kinds(
    images: list[ImageHeader],
    spatial_dims: int | None,
    in_channels: int | None,
    channels_from: str | None,
    problems: list[str],
) -> None:
    """Every image has the expected spatial dimensions and channels, one problem per image at most."""
    if not images:
        return
    rank, rank_from = _usual(
        [len(h.spatial_shape) for h in images],
        spatial_dims,
        f"roi_size has {spatial_dims} sizes",
    )
    channels, channels_from = _usual(
        [h.channels for h in images],
        in_channels,
        channels_from or f"the network takes in_channels={in_channels}",
    )
    axes = ("x", "y", "z")[:rank]
    form = f"({', '.join(axes)}) or ({', '.join(axes)}, channels)"
    for header in images:
        shape = _stored_shape(header)
        if len(header.spatial_shape) != rank:
            problems.append(
                f"image {header.path} has shape {shape} ({len(header.spatial_shape)} spatial dimensions), "
                f"expected {rank}: {form} ({rank_from}); replace it with a {rank}D image or leave it out"
            )
        elif len(shape) > rank + 1:
            problems.append(
                f"image {header.path} has shape {shape} ({len(shape)} dimensions), expected {rank} spatial "
                f"dimensions and at most one channel axis: {form} ({rank_from}); save it as {form}"
            )
        elif header.channels != channels:
            problems.append(
                f"image {header.path} has shape {shape} ({header.channels} channel(s)), expected {channels} "
                f"channel(s) ({channels_from}); give every image the same channels, last: {form}"
            )


def _load(path: str | list[str], role: str, problems: list[str]) -> np.ndarray | None:
    try:
        return np.asarray(loader_for(path)(path))
    except Exception as error:  # any decoding failure means the same thing here: the file is unusable
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        problems.append(f"{role} {path} cannot be read (truncated or corrupt: {reason}); replace the file")
        return None


def _check_values(item: Mapping, classes: set[int] | None, problems: list[str]) -> None:
    for role in ("image", "label"):
        path = item.get(role)
        data = _load(path if isinstance(path, list) else str(path), role, problems) if path else None
        if data is None:
            continue
        bad = ~np.isfinite(data)
        if bad.any():
            problems.append(
                f"{role} {path} has {int(np.isnan(data).sum())} NaN and {int(np.isinf(data).sum())} infinite "
                "values; replace them (e.g. with numpy.nan_to_num) before training"
            )
            continue
        if role == "label" and classes is not None and not _is_2d(str(path)):  # 2D masks are binarised
            values = np.unique(data)
            if not np.array_equal(values, np.round(values)):
                problems.append(f"label {path} has non-integer values; a label map holds class indices")
                continue
            outside = sorted(int(v) for v in values if int(v) not in classes)
            if outside:
                problems.append(
                    f"label {path} has values {outside} outside the declared classes {sorted(classes)}; "
                    "fix the label or declare the classes (dataset.json 'labels')"
                )


def validate_items(
    items: Sequence[Mapping],
    *,
    labels: Mapping[str, str] | None = None,
    in_channels: int | None = None,
    channels_from: str | None = None,
    spatial_dims: int | None = None,
    require_label: bool = True,
    check_values: bool = True,
) -> list[ImageHeader]:
    """Check every case's files; raise one :class:`DataValidationError` listing all problems found.

    Args:
        items: the cases, ``{"image": path, "label": path}`` (e.g. ``DatasetIndex.items``).
        labels: declared classes (index as str -> name); label values outside them are errors.
            None skips that check.
        in_channels: expected image channels; None expects those most images have.
        channels_from: where ``in_channels`` comes from, for the messages (e.g. the modalities a
            ``dataset.json`` declares); default "the network takes N".
        spatial_dims: expected spatial dimensions (training: ``len(roi_size)``); None expects those most
            images have. A file may hold one channel axis after them, no more (a NIfTI's 5th axis
            would become a spatial one).
        require_label: a case without a label is an error (training); False for inference inputs.
        check_values: decode the data to find truncated files, NaN/inf values and undeclared label values
            (the slow part); False checks headers only.

    Returns:
        the image headers, in the order of ``items``.

    Raises:
        DataValidationError: (a ``ValueError``) with one line per problem, each naming its file and,
            for a wrong dimension or channel count, the shape found and the one expected.

    Example:
        >>> validate_items(index.items, labels=index.labels, in_channels=1)  # doctest: +SKIP
    """
    if not items:
        raise DataValidationError("the dataset has no cases; check the folder, dataset.json or CSV")
    problems: list[str] = []
    headers = [_check_headers(item, require_label, problems) for item in items]
    images = [header for header in headers if header is not None]
    _check_kinds(images, spatial_dims, in_channels, channels_from, problems)
    if problems:
        raise DataValidationError(problems)
    if check_values:
        classes = {int(k) for k in labels} if labels is not None else None
        for item in items:
            _check_values(item, classes, problems)
        if problems:
            raise DataValidationError(problems)
    return images
