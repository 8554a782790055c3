"""Ensembles: several models applied as one, their class probabilities averaged (nnU-Net's default
prediction is the ensemble of its five cross-validation folds).

An :class:`Ensemble` stands where :func:`~attnunet.pipelines.inference.apply.apply_model` takes one
network: the scan is read and preprocessed once (the members share preset and spacing), each member's
probabilities are stitched with its own flips and averaged, then inverted and turned into labels as one
model's are. :func:`load_ensemble` builds it from model sources, a cross-validation folder standing for
its folds' best checkpoints and bringing the post-processing the cross-validation chose
(``postprocessing.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnunet.cv_layout import POSTPROCESSING_FILE
from attnunet.models import fold_checkpoints, is_cv_folder, load_model
from attnunet.spec import ModelSpec

__all__ = [
    "Ensemble",
    "ModelSource",
    "build_ensemble",
    "check_members",
    "label_values",
    "load_ensemble",
    "member_sources",
    "postprocessing",
]

# Written by the cross-validation beside its folds: {"largest_component": [class indices]}.

ModelSource = str | os.PathLike


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


def member_sources(source: ModelSource) -> list[str]:
    """The models ``source`` stands for: a cross-validation folder's fold checkpoints, else itself."""
    if is_cv_folder(source):
        return [str(path) for path in fold_checkpoints(source)]
    return [os.fspath(source)]


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
    cross-validation folder gives all its folds and the classes its ``postprocessing.json`` keeps.

    Raises:
        ValueError: members that disagree (:func:`check_members`); a bad ``postprocessing.json``; a
            model :func:`attnunet.load_model` refuses.
        FileNotFoundError: a model, or a fold's checkpoint, does not exist.
    """
    given = _given(sources)
    members = [member for source in given for member in member_sources(source)]
    chosen = [classes for source in given if (classes := postprocessing(source)) is not None]
    loaded = [load_model(member, device=device, tracking_uri=tracking_uri) for member in members]
    return Ensemble(
        networks=tuple(network for network, _ in loaded),
        specs=tuple(spec for _, spec in loaded),
        names=tuple(members),
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
        sources: a checkpoint, bundle folder, ``models:/NAME@ALIAS`` or cross-validation folder (all its
            folds), or several of these; each model is loaded by :func:`attnunet.load_model`.
        device, tracking_uri: as :func:`attnunet.load_model`.

    Returns:
        ``(network, spec)`` for one plain model; ``(ensemble, ensemble.spec)`` for several, or for a
        cross-validation folder (whose ``postprocessing.json`` classes the ensemble keeps).

    Raises:
        as :func:`build_ensemble`.
    """
    given = _given(sources)
    if len(given) == 1 and not is_cv_folder(given[0]):  # one plain model is applied as it always was
        return load_model(given[0], device=device, tracking_uri=tracking_uri)
    ensemble = build_ensemble(given, device=device, tracking_uri=tracking_uri)
    return ensemble, ensemble.spec
