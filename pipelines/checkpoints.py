"""Checkpoints that survive faults and rebuild their own network.

A checkpoint is a plain dict saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)`` (no pickled code runs on load):

``{"format": CHECKPOINT_FORMAT, "network": {"name": str, "kwargs": dict}, "model": state_dict,
"config": dict, "epoch": int, "best_metric": float, ...}``

``network`` is what :func:`attnunet.networks.create_network` needs to rebuild the model, and
``config`` is the resolved run configuration (JSON-serialisable; at least ``preset``, ``pixdim``,
``roi_size`` and ``labels`` for inference). Training adds optimiser, scheduler, scaler and engine
state for ``--resume``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from attnunet.atomic import atomic_output
from attnunet.networks import create_network

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "model_from_checkpoint"]

CHECKPOINT_FORMAT = "attnunet-checkpoint/2"
# Format 1 named ``attention_unet_3d_small`` when it had 8 features; format 2 since the preset has 16
# (8 lost a class on real MR, issue 10). Upgrading a format-1 checkpoint spells its width out.
_UPGRADES = {"attnunet-checkpoint/1": {"attention_unet_3d_small": {"init_features": 8}}}


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a temp file in the same folder, then a rename.

    A crash (or SIGKILL, or a power cut) mid-write leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **checkpoint}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable attnunet checkpoint (truncated, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"checkpoint {path} cannot be read (truncated or not a torch file): {error}"
        ) from None
    if isinstance(checkpoint, dict) and checkpoint.get("format") in _UPGRADES:
        checkpoint = _upgrade(checkpoint)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} is not an attnunet checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}); train with 'attnunet train' or export a bundle model instead"
        )
    return checkpoint


def _upgrade(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """An older checkpoint in today's format: the preset defaults it relied on written into its spec."""
    defaults = _UPGRADES[checkpoint["format"]].get(checkpoint.get("network", {}).get("name"), {})
    network = dict(checkpoint["network"])
    network["kwargs"] = {**defaults, **network["kwargs"]}
    return {**checkpoint, "format": CHECKPOINT_FORMAT, "network": network}


def model_from_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network a checkpoint describes, load its weights and put it in eval mode.

    Returns:
        ``(model, config)``: the model on ``device`` and the run configuration saved with it.

    Raises:
        ValueError: the checkpoint's weights do not fit the network it names (another attnunet version).
    """
    source = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {checkpoint}"
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    spec = checkpoint["network"]
    model = create_network(spec["name"], **spec["kwargs"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:  # missing, unexpected or mis-shaped weights: torch lists them all
        details = [
            line.strip()[:200] + ("..." if len(line.strip()) > 200 else "")
            for line in str(error).splitlines()[1:3]
        ]
        raise ValueError(
            f"{source}: its weights do not fit the network it names ({spec['name']} with {spec['kwargs']}), "
            f"so it was written by another attnunet version (the decoder has one 3x3 convolution per "
            f"stage since 2026-11-25) or edited; retrain, or load it with the attnunet that wrote it. "
            f"{' '.join(details)}"
        ) from None
    return model.to(device).eval(), dict(checkpoint.get("config", {}))
