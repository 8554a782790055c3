"""Atomic file output: write to a temporary file beside the target, rename it into place when complete.

A run that fails part-way (an exception, a kill) leaves no half-written file and never replaces an
existing one with one. The export, checkpoint, inference and evaluation writers all go through
:func:`atomic_output`; it lives in ``attnunet`` (not ``attnunet.pipelines``) because the network's
export may not import the pipelines.

A write that fails for lack of room (a full disk or quota, or a file over the process's file-size limit,
``ulimit -f``) raises :class:`DiskFullError`, one line naming the file and how many bytes it needed, so the
command line reports it as bad circumstances (exit 2) rather than as a bug.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

try:
    import resource  # POSIX only: the file-size limit a RuntimeError from a C++ writer may come from
except ImportError:  # pragma: no cover - Windows has no ulimit -f
    resource = None

__all__ = ["DiskFullError", "atomic_output", "refuse_existing"]

# A file system with less free room than this when a write fails is taken to be full: torch.save's C++
# writer reports a full disk as a RuntimeError without an errno.
ALMOST_FULL_BYTES = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A file could not be written for lack of room: its disk or quota is full, or it would pass the
    process's file-size limit (``ulimit -f``). The message names the file and the bytes it needed."""


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


def _errno_in_chain(error: BaseException) -> int | None:
    """The first errno of the OSErrors ``error`` was raised from (a writer may wrap the OSError)."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    return None


def _file_size_limit() -> int | None:
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _no_room(error: BaseException, path: Path, tmp: Path) -> DiskFullError | None:
    """The :class:`DiskFullError` that ``error``, raised while ``tmp`` was written for ``path``, stands
    for, or None when it is some other failure."""
    if not isinstance(error, (OSError, RuntimeError)):
        return None
    code = _errno_in_chain(error)
    try:
        written, free = (tmp.stat().st_size if tmp.exists() else 0), shutil.disk_usage(tmp.parent).free
    except OSError:  # the folder itself went away: some other failure, reported as it is
        return None
    limit = _file_size_limit()
    if code is None:  # no errno (torch.save's C++ writer): judge by the file and its file system
        if limit is not None and written >= limit:
            code = errno.EFBIG
        elif free < ALMOST_FULL_BYTES:
            code = errno.ENOSPC
    if code in _NO_SPACE:
        why = f"no space left on its device ({free:,} bytes free there)"
        fix = "free some space or choose another output folder, then run again"
    elif code == errno.EFBIG:
        why = "the file would pass " + (
            f"this process's file-size limit (ulimit -f: {limit:,} bytes)" if limit is not None else
            "the largest file its file system takes"
        )  # fmt: skip
        fix = "raise the limit (ulimit -f) or choose another output folder, then run again"
    else:
        return None
    kept = f"the earlier {path} is left as it was" if path.exists() else f"nothing was written to {path}"
    return DiskFullError(f"cannot write {path}: {why}; it needs more than {written:,} bytes; {fix} ({kept})")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extensions) and move it to ``path`` on success.

    The temporary file keeps all of ``path``'s extensions (``.nii.gz``, not ``.gz``), because writers
    choose the format and compression from them, and gets the permissions a newly created file would.
    It is synced to disk before it is renamed to ``path``. On an exception it is removed and ``path`` is
    left as it was.

    Args:
        path: the file to write; its folder is created when missing.

    Raises:
        DiskFullError: (an ``OSError``) the write failed for lack of room: no space left on the device
            (``ENOSPC``, or a writer's error while its file system is full), a full quota, or the
            process's file-size limit (``EFBIG``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
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
    except BaseException as error:
        full = _no_room(error, path, tmp)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from error
        raise
