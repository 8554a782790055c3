"""The typed model spec: everything that rebuilds a trained network and applies it to new scans.

A spec travels with the weights (checkpoints, bundles, the MLflow run's config), so inference and
export repeat no training flags. It is saved as a plain JSON-able dict with a ``version`` that
changes whenever its fields change; :meth:`ModelSpec.from_dict` reads every version it knows (version 1
had no ``regions``: a model of one output per class, or one binary output).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from attnunet.defaults import OVERLAP, SW_BATCH_SIZE
from attnunet.regions import Regions

__all__ = ["SPEC_VERSION", "ModelSpec"]

SPEC_VERSION = 2
_READABLE = (1, SPEC_VERSION)
# Fields a run's resolved config must hold for a spec to be built from it.
_REQUIRED = ("network", "preset", "roi_size", "spatial_dims", "in_channels", "out_channels", "labels")


def _json_form(value: Any) -> Any:
    """``value`` with tuples as lists and mappings as dicts, all the way down: what it reads back as
    from JSON, so a spec equals itself read back (``pool_sizes=((2, 2, 1), ...)`` included)."""
    if isinstance(value, Mapping):
        return {key: _json_form(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_form(item) for item in value]
    return value


@dataclass(frozen=True)
class ModelSpec:
    """A network by registry name with its arguments, and the data contract it was trained under.

    Attributes:
        network: name in :func:`attnunet.networks.list_networks`.
        network_kwargs: every argument of that builder, ``spatial_dims``/``in_channels``/``out_channels``
            included, in JSON's types (tuples are kept as lists, e.g. ``pool_sizes``, ``kernel_sizes``).
        labels: class index (as a string) -> class name, background ``"0"`` included: the values of the
            label maps it was trained on and writes.
        preset: transform preset the network was trained behind (``"ct"``, ``"mr"``, ``"image2d"``).
        preset_kwargs: that preset's options (CT window...).
        pixdim: target spacing in mm, or None for each image's own.
        roi_size: training patch, the default sliding-window size.
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap.
        regions: for a region model (nnU-Net's region-based training), its regions, one sigmoid output
            each (:class:`~attnunet.regions.Regions`); None: one softmax output per class, or one binary
            output.
        version: :data:`SPEC_VERSION` of the code that wrote it.

    Example:
        >>> spec = ModelSpec("attention_unet_3d_small", {"spatial_dims": 3, "in_channels": 1,
        ...     "out_channels": 2}, labels={"0": "background", "1": "organ"}, preset="ct",
        ...     roi_size=(32, 32, 32))
        >>> spec.out_channels, ModelSpec.from_dict(spec.to_dict()) == spec
        (2, True)
    """

    network: str
    network_kwargs: Mapping[str, Any]
    labels: Mapping[str, str]
    preset: str
    roi_size: tuple[int, ...]
    preset_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pixdim: tuple[float, ...] | None = None
    sw_batch_size: int = SW_BATCH_SIZE
    overlap: float = OVERLAP
    regions: Regions | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        missing = [k for k in ("spatial_dims", "in_channels", "out_channels") if k not in self.network_kwargs]
        if missing:
            raise ValueError(f"model spec: network_kwargs lacks {missing} (got {dict(self.network_kwargs)})")
        object.__setattr__(self, "network_kwargs", _json_form(self.network_kwargs))
        if len(self.roi_size) != self.spatial_dims:
            raise ValueError(f"model spec: roi_size {self.roi_size} is not {self.spatial_dims}D")
        object.__setattr__(self, "roi_size", tuple(int(s) for s in self.roi_size))
        if self.pixdim is not None:
            object.__setattr__(self, "pixdim", tuple(float(p) for p in self.pixdim))
        if isinstance(self.regions, Mapping):  # as to_dict wrote it
            object.__setattr__(self, "regions", Regions.from_dict(self.regions))
        if self.regions is not None and len(self.regions.names) != self.out_channels:
            raise ValueError(
                f"model spec: {len(self.regions.names)} regions {list(self.regions.names)} need as many "
                f"outputs, network_kwargs has out_channels={self.out_channels}"
            )

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return int(self.network_kwargs["spatial_dims"])

    @property
    def in_channels(self) -> int:
        """Image channels the network takes."""
        return int(self.network_kwargs["in_channels"])

    @property
    def out_channels(self) -> int:
        """Network outputs: one per class (softmax), 1 for a single binary (sigmoid) output, or one per
        region (sigmoid each)."""
        return int(self.network_kwargs["out_channels"])

    @property
    def sigmoid(self) -> bool:
        """Whether each output is a sigmoid of its own (one binary output, or regions), not a softmax."""
        return self.out_channels == 1 or self.regions is not None

    def build(self) -> nn.Module:
        """A freshly initialised network of this spec (load the weights into it)."""
        from attnunet.networks import create_network

        return create_network(self.network, **self.network_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists for tuples), as saved in checkpoints."""
        saved = asdict(self)
        saved.update(roi_size=list(self.roi_size), pixdim=None if self.pixdim is None else list(self.pixdim))
        saved["regions"] = None if self.regions is None else self.regions.to_dict()
        return saved

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], source: str = "model spec") -> ModelSpec:
        """Read a dict written by :meth:`to_dict` (any known version); ``source`` names it in errors."""
        version = saved.get("version")
        if version not in _READABLE:
            raise ValueError(
                f"{source}: model spec version {version!r} is not one this attnunet reads "
                f"({', '.join(map(str, _READABLE))}); load it with the attnunet version that wrote it"
            )
        try:
            return cls(**{**saved, "version": SPEC_VERSION})
        except TypeError as error:
            raise ValueError(f"{source}: not a model spec ({error})") from None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "run config") -> ModelSpec:
        """The spec of a training run's resolved config (``config.json``, an MLflow run's config).

        Its ``network_spec`` (``{"name", "kwargs"}``) is the network; the other fields are the
        config's own.
        """
        network = config.get("network_spec") or {"name": config.get("network"), "kwargs": {}}
        merged = {"network": network["name"], **config}
        missing = [key for key in _REQUIRED if merged.get(key) is None]
        if missing:
            raise ValueError(f"{source}: lacks {missing}, so the model cannot be rebuilt from it")
        kwargs = {
            **network["kwargs"],
            **{k: int(config[k]) for k in ("spatial_dims", "in_channels", "out_channels")},
        }
        return cls(
            network=network["name"],
            network_kwargs=kwargs,
            labels={str(k): str(v) for k, v in config["labels"].items()},
            preset=str(config["preset"]),
            preset_kwargs=dict(config.get("preset_kwargs") or {}),
            pixdim=config.get("pixdim"),
            roi_size=tuple(config["roi_size"]),
            sw_batch_size=int(config.get("sw_batch_size") or SW_BATCH_SIZE),
            overlap=float(config.get("overlap") if config.get("overlap") is not None else OVERLAP),
            regions=config.get("regions"),
        )
