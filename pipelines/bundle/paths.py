"""What the bundle's configs call besides the pipelines themselves: where the template is, and the
dataset a bundle trains on when none is given."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from attnunet.pipelines.demo.data import write_demo_dataset

__all__ = ["bundle_template_dir", "default_dataset_dir"]

logger = logging.getLogger(__name__)


def bundle_template_dir() -> Path:
    """The template bundle shipped with attnunet (``attnunet/pipelines/bundle/attention_unet``).

    Example:
        >>> (bundle_template_dir() / "configs" / "train.json").is_file()
        True
    """
    return Path(__file__).resolve().parent / "attention_unet"


def default_dataset_dir(bundle_root: str | os.PathLike) -> str:
    """The dataset a bundle trains on when no ``--data`` is given: the embedded demo data.

    Written once into ``<bundle_root>/data/demo`` by :func:`attnunet.pipelines.demo.data.write_demo_dataset`
    (atomically, so an interrupted first run leaves nothing half-written) and reused afterwards.

    Args:
        bundle_root: the bundle's folder.

    Returns:
        The dataset folder as a string (MONAI configs join paths with ``+``).

    Example:
        >>> default_dataset_dir("/tmp/my_bundle")  # doctest: +SKIP
        '/tmp/my_bundle/data/demo'
    """
    root = Path(bundle_root) / "data" / "demo"
    if not (root / "dataset.json").is_file():
        logger.info("writing the attnunet demo dataset to %s (no --data given)", root)
        write_demo_dataset(root)
    return str(root)
