"""The one model-apply path: a scan in, its label map on the scan's own grid out.

:func:`apply_model` is what ``attnunet infer``, the bundle's ``configs/inference.json`` (through
:func:`~attnunet.pipelines.inference.predict.infer`) and the registered MLflow model
(:mod:`attnunet.pipelines.inference.serving`) run on every scan:

1. the model's preset ``"infer"`` chain (reading, RAS orientation, spacing, intensity normalisation);
2. :func:`window_probabilities`: MONAI's :class:`~monai.inferers.SlidingWindowInferer` on the devices
   :func:`~attnunet.pipelines.inference.devices.choose_devices` picks, each window clamped to the image
   (:func:`attnunet.roi.fit_roi`), class probabilities averaged over flips along the axes the model was
   trained mirrored along (test-time augmentation), AMP on CUDA;
3. :class:`~monai.transforms.Invertd` back to the scan's grid, argmax (or ``>= 0.5`` for one sigmoid
   output; for a region model each region's sigmoid ``> 0.5``, its label value written region after
   region, :meth:`attnunet.regions.Regions.label_map`) and optionally
   :class:`~monai.transforms.KeepLargestConnectedComponent` of chosen classes.

An :class:`~attnunet.pipelines.inference.ensemble.Ensemble` goes the same way: step 1 once, step 2 per
member (each with its own flips) and the probabilities averaged, step 3 once, with the largest-component
classes the ensemble carries.

Validation during training runs step 2 alone on its already preprocessed volumes, without flips
(:class:`ValidationInferer`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import Compose, Invertd, KeepLargestConnectedComponent
from monai.utils import look_up_option

from attnunet.pipelines.data.files import innermost_cause
from attnunet.pipelines.inference.devices import DEVICE_CHOICES, choose_devices
from attnunet.pipelines.inference.ensemble import Ensemble, label_values
from attnunet.roi import fit_roi
from attnunet.spec import ModelSpec
from attnunet.transforms.presets import build_transforms, mirrored_axes
from attnunet.transforms.readers import SimpleITKReader

__all__ = [
    "BLEND_MODES",
    "Scan",
    "Segmentation",
    "ValidationInferer",
    "Windows",
    "apply_model",
    "class_names",
    "to_labels",
    "volumes_ml",
    "window_probabilities",
    "write_nifti",
]

logger = logging.getLogger(__name__)

BLEND_MODES = ("gaussian", "constant")
# A scan: an image file or DICOM series folder, a list of channel files (one multi-channel image, as
# MONAI's LoadImaged stacks them), or a voxel array with its affine.
Scan = str | os.PathLike | Sequence[str | os.PathLike] | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Windows:
    """How one model is applied: sliding-window settings, test-time flips and post-processing.

    ``largest_component``: True keeps the largest connected component of every foreground class (of each
    region of a region model); a tuple of label values (class indices; a region model's written values),
    of those only.
    """

    roi_size: tuple[int, ...]
    overlap: float
    sw_batch_size: int
    blend: str = "gaussian"
    tta: bool = True
    largest_component: bool | tuple[int, ...] = False
    sw_device: str = "auto"
    device: str = "auto"

    @classmethod
    def for_model(
        cls,
        spec: ModelSpec,
        roi_size: Sequence[int] | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        **options: Any,
    ) -> Windows:
        """The spec's own settings where an option is None, checked against the model."""
        roi = tuple(int(size) for size in (roi_size if roi_size is not None else spec.roi_size))
        if len(roi) != spec.spatial_dims or any(size < 1 for size in roi):
            raise ValueError(
                f"roi_size must be {spec.spatial_dims} positive sizes for this {spec.spatial_dims}D model, "
                f"got {list(roi)}"
            )
        overlap = spec.overlap if overlap is None else overlap
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        sw_batch_size = spec.sw_batch_size if sw_batch_size is None else sw_batch_size
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        options["blend"] = look_up_option(options.get("blend", "gaussian"), BLEND_MODES)
        for name in ("sw_device", "device"):
            look_up_option(str(options.get(name, "auto")).split(":")[0], DEVICE_CHOICES)
        values = options.get("largest_component", False)
        if not isinstance(values, bool):
            values = options["largest_component"] = tuple(sorted({int(value) for value in values}))
            if not set(values) <= set(label_values(spec)):
                raise ValueError(
                    f"largest_component values must be among {list(label_values(spec))}, got {list(values)}"
                )
        return cls(roi, overlap, sw_batch_size, **options)

    def component_values(self, spec: ModelSpec) -> tuple[int, ...]:
        """The label-map values whose largest component alone is kept (True: every foreground class; a
        region model keeps each region's instead, before its label map is written)."""
        if self.largest_component is True:
            return () if spec.regions is not None else tuple(range(1, max(spec.out_channels, 2)))
        return tuple(self.largest_component or ())


class Segmentation(NamedTuple):
    """One scan's result, channel first, on the scan's own grid (its shape and affine in ``meta``).

    Attributes:
        probabilities: ``(out_channels, *spatial)`` float32 class (a region model's: region) probabilities.
        labels: ``(1, *spatial)`` class indices (a region model's label values).
    """

    probabilities: MetaTensor
    labels: MetaTensor


def _predictor(
    model: torch.nn.Module, *, sigmoid: bool, flip_axes: Sequence[int], amp: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Class probabilities of a batch of windows, averaged over flips of the given axes.

    Probabilities, not logits, are blended: one window's overconfident logits would outweigh its
    neighbours' at the seams. Test-time augmentation is applied per window (each window also passed
    flipped along each axis, flipped back, and averaged before stitching): MONAI's
    ``TestTimeAugmentation`` samples *random* transforms of the whole volume to estimate uncertainty; a
    deterministic flip average needs no sampling, and per window the memory stays at one stitched volume.
    """

    def probabilities(window: torch.Tensor) -> torch.Tensor:
        with torch.autocast(window.device.type, enabled=amp):
            logits = model(window)
        logits = logits.float()
        return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)

    def predict(window: torch.Tensor) -> torch.Tensor:
        total = probabilities(window)
        for axis in flip_axes:
            total += probabilities(window.flip(axis)).flip(axis)
        return total / (1 + len(flip_axes))

    return predict


def _trained_flips(spec: ModelSpec) -> list[int]:
    """Batch axes of the windows to mirror at test time: those the model was mirrored along in training.

    A plan that keeps an axis unmirrored (the two hippocampus classes keep their order front to back)
    trained the model on one orientation only; a flipped window along that axis shows it anatomy it
    never saw. The infer chain puts images in RAS, so RAS axis ``a`` is window axis ``a + 2``.
    """
    return [axis + 2 for axis in mirrored_axes(spec.preset, spec.preset_kwargs)]


def window_probabilities(
    network: torch.nn.Module | Ensemble,
    spec: ModelSpec,
    image: torch.Tensor,
    windows: Windows,
    *,
    amp: bool | None = None,
    name: str | None = None,
    log: logging.Logger | None = None,
) -> torch.Tensor:
    """``(out_channels, *spatial)`` class probabilities of one preprocessed ``(C, *spatial)`` image.

    A window axis larger than the image padded to the network's multiple is clamped to that size (a
    bigger window only computes zeros: 256^3 windows on a 64 x 64 x 32 image ran for over 15 minutes).
    The result is on the stitching device. An ensemble's is the mean of its members' probabilities, each
    stitched with the member's own flips and placement.

    Args:
        amp: autocast the network; None: on CUDA only.
        name: the scan's name for a log line (INFO) of its size, windows and devices; None: DEBUG only.
        log: the logger of that line; default: this module's.
    """
    if isinstance(network, Ensemble):
        total: torch.Tensor | None = None
        count = len(network.networks)
        for number, (member, member_spec) in enumerate(zip(network.networks, network.specs, strict=True)):
            member_name = None if name is None else f"{name} (model {number + 1} of {count})"
            scores = window_probabilities(
                member, member_spec, image, windows, amp=amp, name=member_name, log=log
            )
            total = scores if total is None else total.add_(scores.to(total.device))
        assert total is not None  # an ensemble has at least one member
        return total.div_(count)
    placement = choose_devices(
        image.shape[1:],
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        sw_device=windows.sw_device,
        device=windows.device,
    )
    network.to(placement.sw_device)
    roi_size = fit_roi(windows.roi_size, image.shape[1:], network, spec.network_kwargs)
    inferer = SlidingWindowInferer(
        roi_size=roi_size,
        sw_batch_size=windows.sw_batch_size,
        overlap=windows.overlap,
        mode=windows.blend,
        sw_device=placement.sw_device,
        device=placement.device,
    )
    predictor = _predictor(
        network,
        sigmoid=spec.sigmoid,
        flip_axes=_trained_flips(spec) if windows.tta else (),
        amp=placement.sw_device.type == "cuda" if amp is None else amp,
    )
    # An image smaller than the planned patch is the common case (the patch covers the median shape), so
    # the shrunken window is reported, not warned about.
    (log or logger).log(
        logging.DEBUG if name is None else logging.INFO, "%s: %s voxels, windows %s on %s, stitched on %s",
        name or "image", tuple(image.shape[1:]), list(roi_size), placement.sw_device, placement.device,
    )  # fmt: skip
    plain = image.as_tensor() if isinstance(image, MetaTensor) else image
    with torch.no_grad():  # not inference_mode: validation's metrics work on the result in place
        return inferer(plain[None].float().to(placement.device), predictor)[0]


def to_labels(probabilities: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """``(1, *spatial)`` class indices (uint8 below 256 classes): the argmax, first class on ties, or
    ``>= 0.5`` for a model with one sigmoid output, or a region model's label map (each region ``> 0.5``,
    as nnU-Net thresholds them); a MetaTensor keeps its geometry.

    One pass per class instead of ``argmax(dim=0)``: torch reduces over the channel axis of a large volume
    slowly (17 s for 3 x 512 x 512 x 300 on 2 cores, against about 1 s this way).
    """
    scores = probabilities.as_tensor() if isinstance(probabilities, MetaTensor) else probabilities
    if spec.regions is not None:
        labels = spec.regions.label_map(scores > 0.5)
    elif spec.out_channels == 1:
        labels = (scores[:1] >= 0.5).to(torch.uint8)
    else:
        labels = torch.zeros((1, *scores.shape[1:]), dtype=torch.uint8 if len(scores) < 256 else torch.int32)
        labels = labels.to(scores.device)
        best = scores[0].clone()
        for index in range(1, len(scores)):
            better = scores[index] > best
            labels[0][better] = index
            best = torch.maximum(best, scores[index], out=best)
    if isinstance(probabilities, MetaTensor):
        return MetaTensor(labels, meta=probabilities.meta)
    return labels


def _preprocessing(spec: ModelSpec, series_uid: str | None) -> Compose:
    """The spec's preset ``"infer"`` chain; a DICOM series is read by its UID."""
    kwargs: dict[str, Any] = {"pixdim": spec.pixdim, **dict(spec.preset_kwargs)}
    if series_uid is not None:
        kwargs["reader"] = SimpleITKReader(series_uid=series_uid)
    return build_transforms(spec.preset, "infer", **kwargs)


def _load(preprocess: Compose, scan: Any, name: str) -> dict[str, Any]:
    """Read and preprocess one scan; a failure names the scan and its first cause, not MONAI's wrapper.

    A scan with NaN or infinite voxels is refused: the intensity normalisation spreads them over the whole
    image, and the network then outputs background everywhere, which reads as "no finding".
    """
    try:
        loaded = preprocess({"image": scan}, end=1)  # every chain starts with its reader
        bad = int((~torch.isfinite(torch.as_tensor(loaded["image"]))).sum())
        if bad:
            raise ValueError(
                f"{name} has {bad} NaN or infinite voxels, which would make the whole label map background; "
                "replace them (e.g. with numpy.nan_to_num, or the scanner's padding value) and run again"
            )
        return preprocess(loaded, start=1)
    except RuntimeError as error:  # MONAI wraps a transform's error as "applying transform <...>"
        raise ValueError(f"{name} cannot be read or preprocessed: {innermost_cause(error)}") from error


def _array_scan(array: np.ndarray | torch.Tensor, affine: Any, spec: ModelSpec, folder: Path) -> Path:
    """A voxel array written as the NIfTI file it stands for, so that it is read like any file."""
    if spec.spatial_dims != 3:
        raise ValueError(
            f"a voxel array can only be given to a 3D model; this {spec.spatial_dims}D model reads "
            "picture files (PNG, TIFF, ...)"
        )
    array = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    if affine is None or np.asarray(affine).shape != (4, 4):
        raise ValueError(
            "a voxel array needs its 4 x 4 affine (voxel indices -> RAS mm, as in NIfTI); without it the "
            "scan's orientation and spacing are unknown and the model's preset cannot be applied"
        )
    if array.ndim not in (3, 4):
        raise ValueError(f"a voxel array must be (x, y, z) or (channels, x, y, z), got shape {array.shape}")
    data = np.moveaxis(array, 0, -1) if array.ndim == 4 else array  # NIfTI keeps channels last
    path = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.asarray(affine, np.float64)), str(path))
    return path


def apply_model(
    network: torch.nn.Module | Ensemble,
    spec: ModelSpec,
    scan: Scan,
    windows: Windows | None = None,
    *,
    affine: Any = None,
    series_uid: str | None = None,
    name: str | None = None,
    log: logging.Logger | None = None,
) -> Segmentation:
    """Segment one scan: the model's preset, sliding windows, flips, inversion to the scan's grid.

    Args:
        network: the model, as :func:`attnunet.load_model` returns it (eval mode), or an
            :class:`~attnunet.pipelines.inference.ensemble.Ensemble` of models (probabilities averaged; the
            largest-component classes it carries are applied besides ``windows``').
        spec: its :class:`~attnunet.spec.ModelSpec` (an ensemble's: ``ensemble.spec``).
        scan: an image file (NIfTI, NRRD, MetaImage; pictures for a 2D model), a DICOM series folder, a
            list of files (one per channel, stacked as one image), or a voxel array ``(x, y, z)`` or
            ``(channels, x, y, z)`` with its ``affine`` (read as the NIfTI file it stands for: never the
            network on raw intensities).
        windows: sliding-window settings, flips and post-processing; None: the spec's own, with flips.
        affine: the 4 x 4 affine of an array ``scan`` (voxel indices -> RAS mm); only for arrays.
        series_uid: the DICOM series to read from a folder holding several.
        name: what its log line calls the scan; default: the scan itself (errors always name the scan).
        log: the logger of that line (INFO); default: this module's.

    Returns:
        ``(probabilities, labels)`` with the scan's own shape and affine.

    Raises:
        ValueError: the scan cannot be read or preprocessed, has NaN or infinite voxels, or does not fit
            the model (channels, dims).

    Example:
        >>> network, spec = load_model("models:/attnunet-demo@champion")  # doctest: +SKIP
        >>> labels = apply_model(network, spec, "case_004.nii.gz").labels  # doctest: +SKIP
    """
    if isinstance(network, Ensemble) and spec != network.spec:
        raise ValueError("apply_model: an ensemble is applied with its own spec, ensemble.spec")
    windows = windows or Windows.for_model(spec)
    if isinstance(scan, (np.ndarray, torch.Tensor)):
        with tempfile.TemporaryDirectory(prefix="attnunet-scan-") as folder:
            path = _array_scan(scan, affine, spec, Path(folder))
            return apply_model(network, spec, str(path), windows, name=name or "voxel array", log=log)
    if affine is not None:
        raise ValueError("affine is only for a voxel array scan; a file carries its own geometry")
    source = os.fspath(scan) if isinstance(scan, (str, os.PathLike)) else ", ".join(map(str, scan))
    preprocess = _preprocessing(spec, series_uid)
    image = (data := _load(preprocess, scan, source))["image"]
    if image.ndim - 1 != spec.spatial_dims or image.shape[0] != spec.in_channels:
        raise ValueError(
            f"{source}: the model takes {spec.in_channels}-channel {spec.spatial_dims}D images, but "
            f"the preprocessed image has shape {tuple(image.shape)} (channels first)"
        )
    probabilities = window_probabilities(network, spec, image, windows, name=name or source, log=log)
    data["pred"] = MetaTensor(probabilities, meta=image.meta, applied_operations=image.applied_operations)
    # Rebinding ``data`` frees the stitched volume before the label map is made. A 2D picture's chain moves
    # no pixel (nothing to invert, and MONAI would warn so for every image).
    if image.applied_operations:
        data = Invertd("pred", transform=preprocess, orig_keys="image", nearest_interp=False)(data)
    probabilities = data["pred"]
    if spec.regions is None and spec.out_channels > 1:
        # the inverse of the crop to the non-zero voxels pads every class with 0; that border is background
        probabilities[0] = 1 - probabilities[1:].sum(dim=0)
    if windows.largest_component is True and spec.regions is not None:
        # each region keeps its own largest component (not each written value: an inner region's value
        # covers only part of it), and the label map is written from the kept regions
        largest = KeepLargestConnectedComponent(list(range(spec.out_channels)), is_onehot=True)
        labels = to_labels(largest(probabilities > 0.5), spec)
    else:
        labels = to_labels(probabilities, spec)
    kept = set(windows.component_values(spec))
    if isinstance(network, Ensemble):  # its chosen post-processing holds wherever it is applied
        kept.update(network.largest_component)
    if kept:  # label values, as the cross-validation chose them on label maps
        labels = KeepLargestConnectedComponent(applied_labels=sorted(kept))(labels)
    return Segmentation(probabilities, labels)


class ValidationInferer(Inferer):
    """MONAI inferer for a ``SupervisedEvaluator``: :func:`window_probabilities` without flips, on
    volumes the ``"val"`` chain already preprocessed (labels on the same grid, nothing to invert).

    It returns the log of the probabilities (softmax) or their logit (sigmoid outputs): the
    evaluator's loss and Dice take logits, and ``softmax(log p) = p``, ``sigmoid(logit p) = p``, so they
    score exactly the probabilities that inference stitches.
    """

    def __init__(self, spec: ModelSpec, windows: Windows, *, amp: bool = False) -> None:
        super().__init__()
        self.spec, self.windows, self.amp = spec, windows, amp

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        windows = dataclasses.replace(self.windows, tta=False)
        probabilities = torch.stack(
            [window_probabilities(network, self.spec, image, windows, amp=self.amp) for image in inputs]
        )
        if self.spec.sigmoid:
            return torch.logit(probabilities, eps=1e-6)
        return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))


def class_names(spec: ModelSpec) -> list[str]:
    """The class names in index order (background first; two for one sigmoid output); a region model's
    region names, one per output."""
    if spec.regions is not None:
        return list(spec.regions.names)
    return [spec.labels.get(str(index), str(index)) for index in range(max(spec.out_channels, 2))]


def volumes_ml(labels: MetaTensor, spec: ModelSpec) -> dict[str, float]:
    """Each class's (a region model's: region's) volume in millilitres on the label map's grid (voxel count x
    voxel volume); a region holds every voxel labelled with one of its values."""
    dims = spec.spatial_dims  # a 2D picture's "volume" is its area in mm^2 / 1000
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(labels.affine, dtype=np.float64)[:dims, :dims])))
    values = labels.as_tensor()
    if spec.regions is not None:
        counts = [
            torch.isin(values, torch.tensor(region, device=values.device)).sum()
            for region in spec.regions.values
        ]
    else:
        counts = torch.bincount(values.reshape(-1).long(), minlength=max(spec.out_channels, 2))
    return {name: float(counts[index]) * voxel_mm3 / 1000.0 for index, name in enumerate(class_names(spec))}


def write_nifti(image: torch.Tensor, path: str | os.PathLike, dtype: type) -> None:
    """Write a channel-first MetaTensor as NIfTI with its own affine (no resampling).

    3D: ``(X, Y, Z)`` for one channel, ``(X, Y, Z, C)`` otherwise. 2D: ``(X, Y, 1, C)``, because MONAI's
    writer cannot write a squeezed 2D array without resampling it.
    """
    writer = NibabelWriter(output_dtype=dtype)
    writer.set_data_array(image, channel_dim=0, squeeze_end_dims=image.ndim > 3)
    writer.set_metadata(image.meta, resample=False)
    writer.write(path)
