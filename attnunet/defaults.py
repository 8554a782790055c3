"""Defaults shared across layers: the sliding window (validation, the plan, inference) and the anisotropy
threshold (the planner and the training augmentations).

Declared once here, in a module that imports nothing, so the command line's option declarations can
show them without loading torch.
"""

from __future__ import annotations

__all__ = ["ANISOTROPY_RATIO", "OVERLAP", "SW_BATCH_SIZE"]

# nnU-Net's overlap (half a window); benchmarks/README.md measured no reason for a smaller one (its 0.25
# runs time the network, not the accuracy of the stitching).
OVERLAP = 0.5
SW_BATCH_SIZE = 4  # windows per forward pass where no plan chose a number

# nnU-Net's threshold for treating the coarsest axis apart (planning pools and augments in-plane only while
# its spacing exceeds this many times the finest).
ANISOTROPY_RATIO = 3.0
