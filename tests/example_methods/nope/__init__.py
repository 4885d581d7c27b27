"""NoPE: causal attention without positional encoding (a test-only example method)."""
