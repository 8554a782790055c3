"""Cases on disk: discovery (MSD, folder pairs, CSV, DRIVE), file names, splits, caching, input checks."""
