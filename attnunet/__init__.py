"""attnunet: an Attention U-Net (a U-Net with non-local self-attention in its decoder) on MONAI.

The public names are imported on first use (PEP 562), so ``attnunet --help`` and the CLI's command
table load without torch and MONAI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "AttentionUNet",
    "ModelSpec",
    "create_network",
    "list_networks",
    "load_model",
    "register_network",
]

# public name -> module that defines it
_EXPORTS = {
    "AttentionUNet": "attnunet.network",
    "ModelSpec": "attnunet.spec",
    "load_model": "attnunet.models",
    "create_network": "attnunet.networks",
    "list_networks": "attnunet.networks",
    "register_network": "attnunet.networks",
}

if TYPE_CHECKING:
    from attnunet.models import load_model
    from attnunet.network import AttentionUNet
    from attnunet.networks import create_network, list_networks, register_network
    from attnunet.spec import ModelSpec


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attnunet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
