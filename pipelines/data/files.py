"""Names and read errors of the files inference and evaluation handle, and the output folders that
training and inference write to (:func:`check_writable_folder`).

A case is named by its image file without the image extension (``case_001.nii.gz`` -> ``case_001``).
``attnunet infer`` writes ``<case>.nii.gz`` and ``attnunet evaluate`` matches predictions to labels by
that name, so both use :func:`case_name`. Outputs are written through
:func:`attnunet.atomic.atomic_output`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from attnunet.transforms.formats import IMAGE_SUFFIXES  # the one table of formats

__all__ = [
    "CHANNEL_SUFFIX",
    "case_name",
    "channel_groups",
    "check_writable_folder",
    "match_by_leading_token",
    "list_images",
    "innermost_cause",
]


def case_name(path: str | os.PathLike) -> str:
    """The case name of an image file: its name without the image extension.

    Example:
        >>> case_name("/data/imagesTs/case_001.nii.gz")
        'case_001'
    """
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# nnU-Net's one file per channel: CASE_0000.nii.gz is channel 0 of CASE, CASE_0001.nii.gz channel 1 ...
CHANNEL_SUFFIX = re.compile(r"(.+)_(\d{4})")


def channel_groups(paths: Sequence[Path], channels: int | None = None) -> dict[str, list[Path]]:
    """nnU-Net's channel files grouped per case: ``{case: [CASE_0000, CASE_0001, ...]}``, in suffix order.

    Every file must be named ``CASE_XXXX<extension>`` and every case must have the channels
    ``0000 ... channels - 1`` (``channels`` None: as many as the case with the most), no gap, no more.

    Raises:
        ValueError: a file without the suffix, a case with a missing or an extra channel file; the
            message names the case and the file.

    Example:
        >>> groups = channel_groups([Path("a_0000.nii.gz"), Path("a_0001.nii.gz")])
        >>> {case: [p.name for p in files] for case, files in groups.items()}
        {'a': ['a_0000.nii.gz', 'a_0001.nii.gz']}
    """
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(paths):
        match = CHANNEL_SUFFIX.fullmatch(case_name(path))
        if match is None:
            raise ValueError(
                f"{path} has no channel suffix: in this layout every image is named CASE_XXXX "
                "(CASE_0000 for the first channel, CASE_0001 for the second ...)"
            )
        found.setdefault(match[1], {})[int(match[2])] = path
    groups: dict[str, list[Path]] = {}
    expected = channels if channels is not None else max((max(f) + 1 for f in found.values()), default=0)
    for case, files in found.items():
        extension = next(iter(files.values())).name[len(case_name(next(iter(files.values())))) :]
        missing = [f"{case}_{c:04d}{extension}" for c in range(expected) if c not in files]
        extra = [files[c].name for c in sorted(files) if c >= expected]
        if missing:
            raise ValueError(
                f"case {case}: channel file {missing[0]} is missing in {next(iter(files.values())).parent} "
                f"(every case needs the {expected} channels {case}_0000 ... {case}_{expected - 1:04d})"
            )
        if extra:
            raise ValueError(
                f"case {case}: {extra[0]} is a channel beyond the {expected} expected "
                f"({case}_0000 ... {case}_{expected - 1:04d}); remove it or declare the channel"
            )
        groups[case] = [files[c] for c in range(expected)]
    return groups


def match_by_leading_token(name: str, candidates: dict[str, Path]) -> Path | None:
    """The one candidate whose name starts with the same ``_``-separated token as ``name`` (DRIVE:
    image ``21_training``, label ``21_manual1``, field of view ``21_training_mask``), or None when there
    is none or more than one.

    Example:
        >>> match_by_leading_token("21_training", {"21_manual1": Path("21_manual1.gif")})
        PosixPath('21_manual1.gif')
    """
    token = name.split("_", 1)[0]
    found = [path for key, path in candidates.items() if key.split("_", 1)[0] == token]
    return found[0] if len(found) == 1 else None


def list_images(folder: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """The image files directly in ``folder``, sorted; hidden files are skipped.

    Args:
        folder: the folder to list.
        suffixes: the file extensions (lower case) that count as images. Defaults to ``IMAGE_SUFFIXES``.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(tuple(suffixes))
    )


def innermost_cause(error: BaseException) -> str:
    """``"Type: message"`` of the first error in ``error``'s chain of causes.

    MONAI wraps a reader's error (``ImageFileError: ... is not a gzip file``) in a ``RuntimeError``
    that names only the transform; the innermost cause is what a user can act on.

    Example:
        >>> try:
        ...     try:
        ...         raise OSError("truncated file")
        ...     except OSError as cause:
        ...         raise RuntimeError("applying transform LoadImaged") from cause
        ... except RuntimeError as error:
        ...     innermost_cause(error)
        'OSError: truncated file'
    """
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"


def check_writable_folder(folder: str | os.PathLike, option: str = "--output") -> None:
    """Refuse an output folder that cannot be written, before any work is done.

    The folder, or the nearest of its parents that exists, must be a folder in which a file can be
    created: a folder is made and removed there, since permission bits say nothing for root or for a
    read-only file system. Nothing is left behind.

    Raises:
        NotADirectoryError: a file stands where the folder (or one of its parents) would be.
        PermissionError: nothing can be created there (permissions, a read-only file system).

    Example:
        >>> check_writable_folder(tempfile.gettempdir())
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"{option} {folder}: {existing} is a file, not a folder; choose another {option}"
        )
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".attnunet-write-check-").cleanup()
    except OSError as error:
        raise PermissionError(
            f"{option} {folder}: cannot write in {existing} ({error.strerror}); choose a folder you can "
            f"write to as {option}"
        ) from None
