"""Atomic file output: write to a temporary file beside the target, rename it into place when complete.

A run that fails part-way (an exception, a kill) leaves no half-written file and never replaces an
existing one with one. The export, checkpoint, inference and evaluation writers all go through
:func:`atomic_output`; it lives in ``attnunet`` (not ``attnunet.pipelines``) because the network's
export may not import the pipelines.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output"]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extensions) and move it to ``path`` on success.

    The temporary file keeps all of ``path``'s extensions (``.nii.gz``, not ``.gz``), because writers
    choose the format and compression from them, and gets the permissions a newly created file would
    (``mkstemp`` makes it owner-only). On an exception it is removed and ``path`` is left as it was.

    Args:
        path: the file to write; its folder is created when missing.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_output(folder / "metrics.csv") as tmp:
        ...     _ = tmp.write_text("case,dice\\n")
        >>> (folder / "metrics.csv").read_text()
        'case,dice\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
