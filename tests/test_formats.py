"""The one table of file formats (``attnunet.transforms.formats``): every suffix list is derived from it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnunet.transforms.formats import (
    FILE_FORMATS,
    IMAGE2D_SUFFIXES,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    SIMPLEITK_SUFFIXES,
    file_format,
)
from attnunet.transforms.headers import loader_for, read_header


def test_every_suffix_belongs_to_one_format_and_one_list():
    suffixes = [s for f in FILE_FORMATS for s in f.suffixes]
    assert len(suffixes) == len(set(suffixes))
    assert sorted(IMAGE_SUFFIXES + IMAGE2D_SUFFIXES) == sorted(suffixes)
    assert IMAGE_SUFFIXES.index(".nii.gz") < IMAGE_SUFFIXES.index(".nii")  # ".nii.gz" matched first
    assert set(NIFTI_SUFFIXES) == {".nii", ".nii.gz"}
    assert {f".{s}" for s in SIMPLEITK_SUFFIXES} == set(IMAGE_SUFFIXES)
    assert {f.header for f in FILE_FORMATS} == {"nibabel", "simpleitk", "pil"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.nii.gz", "NIfTI"),
        ("A.NII", "NIfTI"),
        ("b.nhdr", "NRRD"),
        ("c.MHA", "MetaImage"),
        ("d.tiff", "TIFF"),
    ],
)
def test_file_format_by_suffix_in_any_case(name, expected):
    assert file_format(name).name == expected


def test_a_name_outside_the_table_has_no_format():
    assert file_format("notes.txt") is None and file_format("scan.nii.gz.bak") is None


def test_a_picture_is_read_by_pil_for_its_header_and_its_pixels(tmp_path):
    path = tmp_path / "mask.GIF"
    Image.fromarray(np.full((5, 7), 255, np.uint8)).save(path)
    assert read_header(path).spatial_shape == (7, 5)  # PIL: width, height
    assert loader_for(path, mask=True)(path).shape == (7, 5)
