"""Scans sent as bytes (a served model's requests): base64 text -> a file or DICOM series folder on disk.

The format is told from the bytes, never from a name the sender chose: gzip or NIfTI magic, an NRRD
header, a MetaImage text header, a zip (one DICOM series), or, for 2D models, a picture's signature. The
file is written under the suffix MONAI's readers pick by, so a sent scan is read exactly as ``attnunet
infer`` reads the same file (:mod:`attnunet.transforms.readers`).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import re
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

from attnunet.transforms.dicom_series import check_dicom_series, list_dicom_series

__all__ = ["DEFAULT_MAX_SCAN_MB", "DecodedScan", "ScanError", "decode_scan", "encode_file", "sniff_format"]

# The largest scan (the decoded file, or a zip's files together) a request may hold: a 512 x 512 x 1000
# int16 CT is 500 MiB uncompressed.
DEFAULT_MAX_SCAN_MB = 1024
# (name, file suffix) by the first bytes of the file.
_PICTURES = (
    (b"\x89PNG\r\n\x1a\n", ("PNG", ".png")),
    (b"II*\x00", ("TIFF", ".tif")),
    (b"MM\x00*", ("TIFF", ".tif")),
    (b"\xff\xd8\xff", ("JPEG", ".jpg")),
    (b"GIF8", ("GIF", ".gif")),
    (b"BM", ("BMP", ".bmp")),
)
_SENDABLE = "a NIfTI (.nii, .nii.gz), NRRD or MetaImage (.mha) file, or a zip of one DICOM series"
_METAIMAGE_KEY = re.compile(rb"^\s*(ObjectType|NDims|DimSize|ElementType|HeaderSize|Comment)\s*=", re.M)


class ScanError(ValueError):
    """A sent scan that cannot be used: not base64, not an image, too large, not one DICOM series."""


class DecodedScan(NamedTuple):
    """A sent scan on disk.

    Attributes:
        path: the image file, or the DICOM series folder.
        format: what it is (``"NIfTI"``, ``"NRRD"``, ``"MetaImage"``, ``"DICOM series"``, ``"PNG"``...).
        series_uid: the series' SeriesInstanceUID for a DICOM series, else None.
    """

    path: Path
    format: str
    series_uid: str | None = None


def _nifti_suffix(header: bytes) -> str | None:
    """``".nii"`` when ``header`` starts a single-file NIfTI-1 or NIfTI-2 image, else None."""
    if len(header) < 348:
        return None
    for order in "<>":
        size = struct.unpack(f"{order}i", header[:4])[0]
        if size == 348 and header[344:348] == b"n+1\x00":
            return ".nii"
        if size == 540 and header[4:8] == b"n+2\x00":
            return ".nii"
        if size in (348, 540) and header[344:348] == b"ni1\x00":
            raise ScanError(
                "the image is a NIfTI header whose voxels are in a separate .img file; send one .nii file"
            )
    return None


def sniff_format(data: bytes) -> tuple[str, str]:
    """``(format name, file suffix)`` of a file's bytes.

    Raises:
        ScanError: not one of the formats a served model takes; the message says what to send.

    Example:
        >>> sniff_format(b"NRRD0004\\ntype: short\\n")
        ('NRRD', '.nrrd')
    """
    if data[:2] == b"\x1f\x8b":
        try:
            header = gzip.GzipFile(fileobj=io.BytesIO(data)).read(544)
        except (OSError, EOFError) as error:
            raise ScanError(f"the image is a broken gzip file ({error}); send {_SENDABLE}") from None
        if _nifti_suffix(header):
            return "NIfTI", ".nii.gz"
        raise ScanError(f"the image is a gzip file but not a gzipped NIfTI; send {_SENDABLE}")
    if _nifti_suffix(data[:544]):
        return "NIfTI", ".nii"
    if data.startswith(b"NRRD000"):
        if re.search(rb"^data ?file\s*:", data[:65536], re.M | re.I):
            raise ScanError("the image is an NRRD header whose voxels are in another file; send one .nrrd")
        return "NRRD", ".nrrd"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip", ".zip"
    head = data[:65536]
    if _METAIMAGE_KEY.match(head) and b"ElementDataFile" in head:
        if not re.search(rb"^\s*ElementDataFile\s*=\s*LOCAL\s*$", head, re.M):
            raise ScanError(
                "the image is a MetaImage header (.mhd) whose voxels are in another file; send one .mha file"
            )
        return "MetaImage", ".mha"
    if data[128:132] == b"DICM":
        raise ScanError("the image is a single DICOM file; send the whole series folder as one zip")
    for magic, found in _PICTURES:
        if data.startswith(magic):
            return found
    raise ScanError(f"the image is not {_SENDABLE} (its first bytes are {data[:8]!r})")


def _decode_base64(text: object, max_bytes: int) -> bytes:
    if not isinstance(text, str) or not text:
        raise ScanError(f"the image must be a base64 string of the file's bytes, got {type(text).__name__}")
    if len(text) * 3 // 4 > max_bytes:
        raise ScanError(
            f"the image is {len(text) * 3 // 4 / 2**20:.0f} MB, over this server's limit of "
            f"{max_bytes / 2**20:.0f} MB; send a smaller (e.g. gzipped) scan"
        )
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ScanError("the image is not valid base64 (standard alphabet, with padding)") from None


def _unzip_series(data: bytes, folder: Path, max_bytes: int) -> DecodedScan:
    """The one DICOM series of a zip, extracted under ``folder``."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [info for info in archive.infolist() if not info.is_dir()]
        if sum(info.file_size for info in members) > max_bytes:  # a zip bomb stops here, unextracted
            raise ScanError(
                f"the zip's files are over this server's limit of {max_bytes / 2**20:.0f} MB together"
            )
        archive.extractall(folder, members)  # zipfile drops absolute paths and '..' from member names
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as error:
        raise ScanError(f"the image is a zip that cannot be read ({error})") from None
    found = [
        (directory, series)
        for directory in sorted({folder, *(p for p in folder.rglob("*") if p.is_dir())})
        for series in list_dicom_series(directory)
    ]
    if not found:
        raise ScanError(f"the zip holds no DICOM series ({len(members)} files); zip the folder of one series")
    if len(found) > 1:
        described = "; ".join(f"{series.uid} ({series.num_slices} slices)" for _, series in found)
        raise ScanError(f"the zip holds {len(found)} DICOM series ({described}); send one series per row")
    directory, series = found[0]
    try:  # gaps, duplicated slices, mixed orientations: refused before anything is read
        check_dicom_series(directory, series.uid)
    except ValueError as error:
        raise ScanError(str(error).replace(f"{folder}/", "").replace(str(folder), "the zip")) from None
    return DecodedScan(directory, "DICOM series", series.uid)


def decode_scan(text: object, folder: Path, *, max_bytes: int = DEFAULT_MAX_SCAN_MB * 2**20) -> DecodedScan:
    """Write a base64-encoded scan into ``folder`` (an empty temporary folder) as what MONAI reads.

    Args:
        text: base64 of a NIfTI (``.nii``, ``.nii.gz``), NRRD or MetaImage (``.mha``) file, a zip of one
            DICOM series folder, or (2D models) a PNG, TIFF, JPEG, GIF or BMP picture.
        folder: where the file (``scan<suffix>``) or the series folder (``series/``) goes.
        max_bytes: the largest decoded file, or a zip's files together.

    Raises:
        ScanError: not base64, not such a file, over ``max_bytes``, or a zip that holds no DICOM series,
            several, or one with gaps or duplicated slices.
    """
    data = _decode_base64(text, max_bytes)
    if len(data) > max_bytes:
        raise ScanError(
            f"the image is {len(data) / 2**20:.0f} MB, over this server's limit of {max_bytes / 2**20:.0f} MB"
        )
    name, suffix = sniff_format(data)
    if name == "zip":
        return _unzip_series(data, folder / "series", max_bytes)
    path = folder / f"scan{suffix}"
    path.write_bytes(data)
    return DecodedScan(path, name)


def encode_file(path: str | Path) -> str:
    """A file's bytes as base64 text."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
