"""The presets' loading transforms: images and label maps, DICOM SEG labels on their image's series grid.

Two things MONAI's ``LoadImaged`` does not do, and these transforms do:

- A DICOM SEG label has no grid of its own: it is a list of segment frames placed by position. It is
  read onto the grid of the series it was made from
  (:func:`~attnunet.transforms.dicom_seg_read.read_dicom_seg`), which in a case is the case's image, a
  DICOM series folder. The label map is then exactly what
  ``SimpleITKReader`` would give for a label volume of that series: ``(x, y, z)``, the series' RAS
  affine, the meta keys ``LoadImage`` sets. Its values are the segment numbers (dataset discovery names
  the classes after the segments), or the values of ``class_names`` matched by segment label.
- Given a reader, ``LoadImage`` still tries MONAI's own readers when that one raises, so a DICOM series
  folder that ``SimpleITKReader`` refuses (a missing slice) is stacked anyway by ``PydicomReader``, at a
  wrong spacing. Here a given reader is passed at call time, so only it is tried and its error stands.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage, MapTransform, Transform
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys

from attnunet.transforms.dicom_seg import ClassNames
from attnunet.transforms.dicom_seg_read import find_source_series, is_dicom_seg, read_dicom_seg

__all__ = ["LoadDicomSeg", "LoadImageLabeld"]


class LoadDicomSeg(Transform):
    """Read a DICOM SEG as a label map on the grid of its source series, as ``LoadImage`` reads a label.

    Returns a float32 ``MetaTensor`` ``(x, y, z)`` (``(1, x, y, z)`` with ``ensure_channel_first``) on
    the series as ``SimpleITKReader`` reads it, with ``affine``/``original_affine`` (RAS),
    ``spatial_shape``, ``spacing``, ``space``, ``original_channel_dim`` (``nan``: no channel),
    ``filename_or_obj`` (the SEG) and ``source_series`` (the series folder) in its meta.

    Args:
        class_names: label value -> class name; each segment gets the value whose name is its label
            (case-insensitive). None: the segment numbers are the values.
        segments: the segments to read, by number or label; None reads all. Overlapping segments are
            refused, naming them.
        ensure_channel_first: add the channel axis, as ``LoadImage(ensure_channel_first=True)``.

    Example:
        >>> label = LoadDicomSeg()("case1/liver.dcm", "case1/image")  # doctest: +SKIP
        >>> label.shape, label.meta["source_series"]  # doctest: +SKIP
        (torch.Size([512, 512, 3]), 'case1/image')
    """

    def __init__(
        self,
        class_names: ClassNames | None = None,
        segments: Sequence[int | str] | None = None,
        ensure_channel_first: bool = False,
    ) -> None:
        self.class_names = class_names
        self.segments = segments
        self.ensure_channel_first = ensure_channel_first

    def __call__(
        self, seg_path: str | os.PathLike, series_folder: str | os.PathLike | None = None
    ) -> MetaTensor:
        """Read ``seg_path`` onto ``series_folder``, or onto the series found beside it
        (:func:`~attnunet.transforms.dicom_seg_read.find_source_series`) when that is None.

        Raises:
            ValueError: see ``read_dicom_seg`` and ``find_source_series``; one line naming the SEG.
        """
        folder, uid = find_source_series(seg_path) if series_folder is None else (series_folder, None)
        labels, affine, _ = read_dicom_seg(
            seg_path, folder, class_names=self.class_names, segments=self.segments, series_uid=uid
        )
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(labels.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "spacing": np.linalg.norm(affine[:3, :3], axis=0),  # as SimpleITKReader gives it
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            ImageMetaKey.FILENAME_OR_OBJ: str(seg_path),
            "source_series": str(folder),
        }
        image = MetaTensor.ensure_torch_and_prune_meta(labels.astype(np.float32), meta)
        return EnsureChannelFirst()(image) if self.ensure_channel_first else image


class LoadImageLabeld(MapTransform):
    """``LoadImaged(keys, reader, image_only=True)`` for the presets: a DICOM SEG under a key other than
    ``image_key`` is read onto the grid of the case's image series (:class:`LoadDicomSeg`), and a given
    ``reader`` is the only one tried.

    Args:
        keys: the keys to load, e.g. ``("image", "label")``.
        reader: the reader for every non-SEG file (an ``ImageReader``, or a name MONAI knows); None lets
            MONAI choose by file type. When given, its errors are raised, never replaced by another
            reader's guess.
        image_key: the key of the case's image: a DICOM series folder for a SEG label, or an image
            loaded before (its ``filename_or_obj``).
        class_names: see :class:`LoadDicomSeg`.
        segments: see :class:`LoadDicomSeg`.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.

    Example:
        >>> load = LoadImageLabeld(("image", "label"), reader=SimpleITKReader())  # doctest: +SKIP
        >>> case = load({"image": "case1/image", "label": "case1/liver.dcm"})  # doctest: +SKIP
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: ImageReader | str | None = None,
        *,
        image_key: str = "image",
        class_names: ClassNames | None = None,
        segments: Sequence[int | str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(reader=reader, image_only=True)
        # MONAI resolves a name or class into an instance, registered last; passed at call time it is
        # the only reader tried.
        self.reader = self.loader.readers[-1] if reader is not None else None
        self.image_key = image_key
        self.seg = LoadDicomSeg(class_names=class_names, segments=segments)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d.get(self.image_key)  # before it is loaded below: the series folder a SEG lies on
        series = image.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(image, MetaTensor) else image
        for key in self.key_iterator(d):
            if key != self.image_key and is_dicom_seg(d[key]):
                if not isinstance(series, (str, os.PathLike)):
                    raise ValueError(
                        f"{d[key]} is a DICOM SEG label, which is read onto its image's series, but the "
                        f"case has no {self.image_key!r} path; give the case its DICOM series folder"
                    )
                d[key] = self.seg(d[key], series)
            else:
                d[key] = self.loader(d[key], self.reader)
        return d
