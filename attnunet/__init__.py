"""attnunet: the reference document's Attention U-Net on MONAI."""
