"""The plan's field names, apart from the planning itself (numpy, torch, the dataset readers), so the
command line's option declarations can name them without loading those."""

from __future__ import annotations

__all__ = ["PLAN_FIELDS", "PLAN_FORMAT", "TRAIN_FIELDS"]

PLAN_FORMAT = "attnunet-plan/1"
# Fields a user may override, in the order the table prints them.
PLAN_FIELDS = (
    "preset",
    "pixdim",
    "roi_size",
    "depth",
    "init_features",
    "batch_size",
    "num_samples",
    "sw_batch_size",
    "overlap",
    "preset_kwargs",
)
# TrainConfig fields a plan sets (the rest keep their defaults or the user's values).
TRAIN_FIELDS = ("preset", "pixdim", "roi_size", "batch_size", "num_samples", "sw_batch_size", "overlap")
