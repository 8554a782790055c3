"""A small synthetic CT-like 3D dataset in Medical Segmentation Decathlon layout.

``attnunet demo`` trains on it by default (real data is given with ``--data``). Each case is a torso
(an elliptic cylinder of soft tissue in air, with a vertebra-like bone rod), an ``organ`` (label 1, a
smoothly deformed ellipsoid) and a ``lesion`` (label 2, a smaller blob inside the organ), blurred,
with a smooth shading field and Gaussian noise, in Hounsfield units. The volumes have anisotropic
spacing and a non-identity direction (LPS-style flips as scanner NIfTI has, rotated about z), so
that the orientation and spacing transforms have real work to do. Everything is numpy-vectorised
and written with nibabel (qform and sform set), deterministic for a given seed.

Hand-written because neither MONAI nor SimpleITK ships a labelled multi-class phantom with CT
intensities (``monai.data.create_test_image_3d`` draws spheres of one intensity in an identity
geometry).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["DEMO_LABELS", "DEMO_NAME", "write_demo_dataset", "demo_affine"]

DEMO_NAME = "attnunet-demo"
DEMO_LABELS = {"0": "background", "1": "organ", "2": "lesion"}

# Hounsfield units of the phantom's tissues.
_AIR, _TISSUE, _BONE, _ORGAN, _LESION = -1000.0, 40.0, 450.0, 120.0, 200.0


def demo_affine(shape: Sequence[int], spacing: Sequence[float], angle_deg: float) -> np.ndarray:
    """The NIfTI (RAS) affine of a demo volume: LPS-stored axes rotated by ``angle_deg`` about z.

    The volume is centred on the world origin.

    Args:
        shape: voxel counts (x, y, z).
        spacing: voxel size in mm (x, y, z).
        angle_deg: rotation about the z axis in degrees.

    Example:
        >>> demo_affine((64, 64, 32), (1.5, 1.5, 3.0), 12.0).shape
        (4, 4)
    """
    angle = np.deg2rad(angle_deg)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    # x and y run right-to-left and anterior-to-posterior, as in DICOM-converted CT.
    linear = rotation @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(np.asarray(spacing, dtype=float))
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return affine


def _rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    """A random rotation matrix from three Euler angles, each within +-max_deg."""
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(max_deg))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _blob(
    points: np.ndarray, centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray, rng, wobble: float
) -> np.ndarray:
    """Boolean mask of a smoothly deformed ellipsoid at ``points`` (N x 3, mm)."""
    # A few low-frequency angular harmonics make the surface organ-like rather than an ellipsoid.
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    amplitudes = wobble * rng.uniform(0.3, 1.0, 3)
    frequencies, phases = rng.integers(1, 4, 3), rng.uniform(0, 2 * np.pi, 3)
    # Only points within the bounding sphere can be inside: evaluate those (most of the volume is not).
    near = np.flatnonzero(
        np.sum((points - centre) ** 2, axis=1) <= (radii.max() * (1 + amplitudes.sum())) ** 2
    )
    scaled = ((points[near] - centre) @ rotation) / radii  # coordinates in the blob's own axes
    radius = np.sqrt(np.sum(scaled**2, axis=1))
    unit = scaled / np.maximum(radius, 1e-6)[:, None]
    deformation = 1 + np.sin(frequencies * (unit @ directions.T) + phases) @ amplitudes
    inside = np.zeros(len(points), dtype=bool)
    inside[near[radius <= deformation]] = True
    return inside


def _make_case(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """One (image in HU as int16, label as uint8) pair in voxel order (x, y, z)."""
    extent = np.asarray(shape) * spacing  # field of view in mm
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    half = extent / 2

    image = np.full(len(points), _AIR)
    body_radii = half[:2] * rng.uniform([0.78, 0.6], [0.9, 0.72])
    body_centre = half[:2] * rng.uniform(-0.04, 0.04, 2)
    body = np.sum(((points[:, :2] - body_centre) / body_radii) ** 2, axis=1) <= 1.0
    image[body] = _TISSUE
    # A vertebra-like rod at the posterior wall: bright, unlabelled, a structure the net must ignore.
    spine_centre = body_centre + np.array([0.0, -0.7 * body_radii[1]])
    spine = np.sum(((points[:, :2] - spine_centre) / (0.12 * body_radii)) ** 2, axis=1) <= 1.0
    image[spine] = _BONE

    organ_radii = half * rng.uniform([0.38, 0.32, 0.4], [0.48, 0.42, 0.55])
    organ_centre = np.append(body_centre, 0.0) + half * rng.uniform([-0.15, -0.05, -0.12], [0.15, 0.2, 0.12])
    organ = _blob(points, organ_centre, organ_radii, _rotation(rng, (10, 10, 40)), rng, wobble=0.12)
    image[organ] = _ORGAN + rng.uniform(-10, 10)

    # The lesion sits inside the organ: its centre is drawn among the organ's inner voxels.
    lesion_radii = half * rng.uniform([0.18, 0.18, 0.2], [0.25, 0.25, 0.3])
    organ_grid = organ.reshape(shape)
    (box,) = ndimage.find_objects(organ_grid.astype(np.uint8))
    depth = np.zeros(shape)  # distance to the organ's surface, computed on its (padded) bounding box only
    inner = ndimage.distance_transform_edt(np.pad(organ_grid[box], 1), sampling=spacing)
    depth[box] = inner[1:-1, 1:-1, 1:-1]
    lesion_centre = points[rng.choice(np.flatnonzero(depth.ravel() >= 0.5 * depth.max()))]
    lesion = organ & _blob(
        points, lesion_centre, lesion_radii, _rotation(rng, (30, 30, 90)), rng, wobble=0.15
    )
    image[lesion] = _LESION + rng.uniform(-10, 10)

    label = np.zeros(len(points), dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2

    image = image.reshape(shape)
    image = ndimage.gaussian_filter(image, sigma=0.6 * spacing.min() / spacing)  # partial-volume blur
    shading = (points / half) @ rng.uniform(-6.0, 6.0, 3)  # a smooth additive ramp, up to +-18 HU
    image += shading.reshape(shape)
    image += rng.normal(0.0, noise, shape)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), label.reshape(shape)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)  # scanner coordinates in both forms, as converters write them
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)


def write_demo_dataset(
    root: str | os.PathLike,
    *,
    num_cases: int = 12,
    num_test: int = 4,
    shape: Sequence[int] = (64, 64, 32),
    spacing: Sequence[float] = (1.5, 1.5, 3.0),
    noise: float = 18.0,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic demo dataset in Medical Segmentation Decathlon layout.

    ``root/dataset.json``, ``imagesTr/`` + ``labelsTr/`` (``num_cases`` training cases),
    ``imagesTs/`` (``num_test`` test cases) and ``labelsTs/`` (their labels, for evaluation; not
    part of the MSD format). Images are int16 HU, labels uint8 with :data:`DEMO_LABELS`.
    The dataset is written to a temporary folder beside ``root`` and moved into place, so a failed
    run leaves nothing half-written.

    Args:
        root: the folder to create.
        num_cases: number of training cases (>= 1).
        num_test: number of test cases (>= 0).
        shape: voxels per case (x, y, z), each >= 8.
        spacing: voxel size in mm (x, y, z); the default is anisotropic like a thick-slice CT.
        noise: standard deviation of the Gaussian noise in HU.
        seed: the seed; the same seed gives the same arrays.
        overwrite: replace an existing demo dataset at ``root`` (a folder that is not one is never
            replaced).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` exists and is not empty (and is not a demo dataset with ``overwrite``).
        ValueError: an argument is out of range.

    Example:
        >>> root = write_demo_dataset("/tmp/attnunet-demo", num_cases=2, num_test=1, overwrite=True)
        >>> sorted(p.name for p in root.iterdir())
        ['dataset.json', 'imagesTr', 'imagesTs', 'labelsTr', 'labelsTs']
    """
    root = Path(root)
    sizes, spacing_arr = _check_arguments(num_cases, num_test, shape, spacing, noise)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not overwrite:
            raise FileExistsError(
                f"{root} exists and is not empty; pass overwrite=True or choose another folder"
            )
        if not _is_demo_dataset(root):
            raise FileExistsError(
                f"{root} is not an attnunet demo dataset; it is left untouched, choose another folder"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        training, test = _write_cases(staging, num_cases, num_test, sizes, spacing_arr, noise, seed)
        (staging / "dataset.json").write_text(json.dumps(_description(seed, training, test), indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root) if root.is_dir() else root.unlink()
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _check_arguments(
    num_cases: int, num_test: int, shape: Sequence[int], spacing: Sequence[float], noise: float
) -> tuple[tuple[int, int, int], np.ndarray]:
    """``shape`` and ``spacing`` as the writer uses them, once every argument is in range."""
    sizes = tuple(int(n) for n in shape)
    spacing_arr = np.asarray(spacing, dtype=float)
    if num_cases < 1 or num_test < 0:
        raise ValueError(f"num_cases must be >= 1 and num_test >= 0, got {num_cases} and {num_test}")
    if len(sizes) != 3 or min(sizes) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {sizes}")
    if spacing_arr.shape != (3,) or np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0 HU, got {noise}")
    return sizes, spacing_arr


def _write_cases(
    folder: Path,
    num_cases: int,
    num_test: int,
    shape: tuple[int, int, int],
    spacing: np.ndarray,
    noise: float,
    seed: int,
) -> tuple[list[dict[str, str]], list[str]]:
    """Write every case under ``folder``; returns the ``training`` and ``test`` lists of dataset.json."""
    for name in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / name).mkdir()
    training, test = [], []
    for index in range(num_cases + num_test):
        rng = np.random.default_rng([seed, index])  # one stream per case: a case does not depend on others
        affine = demo_affine(shape, spacing, angle_deg=rng.uniform(8.0, 16.0))
        image, label = _make_case(rng, shape, spacing, noise)
        name = f"demo_{index:03d}.nii.gz"
        split = "Tr" if index < num_cases else "Ts"
        _save(image, affine, folder / f"images{split}" / name)
        _save(label, affine, folder / f"labels{split}" / name)
        if split == "Tr":
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
    return training, test


def _description(seed: int, training: list[dict[str, str]], test: list[str]) -> dict[str, Any]:
    """The dataset.json of the demo dataset."""
    return {
        "name": DEMO_NAME,
        "description": f"synthetic CT-like phantoms written by attnunet (seed {seed})",
        "reference": "attnunet.pipelines.demo.data",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": dict(DEMO_LABELS),
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }


def _is_demo_dataset(root: Path) -> bool:
    try:
        return json.loads((root / "dataset.json").read_text()).get("name") == DEMO_NAME
    except (OSError, ValueError, AttributeError):
        return False
