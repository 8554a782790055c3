"""attnunet: the reference document's Attention U-Net on MONAI."""

from attnunet.network import AttentionUNet
from attnunet.networks import create_network, list_networks, register_network

__all__ = ["AttentionUNet", "create_network", "list_networks", "register_network"]
