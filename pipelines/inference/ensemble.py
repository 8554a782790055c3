"""Ensembles: several models applied as one, their class probabilities averaged (nnU-Net's default
prediction is the ensemble of its five cross-validation folds).

An :class:`Ensemble` stands where :func:`~attnunet.pipelines.inference.apply.apply_model` takes one
network: the scan is read and preprocessed once (the members share preset and spacing), each member's
probabilities are stitched with its own flips and averaged, then inverted and turned into labels as one
model's are. :func:`load_ensemble` builds it from model sources, a cross-validation folder standing for
its folds' best checkpoints and bringing the post-processing the cross-validation chose
(``postprocessing.json``), a logged ensemble (``models:/NAME@ALIAS``) for the members and post-processing it
keeps.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnunet.cv_layout import POSTPROCESSING_FILE
from attnunet.models import download_model_files, fold_checkpoints, is_cv_folder, load_model
from attnunet.spec import ModelSpec

__all__ = [
    "ENSEMBLE_METADATA",
    "Ensemble",
    "ModelSource",
    "build_ensemble",
    "check_members",
    "label_values",
    "load_ensemble",
    "logged_members",
    "member_sources",
    "postprocessing",
]

ModelSource = str | os.PathLike


# The key of a logged ensemble's MLmodel metadata: {"members": [artifact keys], "names": [...],
# "largest_component": [...]}; the members' checkpoints are the pyfunc's artifacts of those keys.
ENSEMBLE_METADATA = "attnunet_ensemble"


def _preprocessing_options(spec: ModelSpec) -> dict[str, Any]:
    # flip_axes only chooses each member's own test-time flips, not how the scan is preprocessed
    return {key: value for key, value in spec.preset_kwargs.items() if key != "flip_axes"}


# What members must share for their probabilities to be averaged voxel by voxel: the same outputs meaning
# the same classes, on the same preprocessed image.
_AGREEMENT: tuple[tuple[str, Callable[[ModelSpec], Any]], ...] = (
    ("spatial dims", lambda spec: spec.spatial_dims),
    ("input channels", lambda spec: spec.in_channels),
    ("output channels", lambda spec: spec.out_channels),
    ("classes", lambda spec: dict(spec.labels)),
    ("regions", lambda spec: None if spec.regions is None else spec.regions.to_dict()),
    ("preset", lambda spec: spec.preset),
    ("preset options", _preprocessing_options),
    ("spacing", lambda spec: spec.pixdim),
)


def label_values(spec: ModelSpec) -> tuple[int, ...]:
    """The values a model's label maps hold: its class indices, or a region model's written values."""
    if spec.regions is not None:
        return tuple(sorted({0, *spec.regions.class_order}))
    return tuple(range(max(spec.out_channels, 2)))


def check_members(specs: Sequence[ModelSpec], names: Sequence[str]) -> None:
    """Refuse members whose probabilities cannot be averaged.

    Raises:
        ValueError: one line naming the first member and the one that differs, and what differs.
    """
    for spec, name in zip(specs[1:], names[1:], strict=True):
        for what, read in _AGREEMENT:
            first, other = read(specs[0]), read(spec)
            if first != other:
                raise ValueError(
                    f"models {names[0]} and {name} cannot be ensembled: their {what} differ "
                    f"({first!r} against {other!r})"
                )


@dataclass(frozen=True, eq=False)
class Ensemble:
    """Models whose class probabilities are averaged, and the classes whose largest component is kept.

    Attributes:
        networks: the members, in eval mode.
        specs: each member's spec (its windows' flips and network); they agree on what averaging needs.
        names: where each member came from, for messages.
        largest_component: label values (class indices; a region model's written values) of which only
            the largest connected component is kept, as the cross-validation chose them; empty: none.
    """

    networks: tuple[nn.Module, ...]
    specs: tuple[ModelSpec, ...]
    names: tuple[str, ...]
    largest_component: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.networks or not len(self.networks) == len(self.specs) == len(self.names):
            raise ValueError(
                f"an ensemble needs one spec and name per network, at least one, got {len(self.networks)} "
                f"networks, {len(self.specs)} specs and {len(self.names)} names"
            )
        check_members(self.specs, self.names)
        object.__setattr__(self, "largest_component", tuple(sorted({int(c) for c in self.largest_component})))
        values = label_values(self.spec)
        if not set(self.largest_component) <= set(values):
            raise ValueError(
                f"largest_component {list(self.largest_component)} names classes these models lack "
                f"(their label values: {list(values)})"
            )

    @property
    def spec(self) -> ModelSpec:
        """The first member's spec: its preprocessing, classes and windows are the ensemble's."""
        return self.specs[0]


@dataclass(frozen=True)
class _Members:
    """What one model source stands for: its member models (paths or URIs), their names for messages,
    and the classes it keeps the largest component of (None: it chose none)."""

    sources: tuple[str, ...]
    names: tuple[str, ...]
    largest_component: tuple[int, ...] | None


def member_sources(source: ModelSource) -> list[str]:
    """The models ``source`` stands for: a cross-validation folder's fold checkpoints, else itself."""
    if is_cv_folder(source):
        return [str(path) for path in fold_checkpoints(source)]
    return [os.fspath(source)]


def logged_members(described: Mapping[str, Any], artifacts: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """A logged ensemble's member checkpoints (from its pyfunc's ``artifacts``: key -> local path) and names,
    as its metadata (:data:`ENSEMBLE_METADATA`) describes them."""
    return [artifacts[key] for key in described["members"]], list(described["names"])


def _registered_ensemble(uri: str, folder: Path, tracking_uri: str | None) -> _Members | None:
    """A logged ensemble's members, downloaded under ``folder``; None for a model that is not one."""
    from mlflow.models import Model  # MLflow only when a registry model is asked for

    mlmodel = Model.load(download_model_files(uri, "MLmodel", folder, tracking_uri))
    described = (mlmodel.metadata or {}).get(ENSEMBLE_METADATA)
    if described is None:
        return None
    files = download_model_files(uri, "artifacts", folder, tracking_uri).parent
    stored = mlmodel.flavors["python_function"]["artifacts"]
    paths, names = logged_members(
        described, {key: str(files / entry["path"]) for key, entry in stored.items()}
    )
    return _Members(
        tuple(paths), tuple(f"{uri} ({name})" for name in names), tuple(described["largest_component"])
    )


def _members(source: ModelSource, folder: Path, tracking_uri: str | None) -> _Members:
    if str(source).startswith("models:/") and (
        logged := _registered_ensemble(str(source), folder, tracking_uri)
    ):
        return logged
    sources = tuple(member_sources(source))
    return _Members(sources, sources, postprocessing(source))


def postprocessing(source: ModelSource) -> tuple[int, ...] | None:
    """The classes a cross-validation folder's ``postprocessing.json`` keeps the largest component of;
    None for any other source, or a folder without that file.

    Raises:
        ValueError: the file is not ``{"largest_component": [class indices]}`` (one line naming it).
    """
    path = Path(source) / POSTPROCESSING_FILE
    if not is_cv_folder(source) or not path.is_file():
        return None
    try:
        classes = json.loads(path.read_text())["largest_component"]
        if not isinstance(classes, list) or not all(type(c) is int and c >= 0 for c in classes):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(
            f'{path} is not {{"largest_component": [class indices]}}, e.g. {{"largest_component": [1, 2]}}'
        ) from None
    return tuple(classes)


def _given(sources: ModelSource | Iterable[ModelSource]) -> list[ModelSource]:
    given = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not given:
        raise ValueError("no model given")
    return given


def build_ensemble(
    sources: ModelSource | Iterable[ModelSource],
    *,
    device: str | torch.device = "cpu",
    tracking_uri: str | None = None,
) -> Ensemble:
    """The ensemble of ``sources`` (one model too), each loaded by :func:`attnunet.load_model`; a
    cross-validation folder gives all its folds and the classes its ``postprocessing.json`` keeps, a logged
    ensemble (``models:/``) its members and post-processing.

    Raises:
        ValueError: members that disagree (:func:`check_members`); a bad ``postprocessing.json``; a
            model :func:`attnunet.load_model` refuses.
        FileNotFoundError: a model, or a fold's checkpoint, does not exist.
    """
    given = _given(sources)
    with tempfile.TemporaryDirectory() as folder:  # a logged ensemble's members, while they load
        expanded = [_members(source, Path(folder) / str(i), tracking_uri) for i, source in enumerate(given)]
        members = [member for each in expanded for member in each.sources]
        loaded = [load_model(member, device=device, tracking_uri=tracking_uri) for member in members]
    chosen = [each.largest_component for each in expanded if each.largest_component is not None]
    return Ensemble(
        networks=tuple(network for network, _ in loaded),
        specs=tuple(spec for _, spec in loaded),
        names=tuple(name for each in expanded for name in each.names),
        # several cross-validation folders: each one's choice holds for its classes
        largest_component=tuple(index for classes in chosen for index in classes),
    )


def load_ensemble(
    sources: ModelSource | Iterable[ModelSource],
    *,
    device: str | torch.device = "cpu",
    tracking_uri: str | None = None,
) -> tuple[nn.Module | Ensemble, ModelSpec]:
    """One model, or the ensemble of several, with the spec :func:`apply_model` takes.

    Args:
        sources: a checkpoint, bundle folder, ``models:/NAME@ALIAS`` (a logged ensemble too) or
            cross-validation folder (all its folds), or several of these; each model is loaded by
            :func:`attnunet.load_model`.
        device, tracking_uri: as :func:`attnunet.load_model`.

    Returns:
        ``(network, spec)`` for one plain model; ``(ensemble, ensemble.spec)`` for several, for a
        cross-validation folder (whose ``postprocessing.json`` classes the ensemble keeps) or a logged
        ensemble.

    Raises:
        as :func:`build_ensemble`.
    """
    given = _given(sources)
    ensemble = build_ensemble(given, device=device, tracking_uri=tracking_uri)
    if ensemble.names == (os.fspath(given[0]),):  # one plain model is applied as it always was
        return ensemble.networks[0], ensemble.spec
    return ensemble, ensemble.spec
