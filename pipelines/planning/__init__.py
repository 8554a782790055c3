"""Dataset fingerprint and the plan (spacing, patch, depth, batch, normalisation) training starts from."""
