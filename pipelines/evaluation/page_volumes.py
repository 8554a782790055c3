"""The volumes a results page shows: a case's image, reference and prediction as NIfTI files in the page's
folder, which NiiVue reads in the browser, and each label map's volume per class.

NiiVue reads NIfTI, not DICOM series, pictures or DICOM SEG, so what is not a NIfTI image is read as the
presets read it and written as NIfTI. Label maps are always rewritten, as integers (uint8 or uint16):
NiiVue colours a label map by exact value. A volume of more than :data:`MAX_VOXELS` voxels is downsampled
for the page only (linear for the image, nearest for the label maps, onto one coarser grid covering the
same field of view, by :func:`nibabel.processing.resample_from_to`): a browser's WebGL texture of a
512 x 512 x 600 CT takes gigabytes. The scores never see this copy.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from attnunet.pipelines.data.files import innermost_cause
from attnunet.transforms.formats import NIFTI_SUFFIXES, file_format

__all__ = ["MAX_VOXELS", "CaseFiles", "PageCase", "class_volumes", "page_grid", "prepare_case"]

# Above this many voxels (256^3, about 64 MB as float32 on the GPU) the page shows a downsampled copy.
MAX_VOXELS = 256**3
LAYERS = ("image", "label", "prediction")


@dataclass(frozen=True)
class CaseFiles:
    """One case's files: ``image`` a file or a DICOM series folder; any of them may be absent."""

    name: str
    image: Path | None = None
    label: Path | None = None
    prediction: Path | None = None


@dataclass
class PageCase:
    """What the page needs of a prepared case.

    Attributes:
        layers: ``image``/``label``/``prediction`` -> the written NIfTI file.
        counts: ``label``/``prediction`` -> label value -> voxels (of the full-resolution map).
        voxel_ml: millilitres per voxel (None for a picture: its pixels have no size).
        note: what the page says about the case (a downsampled copy, a file that cannot be read).
    """

    layers: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, dict[int, int]] = field(default_factory=dict)
    voxel_ml: float | None = None
    note: str = ""


def _read(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(array (x, y, z), affine 4x4, is a picture)`` of one layer, read as the presets read it: an image's
    first channel (a picture's channels averaged to gray), a label map as integers."""
    from monai.transforms import LoadImage

    from attnunet.transforms.headers import binary_mask, loader_for
    from attnunet.transforms.readers import SimpleITKReader

    picture = bool(getattr(file_format(path), "picture", False))
    if path.is_dir():  # a DICOM series: SimpleITK only, as inference reads it
        volume = LoadImage(image_only=True, ensure_channel_first=True, reader=SimpleITKReader())(path)
    else:
        volume = loader_for(path, mask=kind != "image", ensure_channel_first=True)(path)
    array = np.asarray(volume.detach().cpu().numpy())
    if kind == "image":
        array = array.mean(axis=0) if picture else array[0]
    else:
        array = array[0]
        if picture and kind == "label":
            array = binary_mask(array)  # 0/255 masks as 0/1, as evaluate compares them
        array = np.rint(np.clip(array, 0, None))
    affine = np.asarray(volume.affine, dtype=np.float64)
    if array.ndim == 2 or picture or affine.shape != (4, 4):
        array, affine = array.reshape(*array.shape[:2], -1), np.eye(4)  # a picture has no geometry
    return array, affine, picture


def page_grid(
    shape: tuple[int, ...], affine: np.ndarray, max_voxels: int
) -> tuple[tuple[int, ...], np.ndarray]:
    """The grid a volume of ``shape`` is shown on: itself, or when over ``max_voxels`` the same field of view
    in fewer, larger voxels (each axis longer than 1 shrunk by one factor).

    Example:
        >>> page_grid((512, 512, 100), np.eye(4), 256**3)[0]
        (441, 441, 86)
    """
    voxels = math.prod(shape)
    if voxels <= max_voxels:
        return tuple(shape), affine
    axes = sum(size > 1 for size in shape)
    factor = (voxels / max_voxels) ** (1 / axes)
    new_shape = tuple(max(1, math.floor(size / factor)) if size > 1 else 1 for size in shape)
    scale = np.array([size / new for size, new in zip(shape, new_shape, strict=True)])
    # Voxel i of the new grid is centred where old voxel (i + 0.5) * scale - 0.5 was: same field of view.
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1) / 2
    return new_shape, affine @ step


def _write(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _link_or_copy(source: Path, target: Path) -> Path:
    """The image file itself in the page's folder: a hard link where the file system allows, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def _label_dtype(array: np.ndarray) -> type:
    return np.uint8 if array.size == 0 or array.max() < 256 else np.uint16


def prepare_case(case: CaseFiles, folder: Path, max_voxels: int = MAX_VOXELS) -> PageCase:
    """Write ``case``'s layers into ``folder`` as NIfTI files for the page, on one grid, and count the
    voxels of each class of its label maps.

    A layer that cannot be read is left out and named in the note; the others are still shown.
    """
    page = PageCase()
    problems: list[str] = []
    read: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shapes: dict[str, tuple[tuple[int, ...], np.ndarray]] = {}
    is_picture = False
    for kind in LAYERS:
        path = getattr(case, kind)
        if path is None:
            continue
        copy_as_is = kind == "image" and path.is_file() and str(path).lower().endswith(NIFTI_SUFFIXES)
        try:
            if copy_as_is:  # the header is enough to tell whether the file itself can be shown
                header = nib.load(path)
                shapes[kind] = (tuple(int(s) for s in header.shape[:3]), np.asarray(header.affine))
                if math.prod(shapes[kind][0]) <= max_voxels:
                    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
                    page.layers[kind] = _link_or_copy(path, folder / f"image{suffix}")
                    continue
            array, affine, picture = _read(path, kind)
        except Exception as error:  # each reader raises its own type; the page shows the other layers
            problems.append(f"the {kind} {path.name} cannot be read ({innermost_cause(error)})")
            continue
        is_picture = is_picture or picture
        read[kind] = (array, affine)
        shapes[kind] = (array.shape, affine)
        if kind != "image":
            values, counts = np.unique(array.astype(np.int64), return_counts=True)
            page.counts[kind] = {int(v): int(n) for v, n in zip(values, counts, strict=True)}
    if not shapes:
        page.note = "; ".join(problems)
        return page
    reference_shape, reference_affine = next(iter(shapes.values()))
    if is_picture:  # pictures carry no geometry: every layer on the pixel grid
        read = {kind: (array, np.eye(4)) for kind, (array, _) in read.items()}
        reference_affine = np.eye(4)
    else:
        page.voxel_ml = float(abs(np.linalg.det(reference_affine[:3, :3]))) / 1000.0
    grid = page_grid(reference_shape, reference_affine, max_voxels)
    downsampled = grid[0] != tuple(reference_shape)
    for kind, (array, affine) in read.items():
        image = kind == "image"
        if downsampled:
            from nibabel.processing import resample_from_to

            source = nib.Nifti1Image(array.astype(np.float32), affine)
            array = np.asarray(
                resample_from_to(source, grid, order=1 if image else 0, mode="nearest").dataobj
            )
            affine = grid[1]
        array = array.astype(np.float32) if image else array.astype(_label_dtype(array))
        page.layers[kind] = _write(array, affine, folder / f"{kind}.nii.gz")
    if downsampled:
        shown = " x ".join(map(str, grid[0]))
        problems.insert(
            0,
            f"shown downsampled to {shown} voxels (over {max_voxels:,} voxels: "
            f"{' x '.join(map(str, reference_shape))}); the scores are of the full resolution",
        )
    page.note = "; ".join(problems)
    return page


def class_volumes(page: PageCase, classes: Mapping[int, str]) -> dict[str, float | None]:
    """``<kind>_volume_<class>`` -> millilitres (pixels for a picture) of each foreground class in the
    reference (``label``) and the prediction, None where that map is absent."""
    scale = page.voxel_ml if page.voxel_ml is not None else 1.0
    return {
        f"{kind}_volume_{name}": (page.counts[kind].get(value, 0) * scale if kind in page.counts else None)
        for value, name in classes.items()
        if value > 0
        for kind in ("label", "prediction")
    }
