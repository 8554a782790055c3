"""Preset chains of MONAI dictionary transforms: CT, MR and 2D images, for training, validation and inference.

Every chain starts with :class:`~attnunet.transforms.loading.LoadImageLabeld` (``LoadImaged`` that
tries only the reader given, and reads a DICOM SEG label onto its image's series) and
``EnsureChannelFirstd``. The 3D chains then reorient to RAS, resample to ``pixdim`` (when given),
normalise intensities (CT: Hounsfield window, clipped and scaled to [0, 1]; MR: z-score over non-zero
voxels, per channel) and crop to the bounding box of the image's non-zero voxels (every mode, as nnU-Net
crops before training and before predicting: a scan's empty border, such as an all-zero slice, is never
shown to the network; inference writes background there). For training they then pad to ``roi_size``,
draw ``num_samples`` patches centred on each of the ``num_classes`` classes in turn (background included),
and augment them as nnU-Net does: rotate and scale (only in-plane for thick slices and one-slice patches),
flip along each allowed axis, add noise and blur, vary brightness, contrast and gamma.

``"val"`` and ``"infer"`` keep whole volumes (but their empty border) and only use invertible spatial
transforms, so
``monai.transforms.Invertd(keys="pred", transform=chain, orig_keys="image")`` returns a prediction
to the input's own shape and affine. ``"train"`` and ``"val"`` load ``("image", "label")``,
``"infer"`` only ``"image"``. A DICOM SEG label then goes through the same spatial transforms as a label
volume of its series would: after ``Orientationd`` it is in RAS like the image.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monai.data import ImageReader, PILReader
from monai.transforms import (
    AsDiscreted,
    ClassesToIndicesd,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandFlipd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import look_up_option

from attnunet.transforms import readers  # noqa: F401  (registers SimpleITKReader for DICOM folders, NRRD, MHA)
from attnunet.transforms.augmentation import volume_augmentations
from attnunet.transforms.headers import grayscale
from attnunet.transforms.intensity import NormalizeChannelsd
from attnunet.transforms.loading import LoadImageLabeld

__all__ = [
    "PRESETS",
    "MODES",
    "Preset",
    "build_transforms",
    "mirrored_axes",
    "ct_transforms",
    "mr_transforms",
    "image2d_transforms",
]

MODES = ("train", "val", "infer")
DEFAULT_ROI_3D = (96, 96, 96)
DEFAULT_ROI_2D = (256, 256)
# Crop centres kept per class: nnU-Net keeps 10,000 sampled locations per class for the same reason (a
# 512 x 512 x 300 CT would otherwise cache hundreds of MB of voxel indices per case).
_CENTRES_PER_CLASS = 10_000


def _keys(mode: str) -> tuple[str, ...]:
    return ("image",) if look_up_option(mode, MODES) == "infer" else ("image", "label")


def _check_common(spatial_dims: int, pixdim, roi_size, num_samples: int) -> None:
    if pixdim is not None and (len(pixdim) != spatial_dims or any(float(p) <= 0 for p in pixdim)):
        raise ValueError(f"pixdim must be {spatial_dims} positive spacings (mm) or None, got {pixdim}")
    if len(roi_size) != spatial_dims or any(int(r) < 1 for r in roi_size):
        raise ValueError(f"roi_size must be {spatial_dims} positive sizes, got {roi_size}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")


def _check_flip_axes(flip_axes: Sequence[int], spatial_dims: int) -> None:
    axes = "RAS axes: 0 (left-right), 1 (posterior-anterior), 2 (inferior-superior)"
    if spatial_dims == 2:
        axes = "image axes: 0 (rows), 1 (columns)"
    if not set(flip_axes) <= set(range(spatial_dims)) or len(set(flip_axes)) != len(flip_axes):
        raise ValueError(f"flip_axes must be distinct {axes}, got {list(flip_axes)}")


def _class_balanced_crops(
    keys: Sequence[str], roi_size: Sequence[int], num_samples: int, num_classes: int | None
) -> list[Callable]:
    """Patches centred on each class in turn, background included (a class a case lacks is skipped).

    nnU-Net's reason: a small class (scar, a kidney beside the liver) is otherwise rarely in a patch. The
    voxel indices are a deterministic transform, so a cached dataset computes them once per case.
    """
    if num_classes is None or num_classes < 2:
        raise ValueError(
            "the training chain needs num_classes (the label classes, background included, >= 2), "
            f"got {num_classes}"
        )
    indices = ClassesToIndicesd(
        "label",
        num_classes=num_classes,
        image_key="image",
        image_threshold=0.0,
        max_samples_per_class=_CENTRES_PER_CLASS,
    )
    crops = RandCropByLabelClassesd(
        keys,
        label_key="label",
        spatial_size=roi_size,
        num_classes=num_classes,
        num_samples=num_samples,
        indices_key="label_cls_indices",
        warn=False,
    )
    return [indices, crops]


def _volume_transforms(
    mode: str,
    intensity: list[Callable],
    *,
    pixdim: Sequence[float] | None,
    roi_size: Sequence[int],
    num_samples: int,
    reader: ImageReader | str | None,
    crop_before_intensity: bool,
    flip_axes: Sequence[int],
    reorient: bool,
    num_classes: int | None,
) -> Compose:
    """The 3D chain shared by CT and MR; ``intensity`` holds the modality's normalisation."""
    keys = _keys(mode)
    _check_common(3, pixdim, roi_size, num_samples)
    _check_flip_axes(flip_axes, 3)
    chain: list[Callable] = [LoadImageLabeld(keys, reader=reader), EnsureChannelFirstd(keys)]
    if reorient:
        chain.append(
            Orientationd(keys, axcodes="RAS", labels=None)
        )  # labels from the meta "space" (RAS or LPS)
    if pixdim is not None:
        modes = ("bilinear", "nearest")[: len(keys)]
        chain.append(Spacingd(keys, pixdim=tuple(float(p) for p in pixdim), mode=modes))
    # CropForeground keeps voxels > 0: before the z-score for MR (background 0 goes negative after it),
    # after the window for CT (air is clipped to 0 by it). Invertd pads the prediction back.
    crop = CropForegroundd(keys, source_key="image", allow_smaller=True)
    chain += [crop, *intensity] if crop_before_intensity else [*intensity, crop]
    if mode == "train":
        chain += [
            SpatialPadd(keys, spatial_size=roi_size),
            *_class_balanced_crops(keys, roi_size, num_samples, num_classes),
            *volume_augmentations(keys, pixdim, roi_size, flip_axes),
        ]
    chain.append(EnsureTyped(keys))
    return Compose(chain)


def ct_transforms(
    mode: str,
    *,
    pixdim: Sequence[float] | None = None,
    roi_size: Sequence[int] = DEFAULT_ROI_3D,
    num_samples: int = 4,
    a_min: float = -175.0,
    a_max: float = 250.0,
    reader: ImageReader | str | None = None,
    flip_axes: Sequence[int] = (0, 1, 2),
    reorient: bool = True,
    num_classes: int | None = None,
) -> Compose:
    """CT chain: Hounsfield window ``[a_min, a_max]`` clipped and scaled to [0, 1].

    Args:
        mode: ``"train"``, ``"val"`` or ``"infer"`` (see the module docstring).
        pixdim: voxel spacing (mm, x y z) to resample to; None keeps each scan's own.
        roi_size: training patch size (train only; val/infer keep whole volumes).
        num_samples: patches drawn per volume (train only).
        num_classes: label classes, background included (train only: patches are centred on each class in
            turn).
        a_min: lower bound of the HU window (maps to 0). Defaults to -175 (soft-tissue window).
        a_max: upper bound of the HU window (maps to 1). Defaults to 250.
        reader: reader for the image and non-SEG labels, the only one tried; None lets MONAI choose by
            file type (nibabel for NIfTI, :class:`~attnunet.transforms.readers.SimpleITKReader` for DICOM
            folders, NRRD and MHA). A DICOM SEG label is read onto the image's series either way.
        flip_axes: RAS axes mirrored at random in training (0 left-right, 1 posterior-anterior, 2
            inferior-superior). Leave out an axis along which the classes differ by position (the
            hippocampus' anterior and posterior parts: ``(0,)``).
        reorient: reorient to RAS first (default). False keeps the stored voxel axes, as nnU-Net does:
            for oblique scans whose slice axis is closest to different RAS axes from case to case
            (short-axis cardiac MR), where the axes are then the stored ones, not RAS.

    Example:
        >>> chain = ct_transforms("train", roi_size=(48, 48, 32), num_samples=2, num_classes=3)
        >>> samples = chain({"image": "case.nii.gz", "label": "case_seg.nii.gz"})  # doctest: +SKIP
    """
    if a_min >= a_max:
        raise ValueError(f"the CT window needs a_min < a_max, got a_min={a_min}, a_max={a_max}")
    window = ScaleIntensityRanged("image", a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)
    return _volume_transforms(
        mode,
        [window],
        pixdim=pixdim,
        roi_size=roi_size,
        num_samples=num_samples,
        reader=reader,
        crop_before_intensity=False,
        flip_axes=flip_axes,
        reorient=reorient,
        num_classes=num_classes,
    )


def mr_transforms(
    mode: str,
    *,
    pixdim: Sequence[float] | None = None,
    roi_size: Sequence[int] = DEFAULT_ROI_3D,
    num_samples: int = 4,
    reader: ImageReader | str | None = None,
    flip_axes: Sequence[int] = (0, 1, 2),
    channel_windows: Mapping[int | str, Sequence[float]] | None = None,
    reorient: bool = True,
    num_classes: int | None = None,
) -> Compose:
    """MR chain: z-score over non-zero voxels, each channel on its own (background stays 0); the channels in
    ``channel_windows`` (the CT channels of a CT + MR or CT + PET image) are clipped to their window and
    scaled to [0, 1] instead, as the CT chain does.

    Args:
        mode: ``"train"``, ``"val"`` or ``"infer"``.
        pixdim: voxel spacing (mm, x y z) to resample to; None keeps each scan's own.
        roi_size: training patch size (train only).
        num_samples: patches drawn per volume (train only).
        num_classes: label classes, background included (train only: patches are centred on each class in
            turn).
        reader: reader for the image and non-SEG labels, the only one tried; None lets MONAI choose by
            file type. A DICOM SEG label is read onto the image's series either way.
        flip_axes: RAS axes mirrored at random in training (0 left-right, 1 posterior-anterior, 2
            inferior-superior). Leave out an axis along which the classes differ by position (the
            hippocampus' anterior and posterior parts: ``(0,)``).
        reorient: reorient to RAS first (default). False keeps the stored voxel axes, as nnU-Net does:
            for oblique scans whose slice axis is closest to different RAS axes from case to case
            (short-axis cardiac MR), where the axes are then the stored ones, not RAS.
        channel_windows: channel index -> ``[a_min, a_max]``, the channels normalised as CT. None or
            empty: every channel is z-scored.

    Example:
        >>> chain = mr_transforms("infer", pixdim=(1.0, 1.0, 1.0))
        >>> image = chain({"image": "brain_t1.nii.gz"})["image"]  # doctest: +SKIP
    """
    if channel_windows:
        normalise = NormalizeChannelsd("image", channel_windows)
    else:
        normalise = NormalizeIntensityd("image", nonzero=True, channel_wise=True)
    return _volume_transforms(
        mode,
        [normalise],
        pixdim=pixdim,
        roi_size=roi_size,
        num_samples=num_samples,
        reader=reader,
        crop_before_intensity=True,
        flip_axes=flip_axes,
        reorient=reorient,
        num_classes=num_classes,
    )


def image2d_transforms(
    mode: str,
    *,
    pixdim: Sequence[float] | None = None,
    roi_size: Sequence[int] = DEFAULT_ROI_2D,
    num_samples: int = 4,
    flip_axes: Sequence[int] = (0, 1),
    num_classes: int = 2,
) -> Compose:
    """2D chain for PNG/TIFF images and binary masks (fundus photographs, for instance), read with PILReader.

    Images are scaled to [0, 1] per channel; masks are read as one grayscale channel and binarised
    (any value >= 0.5 is foreground, so 0/1 and 0/255 masks both work). Training pads to ``roi_size``, draws
    ``num_samples`` patches and flips along ``flip_axes``; it also
    rotates by any angle, scales by up to 15% and varies the contrast (gamma 0.7-1.5).

    Args:
        mode: ``"train"``, ``"val"`` or ``"infer"``.
        pixdim: must be None: 2D images carry no physical spacing to resample to.
        roi_size: training patch size (train only).
        num_samples: patches drawn per image (train only).
        flip_axes: image axes mirrored at random in training (0 rows, 1 columns).
        num_classes: must be 2: masks are binarised (background and foreground patches in turn).

    Example:
        >>> chain = image2d_transforms("train", roi_size=(128, 128), num_samples=2)
        >>> samples = chain({"image": "img_001.png", "label": "img_001_mask.png"})  # doctest: +SKIP
    """
    if pixdim is not None:
        raise ValueError(f"the image2d preset does not resample; pass pixdim=None, got {pixdim}")
    if num_classes != 2:
        raise ValueError(f"the image2d preset binarises its masks (2 classes); got num_classes={num_classes}")
    keys = _keys(mode)
    _check_common(2, pixdim, roi_size, num_samples)
    _check_flip_axes(flip_axes, 2)
    chain: list[Callable] = [LoadImageLabeld("image", reader=PILReader())]
    if "label" in keys:
        chain.append(LoadImageLabeld("label", reader=PILReader(converter=grayscale)))
    chain += [EnsureChannelFirstd(keys), ScaleIntensityd("image", minv=0.0, maxv=1.0, channel_wise=True)]
    if "label" in keys:
        chain.append(AsDiscreted("label", threshold=0.5))
    if mode == "train":
        chain += [
            # Any angle and +-15% scale, before cropping so that a patch has no empty corners: structures
            # in 2D pictures (vessels, cells) have no preferred direction (DRIVE: see benchmarks/README.md).
            RandAffined(
                keys, prob=0.5, rotate_range=math.pi, scale_range=0.15, mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            SpatialPadd(keys, spatial_size=roi_size),
            *_class_balanced_crops(keys, roi_size, num_samples, num_classes),
            *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in flip_axes),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        ]  # fmt: skip
    chain.append(EnsureTyped(keys))
    return Compose(chain)


@dataclass(frozen=True)
class Preset:
    """A preset: its chain builder and what it says about the network's input, in MONAI's
    ``network_data_format`` vocabulary (a bundle's ``metadata.json`` is written from it).

    Attributes:
        build: ``build(mode, **options) -> Compose``.
        spatial_dims: 2 or 3.
        in_channels: the usual image channels (3 for RGB pictures, else 1).
        modality: ``"CT"``, ``"MR"`` or ``"regular"``.
        format: ``"hounsfield"``, ``"magnitude"`` or ``"RGB"``.
        value_range: the range the chain scales intensities to; empty for a z-score.
    """

    build: Callable[..., Compose]
    spatial_dims: int
    in_channels: int
    modality: str
    format: str
    value_range: tuple[float, ...]


# The one registry of presets: name -> chain and metadata.
PRESETS: dict[str, Preset] = {
    "ct": Preset(ct_transforms, 3, 1, "CT", "hounsfield", (0.0, 1.0)),
    "mr": Preset(mr_transforms, 3, 1, "MR", "magnitude", ()),
    "image2d": Preset(image2d_transforms, 2, 3, "regular", "RGB", (0.0, 1.0)),
}


def build_transforms(preset: str, mode: str, **kwargs) -> Compose:
    """Build a preset chain by name: ``ct``, ``mr`` or ``image2d``; ``train``, ``val`` or ``infer``.

    Args:
        preset: the preset name (see :data:`PRESETS`).
        mode: ``"train"`` (keys image+label, random patches and augmentation), ``"val"`` (image+label,
            whole volumes, invertible) or ``"infer"`` (image only, invertible).
        kwargs: the preset's keyword options, e.g. ``pixdim``, ``roi_size``, ``num_samples``, and for CT
            ``a_min``/``a_max``; an option the preset does not take is an error that lists those it does.

    Example:
        >>> chain = build_transforms("ct", "infer", pixdim=(1.5, 1.5, 3.0), a_min=-200, a_max=300)
        >>> [type(t).__name__ for t in chain.transforms][:3]
        ['LoadImageLabeld', 'EnsureChannelFirstd', 'Orientationd']
    """
    factory = look_up_option(preset, PRESETS).build
    mode = look_up_option(mode, MODES)
    accepted = [name for name in inspect.signature(factory).parameters if name != "mode"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"preset {preset!r} does not take {unknown}; its options are {accepted}")
    return factory(mode, **kwargs)


def mirrored_axes(preset: str, preset_kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    """The axes the preset's training chain mirrors at random with these options (its default when unset).

    Test-time flips must stay within them: a model never shown an axis mirrored has not learnt that view.

    Example:
        >>> mirrored_axes("mr", {}), mirrored_axes("mr", {"flip_axes": [0]}), mirrored_axes("image2d", {})
        ((0, 1, 2), (0,), (0, 1))
    """
    factory = look_up_option(preset, PRESETS).build
    return tuple(preset_kwargs.get("flip_axes", inspect.signature(factory).parameters["flip_axes"].default))
