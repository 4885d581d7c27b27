"""lmlab.analysis package."""
