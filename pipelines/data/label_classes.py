"""The classes a dataset's labels hold, when nothing declares them (no ``dataset.json``).

A DICOM SEG label's values are its segment numbers (what
:class:`~attnunet.transforms.loading.LoadImageLabeld` reads it as), so its classes are named after its
segments, read from its header; every other label volume is decoded and each integer value in it
becomes ``class_<k>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.transforms import LoadImage

from attnunet.pipelines.data.validation import DataValidationError
from attnunet.transforms.dicom_seg_read import is_dicom_seg, segment_labels

__all__ = ["classes_from_labels"]


def classes_from_labels(items: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Class value (as str) -> name for the labels of ``items``, background at ``"0"``.

    Args:
        items: the cases, ``{"image": path, "label": path}``; cases without a label are skipped.

    Returns:
        A DICOM SEG's segment labels by segment number, ``class_<k>`` for every other value found.

    Raises:
        DataValidationError: a segment number has different labels in two SEGs (a SEG's values are its
            segment numbers, so one number must mean one class), or a SEG label's image is not a folder.

    Example:
        >>> classes_from_labels([{"image": "case1/image", "label": "case1/liver.dcm"}])  # doctest: +SKIP
        {'0': 'background', '1': 'Liver'}
    """
    load = LoadImage(image_only=True)
    values: set[int] = {0}
    segments: dict[int, tuple[str, str]] = {}  # segment number -> (label, the first SEG naming it)
    for item in items:
        label = item.get("label")
        if label and is_dicom_seg(label):
            _check_seg_image(item)
            for number, name in segment_labels(label).items():
                first, where = segments.setdefault(number, (name, label))
                if first.casefold() != name.casefold():
                    raise DataValidationError(
                        f"{label}: segment {number} is {name!r} but {first!r} in {where}; a SEG label's "
                        "values are its segment numbers: number the segments the same way in every SEG"
                    )
        elif label:
            values.update(int(v) for v in np.unique(np.asarray(load(label))))
    values.update(segments)
    return {
        str(v): segments[v][0] if v in segments else ("background" if v == 0 else f"class_{v}")
        for v in sorted(values)
    }


def _check_seg_image(item: Mapping[str, str]) -> None:
    """A DICOM SEG label is read onto its image's series: the image must be a series folder."""
    if not isinstance(item["image"], str) or not Path(item["image"]).is_dir():
        raise DataValidationError(
            f"label {item['label']} is a DICOM SEG, read onto the grid of its image's DICOM series, but "
            f"image {item['image']} is not a series folder; give the folder of the series the SEG comes from"
        )
