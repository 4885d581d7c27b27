"""lmlab.sumerian package."""
