"""Atomic file output: write to a temporary file beside the target, rename it into place when complete.

A run that fails part-way (an exception, a kill) leaves no half-written file and never replaces an
existing one with one. The export, checkpoint, inference and evaluation writers all go through
:func:`atomic_output`; it lives in ``attnunet`` (not ``attnunet.pipelines``) because the network's
export may not import the pipelines.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["atomic_output", "refuse_existing"]


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """Raise ``FileExistsError`` naming every one of ``paths`` that exists, unless ``overwrite``.

    A run calls it with all the files it will write before writing any, so nothing already written is
    replaced by accident and a refused run writes nothing.

    Example:
        >>> refuse_existing(["/nonexistent/model.ts"], overwrite=False)  # nothing there: no error
    """
    existing = [str(path) for path in paths if Path(path).exists()]
    if existing and not overwrite:
        what = "already exists" if len(existing) == 1 else f"already exist ({len(existing)} files)"
        raise FileExistsError(f"{', '.join(existing)} {what}; pass overwrite=True (--overwrite) to replace")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extensions) and move it to ``path`` on success.

    The temporary file keeps all of ``path``'s extensions (``.nii.gz``, not ``.gz``), because writers
    choose the format and compression from them, and gets the permissions a newly created file would.
    It is synced to disk before it is renamed to ``path``. On an exception it is removed and ``path`` is
    left as it was.

    Args:
        path: the file to write; its folder is created when missing.

    Example:
        >>> import secrets
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_output(folder / "metrics.csv") as tmp:
        ...     _ = tmp.write_text("case,dice\\n")
        >>> (folder / "metrics.csv").read_text()
        'case,dice\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp{''.join(path.suffixes)}")
    # Created with mode 0o666, so the umask gives it a new file's usual permissions (mkstemp's are 0600,
    # and reading the umask means setting it, process-wide); O_EXCL never takes over an existing file.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before the rename, so a power cut cannot leave an empty file at path
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
