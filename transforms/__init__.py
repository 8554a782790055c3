"""attnunet.transforms: image readers and MONAI dictionary-transform presets."""
