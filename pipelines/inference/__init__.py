"""Sliding-window segmentation: input discovery, device placement, writing predictions, and the MLflow model
that serves it."""
