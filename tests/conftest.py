"""Shared pytest fixtures.

``demo_dataset``: a small demo dataset in MSD layout (4 training + 2 test cases of 32 x 32 x 16 voxels
at 3 x 3 x 6 mm, the same field of view as the full demo), written once per test session.
``write_dicom_series``: writes a SimpleITK volume as a multi-slice DICOM series (shuffled file names).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import SimpleITK as sitk

from attnunet.pipelines.demo.data import write_demo_dataset


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a small demo dataset (dataset.json, imagesTr/labelsTr, imagesTs/labelsTs); read-only."""
    root = tmp_path_factory.mktemp("demo") / "dataset"
    return write_demo_dataset(
        root, num_cases=4, num_test=2, shape=(32, 32, 16), spacing=(3.0, 3.0, 6.0), seed=0
    )


def _write_dicom_series(
    volume: sitk.Image, folder: Path, uid: str, description: str, shuffle_seed: int = 0
) -> None:
    """Write ``volume`` (int16) as one DICOM file per slice with a scanner's tags, under shuffled names."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = volume.GetDirection()
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[0:7:3], *direction[1:8:3]))
    names = [f"{description}{i:03d}.dcm" for i in range(volume.GetDepth())]
    random.Random(shuffle_seed).shuffle(names)  # file order must not give the slice order
    for z in range(volume.GetDepth()):
        plane = volume[:, :, z]
        tags = {
            "0008|0060": "CT",
            "0020|000d": uid.rsplit(".", 1)[0],
            "0020|000e": uid,
            "0008|103e": description,
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0013": str(z + 1),
            "0018|0050": f"{volume.GetSpacing()[2]:.6f}",
            "0028|0030": f"{volume.GetSpacing()[1]:.6f}\\{volume.GetSpacing()[0]:.6f}",
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / names[z]))
        writer.Execute(plane)


@pytest.fixture(scope="session")
def write_dicom_series():
    """``write(volume, folder, uid, description, shuffle_seed=0)``: a volume as a DICOM series."""
    return _write_dicom_series
