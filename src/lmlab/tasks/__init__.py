"""lmlab.tasks package."""
