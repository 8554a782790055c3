"""MONAI bundles: the template in ``attention_unet/``, the datalists its configs call, ``bundle init``."""
