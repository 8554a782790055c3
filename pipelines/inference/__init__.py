"""Sliding-window segmentation: input discovery, device placement and writing predictions."""
