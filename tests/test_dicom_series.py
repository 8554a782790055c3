"""check_dicom_series: real DICOM series from ../shared/data/dicom, intact and broken on purpose.

Each broken folder is built in ``tmp_path`` from links to the real files (plus edited copies where a header
must change) and must be refused with one line that names the folder, the files and the problem, by the
reader, by the header code (the dataset planner and validator) and by MONAI's automatic reader choice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared_dataset
from monai.transforms import LoadImage
from pydicom.uid import generate_uid

from attnunet.transforms.dicom_series import check_dicom_series, subfolders
from attnunet.transforms.headers import read_header
from attnunet.transforms.readers import SimpleITKReader

CT = "ct_20slices_siemens"
HIPPOCAMPUS = "mr_hippocampus_crop_study1"
HIPPOCAMPUS_UID = "1.2.826.0.1.3680043.8.498.10112548596522579645160189153146185462"

# Every way a folder is read; each must refuse a broken one with the same message.
ENTRY_POINTS: dict[str, Callable[[Path], object]] = {
    "check": check_dicom_series,
    "reader": lambda folder: SimpleITKReader().read(folder),
    "header": read_header,
    "LoadImage": lambda folder: LoadImage(image_only=True)(folder),  # MONAI's automatic reader choice
}


def load(folder: Path, series_uid: str | None = None):
    """``folder`` read by SimpleITKReader alone: a reader given to ``LoadImage(reader=...)`` would fall
    back to MONAI's other readers when it refuses a folder, and PydicomReader stacks any folder."""
    return LoadImage(image_only=True)(folder, reader=SimpleITKReader(series_uid=series_uid))


def real_series(name: str) -> Path:
    return shared_dataset("dicom", name)


def ct_slices() -> list[Path]:
    """The real CT's files along the slice normal, as the check sorts them (an axial series: along z)."""
    files = list(real_series(CT).iterdir())
    return sorted(
        files, key=lambda path: float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])
    )


def linked(folder: Path, files: list[Path]) -> Path:
    """``folder`` with a link to each file (the real data is never copied into the repository)."""
    folder.mkdir()
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def edited_copy(source: Path, target: Path, **tags: object) -> None:
    """Write ``source`` to ``target`` with ``tags`` changed and its own SOPInstanceUID (a distinct file)."""
    dataset = pydicom.dcmread(source)
    for keyword, value in {"SOPInstanceUID": generate_uid(), **tags}.items():
        setattr(dataset, keyword, value)
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(target)


def refused(folder: Path) -> str:
    """The one-line ValueError that every entry point raises for ``folder``."""
    messages = set()
    for name, read in ENTRY_POINTS.items():
        with pytest.raises(ValueError) as caught:
            read(folder)
        messages.add(str(caught.value))
        assert "\n" not in str(caught.value), name
    assert len(messages) == 1, messages
    (message,) = messages
    assert str(folder) in message
    return message


@pytest.mark.parametrize(
    "name, shape, spacing",
    [
        (CT, (512, 512, 20), (0.9766, 0.9766, 2.0)),
        ("mr_brain_t1post_oblique", (512, 512, 22), (0.4297, 0.4297, 6.5)),
        (HIPPOCAMPUS, (35, 51, 32), (1.0, 1.0, 1.0)),
    ],
)
def test_intact_series_load_with_their_spacing(name, shape, spacing):
    folder = real_series(name)
    loaded = load(folder)
    assert tuple(loaded.shape) == shape
    np.testing.assert_allclose(loaded.meta["spacing"], spacing, atol=1e-4)
    header = read_header(folder)
    assert header.spatial_shape == shape
    np.testing.assert_allclose(header.affine, loaded.affine.numpy(), atol=1e-4)  # the same slice geometry
    geometry = check_dicom_series(folder)
    assert geometry.series.num_slices == shape[2]
    assert geometry.slice_spacing == pytest.approx(spacing[2], abs=1e-4)


def test_oblique_series_keeps_its_tilt():
    loaded = load(real_series("mr_brain_t1post_oblique"))
    direction = loaded.affine[:3, :3].numpy() / loaded.meta["spacing"]
    assert np.degrees(np.arccos(abs(direction[2, 2]))) == pytest.approx(15.4, abs=0.5)


def test_missing_slice(tmp_path):
    slices = ct_slices()
    folder = linked(tmp_path / "gap", slices[:10] + slices[11:])
    message = refused(folder)
    assert "1 slice(s) missing" in message
    assert f"between {slices[9].name} and {slices[11].name}" in message
    assert "(at -786.5 and -782.5 mm along the slice normal)" in message
    assert "4 mm apart where the other slices are 2 mm apart" in message
    assert "add the missing file(s)" in message


def test_duplicated_position(tmp_path):
    slices = ct_slices()
    folder = linked(tmp_path / "duplicate", slices)
    edited_copy(slices[5], folder / "copy_of_slice_6.dcm")
    message = refused(folder)
    assert {slices[5].name, "copy_of_slice_6.dcm"} <= set(message.replace(" and ", " ").split())
    assert "are at the same slice position (-794.5 mm along the slice normal)" in message
    assert "remove the duplicated file" in message


def test_two_series_in_one_folder(tmp_path):
    folder = linked(tmp_path / "ct_and_mr", ct_slices() + list(real_series(HIPPOCAMPUS).iterdir()))
    message = refused(folder)
    assert "holds 2 DICOM series; load one with SimpleITKReader(series_uid=...)" in message
    assert "move each series to its own folder" in message
    assert "'' (CT Body 3.0, 20 slices)" in message  # this CT's SeriesInstanceUID is empty
    assert f"{HIPPOCAMPUS_UID} (HippoCrop, 32 slices)" in message


@pytest.mark.parametrize("uid, slices", [(HIPPOCAMPUS_UID, 32), ("", 20)])
def test_two_series_each_chosen_by_uid(tmp_path, uid, slices):
    folder = linked(tmp_path / "ct_and_mr", ct_slices() + list(real_series(HIPPOCAMPUS).iterdir()))
    assert load(folder, series_uid=uid).shape[2] == slices


def test_mixed_orientation(tmp_path):
    slices = ct_slices()
    folder = linked(tmp_path / "tilted", slices[:7] + slices[8:])
    tilted = [1, 0, 0, 0, 0.965926, -0.258819]  # one slice turned 15 degrees about x
    edited_copy(slices[7], folder / "tilted.dcm", ImageOrientationPatient=tilted)
    message = refused(folder)
    assert "tilted.dcm has ImageOrientationPatient [1, 0, 0, 0, 0.966, -0.259]" in message
    assert "has [1, 0, 0, 0, 1, 0] (1 of 20 files differ)" in message
    assert "move the files of each orientation to their own folder" in message


def test_uneven_spacing(tmp_path):
    slices = ct_slices()
    folder = linked(tmp_path / "uneven", slices[:7] + slices[8:])
    moved = pydicom.dcmread(slices[7], stop_before_pixels=True).ImagePositionPatient
    edited_copy(slices[7], folder / "moved.dcm", ImagePositionPatient=[*moved[:2], moved[2] + 0.6])
    message = refused(folder)
    assert "uneven slice spacing, steps of [1.4, 2, 2.6] mm where 2 mm is usual" in message
    assert f"first 2.6 mm between {slices[6].name} and moved.dcm" in message
    assert "resample the series to a regular grid" in message


def test_slice_without_position(tmp_path):
    slices = ct_slices()
    folder = linked(tmp_path / "no_position", slices[1:])
    dataset = pydicom.dcmread(slices[0])
    del dataset.ImagePositionPatient
    dataset.save_as(folder / "no_position.dcm")
    message = refused(folder)
    assert "no_position.dcm has no valid ImagePositionPatient/ImageOrientationPatient" in message


def test_subfolders_are_the_visible_folders_in_order(tmp_path):
    for name in ("b", "a", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "c.dcm").write_text("a file")
    assert subfolders(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    assert subfolders(tmp_path / "c.dcm") == [] and subfolders(tmp_path / "missing") == []
