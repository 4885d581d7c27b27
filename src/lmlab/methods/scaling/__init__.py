"""A scaling-law smoke test: wider models reach lower held-out loss (scaling_smoke)."""
