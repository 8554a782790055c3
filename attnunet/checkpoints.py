"""Checkpoints that survive faults and rebuild their own network.

A checkpoint is a plain dict saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)`` (no pickled code runs on load):

``{"format": CHECKPOINT_FORMAT, "spec": ModelSpec.to_dict(), "model": state_dict, "config": dict,
"epoch": int, "best_metric": float, ...}``

``spec`` (:class:`attnunet.spec.ModelSpec`) rebuilds the network and says how to apply it;
``config`` is the resolved run configuration. Training adds optimiser, scheduler, scaler and engine
state for ``--resume``. The ``"model"`` key is what MONAI's ``CheckpointLoader`` reads, so a bundle
config can load these files too.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from attnunet.atomic import atomic_output
from attnunet.spec import ModelSpec

__all__ = [
    "CHECKPOINT_FORMAT",
    "NotAnAttnunetCheckpointError",
    "load_checkpoint",
    "load_weights",
    "model_from_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "attnunet-checkpoint/3"
# Format 1 named ``attention_unet_3d_small`` when it had 8 features, format 2 since the preset has 16;
# both kept an untyped {"name", "kwargs"} network dict, format 3 a typed ModelSpec. Upgrading spells out
# the preset defaults a checkpoint relied on.
_UPGRADES = {
    "attnunet-checkpoint/1": {"attention_unet_3d_small": {"init_features": 8}},
    "attnunet-checkpoint/2": {},
}


class NotAnAttnunetCheckpointError(ValueError):
    """A readable torch file that is not an attnunet checkpoint (a bare state dict, another format)."""


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
        NotAnAttnunetCheckpointError: ``path`` is a torch file of another format (a bare state dict).
        ValueError: ``path`` cannot be read (truncated, not a torch file, pickled objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(_refused(path, str(error))) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"checkpoint {path} cannot be read (truncated or not a torch file): {error}"
        ) from None
    if isinstance(checkpoint, dict) and checkpoint.get("format") in _UPGRADES:
        checkpoint = _upgrade(checkpoint, f"checkpoint {path}")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise NotAnAttnunetCheckpointError(
            f"checkpoint {path} is not an attnunet checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}); train with 'attnunet train' or export a bundle model instead"
        )
    return checkpoint


# The object a pickle asked for that torch's weights-only reader refused ("GLOBAL posix.system").
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


def _refused(path: Path, message: str) -> str:
    """Why torch's weights-only reader refused ``path``, without torch's advice to load it unsafely: such a
    file asks the reader to build objects, and building them would run its code."""
    if not message.startswith("Weights only load failed"):  # a damaged pickle stream
        return f"checkpoint {path} cannot be read (truncated or not a torch file): {message.splitlines()[0]}"
    if "Unsupported operand" in message:  # bytes that are no pickle at all (an image, a text file)
        return f"checkpoint {path} cannot be read (truncated or not a torch file)"
    named = _REFUSED_GLOBAL.search(message)
    what = f" ({named.group(1)})" if named else ""
    return (
        f"checkpoint {path} holds objects that are not plain weights{what}, which attnunet refuses to "
        "load because building them runs code from the file; use a checkpoint written by 'attnunet "
        "train', which holds only tensors and plain values"
    )


def _upgrade(checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """An older checkpoint in today's format: its network dict and run config as a typed spec."""
    network = dict(checkpoint["network"])
    defaults = _UPGRADES[checkpoint["format"]].get(network.get("name"), {})
    network["kwargs"] = {**defaults, **network["kwargs"]}
    config = {**checkpoint.get("config", {}), "network_spec": network}
    spec = ModelSpec.from_config(config, source=source)
    upgraded = {k: v for k, v in checkpoint.items() if k != "network"}
    return {**upgraded, "format": CHECKPOINT_FORMAT, "spec": spec.to_dict()}


def model_from_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild the network a checkpoint describes, load its weights and put it in eval mode.

    Returns:
        ``(model, spec)``: the model on ``device`` and its :class:`~attnunet.spec.ModelSpec`.

    Raises:
        ValueError: the checkpoint's weights do not fit the network it names (another attnunet version).
    """
    source = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {checkpoint}"
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    spec = ModelSpec.from_dict(checkpoint["spec"], source)
    return load_weights(spec.build(), checkpoint["model"], source).to(device).eval(), spec


def load_weights(network: torch.nn.Module, state: Mapping[str, Any], source: str) -> torch.nn.Module:
    """``network`` with ``state`` loaded; a state that does not fit gets one line naming ``source``."""
    try:
        network.load_state_dict(state)
    except RuntimeError as error:  # missing, unexpected or mis-shaped weights: torch lists them all
        details = [
            line.strip()[:200] + ("..." if len(line.strip()) > 200 else "")
            for line in str(error).splitlines()[1:3]
        ]
        raise ValueError(
            f"{source}: its weights do not fit the network it names, so it was written by another "
            f"attnunet version or edited; retrain, or load it with the attnunet that wrote it. "
            f"{' '.join(details)}"
        ) from None
    return network
