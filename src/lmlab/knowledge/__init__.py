"""lmlab.knowledge package."""
